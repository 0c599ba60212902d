#!/usr/bin/env bash
# Offline engine throughput: N distinct prompts through `surge generate`, at several
# concurrencies (--max-num-seqs), for each model given. Prints output tok/s and step
# time percentiles. Usage: bench-generate.sh [NUM_PROMPTS] [MAX_TOKENS] [CONCURRENCIES...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${SURGE_MODEL_CACHE:-$root/.cache/models}
surge=${SURGE_BIN:-$root/target/release/surge}
num=${1:-32}
max_tokens=${2:-64}
shift $(( $# > 2 ? 2 : $# ))
concurrencies=("${@:-1 8 32}")
[ -x "$surge" ] || (cd "$root" && cargo build --release)
prompts=$(mktemp)
trap 'rm -f "$prompts"' EXIT
topics=(rivers mountains bread chess comets bees glass trains tea maps clocks kites owls salt ice jazz)
for i in $(seq 1 "$num"); do
  t=${topics[$(( i % ${#topics[@]} ))]}
  printf '{"prompt": "Essay %d. Write a long, detailed essay about %s, covering their history, science and role in daily life."}\n' "$i" "$t"
done > "$prompts"
for model in "$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$cache/smollm2-hf"; do
  for c in ${concurrencies[*]}; do
    line=$("$surge" generate --model "$model" --prompts-file "$prompts" --max-tokens "$max_tokens" \
      --ignore-eos --max-num-seqs "$c" 2>&1 >/dev/null | grep 'generation done')
    tps=$(grep -o 'output_tok_per_s=[0-9.]*' <<<"$line" | cut -d= -f2)
    p50=$(grep -o 'step_p50_ms=[0-9.]*' <<<"$line" | cut -d= -f2)
    p90=$(grep -o 'step_p90_ms=[0-9.]*' <<<"$line" | cut -d= -f2)
    printf '%-40s concurrency %-3s output %8.1f tok/s  step p50 %7.1f ms  p90 %7.1f ms\n' \
      "$(basename "$model")" "$c" "$tps" "$p50" "$p90"
  done
done
