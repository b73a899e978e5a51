# herald: one image, one binary, every subcommand (operator, agent, run, demo,
# crd, sandbox, client commands). Build: docker build -t herald .
#
# Stages:
#   skeleton  reduces the source tree to manifests plus empty target roots, so
#             the dependency layer below is rebuilt only when Cargo.toml or
#             Cargo.lock change (or a target is added), not on every edit;
#   builder   compiles the dependencies once from the skeleton, then herald;
#   runtime   distroless, non-root, the binary and nothing else.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS skeleton
WORKDIR /src
COPY . .
# Keep only what cargo needs to resolve and compile the dependency graph:
# the manifests, and a stub for each target root the manifest names (cargo
# refuses a manifest whose declared targets have no file). Auto-discovered
# tests/benches/examples are left out, so adding one keeps the cache. Stubs do
# not depend on source content, so COPY --from=skeleton hits the cache after
# any code edit.
RUN set -eu; \
    mkdir -p /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    declared="$(sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' Cargo.toml)"; \
    for f in src/main.rs src/lib.rs build.rs $declared \
             src/bin/*.rs tests/*.rs benches/*.rs examples/*.rs; do \
        [ -f "$f" ] || continue; \
        case " src/main.rs src/lib.rs build.rs $declared " in \
            *" $f "*) ;; \
            *) grep -Eq "^[[:space:]]*name[[:space:]]*=[[:space:]]*\"$(basename "$f" .rs)\"" Cargo.toml \
                   || continue ;; \
        esac; \
        mkdir -p "/skeleton/$(dirname "$f")"; \
        if [ "$f" = src/lib.rs ]; then : > "/skeleton/$f"; \
        else echo 'fn main() {}' > "/skeleton/$f"; fi; \
    done

FROM ${RUST_IMAGE} AS builder
# Cargo features, comma-separated; e.g. --build-arg FEATURES=otel for
# OpenTelemetry tracing (docs/tracing.md). Empty: the default build.
ARG FEATURES=""
WORKDIR /src
COPY --from=skeleton /skeleton/ ./
# Dependency layer: everything in Cargo.lock compiled for the release profile.
# The stubbed herald artefacts are removed: the real sources copied next keep
# their own mtimes, often older than the stub build, and cargo would otherwise
# take the stub binary for up to date.
RUN cargo build --release --locked --bin herald --features "${FEATURES}" \
    && rm -rf target/release/herald target/release/deps/herald-* \
              target/release/deps/libherald-* target/release/.fingerprint/herald-* \
              target/release/build/herald-*
COPY . .
# /out is laid out as the runtime root: the binary, and an empty data dir for
# the embedded queue owned by the runtime user (distroless has no shell to
# mkdir/chown with).
RUN cargo build --release --locked --bin herald --features "${FEATURES}" \
    && mkdir -p /out/var/lib/herald \
    && cp target/release/herald /out/herald \
    && test -n "$(/out/herald --version)"

# The binary is built for x86_64-unknown-linux-gnu and links glibc (and
# libgcc_s for unwinding) dynamically. distroless/cc-debian12 ships exactly
# those libraries from Debian 12, the same release as the bookworm builder, so
# the glibc the binary was linked against is the one it runs on. It also ships
# the Mozilla CA bundle at /etc/ssl/certs/ca-certificates.crt (Telegram,
# webhooks and the Kubernetes API are reached over rustls) and tzdata, and has
# no shell or package manager. static/scratch would need a musl build.
FROM ${RUNTIME_IMAGE} AS runtime

ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="herald" \
      org.opencontainers.image.description="Durable, rate-limit-safe chat message delivery: a Kubernetes operator and a delivery agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"

# rustls' native-roots loader reads this first instead of probing paths.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

COPY --from=builder --chown=65532:65532 /out/var/lib/herald /var/lib/herald
COPY --from=builder /out/herald /herald

# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /var/lib/herald
ENTRYPOINT ["/herald"]
CMD ["--help"]
