# syntax=docker/dockerfile:1
# Multi-stage image. The build stage runs the same set-up script as the README
# (./setup.sh build), so CI exercises exactly these steps.
#   docker build -t bitnet-serve .                      # GPU image (CUDA runtime)
#   docker build --target cpu -t bitnet-serve:cpu .     # CPU-only image

ARG CUDA_VERSION=13.0.0
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
WORKDIR /src
COPY . .
RUN BUILD_DIR=/src/build ./setup.sh build && \
    mkdir -p /out && cp build/server/bitnet-server build/client/bitnet-cli build/tools/bitnet-pack /out/

FROM debian:12-slim AS cpu-build
WORKDIR /src
COPY . .
RUN BITNET_CUDA=OFF BUILD_DIR=/src/build ./setup.sh build && \
    mkdir -p /out && cp build/server/bitnet-server build/client/bitnet-cli build/tools/bitnet-pack /out/

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS gpu
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51t64 libprotobuf32t64 libprometheus-cpp-core1.0 libcpp-httplib0.14 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 bitnet
COPY --from=build /out/ /usr/local/bin/
USER bitnet
VOLUME ["/models"]
EXPOSE 8500 9090
HEALTHCHECK --interval=10s --timeout=3s CMD ["bitnet-cli", "--address", "localhost:8500", "health"]
ENTRYPOINT ["bitnet-server", "--model_repository=/models"]

FROM debian:12-slim AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libprometheus-cpp-core1.0 libcpp-httplib0.11 libgomp1 \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 bitnet
COPY --from=cpu-build /out/ /usr/local/bin/
USER bitnet
VOLUME ["/models"]
EXPOSE 8500 9090
HEALTHCHECK --interval=10s --timeout=3s CMD ["bitnet-cli", "--address", "localhost:8500", "health"]
ENTRYPOINT ["bitnet-server", "--model_repository=/models", "--device=cpu"]
