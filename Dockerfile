# qp-engine serve: `docker build -t qp-engine .`, then `docker run -p 8080:8080 qp-engine`.
# Building, configuration, sizing and probes: docs/DEPLOYMENT.md.
#
# The base images are build arguments so that a builder without registry access can
# substitute local images with the same contents (tools/container_test.sh does that).
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- Build stage: release binaries and the default models ------------------------------
FROM ${RUST_IMAGE} AS build

# Python only generates the ONNX models (numpy + onnx); onnxruntime and the other
# development tools in tools/requirements.txt are not needed here.
# Debian package versions are pinned by the bookworm base image itself.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The versions weights/models.json records the reference hashes with.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir numpy==2.4.6 onnx==1.23.2

WORKDIR /src
# Dependencies first, so that source edits do not download the crates again.
COPY Cargo.toml Cargo.lock ./
COPY kernels/Cargo.toml kernels/
COPY kernels/benches kernels/benches
COPY benches benches
COPY examples examples
RUN mkdir -p src kernels/src \
 && touch src/lib.rs kernels/src/lib.rs \
 && cargo fetch --locked

COPY src src
COPY kernels/src kernels/src
# Generic x86-64 code: the kernels pick AVX2 or AVX-512 at run time from cpuid, so one
# binary serves every x86-64 host. An inherited target-cpu=native would break that.
ENV RUSTFLAGS="-C target-cpu=x86-64"
RUN cargo build --release --locked --offline --bins \
 && strip --strip-debug target/release/qp-engine target/release/qp-convert

COPY tools/qualitynet.py tools/feature_model.py tools/
RUN mkdir -p /models \
 && /opt/venv/bin/python tools/qualitynet.py /tmp/qualitynet.onnx \
 && /opt/venv/bin/python tools/feature_model.py /tmp/qualitynet-features.onnx \
 && target/release/qp-convert /tmp/qualitynet.onnx -o /models/qualitynet.qpw \
 && target/release/qp-convert /tmp/qualitynet-features.onnx -o /models/qualitynet-features.qpw \
 && rm /tmp/qualitynet.onnx /tmp/qualitynet-features.onnx \
 && target/release/qp-engine info /models/qualitynet.qpw \
 && target/release/qp-engine info /models/qualitynet-features.qpw

# ---- Runtime stage: the server binary and the two models, as a non-root user -----------
FROM ${RUNTIME_IMAGE}

RUN useradd --system --uid 10001 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin qp
COPY --from=build /src/target/release/qp-engine /usr/local/bin/qp-engine
# Owned by root and not writable by the server: the models are mapped read-only.
COPY --from=build /models /models

# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
ENV QP_HOST=0.0.0.0 \
    QP_PORT=8080 \
    QP_MODEL_DIR=/models \
    QP_LOG_FORMAT=json
EXPOSE 8080
# The probe is the binary itself (no curl in the image); it GETs /v2/health/ready on
# QP_PORT. A short interval makes a new container healthy within seconds of the server
# listening (the server only listens once the models are loaded).
HEALTHCHECK --interval=2s --timeout=2s --start-period=30s --retries=3 \
  CMD ["qp-engine", "healthcheck", "--timeout-ms", "1500"]
ENTRYPOINT ["qp-engine", "serve"]
