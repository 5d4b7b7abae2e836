#!/usr/bin/env python3
"""Where INT8 error comes from: simulated quantization of QualityNet in ONNX Runtime.

    python tools/int8_error_budget.py MODEL_FOLDED.onnx [--icons DIR] [--workdir DIR]

MODEL_FOLDED.onnx is QualityNet with BatchNorm folded into the convolutions
(`python tools/qualitynet.py OUT.onnx --fold-bn`), so that its conv weights are the ones
qp quantizes. Icons (default: Debian's Adwaita set, 256x256 and 96x96) are flattened over
white, resized to 224 and normalised as the model's metadata says; three of every four
calibrate, the fourth is held out with 32 pseudo-images. Every variant below is the FP32
graph with some tensors replaced by their quantized values (fake quantization: round to
the grid, then back to f32), run by ONNX Runtime and compared with the FP32 model's
`ssim` on the held-out samples:

  - weights: per-output-channel symmetric s8 (`max|w| / 127`), nearest or GPTQ rounding
    (the converter's `src/quant/gptq.rs`, here in numpy: the same damping and order);
  - activations: every conv input except the model input (the stem stays FP32, as in
    the default profile), u8 on [0, hi] with `hi` the MSE-optimal clip; by group (block
    inputs = the residual stream a bottleneck reads; inner = the inputs of conv2 and
    conv3); at 8, 10 and 12 bits; read by the convolutions only, or by every reader (the
    residual adds too, as qp stores a block output once, as u8);
  - both, with layer1 and layer2.0's shortcut (the layers whose weights lose most to s8
    rounding) kept f32.

No qp code runs here: this separates the error sources, which the converter's own
report (`qp-convert --precision int8`) can only show combined. About 15 minutes on 2 cores.

--fp16-layers instead rounds each conv and Gemm layer's weights alone to f16 (nearest),
then all of them at once, and prints each one's `ssim` delta on the same held-out
samples: where an f16 file's error comes from (about 6 minutes on 2 cores).
"""
import argparse
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qualitynet  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
DAMPING = 0.01
BLOCK = 128


