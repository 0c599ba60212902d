#!/usr/bin/env bash
# ModelCar pull speed: a multi-layer image of SIZE_MIB MiB of random "weights" on a local
# CNCF distribution registry (Debian docker-registry, 127.0.0.1), pulled by `surge pull`
# into an empty cache and copied by `skopeo copy docker://… dir:…` in the same run, for
# each layer compression. Prints both times and their ratio.
# Usage: bench-pull.sh [SIZE_MIB] [LAYERS] [COMPRESSIONS...]   (default: 1024 4 gzip none)
# COMPRESSIONS: gzip, zstd, none (as `surge modelcar build` writes them), or skopeo-gzip
# (the uncompressed image gzipped by skopeo: one gzip member per layer, as podman
# and other container tools write it).
#
# SURGE_BENCH_WEIGHTS picks the bytes of the shards:
#   bf16    (default) like bf16 weights: every other byte (the sign and exponent) takes
#           one of 8 values, the mantissa bytes are random. gzip saves ~20% on them, as on
#           real weights, so gzip layers hold Huffman-coded blocks that must be inflated.
#   random  incompressible: gzip layers are as large as their content.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
surge=${SURGE_BIN:-$root/target/release/surge}
size=${1:-1024}
layers=${2:-4}
shift $(( $# > 2 ? 2 : $# ))
compressions=("${@:-gzip none}")
[ -x "$surge" ] || (cd "$root" && cargo build --release)
work=$(mktemp -d)
registry_pid=
trap '[ -n "$registry_pid" ] && kill "$registry_pid"; rm -rf "$work"' EXIT
read -r port registry_pid < <(bash "$root/tests/support/local-registry.sh" "$work/registry")
[ -n "$port" ] || exit 1
# A model dir: config and tokenizer files plus LAYERS weight shards of random bytes.
mkdir -p "$work/model"
echo '{"architectures": ["LlamaForCausalLM"]}' > "$work/model/config.json"
weights=${SURGE_BENCH_WEIGHTS:-bf16}
for i in $(seq 1 "$layers"); do
  python3 - "$(( size * 1024 * 1024 / layers ))" "$weights" > "$work/model/model-0000$i.safetensors" <<'PY'
import os, sys
n, kind = int(sys.argv[1]), sys.argv[2]
data = bytearray(os.urandom(n))
if kind == "bf16":
    data[1::2] = data[1::2].translate(bytes(0x3C + (b & 7) for b in range(256)))
elif kind != "random":
    sys.exit(f"SURGE_BENCH_WEIGHTS: bf16 or random, not {kind}")
sys.stdout.buffer.write(data)
PY
done
for c in ${compressions[*]}; do
  image="127.0.0.1:$port/bench/model:$c"
  if [ "$c" = skopeo-gzip ]; then
    # gzip as container tools write it (one member per layer), recompressed by skopeo.
    # The source is on a registry of its own: pushing to the same one, skopeo would find
    # the uncompressed blobs there and reuse them instead of uploading gzip ones.
    read -r src_port src_pid < <(bash "$root/tests/support/local-registry.sh" "$work/src-registry")
    "$surge" modelcar build "$work/model" --push "oci://127.0.0.1:$src_port/bench/model:none" \
      --layers "$layers" --compression none --insecure-registry "127.0.0.1:$src_port" > /dev/null 2>&1
    skopeo copy --src-tls-verify=false --dest-compress --dest-compress-format gzip \
      "docker://127.0.0.1:$src_port/bench/model:none" "dir:$work/gzipped" > /dev/null
    kill "$src_pid"
    skopeo copy --dest-tls-verify=false "dir:$work/gzipped" "docker://$image" > /dev/null
    rm -rf "$work/gzipped" "$work/src-registry"
  else
    "$surge" modelcar build "$work/model" --push "oci://$image" --layers "$layers" \
      --compression "$c" --insecure-registry "127.0.0.1:$port" > /dev/null 2>&1
  fi
  rm -rf "$work/cache" "$work/skopeo"
  # Each timing starts with the page cache written back, so that neither tool pays for
  # the other's (or the image build's) writes.
  sync
  start=$(date +%s.%N)
  "$surge" pull "oci://$image" --insecure-registry "127.0.0.1:$port" --cache-dir "$work/cache" > /dev/null 2>&1
  surge_s=$(echo "$(date +%s.%N) - $start" | bc)
  sync
  start=$(date +%s.%N)
  skopeo copy --src-tls-verify=false "docker://$image" "dir:$work/skopeo" > /dev/null
  skopeo_s=$(echo "$(date +%s.%N) - $start" | bc)
  printf '%-6s %-11s %5d MiB %d layers   surge pull %6.2f s   skopeo copy %6.2f s   skopeo/surge %.2fx\n' \
    "$weights" "$c" "$size" "$layers" "$surge_s" "$skopeo_s" "$(echo "$skopeo_s / $surge_s" | bc -l)"
done
