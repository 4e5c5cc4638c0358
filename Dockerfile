# catwalk runner image: what every Fly machine of a catwalk app runs.
#
# The machine config's init.cmd is `catwalk runner --listen 0.0.0.0:8080 --token-env CATWALK_BRIDGE_TOKEN
# [--pass-env NAME]...`: the runner reads the release plan from CATWALK_PLAN (plain machine env, never a
# secret), installs the pinned npm/PyPI package at boot with the same installer as the local runtime (or,
# for a release built from its repository, downloads its source once from the daemon with the one-time Fly
# secret CATWALK_SOURCE_TOKEN and builds it in /srv/catwalk/sources), then execs the Streamable HTTP bridge
# in front of it. The bridge requires the per-app credential in the Fly secret CATWALK_BRIDGE_TOKEN, which
# only the daemon knows.
#
# Build and push (see README "Fly.io"):
#   fly apps create catwalk-runner --org personal          # once: a registry namespace for the image
#   fly auth docker                                        # lets docker push to registry.fly.io
#   docker build -t registry.fly.io/catwalk-runner:0.1.0 .
#   docker push registry.fly.io/catwalk-runner:0.1.0
# then set `image = "registry.fly.io/catwalk-runner:0.1.0"` in [runtime.fly].

# ---- build the catwalk binary ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN cargo build --release --locked --bin catwalk && strip target/release/catwalk

# ---- runtime: Node 22 + Python 3 + catwalk ----
FROM node:22-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/catwalk /usr/local/bin/catwalk
# The server runs as an unprivileged user; installs go to /srv/catwalk (the runner's default dir).
RUN useradd --create-home --uid 10001 catwalk \
 && mkdir -p /srv/catwalk && chown catwalk:catwalk /srv/catwalk
USER catwalk
WORKDIR /home/catwalk
ENV CATWALK_RUNNER_DIR=/srv/catwalk \
    HOME=/home/catwalk \
    LANG=C.UTF-8
EXPOSE 8080
# tini reaps the server's children and forwards SIGTERM (Fly's stop signal) to the runner.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["catwalk", "runner", "--listen", "0.0.0.0:8080", "--token-env", "CATWALK_BRIDGE_TOKEN"]