def load_icon(path):
    from PIL import Image

    im = Image.open(path).convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(white, im).convert("RGB").resize((224, 224), Image.BILINEAR)
    return ((np.asarray(im, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)


def dataset(icons):
    files = []
    for size in ("256x256", "96x96"):
        files += sorted(glob.glob(os.path.join(icons, size, "**", "*.png"), recursive=True))
    if not files:
        sys.exit(f"no PNG icons under {icons}/256x256 or {icons}/96x96")
    rng = np.random.default_rng(5)
    pick = rng.permutation(len(files))[:112]
    images = np.stack([load_icon(files[i]) for i in pick])
    params = rng.uniform(0, 1, (len(images), 8)).astype(np.float32)
    calibrate = np.arange(len(images)) % 4 != 3
    pseudo, pseudo_params = qualitynet.random_inputs(np.random.default_rng(9), 32, 224)
    return (images[calibrate], params[calibrate],
            np.concatenate([images[~calibrate], pseudo]), np.concatenate([params[~calibrate], pseudo_params]))


def run(model, images, params, outputs=None, batch=8):
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    parts = [session.run(outputs, {"image": images[i:i + batch], "params": params[i:i + batch]})
             for i in range(0, len(images), batch)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def with_outputs(model, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def attr(node, name, default):
    return next((list(a.ints) for a in node.attribute if a.name == name), default)


def im2col(x, k, stride, pad):
    """Rows of (cin, kh, kw) patches, the order of a flattened OIHW weight row."""
    n, c, h, w = x.shape
    if k == 1:
        return x[:, :, ::stride, ::stride].transpose(0, 2, 3, 1).reshape(-1, c)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = np.empty((n, ho, wo, c, k, k), np.float32)
    for i in range(k):
        for j in range(k):
            cols[..., i, j] = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride].transpose(0, 2, 3, 1)
    return cols.reshape(-1, c * k * k)


def gptq(weights, h, qmax=127):
    w = weights.astype(np.float64).copy()
    cols = w.shape[1]
    h = h.copy()
    mean_diag = np.mean(np.diag(h))
    dead = np.diag(h) == 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = mean_diag
    h += DAMPING * mean_diag * np.eye(cols)
    step = np.abs(w).max(1) / qmax
    step[step == 0] = 1
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros_like(w)
    for b0 in range(0, cols, BLOCK):
        b1 = min(b0 + BLOCK, cols)
        err = np.zeros((w.shape[0], b1 - b0))
        for i in range(b0, b1):
            q[:, i] = np.clip(np.round(w[:, i] / step), -qmax, qmax) * step
            err[:, i - b0] = (w[:, i] - q[:, i]) / u[i, i]
            w[:, i:b1] -= np.outer(err[:, i - b0], u[i, i:b1])
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return q


def nearest(weights, qmax=127):
    step = np.abs(weights).max(1, keepdims=True) / qmax
    step[step == 0] = 1
    return np.clip(np.round(weights / step), -qmax, qmax) * step


def quantize_weights(model, convs, rounding, moments=None):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    for c in convs:
        t = inits[c.input[1]]
        w = numpy_helper.to_array(t)
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        q = gptq(flat, moments[c.name]) if rounding == "gptq" else nearest(flat)
        t.CopyFrom(numpy_helper.from_array(q.reshape(w.shape).astype(np.float32), t.name))
    return m


def mse_clip(values, top, levels):
    best = (np.inf, top)
    for f in np.linspace(0.15, 1.0, 60):
        step = top * f / levels
        e = np.mean((np.clip(np.round(values / step), 0, levels) * step - values) ** 2)
        best = min(best, (e, top * f))
    return best[1]


def quantize_activations(model, clips, bits, only=None, every_reader=False):
    """Fake-quantizes the tensors in `clips` (name -> clip) on [0, clip] with 2^bits levels."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    levels = 2 ** bits - 1
    chosen = {n: c for n, c in clips.items() if only is None or n in only}
    after = {}
    for name, clip in chosen.items():
        s, lo, hi = name + ".fq_step", name + ".fq_lo", name + ".fq_hi"
        m.graph.initializer.extend([numpy_helper.from_array(np.array(clip / levels, np.float32), s),
                                    numpy_helper.from_array(np.array(0, np.float32), lo),
                                    numpy_helper.from_array(np.array(levels, np.float32), hi)])
        after[name] = [helper.make_node("Div", [name, s], [name + ".fq_a"]),
                       helper.make_node("Round", [name + ".fq_a"], [name + ".fq_b"]),
                       helper.make_node("Clip", [name + ".fq_b", lo, hi], [name + ".fq_c"]),
                       helper.make_node("Mul", [name + ".fq_c", s], [name + ".fq"])]
    nodes = list(m.graph.node)
    for n in nodes:
        if n.op_type == "Conv" or every_reader:
            for k, x in enumerate(n.input):
                if x in chosen and (n.op_type != "Conv" or k == 0):
                    n.input[k] = x + ".fq"
    del m.graph.node[:]
    for n in nodes:
        m.graph.node.append(n)
        for o in n.output:
            m.graph.node.extend(after.get(o, []))
    return m


def fp16_layers(model, ref, images, params):
    """Each layer's weights alone rounded to f16, then all of them: squared `ssim` deltas."""
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]

    def rounded(names):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        inits = {i.name: i for i in m.graph.initializer}
        for n in m.graph.node:
            if n.name in names:
                t = inits[n.input[1]]
                w = numpy_helper.to_array(t)
                t.CopyFrom(numpy_helper.from_array(w.astype(np.float16).astype(np.float32), t.name))
        return m

    def report(label, m):
        d = run(m, images, params)[0] - ref
        print(f"{label:34s} mean |d| {np.abs(d).mean():.5f}  max {np.abs(d).max():.5f}  "
              f"mean d^2 {np.mean(d ** 2):.3e}", flush=True)

    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    for n in layers:
        report(f"{n.name} ({sizes[n.input[1]]} weights)", rounded({n.name}))
    report("all layers", rounded({n.name for n in layers}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--icons", default="/usr/share/icons/Adwaita")
    ap.add_argument("--fp16-layers", action="store_true", help="each layer's f16 rounding alone instead")
    args = ap.parse_args()

    model = onnx.load(args.model)
    if any(n.op_type == "BatchNormalization" for n in model.graph.node):
        sys.exit("fold BatchNorm first: python tools/qualitynet.py OUT.onnx --fold-bn")
    cal_img, cal_p, ho_img, ho_p = dataset(args.icons)
    ref = run(model, ho_img, ho_p)[0]
    print(f"{len(cal_img)} calibration icons, {len(ho_img)} held out (of them 32 pseudo-images); "
          f"FP32 ssim std {ref.std():.3f}")
    if args.fp16_layers:
        fp16_layers(model, ref, ho_img, ho_p)
        return

    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] != "image"]
    inputs = sorted({c.input[0] for c in convs})
    readers = {name: [c.name for c in convs if c.input[0] == name] for name in inputs}
    block_in = {n for n, r in readers.items() if any(x.endswith("conv1") for x in r)}
    inner = set(inputs) - block_in

    # Activation clips and input moments over the first 48 calibration icons.
    observed = with_outputs(model, inputs)
    rng = np.random.default_rng(0)
    samples = {n: [] for n in inputs}
    peak = {n: 0.0 for n in inputs}
    moments = {c.name: 0 for c in convs}
    count = {c.name: 0 for c in convs}
    for i in range(0, 48, 4):
        values = dict(zip(inputs, run(observed, cal_img[i:i + 4], cal_p[i:i + 4], inputs)))
        for n, v in values.items():
            peak[n] = max(peak[n], float(v.max()))
            samples[n].append(rng.choice(v.ravel(), 25000))
        for c in convs:
            x = im2col(values[c.input[0]], attr(c, "kernel_shape", [1])[0], attr(c, "strides", [1])[0],
                       attr(c, "pads", [0])[0])
            moments[c.name] = moments[c.name] + (x.T @ x).astype(np.float64)
            count[c.name] += len(x)
    moments = {k: v / count[k] for k, v in moments.items()}
    samples = {n: np.concatenate(v) for n, v in samples.items()}
    clip8 = {n: mse_clip(samples[n], peak[n], 255) for n in inputs}
    clip10 = {n: mse_clip(samples[n], peak[n], 1023) for n in inputs}
    clip12 = {n: mse_clip(samples[n], peak[n], 4095) for n in inputs}

    def report(label, model):
        got = run(model, ho_img, ho_p)[0]
        d = np.abs(got - ref).ravel()
        r = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
        print(f"{label:52s} mean |d| {d.mean():.4f}  p99 {np.quantile(d, 0.99):.4f}  "
              f"r {r:.4f}  signed {np.mean(got - ref):+.4f}", flush=True)

    w_nearest = quantize_weights(model, convs, "nearest")
    w_gptq = quantize_weights(model, convs, "gptq", moments)
    report("weights s8 nearest (activations f32)", w_nearest)
    report("weights s8 gptq (activations f32)", w_gptq)
    report("activations u8, all conv inputs (weights f32)", quantize_activations(model, clip8, 8))
    report("activations u8, block inputs only", quantize_activations(model, clip8, 8, block_in))
    report("activations u8, inner (conv2/conv3 inputs) only", quantize_activations(model, clip8, 8, inner))
    report("activations 10-bit, all conv inputs", quantize_activations(model, clip10, 10))
    report("weights nearest + activations u8", quantize_activations(w_nearest, clip8, 8))
    report("weights gptq + activations u8", quantize_activations(w_gptq, clip8, 8))
    report("weights gptq + activations u8, residual adds too",
           quantize_activations(w_gptq, clip8, 8, every_reader=True))
    report("weights gptq + activations u8 inner, block inputs f32", quantize_activations(w_gptq, clip8, 8, inner))
    # What a wider-activation INT8 path would reach: 10 or 12 bits (what s16 activations
    # under `vpmaddwd` / `vpdpwssd` hold without overflowing i32 on 3x3x512 reductions),
    # with and without the layers whose weights lose most to s8 (layer1 and layer2.0's
    # shortcut, as for f16) kept f32.
    report("weights gptq + activations 10-bit", quantize_activations(w_gptq, clip10, 10))
    report("weights gptq + activations 12-bit", quantize_activations(w_gptq, clip12, 12))
    kept = [c for c in convs if not c.name.startswith("layer1.") and c.name != "layer2.0.downsample"]
    w_kept = quantize_weights(model, kept, "gptq", moments)
    report("weights gptq, layer1 + layer2.0.downsample f32", w_kept)
    report("... + activations u8", quantize_activations(w_kept, clip8, 8))
    report("... + activations 10-bit", quantize_activations(w_kept, clip10, 10))
    report("... + activations 12-bit", quantize_activations(w_kept, clip12, 12))
    report("... + activations 12-bit for block inputs, u8 inner",
           quantize_activations(quantize_activations(w_kept, clip12, 12, block_in), clip8, 8, inner))


if __name__ == "__main__":
    main()
