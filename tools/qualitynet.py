#!/usr/bin/env python3
"""Write QualityNet, qp's default model, as ONNX (numpy + onnx only, deterministic).

Topology: ResNet-50 v1.5 in the torchvision layout (the stride of a downsampling
bottleneck sits on its 3x3 conv):

    image  [N,3,224,224] -> Conv7x7/2 -> BN -> ReLU -> MaxPool3x3/2 pad 1
           -> layer1..layer4: [3,4,6,3] bottlenecks, widths [64,128,256,512], expansion 4
           -> GlobalAveragePool -> Flatten                     = features [N,2048]
    params [N,8] -> Concat(features, params) [N,2056]
           -> Gemm 512 -> ReLU -> Gemm 256 -> ReLU -> Gemm 1 -> Sigmoid = ssim [N,1]

--tiny keeps the topology with a 32x32 input and every width divided by 8
(256 features, head 264 -> 64 -> 32 -> 1).

The weights are synthetic: a fixed-seed numpy generator, not training. Convolutions are
He-normal; each BatchNormalization gets running statistics measured by a small float32
numpy forward pass over pseudo-images (see `random_inputs`), so activations stay in a
sane range at every depth. The statistics are rounded to 10 mantissa bits so that
summation-order differences between BLAS builds almost never change the written bytes.
The last Gemm is rescaled so the logit over the calibration set has mean ~0.8 and
std ~0.75: outputs vary with the input and stay far from 0 and 1.

The ONNX file carries `metadata_props` that qp-convert reads: `qp.description`,
`qp.features.params` (the eight vtracer conversion parameters) and `qp.image.image`
(the image preprocessing).

Usage:
    python tools/qualitynet.py OUT.onnx [--tiny] [--opset 17] [--fold-bn] [--batch N]
                                        [--seed 0] [--verify]
"""
import argparse
import json
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BN_EPSILON = 1e-5
# Pseudo-images in the numpy calibration pass; the full-size pass dominates the run time.
CALIBRATION_IMAGES = {"full": 16, "tiny": 128}
STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # (blocks, width, first stride)
EXPANSION = 4

