#!/usr/bin/env bash
# Installs every system package and peer the tests need, builds, and runs
# the whole test suite (unit tests and end-to-end tests against real peers).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_packages build-essential pkg-config libopus-dev libclang-dev kamailio baresip-core sip-tester sox python3-numpy espeak-ng
ensure_rust
cargo build --locked --workspace --bins
cargo test --locked --workspace "$@"
