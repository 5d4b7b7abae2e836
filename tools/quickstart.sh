#!/usr/bin/env bash
# The main job on the default model, from a fresh clone: build, make the default models,
# predict the SSIM of converting the sample logo with vtracer's default parameters, and
# ask the small feature model the same question from image statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build_default_models.sh
echo
echo "== qp-engine info weights/qualitynet.qpw"
target/release/qp-engine info weights/qualitynet.qpw
echo
echo "== qp-engine predict --image weights/sample_logo.png (vtracer defaults, color_precision=6)"
target/release/qp-engine predict --model weights/qualitynet.qpw --image weights/sample_logo.png -p color_precision=6
echo
echo "== qp-engine predict with the feature model"
target/release/qp-engine predict --model weights/qualitynet-features.qpw \
  -p edge_density=0.12 -p unique_colors=24 -p entropy=3.1 -p corner_density=0.05 \
  -p gradient_strength=0.2 -p complexity_score=0.3
