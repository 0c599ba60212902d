#!/usr/bin/env bash
# One prepared run on a GPU host (NVIDIA driver, CUDA 13 libraries and Python; no Rust
# toolchain, no network), from the repository root with target/gpu-bundle/ (made by
# tests/support/build-gpu-bundle.sh) and .cache/models/llama3-tokenizer copied along:
#   1. the GPU tests (kernels against their CPU twins, greedy tokens CUDA vs CPU);
#   2. surge serving the Llama-3.1-8B geometry with --load-format dummy in bf16: process
#      start to ready, single-stream decode tok/s, output tok/s at concurrency 64 and 256
#      (prompt 1000 tokens; output bounded, see below).
# Writes report.md and the logs into OUT. Finishes in under 8 minutes (each phase has its
# own time limit).
#
#   tests/support/gpu-check.sh OUT
set -uo pipefail
out=${1:?usage: gpu-check.sh OUT}
mkdir -p "$out"
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
report=$out/report.md
log() { echo "$*" | tee -a "$report"; }
: > "$report"
bundle=target/gpu-bundle
work=$(mktemp -d)
trap 'kill $(jobs -p) 2> /dev/null; rm -rf "$work"' EXIT

# CUDA 13 user-space libraries come with the host's Python packages; the driver's libcuda
# sits in its own folder.
libdirs=$(find / -xdev \( -name 'libcudart.so.13*' -o -name 'libcublas.so.13*' -o -name 'libcublasLt.so.13*' \
    -o -name 'libcurand.so.10*' -o -name 'libnvrtc.so.13*' -o -name 'libcuda.so.1' \) 2> /dev/null \
    | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for bin in surge gpu_kernels; do
    gzip -dc "$bundle/$bin.gz" > "$work/$bin" && chmod +x "$work/$bin"
done
log "# surge gpu-check"
log "- commit: $(cat "$bundle/commit" 2> /dev/null || echo unknown); $(date -u +%FT%TZ)"
log "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null || echo 'nvidia-smi missing')"

log "## 1. GPU tests"
SURGE_MODEL_CACHE=$root/.cache/models SURGE_REPO_DIR=$root timeout 150 "$work/gpu_kernels" \
    --test-threads=1 --nocapture > "$out/gpu-tests.log" 2>&1
rc=$?
log "- gpu_kernels: exit $rc; $(grep -E '^test result' "$out/gpu-tests.log" | tail -1)"
grep -E 'within tolerance|greedy tokens|skipped|panicked' "$out/gpu-tests.log" | sed 's/^/    /' >> "$report"

log "## 2. Llama-3.1-8B geometry, dummy bf16 weights"
model=$work/llama-3.1-8b
mkdir -p "$model"
cp tests/support/llama-3.1-8b/config.json "$model/"
cp .cache/models/llama3-tokenizer/tokenizer.json "$model/"
port=18123
started=$(date +%s.%N)
"$work/surge" serve --model "$model" --load-format dummy --dtype bf16 --device cuda \
    --port "$port" --host 127.0.0.1 --max-model-len 4096 --max-num-seqs 256 \
    > "$out/serve.log" 2>&1 &
ready=""
for _ in $(seq 1 1200); do
    if curl -sf "http://127.0.0.1:$port/health" > /dev/null 2>&1; then
        ready=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")
        break
    fi
    sleep 0.1
done
if [[ -z $ready ]]; then
    log "- not ready within 120 s; serve.log:"
    tail -30 "$out/serve.log" >> "$report"
    exit 1
fi
log "- process start to ready: ${ready} s"
grep -E 'GPU memory planned|KV cache planned' "$out/serve.log" | tail -2 | sed 's/^/    /' >> "$report"
bench() { # name, then surge bench flags
    local name=$1
    shift
    timeout 170 "$work/surge" bench --url "http://127.0.0.1:$port" --tokenizer "$model" \
        --prompt-tokens 1000 --output "$out/$name.json" "$@" > "$out/$name.log" 2>&1
    python3 - "$out/$name.json" "$name" >> "$report" << 'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"- {sys.argv[2]}: no report ({e})"); sys.exit()
for level in r.get("levels", []):
    flat = {}
    for k, v in level.items():
        if isinstance(v, dict):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items() if not isinstance(vv, (list, dict))})
        elif not isinstance(v, list):
            flat[k] = v
    print(f"- {sys.argv[2]}: {json.dumps(flat)}")
PY
}
# Single stream: 1000-token prompt, 500 tokens out, 3 requests.
bench single --concurrency 1 --output-tokens 500 --max-requests 3 --duration 60s
# 64 and 256 concurrent: 1000 in / 1000 out, each level bounded at 75 s.
bench c64 --concurrency 64 --output-tokens 1000 --max-requests 128 --duration 75s
bench c256 --concurrency 256 --output-tokens 1000 --max-requests 256 --duration 75s
log "- done in $(python3 -c "import time; print(f'{time.time() - $started:.0f}')") s after the server start"
