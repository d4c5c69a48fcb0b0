# permgate: multi-stage build, runs as a non-root user, config mounted at /etc/permgate.
#
#   docker build -t permgate .
#   docker run -p 8080:8080 -v "$PWD/config/demo:/etc/permgate:ro" permgate \
#       serve --config /etc/permgate/permgate.toml --listen 0.0.0.0:8080 --upstream crm.internal:80
#   docker run -p 8080:8080 permgate demo --listen 0.0.0.0:8080   # the self-contained demo

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo fetch --locked
COPY . .
RUN cargo build --release --locked --bin permgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin permgate
COPY --from=build /src/target/release/permgate /usr/local/bin/permgate
COPY config/ /usr/share/permgate/config/
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/permgate"]
CMD ["serve", "--config", "/etc/permgate/permgate.toml", "--listen", "0.0.0.0:8080"]
