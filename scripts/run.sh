#!/usr/bin/env bash
# Builds and runs the gateway. Arguments go to the gateway (e.g. --config FILE).
# With none it serves on 127.0.0.1 (HTTP/WebSocket 8080, SIP 5060).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_packages build-essential pkg-config clang
ensure_rust
exec cargo run --release --locked -p dialtone-gateway --bin dialtone -- "$@"
