#!/usr/bin/env bash
# CI's check of the cuda feature on a machine without a GPU: installs the CUDA toolchain
# (tests/support/install-cuda-toolchain.sh), compiles `--features cuda` (every kernel in
# kernels/ for sm_80, sm_86 and sm_90, the surge binary and the GPU tests), then runs the
# library's unit tests and the GPU tests of that build against the stub libcuda, i.e. as on
# a host whose driver has no usable GPU: --device auto must fall back to the CPU, and each
# GPU test must say "skipped: no GPU".
#
# It shares target/ with `cargo test`: only the crates the feature changes are rebuilt.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source <(bash tests/support/install-cuda-toolchain.sh --env)
export SURGE_CUDA_ARCHS=${SURGE_CUDA_ARCHS:-80,86,90} CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
cargo build --features cuda --bins --lib --test gpu_kernels
stub=$root/.cache/cuda/stub
export LD_LIBRARY_PATH=$stub:$CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --features cuda --lib --test gpu_kernels -- --nocapture 2>&1 | tee "$log" | grep -E '^test result|skipped|FAILED|panicked'
[[ ${PIPESTATUS[0]} == 0 ]] || { tail -40 "$log"; exit 1; }
skipped=$(grep -c 'skipped: no GPU' "$log" || true)
tests=$(grep -c '^#\[test\]' tests/gpu_kernels.rs)
echo "cuda-check: GPU tests skipped visibly: $skipped of $tests"
(( skipped > 0 && skipped == tests )) || { echo "cuda-check: expected every GPU test to skip" >&2; exit 1; }
# Asked for explicitly, CUDA must fail clearly rather than fall back.
if out=$("${CARGO_TARGET_DIR:-target}/debug/surge" serve --device cuda --model "${SURGE_MODEL_CACHE:-$root/.cache/models}/smollm2-hf" --port 0 2>&1); then
    echo "cuda-check: --device cuda started without a GPU" >&2
    exit 1
fi
grep -q 'no usable CUDA device cuda:0' <<< "$out" || { echo "$out" | tail -5; exit 1; }
echo "cuda-check: ok (--device cuda without a GPU: $(grep -o 'no usable CUDA device[^;]*' <<< "$out" | head -1))"
