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
# Idempotent: the venv carries a .stamp with the sha256 of guidellm-requirements.txt; a
# run with it up to date does nothing. Prints the path of the guidellm executable.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${SURGE_GUIDELLM_VENV:-$repo/.cache/guidellm-venv}"
python="${PYTHON:-python3}"
requirements="$here/guidellm-requirements.txt"

log() { echo "guidellm-venv: $*" >&2; }
die() {
    echo "guidellm-venv: error: $*" >&2
    exit 1
}

stamp="requirements $(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -x "$venv/bin/guidellm" && -f "$venv/.stamp" && "$(<"$venv/.stamp")" == "$stamp" ]]; then
    log "up to date: $venv"
else
    mkdir -p "$(dirname "$venv")"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating venv $venv"
        "$python" -m venv "$venv" || die "'$python -m venv' failed (Debian: apt-get install python3-venv)"
    fi
    log "installing $requirements into $venv (PyTorch included: several GB)"
    # No pip cache: the wheels are as large as the venv.
    "$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check -r "$requirements"
    "$venv/bin/guidellm" --version >/dev/null || die "guidellm does not run from $venv"
    printf '%s' "$stamp" >"$venv/.stamp"
    log "done: $venv"
fi
echo "$venv/bin/guidellm"
