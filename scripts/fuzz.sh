#!/usr/bin/env bash
# Builds every cargo-fuzz target (<crate>/fuzz) and runs each for a while:
#   scripts/fuzz.sh [seconds-per-target] [target ...]
# 20 s each by default (the short run CI does); name targets to run only
# those. New inputs go to target/fuzz/corpus/<target>, starting from the
# committed seeds in <crate>/fuzz/seeds/<target>; a crash stops the script
# with its input in target/fuzz/artifacts/<target>/ (replay it with
# `cargo fuzz run --fuzz-dir <crate>/fuzz <target> <file>`). See
# docs/security.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_packages build-essential pkg-config libopus-dev libclang-dev clang
ensure_rust
SECONDS_PER_TARGET=${1:-20}
shift || true
ONLY=("$@")
FUZZ_CRATES=(ws sip rtmp codecs room)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi
# cargo-fuzz passes -Z flags (the sanitizer, coverage) that only nightly
# takes; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
# One target dir for all fuzz crates, so shared dependencies build once.
export CARGO_TARGET_DIR="$PWD/target/fuzz"
# Debug assertions: an arithmetic overflow on peer data is a finding.
FUZZ_FLAGS=(--debug-assertions)

wanted() {
    [ ${#ONLY[@]} -eq 0 ] && return 0
    local name
    for name in "${ONLY[@]}"; do [ "$name" = "$1" ] && return 0; done
    return 1
}

for crate in "${FUZZ_CRATES[@]}"; do
    fuzz_dir="$crate/fuzz"
    targets=()
    for target in $(cargo fuzz list --fuzz-dir "$fuzz_dir"); do
        wanted "$target" && targets+=("$target")
    done
    [ ${#targets[@]} -eq 0 ] && continue
    echo "== building $fuzz_dir"
    cargo fuzz build "${FUZZ_FLAGS[@]}" --fuzz-dir "$fuzz_dir"
    for target in "${targets[@]}"; do
        corpus="$CARGO_TARGET_DIR/corpus/$target"
        artifacts="$CARGO_TARGET_DIR/artifacts/$target"
        mkdir -p "$corpus" "$artifacts"
        seeds=()
        [ -d "$fuzz_dir/seeds/$target" ] && seeds+=("$fuzz_dir/seeds/$target")
        echo "== fuzzing $target for ${SECONDS_PER_TARGET}s"
        log="$CARGO_TARGET_DIR/logs/$target.log"
        mkdir -p "$(dirname "$log")"
        # One process (the machine is shared); a 10 s input counts as a hang.
        if ! cargo fuzz run "${FUZZ_FLAGS[@]}" --fuzz-dir "$fuzz_dir" "$target" "$corpus" "${seeds[@]}" -- \
            -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
            -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
            tail -n 60 "$log" >&2
            echo "fuzz target $target failed: its input is in $artifacts, the log in $log" >&2
            exit 1
        fi
        grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$log" | tr '\n' ' '
        echo
    done
done
echo "fuzzing done: every target ran ${SECONDS_PER_TARGET}s without a finding"
