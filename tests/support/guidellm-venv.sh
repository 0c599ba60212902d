#!/usr/bin/env bash
# Build the GuideLLM venv that tests/bench_guidellm.rs runs (a short, bounded GuideLLM
# benchmark against surge). Its own venv: GuideLLM needs PyTorch and transformers
# (several GB), which the model fixtures' venv (fetch-models.sh) does not.
#
#   tests/support/guidellm-venv.sh
#
# Environment:
#   SURGE_GUIDELLM_VENV  the venv (default <repo>/.cache/guidellm-venv)
#   PYTHON               interpreter that creates the venv (default python3, 3.11 tested)
#
# Idempotent: the venv carries a .stamp with the sha256 of guidellm-lock.txt; a run with
# it up to date does nothing. Prints the path of the guidellm executable.
#
# Disk: the venv is ~6 GB. pip keeps every wheel of one install until it ends, so the
# lock's large wheels (PyTorch, triton, the CUDA libraries) go in one at a time, with
# --no-deps (the lock is complete; `pip check` proves it), and the peak is the venv plus
# one wheel rather than the venv plus ~3 GB of downloads.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${SURGE_GUIDELLM_VENV:-$repo/.cache/guidellm-venv}"
python="${PYTHON:-python3}"
lock="$here/guidellm-lock.txt"

log() { echo "guidellm-venv: $*" >&2; }
die() {
    echo "guidellm-venv: error: $*" >&2
    exit 1
}

stamp="lock $(sha256sum "$lock" | cut -d' ' -f1)"
if [[ -x "$venv/bin/guidellm" && -f "$venv/.stamp" && "$(<"$venv/.stamp")" == "$stamp" ]]; then
    log "up to date: $venv"
else
    mkdir -p "$(dirname "$venv")"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating venv $venv"
        "$python" -m venv "$venv" || die "'$python -m venv' failed (Debian: apt-get install python3-venv)"
    fi
    pins=$(grep -E '^[A-Za-z0-9_.-]+==' "$lock")
    large='^(torch|triton|nvidia-|cuda-|pyarrow)'
    pip=("$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check --no-deps)
    log "installing $lock into $venv (PyTorch and its CUDA libraries included: ~6 GB)"
    while read -r pin; do
        "${pip[@]}" "$pin" || die "pip could not install $pin (free disk: $(df -h --output=avail "$venv" | tail -1))"
    done < <(grep -E "$large" <<<"$pins")
    rest=$(mktemp)
    trap 'rm -f "$rest"' EXIT
    grep -vE "$large" <<<"$pins" >"$rest"
    "${pip[@]}" -r "$rest" || die "pip could not install the rest of $lock (free disk: $(df -h --output=avail "$venv" | tail -1))"
    "$venv/bin/python" -m pip check --disable-pip-version-check >&2 || die "$lock is incomplete: see pip check above"
    "$venv/bin/guidellm" --version >/dev/null || die "guidellm does not run from $venv"
    printf '%s' "$stamp" >"$venv/.stamp"
    log "done: $venv"
fi
echo "$venv/bin/guidellm"
