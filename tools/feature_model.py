#!/usr/bin/env python3
"""Write the small image-feature SSIM predictor as ONNX (numpy + onnx only, deterministic).

    features [N,6] (each normalised to [0,1] by the engine front)
      -> Gemm 6->64 -> ReLU -> Gemm 64->32 -> ReLU -> Gemm 32->1 -> Sigmoid
      -> predicted_ssim [N,1]

The weights are synthetic, not trained. They are constructed so that the prediction is
plausible: every feature measures how hard an image is to vectorise, and the network is
monotone non-increasing in each of them (the first two layers have non-negative weights,
the last layer non-positive ones), so more edges / colours / complexity never raise the
predicted SSIM. The last layer is scaled so that the all-zeros corner of the feature box
predicts ~0.98 and the all-ones corner 0.5; by monotonicity every prediction over the
box lies between the two.

Usage:
    python tools/feature_model.py OUT.onnx [--seed 0] [--verify]
"""
import argparse
import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (name, min, max, description, relative weight of the feature in the prediction)
FEATURES = [
    ("edge_density", 0.0, 1.0, "fraction of pixels on an edge", 1.0),
    ("unique_colors", 2.0, 256.0, "number of distinct colours after quantisation", 0.8),
    ("entropy", 0.0, 8.0, "Shannon entropy of the grey-level histogram, bits", 0.6),
    ("corner_density", 0.0, 1.0, "fraction of pixels detected as corners", 0.5),
    ("gradient_strength", 0.0, 1.0, "mean gradient magnitude, normalised", 0.4),
    ("complexity_score", 0.0, 1.0, "combined complexity estimate", 1.0),
]
HIDDEN = (64, 32)
SSIM_AT_EASIEST = 0.98  # all features at their minimum
SSIM_AT_HARDEST = 0.5  # all features at their maximum


def round_mantissa(values, bits=16):
    """Round float32 values to `bits` mantissa bits so the file does not depend on BLAS rounding."""
    raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    drop = 23 - bits
    raw = ((raw + (1 << (drop - 1))) >> drop) << drop
    return raw.astype(np.uint32).view(np.float32)


def logit(p):
    return float(np.log(p / (1.0 - p)))


def make_weights(seed):
    """Return [(W [out,in], b [out])] for the three Gemms."""
    rng = np.random.default_rng(seed)
    importance = np.array([f[4] for f in FEATURES])
    w1 = rng.uniform(0.2, 1.0, (HIDDEN[0], len(FEATURES))) * importance
    # Thresholds spread over the box switch units on at different points: the non-linearity.
    b1 = rng.uniform(-0.3, 0.1, HIDDEN[0]) * w1.sum(axis=1)
    w2 = rng.uniform(0.0, 1.0, (HIDDEN[1], HIDDEN[0])) / np.sqrt(HIDDEN[0])
    b2 = rng.normal(0.0, 0.05, HIDDEN[1])
    w3 = -rng.uniform(0.5, 1.0, (1, HIDDEN[1]))

    def hidden(x):
        h = np.maximum(x @ w1.T + b1, 0.0)
        return np.maximum(h @ w2.T + b2, 0.0)

    raw_easiest = float(hidden(np.zeros((1, len(FEATURES))))[0] @ w3[0])
    raw_hardest = float(hidden(np.ones((1, len(FEATURES))))[0] @ w3[0])
    scale = (logit(SSIM_AT_EASIEST) - logit(SSIM_AT_HARDEST)) / (raw_easiest - raw_hardest)
    w3 = w3 * scale
    b3 = np.array([logit(SSIM_AT_EASIEST) - raw_easiest * scale])
    return [(round_mantissa(w), round_mantissa(b)) for w, b in ((w1, b1), (w2, b2), (w3, b3))]


def metadata():
    features = [{"name": name, "min": lo, "max": hi, "default": None, "description": desc, "normalize": True}
                for name, lo, hi, desc, _ in FEATURES]
    return {
        "qp.description": ("Image-feature SSIM predictor: 6 image statistics -> MLP 64-32-1 -> sigmoid "
                           "(synthetic fixed-seed weights, not trained)"),
        "qp.features.features": json.dumps(features),
    }


def build(seed=0, opset=17):
    nodes, inits = [], []
    current = "features"
    for i, (w, b) in enumerate(make_weights(seed), start=1):
        fc = f"fc{i}"
        inits += [numpy_helper.from_array(w, fc + ".weight"), numpy_helper.from_array(b, fc + ".bias")]
        nodes.append(helper.make_node("Gemm", [current, fc + ".weight", fc + ".bias"], [fc], name=fc, transB=1))
        current = fc
        if i < 3:
            nodes.append(helper.make_node("Relu", [current], [fc + ".relu"], name=fc + ".relu"))
            current = fc + ".relu"
    nodes.append(helper.make_node("Sigmoid", [current], ["predicted_ssim"], name="sigmoid"))
    graph = helper.make_graph(
        nodes, "feature_model",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info("predicted_ssim", TensorProto.FLOAT, ["N", 1])],
        initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="qp tools/feature_model.py",
                              producer_version="1")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    model.doc_string = f"feature SSIM predictor seed={seed}"
    helper.set_model_props(model, metadata())
    return model


def verify(path, seed=11):
    """Predictions over the feature box: finite, inside [~0.5, ~0.98], monotone in each feature."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).uniform(0, 1, (256, len(FEATURES))).astype(np.float32)
    corners = np.array([np.zeros(len(FEATURES)), np.ones(len(FEATURES))], dtype=np.float32)
    y = session.run(None, {"features": np.concatenate([x, corners])})[0].ravel()
    ok = bool(np.isfinite(y).all() and y.min() >= SSIM_AT_HARDEST - 1e-3 and y.max() <= SSIM_AT_EASIEST + 1e-3)
    bumped_ok = True
    for i, (name, *_rest) in enumerate(FEATURES):
        bumped = x.copy()
        bumped[:, i] = np.minimum(bumped[:, i] + 0.25, 1.0)
        y_bumped = session.run(None, {"features": bumped})[0].ravel()
        bumped_ok &= bool((y_bumped <= y[:256] + 1e-6).all())
        print(f"  raising {name:18s} by 0.25 lowers the prediction by {float((y[:256] - y_bumped).mean()):.4f} on average")
    print(f"predictions: min {y.min():.4f} max {y.max():.4f} mean {y.mean():.4f}; "
          f"easiest corner {y[-2]:.4f}, hardest corner {y[-1]:.4f}")
    ok &= bumped_ok
    print("verify:", "OK" if ok else "FAILED")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output .onnx path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true", help="check the written model with onnxruntime")
    args = ap.parse_args(argv)
    model = build(seed=args.seed)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, args.out)
    print(f"wrote {args.out}")
    if args.verify and not verify(args.out):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
