# syntax=docker/dockerfile:1
# bitnet-serve container images (see docs/deploy.md).
#
#   docker build -t bitnet-serve .                     # GPU image (default: the last stage)
#   docker build --target cpu -t bitnet-serve:cpu .    # CPU-only image for hosts without a GPU
#
# The build stages run the README's own set-up script (./setup.sh build), so CI,
# which runs ./setup.sh test, exercises exactly the steps that build the images.
# The runtime stages hold only the shared libraries bitnet-server and bitnet-cli
# load; tests/deploy/check_deploy.py (CTest deploy_dockerfile) checks that list
# against `ldd` of the binaries built here, and the stage structure (non-root
# USER, HEALTHCHECK, EXPOSE, ENTRYPOINT).
#
# Ports: 50051 gRPC (bitnet.v1 + grpc.health.v1), 9090 Prometheus /metrics.
# Volume: /models, the model repository (--model_repository); with no --models
# flag the server serves the embedded demo model as "demo".

ARG CUDA_VERSION=13.0.0

# ---------------------------------------------------------------- GPU build --
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY . .
# BUILD_DIR lies outside /src so that a build folder copied in from the host
# (with a CMakeCache.txt naming another source path) cannot break configure.
# BITNET_CUDA=ON: a GPU image without the CUDA backend is an error, not a
# silent CPU-only image.
RUN BITNET_CUDA=ON BUILD_DIR=/build ./setup.sh build \
 && mkdir -p /out \
 && cp /build/server/bitnet-server /build/client/bitnet-cli /out/

# ---------------------------------------------------------------- CPU build --
FROM debian:12-slim AS cpu-build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY . .
RUN BITNET_CUDA=OFF BUILD_DIR=/build ./setup.sh build \
 && mkdir -p /out \
 && cp /build/server/bitnet-server /build/client/bitnet-cli /out/

# ------------------------------------------------------------ CPU runtime ---
# Debian 12 package names (the same archive the CPU build stage used).
FROM debian:12-slim AS cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 \
      libcpp-httplib0.11 \
      libgrpc++1.51 \
      libgrpc29 \
      libprometheus-cpp-core1.0 \
      libprotobuf32 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 bitnet \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin bitnet \
 && mkdir -p /models \
 && chown 10001:10001 /models
COPY --from=cpu-build /out/ /usr/local/bin/
# Numeric UID:GID so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
VOLUME ["/models"]
EXPOSE 50051 9090
# `bitnet-cli health` exits 0 only when grpc.health.v1 reports SERVING for the
# whole server (every initial model loaded, not draining).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bitnet-cli", "--address=127.0.0.1:50051", "--timeout=2s", "health"]
ENTRYPOINT ["bitnet-server", "--model_repository=/models", "--device=cpu"]
CMD []

# ------------------------------------------------------------ GPU runtime ---
# Ubuntu 24.04 (noble) package names: the 64-bit time_t transition renamed
# most C++ libraries with a t64 suffix (libgrpc++1.51t64, libprotobuf32t64,
# libabsl20220623t64), cpp-httplib is 0.14 there (libcpp-httplib0.14t64, same
# API as 0.11 for what the server uses); prometheus-cpp kept its name. gRPC
# and cpp-httplib are in "universe", which the CUDA images enable.
# libcudart comes with this image; libcuda.so.1 from the host driver through
# the NVIDIA container toolkit (docker run --gpus all).
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS gpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623t64 \
      libcpp-httplib0.14t64 \
      libgrpc++1.51t64 \
      libgrpc29t64 \
      libprometheus-cpp-core1.0 \
      libprotobuf32t64 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 bitnet \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin bitnet \
 && mkdir -p /models \
 && chown 10001:10001 /models
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
VOLUME ["/models"]
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["bitnet-cli", "--address=127.0.0.1:50051", "--timeout=2s", "health"]
ENTRYPOINT ["bitnet-server", "--model_repository=/models"]
CMD []
