#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ with libFuzzer's coverage instrumentation and runs each one.
#
# Usage: resources/fuzz.sh [--seconds N] [--seed N] [TARGET...]
#   --seconds N  how long each target runs (default 10)
#   --seed N     libFuzzer's seed (default: a new one each run); run-tests.sh passes one, so
#                that CI's short run repeats itself
#   TARGET       fuzz_targets/TARGET.rs (default: all of them)
# Exit status: 0 when no target crashed; 1 when one did (its input is kept in
# fuzz/artifacts/TARGET/, to be turned into a regression test); 2 on usage errors.
#
# The build uses the stable toolchain: the same coverage flags as `cargo fuzz`
# (SanitizerCoverage: inline 8-bit counters, PC table, compare tracing), without a sanitizer
# (which needs nightly; Rust code needs none for memory safety). Where a nightly toolchain is
# installed, `cargo +nightly fuzz run TARGET` in fuzz/ also works and adds AddressSanitizer.
# Each target starts from the seed corpus in fuzz/corpus/TARGET (committed) and keeps what it
# finds in target/fuzz/corpus/TARGET (not committed). A longer run: --seconds 600.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=10
seed=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
        --seed) seed=${2:?--seed needs a value}; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$seconds$seed" in ''|*[!0-9]*) echo "fuzz.sh: --seconds and --seed take whole numbers" >&2; exit 2 ;; esac
if [ ${#targets[@]} -eq 0 ]; then
    for f in "$repo"/fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$repo/target/fuzz"
# With --target, RUSTFLAGS reach only the target's code, not build scripts or proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
echo "==> building the fuzz targets (release, coverage-instrumented)" >&2
cargo build --release --locked --manifest-path "$repo/fuzz/Cargo.toml" --target "$triple" \
    --bins >&2

failed=()
for t in "${targets[@]}"; do
    bin="$CARGO_TARGET_DIR/$triple/release/$t"
    [ -x "$bin" ] || { echo "fuzz.sh: no fuzz target $t" >&2; exit 2; }
    corpus="$CARGO_TARGET_DIR/corpus/$t"
    artifacts="$repo/fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    seeds="$repo/fuzz/corpus/$t"
    [ -d "$seeds" ] || seeds=""
    echo "==> fuzzing $t for ${seconds}s" >&2
    # -rss_limit_mb and -timeout turn a leak or a hang into a reported failure.
    # -seed=0 lets libFuzzer pick one.
    if "$bin" -seed="$seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" ${seeds:+"$seeds"} \
        > "$CARGO_TARGET_DIR/$t.log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|new_units_added)' "$CARGO_TARGET_DIR/$t.log" \
            | sed "s/^/    $t: /" >&2 || true
    else
        echo "fuzz.sh: $t FAILED; the input is in $artifacts, the log says:" >&2
        tail -40 "$CARGO_TARGET_DIR/$t.log" >&2
        failed+=("$t")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, no crash" >&2