# The vtracer options the model is conditioned on, in `params` input order.
# Ranges follow vtracer's documented/accepted values; `normalize` means clients send the
# raw value and the engine front feeds (v - min) / (max - min).
VTRACER_PARAMS = [
    {"name": "filter_speckle", "min": 0, "max": 128, "default": 4,
     "description": "discard patches smaller than this many pixels"},
    {"name": "color_precision", "min": 1, "max": 8, "default": 6,
     "description": "significant bits per RGB channel"},
    {"name": "layer_difference", "min": 0, "max": 255, "default": 16,
     "description": "color difference between gradient layers"},
    {"name": "corner_threshold", "min": 0, "max": 180, "default": 60,
     "description": "minimum momentary angle (degrees) to count as a corner"},
    {"name": "length_threshold", "min": 3.5, "max": 10.0, "default": 4.0,
     "description": "segments shorter than this are merged when smoothing"},
    {"name": "max_iterations", "min": 1, "max": 20, "default": 10,
     "description": "curve fitting iterations"},
    {"name": "splice_threshold", "min": 0, "max": 180, "default": 45,
     "description": "minimum angle displacement (degrees) to splice a spline"},
    {"name": "path_precision", "min": 1, "max": 10, "default": 8,
     "description": "decimal places in SVG path coordinates"},
]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def random_inputs(rng, n, hw, n_params=8):
    """Deterministic pseudo-inputs: (image [n,3,H,W] f32, params [n,n_params] f32).

    `hw` is the side of a square image or an (H, W) pair.
    Each image mixes a blocky low-frequency pattern (about 14x14 cells) with white noise
    and is standardised per image to roughly N(0,1), then given a small random gain and
    offset: the statistics of an ImageNet-normalised photo, different from image to image.
    params are U(0,1), i.e. already-normalised conversion settings.
    """
    height, width = (hw, hw) if np.isscalar(hw) else hw
    cell = max(min(height, width) // 14, 1)
    coarse = rng.standard_normal((n, 3, -(-height // cell), -(-width // cell)))
    coarse = coarse.repeat(cell, axis=2).repeat(cell, axis=3)[:, :, :height, :width]
    noise = rng.standard_normal((n, 3, height, width))
    mix_coarse = rng.uniform(0.2, 1.0, size=(n, 1, 1, 1))
    mix_noise = rng.uniform(0.2, 1.0, size=(n, 1, 1, 1))
    img = mix_coarse * coarse + mix_noise * noise
    img = (img - img.mean(axis=(1, 2, 3), keepdims=True)) / img.std(axis=(1, 2, 3), keepdims=True)
    gain = rng.uniform(0.7, 1.3, size=(n, 1, 1, 1))
    offset = rng.normal(0.0, 0.3, size=(n, 1, 1, 1))
    img = img * gain + offset
    params = rng.uniform(0.0, 1.0, size=(n, n_params))
    return img.astype(np.float32), params.astype(np.float32)


def round_mantissa(values, bits):
    """Round float32 values to `bits` explicit mantissa bits (half away from zero)."""
    raw = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    drop = 23 - bits
    raw = ((raw + (1 << (drop - 1))) >> drop) << drop
    return raw.astype(np.uint32).view(np.float32)


# ---------------------------------------------------------------------------
# float32 numpy forward ops for the calibration pass
# ---------------------------------------------------------------------------
def conv2d(x, w, stride, pad):
    """NCHW convolution by im2col + one matmul (no bias)."""
    n, cin, _, _ = x.shape
    cout, _, kh, kw = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    if kh == 1 and kw == 1:
        x = x[:, :, ::stride, ::stride]
        out_h, out_w = x.shape[2], x.shape[3]
        cols = x.transpose(0, 2, 3, 1).reshape(-1, cin)
    else:
        windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
        windows = windows[:, :, ::stride, ::stride]
        out_h, out_w = windows.shape[2], windows.shape[3]
        cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, cin * kh * kw)
    y = cols @ w.reshape(cout, -1).T
    return np.ascontiguousarray(y.reshape(n, out_h, out_w, cout).transpose(0, 3, 1, 2))


def maxpool3x3s2p1(x):
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    return windows[:, :, ::2, ::2].max(axis=(4, 5))


# ---------------------------------------------------------------------------
# graph construction
# ---------------------------------------------------------------------------
class QualityNetBuilder:
    """Emits ONNX nodes and initializers while carrying the calibration activation along."""

    def __init__(self, rng, fold_bn):
        self.rng = rng
        self.fold_bn = fold_bn
        self.nodes = []
        self.initializers = []

    def tensor(self, name, array):
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def bn_parameters(self, y, role):
        """Running mean/var measured on `y`, lightly jittered; gamma/beta by role.

        The last BN of a residual branch gets a small gamma (as in trained ResNets), which
        keeps the residual stream from growing block after block.
        """
        rng = self.rng
        channels = y.shape[1]
        mean = y.mean(axis=(0, 2, 3), dtype=np.float64)
        var = y.var(axis=(0, 2, 3), dtype=np.float64)
        mean = mean + rng.normal(0.0, 0.05, channels) * np.sqrt(var)
        var = var * rng.uniform(0.8, 1.25, channels)
        gamma_range, beta_std = {"branch_end": ((0.1, 0.35), 0.05),
                                 "shortcut": ((0.5, 1.0), 0.05),
                                 "inner": ((0.6, 1.4), 0.15)}[role]
        gamma = rng.uniform(*gamma_range, channels)
        beta = rng.normal(0.0, beta_std, channels)
        return tuple(round_mantissa(a, 10) for a in (gamma, beta, mean, var))

    def conv_bn(self, name, x_name, x, cin, cout, k, stride, role):
        """Conv (no bias) followed by BatchNormalization, or one Conv with the BN folded in."""
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        pad = k // 2
        y = conv2d(x, w, stride, pad)
        gamma, beta, mean, var = self.bn_parameters(y, role)
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPSILON)
        shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
        y = (y * scale[None, :, None, None].astype(np.float32)
             + shift[None, :, None, None].astype(np.float32)).astype(np.float32)

        attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        if self.fold_bn:
            w_folded = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
            out = self.node("Conv", [x_name, self.tensor(name + ".weight", w_folded),
                                     self.tensor(name + ".bias", shift.astype(np.float32))], name, **attrs)
        else:
            conv_out = self.node("Conv", [x_name, self.tensor(name + ".weight", w)], name, **attrs)
            bn = name + ".bn"
            out = self.node("BatchNormalization",
                            [conv_out, self.tensor(bn + ".weight", gamma), self.tensor(bn + ".bias", beta),
                             self.tensor(bn + ".running_mean", mean), self.tensor(bn + ".running_var", var)],
                            bn, epsilon=BN_EPSILON, momentum=0.9)
        return out, y

    def relu(self, name, x_name, x):
        return self.node("Relu", [x_name], name), np.maximum(x, 0)

    def bottleneck(self, prefix, x_name, x, cin, width, stride):
        cout = width * EXPANSION
        h, a = self.conv_bn(prefix + ".conv1", x_name, x, cin, width, 1, 1, "inner")
        h, a = self.relu(prefix + ".relu1", h, a)
        h, a = self.conv_bn(prefix + ".conv2", h, a, width, width, 3, stride, "inner")
        h, a = self.relu(prefix + ".relu2", h, a)
        h, a = self.conv_bn(prefix + ".conv3", h, a, width, cout, 1, 1, "branch_end")
        if stride != 1 or cin != cout:
            skip_name, skip = self.conv_bn(prefix + ".downsample", x_name, x, cin, cout, 1, stride, "shortcut")
        else:
            skip_name, skip = x_name, x
        added = self.node("Add", [h, skip_name], prefix + ".add")
        return self.relu(prefix + ".relu3", added, a + skip)


def metadata(tiny):
    hw = 32 if tiny else 224
    params = [dict(p, normalize=True) for p in VTRACER_PARAMS]
    variant = "tiny (32x32, widths/8) " if tiny else ""
    return {
        "qp.description": (f"QualityNet {variant}ResNet-50 v1.5 + MLP head: predicts the SSIM of a "
                           "vtracer conversion from the image and 8 conversion parameters "
                           "(synthetic fixed-seed weights, not trained)"),
        "qp.features.params": json.dumps(params),
        "qp.image.image": json.dumps({"height": hw, "width": hw, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}),
    }


def build(tiny=False, opset=17, fold_bn=False, batch=None, seed=0):
    """Return the QualityNet ModelProto."""
    div = 8 if tiny else 1
    hw = 32 if tiny else 224
    n_params = len(VTRACER_PARAMS)
    rng = np.random.default_rng(seed)
    n_calib = CALIBRATION_IMAGES["tiny" if tiny else "full"]
    calib_image, calib_params = random_inputs(np.random.default_rng([seed, 1]), n_calib, hw, n_params)

    b = QualityNetBuilder(rng, fold_bn)
    stem = 64 // div
    h, a = b.conv_bn("conv1", "image", calib_image, 3, stem, 7, 2, "inner")
    h, a = b.relu("relu", h, a)
    h = b.node("MaxPool", [h], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    a = maxpool3x3s2p1(a)
    cin = stem
    for stage, (blocks, width, stride) in enumerate(STAGES, start=1):
        for block in range(blocks):
            h, a = b.bottleneck(f"layer{stage}.{block}", h, a, cin, width // div, stride if block == 0 else 1)
            cin = width // div * EXPANSION

    pooled = b.node("GlobalAveragePool", [h], "avgpool")
    features = b.node("Flatten", [pooled], "features", axis=1)
    h = b.node("Concat", [features, "params"], "concat", axis=1)
    z = np.concatenate([a.mean(axis=(2, 3)), calib_params], axis=1).astype(np.float64)

    widths = [cin + n_params, 512 // div, 256 // div, 1]
    for i in range(3):
        fan_in, fan_out = widths[i], widths[i + 1]
        w = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
        bias = rng.normal(0.0, 0.01, fan_out)
        logits = z @ w.T + bias
        if i == 2:
            # Put the calibration logits at mean 0.8, std 0.75: sigmoid ~0.3..0.9.
            std = float(logits.std()) or 1.0
            w, bias = w * (0.75 / std), bias * (0.75 / std)
            bias = bias + (0.8 - float((z @ w.T + bias).mean()))
        z = np.maximum(logits, 0)
        fc = f"fc{i + 1}"
        h = b.node("Gemm", [h, b.tensor(fc + ".weight", round_mantissa(w, 16)),
                            b.tensor(fc + ".bias", round_mantissa(bias, 16))], fc, transB=1)
        if i < 2:
            h = b.node("Relu", [h], fc + ".relu")
    b.nodes.append(helper.make_node("Sigmoid", [h], ["ssim"], name="sigmoid"))

    n = batch if batch else "N"
    graph = helper.make_graph(
        b.nodes, "qualitynet_tiny" if tiny else "qualitynet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, 3, hw, hw]),
         helper.make_tensor_value_info("params", TensorProto.FLOAT, [n, n_params])],
        [helper.make_tensor_value_info("ssim", TensorProto.FLOAT, [n, 1])],
        initializer=b.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="qp tools/qualitynet.py",
                              producer_version="1")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    model.doc_string = f"QualityNet tiny={tiny} fold_bn={fold_bn} seed={seed} opset={opset}"
    helper.set_model_props(model, metadata(tiny))
    return model


def verify(path, hw, n=12, seed=7):
    """Run ORT on fresh pseudo-inputs; outputs must be finite, inside (0,1) and input-dependent."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    batch_dim = session.get_inputs()[0].shape[0]
    if isinstance(batch_dim, int):
        n = batch_dim
    image, params = random_inputs(np.random.default_rng(seed), n, hw)
    ssim = session.run(["ssim"], {"image": image, "params": params})[0].ravel()
    print("ssim:", np.array2string(ssim, precision=4, max_line_width=100))
    finite = bool(np.isfinite(ssim).all())
    inside = bool(((ssim > 1e-3) & (ssim < 1 - 1e-3)).all())
    varies = n == 1 or bool(ssim.std() > 1e-3)
    print(f"min {ssim.min():.4f} max {ssim.max():.4f} std {ssim.std():.4f}: "
          f"finite={finite} inside (0,1)={inside} varies={varies}")
    ok = finite and inside and varies
    print("verify:", "OK" if ok else "FAILED")
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output .onnx path")
    ap.add_argument("--tiny", action="store_true", help="32x32 input, all widths divided by 8")
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--fold-bn", action="store_true", help="fold BatchNormalization into conv weight and bias")
    ap.add_argument("--batch", type=int, default=None, help="fixed batch size (default: symbolic 'N')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true", help="check the written model with onnxruntime")
    args = ap.parse_args(argv)
    if args.batch is not None and args.batch < 1:
        ap.error("--batch must be >= 1")

    started = time.perf_counter()
    model = build(tiny=args.tiny, opset=args.opset, fold_bn=args.fold_bn, batch=args.batch, seed=args.seed)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, args.out)
    n_weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"wrote {args.out}: {len(model.graph.node)} nodes, {n_weights / 1e6:.2f} M weights, "
          f"opset {args.opset}, {time.perf_counter() - started:.1f} s")
    if args.verify and not verify(args.out, 32 if args.tiny else 224):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
