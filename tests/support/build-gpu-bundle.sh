#!/usr/bin/env bash
# Builds what tests/support/gpu-check.sh runs on a GPU host that has no Rust toolchain
# and no network: the release surge and the GPU test binary, both with the cuda feature,
# gzipped into target/gpu-bundle/ (copy that folder and .cache/models/llama3-tokenizer
# along with the repository).
#
#   tests/support/build-gpu-bundle.sh        (SURGE_CUDA_ARCHS, default 90 = H100/H200)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
source <(bash tests/support/install-cuda-toolchain.sh --env)
export SURGE_CUDA_ARCHS=${SURGE_CUDA_ARCHS:-90}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-${SURGE_CUDA_ARCHS%%,*}}
export CARGO_TARGET_DIR=${SURGE_CUDA_TARGET_DIR:-$root/target/cuda}
bundle=$root/target/gpu-bundle
rm -rf "$bundle" && mkdir -p "$bundle"
cargo build --release --features cuda --bin surge
test_bin=$(cargo test --release --features cuda --test gpu_kernels --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_kernels":
        print(m["executable"])')
gzip -9 -c "$CARGO_TARGET_DIR/release/surge" > "$bundle/surge.gz"
gzip -9 -c "$test_bin" > "$bundle/gpu_kernels.gz"
git rev-parse HEAD > "$bundle/commit"
ls -la "$bundle"
