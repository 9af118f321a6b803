# Three stages over one shared build:
#   build     compiles both workspace binaries once (auth0-exporter and auth0-sim);
#   sim       `docker build --target sim`: a slim image holding only auth0-sim (for compose/tests);
#   runtime   the default (last) stage, the production image: only auth0-exporter, non-root.
# Plain `docker build` works (no BuildKit features); with BuildKit the sim stage is skipped
# when building the default target.

# Build stage. Dependencies first, from the manifests alone and stub sources, so that a change
# under src/ or sim/src/ rebuilds only the two workspace crates, not the ~300 dependencies.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY sim/Cargo.toml sim/
RUN mkdir -p src sim/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > sim/src/main.rs && touch sim/src/lib.rs \
 && cargo build --release --locked --workspace --bins \
 && rm -rf src sim/src
COPY sim/src ./sim/src
COPY src ./src
COPY migrations ./migrations
COPY config ./config
# COPY keeps the files' own mtimes, which may be older than the stubs' build: touch the crate
# roots so cargo rebuilds both workspace crates from the real sources.
RUN touch src/lib.rs src/main.rs sim/src/lib.rs sim/src/main.rs \
 && cargo build --release --locked --workspace --bins

# auth0-sim image (`--target sim`): the Management API simulator alone. No curl in the image,
# so its health check speaks HTTP/1.0 through bash's /dev/tcp.
FROM debian:bookworm-slim AS sim
RUN useradd --system --uid 10001 --no-create-home sim
COPY --from=build /src/target/release/auth0-sim /usr/local/bin/auth0-sim
USER 10001
ENV SIM_HOST=0.0.0.0 SIM_PORT=9000
EXPOSE 9000
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=5 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SIM_PORT} && printf 'GET /__sim/stats HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/auth0-sim"]

# Production image (default target): slim Debian, no toolchain, only auth0-exporter, non-root
# uid 10001. TLS roots are compiled in (webpki-roots), so no extra packages are needed.
FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home exporter
COPY --from=build /src/target/release/auth0-exporter /usr/local/bin/auth0-exporter
USER 10001
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/auth0-exporter", "healthcheck", "--url", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/auth0-exporter"]
CMD ["serve"]
