# permgate: multi-stage build, runs as a non-root user, config mounted at /etc/permgate.
#
#   docker build -t permgate .
#   docker run --stop-timeout 15 -p 8080:8080 -p 9901:9901 -v "$PWD/config/demo:/etc/permgate:ro" permgate \
#       serve --config /etc/permgate/permgate.toml --listen 0.0.0.0:8080 --upstream crm.internal:80
#   docker run -p 8080:8080 permgate demo --listen 0.0.0.0:8080   # the self-contained demo
#
# The snapshot's persist_path (if set) must point into a writable volume, e.g. /var/lib/permgate.

# The default build needs only a C compiler (ring, mimalloc), which the rust image has; no cmake.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin permgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin permgate \
 && mkdir -p /var/lib/permgate && chown 10001:10001 /var/lib/permgate
COPY --from=build /src/target/release/permgate /usr/local/bin/permgate
COPY config/ /usr/share/permgate/config/
USER 10001:10001
VOLUME ["/var/lib/permgate"]
EXPOSE 8080 9901
# Healthy while the admin listener (admin.listen, here 0.0.0.0:9901 or 127.0.0.1:9901) answers
# /healthz; a config without [admin] should override this with `--no-healthcheck` or its own probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/permgate", "healthcheck", "--admin", "127.0.0.1:9901"]
ENTRYPOINT ["/usr/local/bin/permgate"]
CMD ["serve", "--config", "/etc/permgate/permgate.toml", "--listen", "0.0.0.0:8080"]
