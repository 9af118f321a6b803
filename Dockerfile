# Build stage: the workspace's two binaries, auth0-exporter and auth0-sim.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY sim ./sim
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked --workspace --bins

# Runtime stage: slim Debian, no toolchain, non-root. TLS roots are compiled in (webpki-roots),
# so no extra packages are needed.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home exporter
COPY --from=build /src/target/release/auth0-exporter /src/target/release/auth0-sim /usr/local/bin/
USER 10001
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/auth0-exporter", "healthcheck", "--url", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/auth0-exporter"]
CMD ["serve"]
