# Sourced by the project scripts: a Python venv with the reference tools (ONNX, ONNX
# Runtime) in .venv, created on first use.
QP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QP_VENV="${QP_VENV:-$QP_ROOT/.venv}"
if [ ! -x "$QP_VENV/bin/python" ] || ! "$QP_VENV/bin/python" -c "import numpy, onnx, onnxruntime, PIL, onnxscript" 2>/dev/null; then
  echo "== setting up the Python tools in $QP_VENV"
  python3 -m venv "$QP_VENV"
  "$QP_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$QP_ROOT/tools/requirements.txt"
fi
PY="$QP_VENV/bin/python"
export PY QP_ROOT
