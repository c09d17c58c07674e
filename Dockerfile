# The Dialtone gateway as a container image.
#   docker build -t dialtone .
#   docker run --network host dialtone                       (defaults: 127.0.0.1, open mode)
#   docker run --network host -v ./my.toml:/etc/dialtone/dialtone.toml:ro dialtone
# Configuration: the TOML file at /etc/dialtone/dialtone.toml and DIALTONE_* variables
# (`docker run dialtone --help` lists them). Logs go to stderr (docker logs).
# SIGTERM (docker stop) drains: give the container a stop timeout longer than
# shutdown.drain_timeout_ms (docker stop -t 90, compose stop_grace_period).

# Build: Debian 12 with the toolchain the project is tested on.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus-dev libclang-dev clang pkg-config cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dialtone-gateway --bin dialtone

# Run: only the runtime libraries (libopus; the rest is linked in), as an unprivileged user.
FROM debian:12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus0 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin dialtone
COPY --from=build /src/target/release/dialtone /usr/local/bin/dialtone
COPY dialtone.example.toml /etc/dialtone/dialtone.example.toml
COPY deploy/dialtone/dialtone.toml /etc/dialtone/dialtone.toml
USER dialtone
ENV NO_COLOR=1
# HTTP + WebSocket, SIP (UDP and TCP), RTMP, and the default RTP range.
EXPOSE 8080/tcp 5060/udp 5060/tcp 1935/tcp 30000-39999/udp
# /health answers 503 while the gateway drains: the container turns unhealthy then, as it should.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS "http://${HEALTHCHECK_ADDRESS:-127.0.0.1:8080}/health" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dialtone"]
CMD ["--config", "/etc/dialtone/dialtone.toml"]
