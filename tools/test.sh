#!/usr/bin/env bash
# The whole test suite, as CI runs it: Rust tests in release (built once), the full-size
# model against ONNX Runtime on every executor and tier (FP32, and INT8 within its
# accuracy budget), and the kernels and golden tests (INT8 included) under an emulated
# Haswell CPU (no AVX-512), proving the dispatcher never runs an instruction the CPU lacks.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$QP_ROOT"
export PROPTEST_CASES="${PROPTEST_CASES:-64}"

echo "== cargo test (release)"
cargo build --release --workspace --bins
cargo test --release --workspace

echo "== full-size QualityNet vs ONNX Runtime (batch 1 and 3)"
work="${QP_WORKDIR:-$QP_ROOT/target/compare-full}"
mkdir -p "$work"
for tier in scalar avx2 avx512; do
  echo "-- tier $tier"
  "$PY" tools/compare_full.py --tier $tier --qp-engine target/release/qp-engine --workdir "$work" --batch 1,3
done
echo "-- reference executor"
QP_REFERENCE=true "$PY" tools/compare_full.py --qp-engine target/release/qp-engine --workdir "$work" --batch 1

echo "== a model from another exporter (onnxscript) vs ONNX Runtime"
"$PY" tools/check_other_exporter.py --qp-engine target/release/qp-engine --workdir "$work/onnxscript"

need=()
command -v qemu-x86_64 >/dev/null || need+=(qemu-user)
command -v jq >/dev/null || need+=(jq)
[ -d /usr/share/icons/Adwaita ] || need+=(adwaita-icon-theme)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null
fi

echo "== full-size QualityNet in INT8 (calibrated on icons) vs ONNX Runtime FP32, every tier"
"$PY" tools/check_int8.py --qp-engine target/release/qp-engine --workdir "$work"

echo "== kernels and engine under qemu-x86_64 -cpu Haswell"
golden=$(cargo test --release --test golden --no-run --message-format=json 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null) | .executable')
CARGO_TARGET_DIR="$QP_ROOT/target" QEMU="$(command -v qemu-x86_64)" tools/qemu_haswell.sh -- "$golden" --test-threads=1
echo "all tests passed"
