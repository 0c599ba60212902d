#!/usr/bin/env bash
# The one place that says how surge's binaries and images are built: the Containerfiles
# run it for the binary, the README documents it, and tests/deploy_containers.rs checks
# that all three agree.
#
#   containers/build.sh binary cpu|cuda          cargo build of the release binary
#   containers/build.sh image cpu|cuda [TAG]     build an image (surge:dev-cpu / surge:dev-cuda)
#   containers/build.sh modelcar MODEL_DIR TAG   a ModelCar image with MODEL_DIR under /models
#   containers/build.sh print COMMAND ARGS...    print what COMMAND would run, run nothing
#
# Environment:
#   ENGINE             podman (default when installed) or docker
#   CUDA_COMPUTE_CAP   GPU architecture the CUDA build targets (default 80: runs on sm_80
#                      and newer 8.x, i.e. A100, A10G, L4; use 90 for H100 / H200)
#   BUILD_IMAGE, CUDA_DEVEL_IMAGE, CUDA_RUNTIME_IMAGE, RUNTIME_IMAGE, MODELCAR_BASE_IMAGE
#                      base images, passed to the Containerfiles as build args (set fully
#                      qualified names if your engine does not resolve short ones)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
here="$repo/containers"

die() {
    echo "build.sh: error: $*" >&2
    exit 2
}

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

engine() {
    if [[ -n "${ENGINE:-}" ]]; then
        echo "$ENGINE"
    elif command -v podman >/dev/null 2>&1; then
        echo podman
    else
        echo docker
    fi
}

# Build args for whichever base images the caller overrides.
base_image_args() {
    local name
    for name in BUILD_IMAGE CUDA_DEVEL_IMAGE CUDA_RUNTIME_IMAGE RUNTIME_IMAGE MODELCAR_BASE_IMAGE; do
        if [[ -n "${!name:-}" ]]; then
            printf ' %q' --build-arg "$name=${!name}"
        fi
    done
}

# The command line of each step, one line, shell-quoted.
command_for() {
    local what="${1:-}"
    case "$what" in
    binary)
        case "${2:-}" in
        cpu) echo "cargo build --release --locked" ;;
        cuda) echo "cargo build --release --locked --features cuda" ;;
        *) die "binary takes cpu or cuda, not '${2:-}'" ;;
        esac
        ;;
    image)
        local variant="${2:-}" file
        case "$variant" in
        cpu) file=containers/Containerfile.cpu ;;
        cuda) file=containers/Containerfile ;;
        *) die "image takes cpu or cuda, not '$variant'" ;;
        esac
        local tag="${3:-surge:dev-$variant}"
        local extra=""
        if [[ "$variant" == cuda ]]; then
            extra="$(printf ' %q' --build-arg "CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}")"
        fi
        echo "$(engine) build -f $file -t $(printf '%q' "$tag")$extra$(base_image_args) ."
        ;;
    modelcar)
        local dir="${2:-}" tag="${3:-}"
        [[ -n "$dir" && -n "$tag" ]] || die "modelcar takes MODEL_DIR and TAG"
        echo "$(engine) build -f containers/modelcar/Containerfile -t $(printf '%q' "$tag")$(base_image_args) $(printf '%q' "$dir")"
        ;;
    *) usage ;;
    esac
}

[[ $# -ge 1 ]] || usage
case "$1" in
print)
    shift
    command_for "$@"
    ;;
binary | image)
    cmd="$(command_for "$@")"
    if [[ "$1" == binary && "${2:-}" == cuda ]]; then
        # Otherwise candle's build asks nvidia-smi, which a build host may not have.
        export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
    fi
    echo "+ $cmd" >&2
    cd "$repo"
    eval "$cmd"
    ;;
modelcar)
    [[ -f "${2:-}/config.json" ]] || die "${2:-MODEL_DIR} has no config.json: give a Hugging Face-layout model directory"
    cmd="$(command_for "$@")"
    echo "+ $cmd" >&2
    cd "$repo"
    eval "$cmd"
    ;;
*) usage ;;
esac
