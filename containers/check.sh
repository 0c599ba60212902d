#!/usr/bin/env bash
# End-to-end check of the CPU image and of a ModelCar, on a machine with a container
# engine (no GPU needed):
#
#   containers/check.sh MODEL_DIR        # e.g. .cache/models/smollm2-hf
#
# 1. builds surge:dev-cpu and a ModelCar of MODEL_DIR with containers/build.sh;
# 2. runs, in the ModelCar, KServe's init check (`[ -d /models ] && ls -A /models`) and
#    its sidecar's command (`ln -sf /proc/$$/root/models /mnt/models && sleep infinity`);
# 3. serves MODEL_DIR mounted at /mnt/models, as the image's user and then as an
#    arbitrary UID in group 0 (OpenShift), and asks one greedy chat question each time;
# 4. pushes the ModelCar to a local registry (Debian docker-registry on 127.0.0.1) and
#    serves it from oci:// inside the image: the answer must be the same;
# 5. stops each server with SIGTERM, which must end it with status 0.
#
# Environment: ENGINE and the base images as in build.sh (BUILD_IMAGE, RUNTIME_IMAGE,
# MODELCAR_BASE_IMAGE). Needs docker-registry, curl and python3.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="$(cd "${1:?usage: containers/check.sh MODEL_DIR}" && pwd)"
build="$repo/containers/build.sh"
engine="$(bash "$build" print image cpu | cut -d' ' -f1)"
image=surge:dev-cpu
modelcar=localhost/surge-check-modelcar:1
name="surge-check-$$"
work="$(mktemp -d)"
registry_pid=

log() { echo "check: $*" >&2; }
die() {
    echo "check: error: $*" >&2
    exit 1
}
cleanup() {
    "$engine" rm -f "$name" >/dev/null 2>&1 || true
    [[ -n "$registry_pid" ]] && kill "$registry_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits for /health on PORT (at most 120 s).
wait_healthy() {
    local port="$1"
    for _ in $(seq 1 240); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
        "$engine" inspect -f '{{.State.Running}}' "$name" 2>/dev/null | grep -q true \
            || die "the container stopped: $("$engine" logs "$name" 2>&1 | tail -20)"
        sleep 0.5
    done
    die "no /health 200 on port $port in 120 s: $("$engine" logs "$name" 2>&1 | tail -20)"
}

# The greedy answer to one chat question, from the server on PORT.
ask() {
    curl -sf -m 120 "http://127.0.0.1:$1/v1/chat/completions" -H 'Content-Type: application/json' \
        -d '{"model": "m", "temperature": 0, "max_tokens": 16,
             "messages": [{"role": "user", "content": "What is the capital of France?"}]}' |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
}

# Runs the image with ARGS (engine options, then `--` and surge's flags) on a free port,
# asks the question, stops the server with SIGTERM and prints the answer.
serve_and_ask() {
    local port engine_args=()
    port="$(free_port)"
    while [[ "$1" != -- ]]; do
        engine_args+=("$1")
        shift
    done
    shift
    "$engine" run -d --name "$name" --network host "${engine_args[@]}" "$image" \
        --port "$port" --served-model-name m "$@" >/dev/null
    wait_healthy "$port"
    local uid answer status
    uid="$("$engine" exec "$name" id -u)"
    [[ "$uid" != 0 ]] || die "the server runs as root"
    answer="$(ask "$port")" || die "the chat request failed: $("$engine" logs "$name" 2>&1 | tail -20)"
    "$engine" stop -t 30 "$name" >/dev/null
    status="$("$engine" inspect -f '{{.State.ExitCode}}' "$name")"
    "$engine" rm "$name" >/dev/null
    [[ "$status" == 0 ]] || die "SIGTERM ended the server with status $status"
    log "uid $uid answered: $answer"
    echo "$answer"
}

log "building $image and the ModelCar of $model"
bash "$build" image cpu "$image"
bash "$build" modelcar "$model" "$modelcar"

log "KServe's ModelCar commands"
listing="$("$engine" run --rm "$modelcar" sh -c '[ -d /models ] && ls -A /models')"
grep -qx config.json <<<"$listing" || die "no /models/config.json in the ModelCar: $listing"
mkdir -p "$work/mnt" && chmod 0777 "$work/mnt"
"$engine" run --rm --user 1001 -v "$work/mnt:/mnt" "$modelcar" \
    sh -c 'ln -sf /proc/$$/root/models /mnt/models && ls -L /mnt/models/config.json && timeout 1 sleep infinity || [ $? = 143 ]' >/dev/null 2>&1 ||
    die "the sidecar's link-and-sleep command failed in the ModelCar"

log "serving $model mounted at /mnt/models"
mounted="$(serve_and_ask -v "$model:/mnt/models:ro" --)"
arbitrary="$(serve_and_ask --user 1000650000:0 -v "$model:/mnt/models:ro" --)"
[[ "$arbitrary" == "$mounted" ]] || die "an arbitrary UID answered '$arbitrary', not '$mounted'"

log "serving the ModelCar from a local registry"
read -r port registry_pid < <(bash "$repo/tests/support/local-registry.sh" "$work/registry")
[[ -n "$port" ]] || die "no local registry"
remote="127.0.0.1:$port/check/modelcar:1"
if [[ "$engine" == podman ]]; then
    podman push -q --tls-verify=false "$modelcar" "$remote"
else
    docker tag "$modelcar" "$remote" && docker push -q "$remote" >/dev/null
fi
pulled="$(serve_and_ask -- --model "oci://$remote" --insecure-registry "127.0.0.1:$port")"
[[ "$pulled" == "$mounted" ]] || die "the ModelCar pulled from oci:// answered '$pulled', not '$mounted'"
log "passed"
