#!/usr/bin/env python3
"""Convert-and-compare a model written by a different exporter than the fixtures: onnxscript.

onnxscript traces Python functions into ONNX with its own conventions (opset 18, weights as
graph initializers it names itself, Constant nodes for attributes-as-inputs, its own node
names, `Reshape` with a constant shape). The model is a small residual CNN + MLP head
with random weights. ONNX Runtime and qp run the same inputs; every output element must
agree within 1e-4 relative (floor 1e-3).

    python tools/check_other_exporter.py --qp-engine target/release/qp-engine --workdir DIR
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import onnx
from onnxscript import FLOAT, script
from onnxscript import opset18 as op

rng = np.random.default_rng(7)


def w(*shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    s = scale if scale is not None else np.sqrt(2.0 / fan_in)
    return (rng.standard_normal(shape) * s).astype(np.float32)


W1, B1 = w(12, 3, 3, 3), w(12, scale=0.1)
W2, B2 = w(12, 12, 3, 3), w(12, scale=0.1)
W3, B3 = w(12, 12, 3, 3), w(12, scale=0.1)
WD, BD = w(20, 12, 1, 1), w(20, scale=0.1)
G, BETA = rng.uniform(0.5, 1.5, 20).astype(np.float32), w(20, scale=0.1)
MEAN, VAR = w(20, scale=0.1), rng.uniform(0.5, 2.0, 20).astype(np.float32)
FC, FCB = w(20, 7), w(7, scale=0.1)  # MatMul weight [in, out]


@script()
def residual_net(image: FLOAT["N", 3, 17, 17]) -> FLOAT["N", 7]:
    x = op.Relu(op.Conv(image, op.Constant(value=onnx.numpy_helper.from_array(W1)),
                        op.Constant(value=onnx.numpy_helper.from_array(B1)), pads=[1, 1, 1, 1]))
    h = op.Relu(op.Conv(x, op.Constant(value=onnx.numpy_helper.from_array(W2)),
                        op.Constant(value=onnx.numpy_helper.from_array(B2)), pads=[1, 1, 1, 1]))
    h = op.Conv(h, op.Constant(value=onnx.numpy_helper.from_array(W3)),
                op.Constant(value=onnx.numpy_helper.from_array(B3)), pads=[1, 1, 1, 1])
    x = op.Relu(op.Add(x, h))
    x = op.MaxPool(x, kernel_shape=[2, 2], strides=[2, 2])
    y = op.Conv(x, op.Constant(value=onnx.numpy_helper.from_array(WD)),
                op.Constant(value=onnx.numpy_helper.from_array(BD)), strides=[2, 2])
    y = op.BatchNormalization(y, op.Constant(value=onnx.numpy_helper.from_array(G)),
                              op.Constant(value=onnx.numpy_helper.from_array(BETA)),
                              op.Constant(value=onnx.numpy_helper.from_array(MEAN)),
                              op.Constant(value=onnx.numpy_helper.from_array(VAR)), epsilon=1e-3)
    y = op.Relu(y)
    y = op.GlobalAveragePool(y)
    y = op.Reshape(y, op.Constant(value_ints=[0, -1]))
    y = op.Add(op.MatMul(y, op.Constant(value=onnx.numpy_helper.from_array(FC))),
               op.Constant(value=onnx.numpy_helper.from_array(FCB)))
    return op.Sigmoid(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qp-engine", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    model = residual_net.to_model_proto()
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(args.workdir, "onnxscript_net.onnx")
    onnx.save(model, path)
    ops = sorted({n.op_type for n in model.graph.node})
    print(f"onnxscript model: producer {model.producer_name!r} opset "
          f"{model.opset_import[0].version}, ops {ops}")

    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 3, 17, 17)).astype(np.float32)
    ref = sess.run(None, {"image": x})[0]
    np.save(os.path.join(args.workdir, "image.npy"), x)

    bindir = os.path.dirname(os.path.abspath(args.qp_engine))
    qpw = os.path.join(args.workdir, "onnxscript_net.qpw")
    subprocess.run([os.path.join(bindir, "qp-convert"), path, "-o", qpw], check=True)
    out = os.path.join(args.workdir, "qp")
    subprocess.run([args.qp_engine, "run", "--model", qpw, "--input",
                    f"image={os.path.join(args.workdir, 'image.npy')}", "--out", out], check=True)
    name = sess.get_outputs()[0].name
    got = np.load(os.path.join(out, f"{name}.npy"))
    err = np.abs(got.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1e-3)
    print(f"max rel err {err.max():.3e} over {ref.size} elements")
    if got.shape != ref.shape or err.max() > 1e-4:
        print("FAIL")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
