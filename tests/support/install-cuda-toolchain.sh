#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine with no GPU and no
# NVIDIA driver: nvcc, the CUDA headers and libraries from the CUDA 13.0 Python wheels,
# in a venv under .cache/cuda (git-ignored), plus a stub libcuda.so to link against.
# Prints the environment to build with; `source <(... --env)` sets it.
#
#   tests/support/install-cuda-toolchain.sh [--env]
#
# CUDA 13.0 exactly: a GPU host's driver 580 JITs PTX of at most that version, and
# pip mixes 13.0 and newer parts unless the version is pinned.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${SURGE_CUDA_DIR:-$root/.cache/cuda}
cu=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
cu=$dir/venv/lib/python$cu/site-packages/nvidia/cu13
if [[ ! -x $cu/bin/nvcc ]]; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        "cuda-toolkit[nvcc,crt,nvvm,cccl,cudart,nvrtc,cublas,curand]==13.0.2" >&2
fi
# The wheels ship versioned sonames only; the linker wants the plain names.
for lib in cudart cublas cublasLt curand nvrtc; do
    so=$(find "$cu/lib" -maxdepth 1 -name "lib$lib.so.*" | sort | head -1)
    [[ -n $so ]] || { echo "install-cuda-toolchain: lib$lib missing in $cu/lib" >&2; exit 1; }
    ln -sfn "$(basename "$so")" "$cu/lib/lib$lib.so"
done
# libcuda comes with the driver, not with any wheel: link against a stub whose every
# entry point fails with CUDA_ERROR_NO_DEVICE (100). At run time the real one is used.
if [[ ! -e $dir/stub/libcuda.so ]]; then
    mkdir -p "$dir/stub"
    stub=(python3 "$root/tests/support/cuda_stub.py" "$dir/stub/cuda_stub.c")
    "${stub[@]}" 2> /dev/null || { (cd "$root" && cargo fetch --quiet) && "${stub[@]}"; }
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/stub/libcuda.so" "$dir/stub/cuda_stub.c"
    ln -sfn libcuda.so "$dir/stub/libcuda.so.1"
fi
if [[ ${1:-} == --env ]]; then
    echo "export CUDA_ROOT=$cu"
    echo "export CUDA_PATH=$cu"
    echo "export PATH=$cu/bin:\$PATH"
    echo "export LIBRARY_PATH=$dir/stub:$cu/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
    echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
else
    echo "CUDA toolchain ready in $cu (stub libcuda in $dir/stub); for the build env: $0 --env" >&2
fi
