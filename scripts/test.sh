#!/usr/bin/env bash
# Installs every system package and peer the tests need, builds, and runs
# the whole test suite (unit tests and end-to-end tests against real peers).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_packages build-essential pkg-config libopus-dev libclang-dev clang kamailio kamailio-tls-modules baresip-core sip-tester sox python3-numpy espeak-ng \
    chromium iproute2 util-linux ffmpeg nginx libnginx-mod-rtmp python3-venv openssl ca-certificates python3-yaml dnsmasq-base
# The static ffmpeg of PyPI's imageio-ffmpeg (pinned; IMAGEIO_FFMPEG_VERSION in
# tests/src/ffmpeg.rs) publishes Opus over enhanced RTMP, which Debian's ffmpeg 5.1 refuses.
# Debian's python refuses system-wide pip installs, hence a venv under target/.
IMAGEIO_FFMPEG_VERSION=0.8.1
if ! target/tools/venv/bin/python -c "import imageio_ffmpeg, sys; sys.exit(imageio_ffmpeg.__version__ != '$IMAGEIO_FFMPEG_VERSION')" 2>/dev/null; then
    /usr/bin/python3 -m venv target/tools/venv
    target/tools/venv/bin/pip install --disable-pip-version-check --no-input -q "imageio-ffmpeg==$IMAGEIO_FFMPEG_VERSION"
fi
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
# Fuzzing (docs/security.md): a short run of every cargo-fuzz target, after
# the suite; DIALTONE_FUZZ_SECONDS per target (20 by default), 0 skips it.
if [ "${DIALTONE_FUZZ_SECONDS:-20}" != 0 ]; then
    scripts/fuzz.sh "${DIALTONE_FUZZ_SECONDS:-20}"
fi
