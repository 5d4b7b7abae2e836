#!/usr/bin/env bash
# Builds the bundled default models into weights/: the ONNX files from their deterministic
# generators, then the .qpw files the engine and the server load.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$QP_ROOT"
cargo build --release --bins
mkdir -p weights
[ -f weights/qualitynet.onnx ] || "$PY" tools/qualitynet.py weights/qualitynet.onnx
[ -f weights/qualitynet-features.onnx ] || "$PY" tools/feature_model.py weights/qualitynet-features.onnx
target/release/qp-convert weights/qualitynet.onnx -o weights/qualitynet.qpw
target/release/qp-convert weights/qualitynet-features.onnx -o weights/qualitynet-features.qpw
