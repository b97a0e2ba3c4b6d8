# syntax=docker/dockerfile:1
# streamforge: one image, one binary; the role is the command
# (serve | relay | project | notify | migrate). See docker-compose.yml.

# --- build ---------------------------------------------------------------------
FROM rust:1-bookworm AS build
# cmake builds rdkafka's bundled librdkafka (feature cmake-build); its CMake
# build includes <curl/curl.h> even with curl disabled, hence the curl headers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build outputs between image builds; the
# binary is copied out because the cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p streamforge --bin streamforge \
 && cp target/release/streamforge /usr/local/bin/streamforge

# --- runtime -------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin streamforge \
 && mkdir -p /app/var \
 && chown -R streamforge:streamforge /app
COPY --from=build /usr/local/bin/streamforge /usr/local/bin/streamforge
WORKDIR /app
USER streamforge
# Listen on all interfaces inside the container (the dev default is loopback).
ENV HTTP_ADDR=0.0.0.0:8080 \
    RUST_LOG=info
EXPOSE 8080
ENTRYPOINT ["streamforge"]
CMD ["serve"]
