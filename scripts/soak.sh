#!/usr/bin/env bash
# Soak: many short calls through the gateway to its built-in `tone` line,
# with clients vanishing at random mid-setup and mid-call; fails unless
# /status is back to zero, the fd count back to the baseline and RSS near
# it afterwards (tests/src/soak.rs). Figures in docs/performance.md, "Soak".
#   scripts/soak.sh [calls] [concurrency] [drop-rate] [more soak flags...]
# Defaults: 10000 calls, 50 at once, 30 % dropped. More flags:
# --max-hold-ms N, --seed N, --max-rss-growth-mib N.
# DIALTONE_SOAK_PROFILE=debug runs the debug build (release by default).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_packages build-essential pkg-config libopus-dev libclang-dev clang
ensure_rust
CALLS=${1:-10000}
CONCURRENCY=${2:-50}
DROP_RATE=${3:-0.3}
shift $(($# < 3 ? $# : 3))
PROFILE=${DIALTONE_SOAK_PROFILE:-release}
case "$PROFILE" in
    release) PROFILE_FLAG=(--release) ;;
    debug) PROFILE_FLAG=() ;;
    *) echo "DIALTONE_SOAK_PROFILE must be release or debug" >&2; exit 2 ;;
esac
cargo build --locked "${PROFILE_FLAG[@]}" -p dialtone-gateway --bins
cargo build --locked "${PROFILE_FLAG[@]}" -p dialtone-tests --bin soak
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$PWD/$TARGET_DIR"
# The ready line and per-call lines only: the rig's default (debug) would
# write gigabytes over 10 000 calls.
export RUST_LOG=${RUST_LOG:-warn,dialtone=info}
DIALTONE_BIN="$TARGET_DIR/$PROFILE/dialtone" exec "$TARGET_DIR/$PROFILE/soak" \
    --calls "$CALLS" --concurrency "$CONCURRENCY" --drop-rate "$DROP_RATE" "$@"
