#!/usr/bin/env bash
# Bounded fuzz runs of every target (cargo-fuzz, libFuzzer), each starting from its
# committed corpus in fuzz/corpus/<target>; new inputs go to a temp dir, not the repo.
# A crash fails the run and leaves its input in fuzz/artifacts/<target>/: turn it into a
# regression test (a file in fuzz/corpus/<target>/ named regression-*, plus the fix).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, every target)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and the model cache of
# tests/support/fetch-models.sh (the Llama 3 tokenizer). libFuzzer's instrumentation
# needs unstable rustc flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-60}
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(request_validation chat_template model_headers oci_layer detokenizer)
fi
export RUSTC_BOOTSTRAP=1
cd "$here"
if ! cargo fuzz build --sanitizer none -O; then
    df -h . >&2 # a linker failing for lack of disk says little by itself
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    if ! cargo fuzz run --sanitizer none -O "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -malloc_limit_mb=2048 \
        -print_final_stats=1 > "$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz: $target ok, $runs executions in ${seconds}s"
done
