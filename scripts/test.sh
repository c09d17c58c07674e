#!/usr/bin/env bash
# Installs every system package and peer the tests need, builds, and runs
# the whole test suite (unit tests and end-to-end tests against real peers).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_packages build-essential pkg-config libopus-dev libclang-dev kamailio baresip-core sip-tester sox python3-numpy espeak-ng \
    chromium iproute2 util-linux
# Node.js and npm run the browser driver (tests/browser). Debian ships them as `nodejs` + `npm`;
# a NodeSource `nodejs` bundles npm and conflicts with Debian's `npm`, so only install them
# when there is no npm at all.
if ! command -v npm >/dev/null 2>&1; then
    ensure_packages nodejs npm
fi
# playwright-core, pinned by tests/browser/package-lock.json; reinstalled when the lock changes.
if [ ! -f tests/browser/node_modules/.package-lock.json ] \
    || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
    (cd tests/browser && npm ci --no-audit --no-fund)
fi
ensure_rust
cargo build --locked --workspace --bins
cargo test --locked --workspace "$@"
