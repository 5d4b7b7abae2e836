#!/usr/bin/env python3
"""Regenerate the golden test fixtures under tests/fixtures/ (deterministic).

Each case is a small ONNX model written the way one real exporter writes it, pseudo-inputs,
and the outputs ONNX Runtime computes for them (graph optimisations disabled):

    tests/fixtures/<case>/model.onnx
    tests/fixtures/<case>/inputs/<file>.npy      one per model input
    tests/fixtures/<case>/expected/<file>.npy    one per model output
    tests/fixtures/<case>/case.json

case.json: {"description", "inputs": [{"name", "file", "shape", "dtype"}], "outputs": [...],
"rtol"}; the `unsupported` case has no arrays and instead lists "expect_error" (the ONNX op
types qp must reject by name) and "nodes" (the names of the offending nodes).

    python tools/make_fixtures.py [--out tests/fixtures] [--only CASE ...]
    python tools/make_fixtures.py --check    # regenerate into a temporary folder and compare

--check fails when a committed model, input or case.json differs in any byte, or when an
expected output differs from a fresh ONNX Runtime result by more than 1e-6 relative (ORT
builds may differ in the last bits).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feature_model  # noqa: E402
import ort_run  # noqa: E402
import qualitynet  # noqa: E402

RTOL = 1e-4
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


class Net:
    """Accumulates nodes and weights of a hand-written test graph."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []

    # -- weights --------------------------------------------------------------
    def weight(self, shape, fan_in, gain=1.0):
        return (self.rng.standard_normal(shape) * gain * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bias(self, n):
        return self.rng.normal(0.0, 0.05, n).astype(np.float32)

    def init(self, name, array, storage="raw"):
        """Add an initializer stored in `raw_data` ("raw") or in the typed repeated field ("typed")."""
        array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d
        if storage == "raw":
            self.inits.append(numpy_helper.from_array(array, name))
        else:
            dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
            self.inits.append(helper.make_tensor(name, dtype, array.shape, array.ravel().tolist(), raw=False))
        return name

    def constant(self, name, array):
        """A `Constant` node producing `array` (how older exporters wrote some weights)."""
        array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d
        self.nodes.append(helper.make_node("Constant", [], [name], name=name + "_const",
                                           value=numpy_helper.from_array(array, name + "_value")))
        return name

    def node(self, op, inputs, outputs, name=None, **attrs):
        outputs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or outputs[0], **attrs))
        return outputs[0]

    # -- layers ---------------------------------------------------------------
    def conv(self, name, x, cin, cout, k, out=None, stride=1, pads=None, dilation=1, bias=True, gain=1.0,
             storage="raw"):
        kh, kw = (k, k) if np.isscalar(k) else k
        w = self.weight((cout, cin, kh, kw), cin * kh * kw, gain)
        inputs = [x, self.init(name + ".weight", w, storage)]
        if bias:
            inputs.append(self.init(name + ".bias", self.bias(cout), storage))
        pads = [kh // 2, kw // 2, kh // 2, kw // 2] if pads is None else pads
        return self.node("Conv", inputs, out or name, name=name, kernel_shape=[kh, kw], strides=[stride, stride],
                         pads=pads, dilations=[dilation, dilation])

    def batchnorm(self, name, x, c, out=None, **attrs):
        gamma = self.rng.uniform(0.6, 1.4, c).astype(np.float32)
        beta = self.rng.normal(0.0, 0.1, c).astype(np.float32)
        mean = self.rng.normal(0.0, 0.2, c).astype(np.float32)
        var = self.rng.uniform(0.5, 2.0, c).astype(np.float32)
        params = [self.init(f"{name}.{s}", a) for s, a in
                  (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))]
        return self.node("BatchNormalization", [x] + params, out or name, name=name, epsilon=1e-5, momentum=0.9,
                         **attrs)

    def gemm(self, name, x, fin, fout, out=None, gain=1.0):
        w = self.inits_pair(name, fout, fin, gain)
        return self.node("Gemm", [x, *w], out or name, name=name, alpha=1.0, beta=1.0, transB=1)

    def inits_pair(self, name, fout, fin, gain=1.0):
        return (self.init(name + ".weight", self.weight((fout, fin), fin, gain)),
                self.init(name + ".bias", self.bias(fout)))


def make_model(net, name, inputs, outputs, opset, producer=("qp tools/make_fixtures.py", "1")):
    graph = helper.make_graph(net.nodes, name, inputs, outputs, initializer=net.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name=producer[0], producer_version=producer[1])
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# ---------------------------------------------------------------------------
# the cases: each returns (model, {input name: array}, description)
# ---------------------------------------------------------------------------
def case_tiny_bn():
    model = qualitynet.build(tiny=True, opset=17)
    image, params = qualitynet.random_inputs(np.random.default_rng(101), 3, 32)
    return model, {"image": image, "params": params}, \
        "QualityNet --tiny (ResNet-50 v1.5 topology, widths/8, 32x32), BatchNormalization nodes, opset 17, batch 3"


def case_tiny_folded():
    model = qualitynet.build(tiny=True, opset=13, fold_bn=True)
    image, params = qualitynet.random_inputs(np.random.default_rng(102), 2, 32)
    return model, {"image": image, "params": params}, \
        "QualityNet --tiny with BN folded into Conv weight+bias (torch.onnx.export eval style), opset 13"


def case_torch_training_style():
    """torch 2.x naming; BN with training_mode=0, Dropout with ratio/training_mode inputs, Identity nodes."""
    net = Net(103)
    h = net.conv("conv1", "input", 3, 8, 3, out="/conv1/Conv_output_0", bias=False)
    h = net.batchnorm("bn1", h, 8, out="/bn1/BatchNormalization_output_0", training_mode=0)
    h = net.node("Relu", [h], "/relu/Relu_output_0", name="/relu/Relu")
    h = net.node("Identity", [h], "/identity/Identity_output_0", name="/identity/Identity")
    h = net.conv("layer.conv", h, 8, 12, 3, out="/layer/conv/Conv_output_0", stride=2, bias=False)
    h = net.batchnorm("layer.bn", h, 12, out="/layer/bn/BatchNormalization_output_0", training_mode=0)
    h = net.node("Relu", [h], "/layer/relu/Relu_output_0", name="/layer/relu/Relu")
    h = net.node("GlobalAveragePool", [h], "/avgpool/GlobalAveragePool_output_0", name="/avgpool/GlobalAveragePool")
    h = net.node("Flatten", [h], "/Flatten_output_0", name="/Flatten", axis=1)
    net.nodes.append(helper.make_node("Constant", [], ["/dropout/Constant_output_0"], name="/dropout/Constant",
                                      value=numpy_helper.from_array(np.array(0.5, np.float32))))
    net.nodes.append(helper.make_node("Constant", [], ["/dropout/Constant_1_output_0"], name="/dropout/Constant_1",
                                      value=numpy_helper.from_array(np.array(False))))
    h = net.node("Dropout", [h, "/dropout/Constant_output_0", "/dropout/Constant_1_output_0"],
                 ["/dropout/Dropout_output_0", "/dropout/Dropout_output_1"], name="/dropout/Dropout")
    # A shared weight re-exported through Identity, as torch does for tied parameters.
    weight, bias = net.inits_pair("fc", 5, 12)
    net.node("Identity", [weight], "onnx::Gemm_41", name="Identity_0")
    h = net.node("Gemm", [h, "onnx::Gemm_41", bias], "/fc/Gemm_output_0", name="/fc/Gemm", alpha=1.0, beta=1.0,
                 transB=1)
    net.node("Identity", [h], "output", name="/out/Identity")
    model = make_model(net, "main_graph", [float_input("input", ["batch_size", 3, 16, 16])],
                       [float_input("output", ["batch_size", 5])], 15, producer=("pytorch", "2.1.0"))
    image, _ = qualitynet.random_inputs(np.random.default_rng(203), 2, 16)
    return model, {"input": image}, \
        "torch-style export: BatchNormalization training_mode=0, Dropout(ratio, training_mode=False) with " \
        "unused mask output, Identity nodes (also on an initializer), opset 15"


def case_legacy_view():
    """Old torch (1.x, opset 11) export: numeric names, x.view(N,-1) as Shape/Gather/Unsqueeze/Concat/Reshape,
    initializers also listed as graph inputs, weights in raw_data, float_data and Constant nodes."""
    net = Net(104)
    h = net.conv("conv1", "input.1", 3, 8, 3, out="13", storage="raw")
    net.inits[-1] = helper.make_tensor("conv1.bias", TensorProto.FLOAT, [8], net.bias(8).tolist(), raw=False)
    h = net.node("Relu", [h], "14", name="Relu_1")
    h = net.node("MaxPool", [h], "15", name="MaxPool_2", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])
    w2 = net.constant("16", net.weight((12, 8, 3, 3), 72))
    b2 = net.init("conv2.bias", net.bias(12))
    h = net.node("Conv", [h, w2, b2], "17", name="Conv_4", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                 dilations=[1, 1], group=1)
    h = net.node("Relu", [h], "18", name="Relu_5")
    h = net.node("AveragePool", [h], "19", name="AveragePool_6", kernel_shape=[5, 5], strides=[5, 5],
                 pads=[0, 0, 0, 0])
    # x.view(x.size(0), -1)
    shape = net.node("Shape", [h], "20", name="Shape_7")
    index = net.constant("21", np.array(0, dtype=np.int64))
    batch = net.node("Gather", [shape, index], "22", name="Gather_9", axis=0)
    batch = net.node("Unsqueeze", [batch], "23", name="Unsqueeze_10", axes=[0])
    minus_one = net.constant("24", np.array([-1], dtype=np.int64))
    target = net.node("Concat", [batch, minus_one], "25", name="Concat_12", axis=0)
    h = net.node("Reshape", [h, target], "26", name="Reshape_13")
    fc1_w = net.init("fc1.weight", net.weight((16, 48), 48), storage="typed")
    fc1_b = net.constant("27", net.bias(16))
    h = net.node("Gemm", [h, fc1_w, fc1_b], "28", name="Gemm_15", alpha=1.0, beta=1.0, transB=1)
    h = net.node("Relu", [h], "29", name="Relu_16")
    fc2_w = net.init("fc2.weight", net.weight((4, 16), 16), storage="typed")
    fc2_b = net.init("fc2.bias", net.bias(4))
    net.node("Gemm", [h, fc2_w, fc2_b], "30", name="Gemm_17", alpha=1.0, beta=1.0, transB=1)
    # Exporters before IR version 4 also declared every initializer as a graph input.
    inputs = [float_input("input.1", ["batch", 3, 20, 20])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in net.inits]
    model = make_model(net, "torch-jit-export", inputs, [float_input("30", ["batch", 4])], 11,
                       producer=("pytorch", "1.8"))
    image, _ = qualitynet.random_inputs(np.random.default_rng(204), 2, 20)
    return model, {"input.1": image}, \
        "legacy torch 1.x export, opset 11: x.view(N,-1) via Shape/Gather/Unsqueeze(axes attr)/Concat/Reshape, " \
        "numeric tensor names, initializers also declared as graph inputs, weights in raw_data, float_data and " \
        "Constant nodes"


def case_matmul_add():
    """nn.Linear as MatMul (weight [in,out]) + Add, Flatten straight off a conv map, odd names, opset 21."""
    net = Net(105)
    x_name, y_name = "x.in/image:0", "y.out/logits:0"
    h = net.conv("features/0.conv", x_name, 3, 6, 3, out="features/0.conv:out", pads=[0, 0, 0, 0])
    h = net.node("Relu", [h], "features/1.relu:out")
    h = net.node("Flatten", [h], "flat/0", axis=1)
    w1 = net.init("head.0/weight.T", net.weight((600, 32), 600))
    b1 = net.init("head.0/bias", net.bias(32))
    h = net.node("MatMul", [h, w1], "head.0/matmul")
    h = net.node("Add", [h, b1], "head.0/add")
    h = net.node("Relu", [h], "head.1/relu")
    w2 = net.init("head.2/weight.T", net.weight((32, 5), 32))
    b2 = net.init("head.2/bias", net.bias(5))
    h = net.node("MatMul", [h, w2], "head.2/matmul")
    net.node("Add", [b2, h], y_name, name="head.2/add")  # bias first: Add is commutative
    model = make_model(net, "linear_as_matmul", [float_input(x_name, ["n", 3, 12, 12])],
                       [float_input(y_name, ["n", 5])], 21)
    image, _ = qualitynet.random_inputs(np.random.default_rng(205), 2, 12)
    return model, {x_name: image}, \
        "nn.Linear exported as MatMul (weight stored [in,out]) + Add (bias as first operand once), Flatten of a " \
        "conv map, names with dots, slashes and colons, opset 21"


def case_multi_io():
    """Two image inputs, three outputs (one of them also consumed inside), Squeeze/Unsqueeze with axes inputs."""
    net = Net(106)
    a = net.conv("a.conv1", "image_a", 3, 8, 3, stride=2)
    a = net.node("Relu", [a], "a.relu1")
    a = net.conv("a.conv2", a, 8, 16, 3)
    a = net.node("Relu", [a], "a.relu2")
    a = net.node("GlobalAveragePool", [a], "a.gap")
    a = net.node("Flatten", [a], "a.flat", axis=1)
    b = net.conv("b.conv1", "image_b", 3, 12, 3)
    b = net.node("Relu", [b], "b.relu1")
    b = net.node("MaxPool", [b], "b.pool", kernel_shape=[2, 2], strides=[2, 2])
    b = net.node("GlobalAveragePool", [b], "b.gap")
    axes = net.init("spatial_axes", np.array([2, 3], dtype=np.int64))
    b = net.node("Squeeze", [b, axes], "b.squeeze")
    feats = net.node("Concat", [a, b], "features", axis=1)
    h = net.node("Unsqueeze", [feats, axes], "mix.unsqueeze")
    h = net.conv("mix.conv", h, 28, 10, 1)
    h = net.node("Relu", [h], "mix.relu")
    h = net.node("Flatten", [h], "mix.flat", axis=1)
    logits = net.gemm("logits", h, 10, 3)
    net.node("Sigmoid", [logits], "probability")
    model = make_model(net, "two_inputs_three_outputs",
                       [float_input("image_a", ["N", 3, 16, 16]), float_input("image_b", ["N", 3, 12, 12])],
                       [float_input("features", ["N", 28]), float_input("logits", ["N", 3]),
                        float_input("probability", ["N", 3])], 18)
    image_a, _ = qualitynet.random_inputs(np.random.default_rng(206), 2, 16)
    image_b, _ = qualitynet.random_inputs(np.random.default_rng(306), 2, 12)
    return model, {"image_a": image_a, "image_b": image_b}, \
        "two image inputs of different sizes, three outputs (pooled features also feed the head, logits, " \
        "sigmoid), Squeeze/Unsqueeze with axes as an input, dynamic batch, opset 18"


def case_pool_variants():
    net = Net(107)
    h = net.conv("conv_dilated", "image", 3, 5, 5, stride=3, dilation=2, pads=[2, 2, 2, 2])  # 39x47 -> 12x15
    h = net.node("Relu", [h], "relu1")
    h = net.conv("conv_asym", h, 5, 13, 3, pads=[0, 1, 1, 2])  # -> 11x16
    h = net.node("Relu", [h], "relu2")
    # ceil_mode adds a row and a column here (floor: 5x7)
    h = net.node("MaxPool", [h], "maxpool_ceil", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 0],
                 ceil_mode=1)  # -> 6x8
    h = net.node("AveragePool", [h], "avgpool_exclude_pad", kernel_shape=[3, 3], strides=[1, 1],
                 pads=[1, 1, 1, 1], count_include_pad=0)  # -> 6x8
    pooled = net.node("AveragePool", [h], "avgpool_include_pad", kernel_shape=[3, 3], strides=[2, 2],
                      pads=[0, 0, 1, 1], count_include_pad=1)  # -> 3x4
    side = net.conv("conv_1x1_s2", h, 13, 17, 1, stride=2, pads=[0, 0, 0, 0])  # -> 3x4
    h = net.node("Concat", [pooled, side], "concat", axis=1)  # 30 channels
    h = net.conv("conv_out", h, 30, 33, 3)
    h = net.node("Relu", [h], "relu3")
    net.node("Flatten", [h], "feature_map", axis=1)
    g = net.node("GlobalAveragePool", [h], "gap")
    g = net.node("Flatten", [g], "gap_flat", axis=1)
    net.gemm("logits", g, 33, 3)
    model = make_model(net, "pool_variants", [float_input("image", ["N", 3, 39, 47])],
                       [float_input("feature_map", ["N", 33 * 3 * 4]), float_input("logits", ["N", 3])], 17)
    image, _ = qualitynet.random_inputs(np.random.default_rng(207), 2, (39, 47))
    return model, {"image": image}, \
        "39x47 input; 5x5 conv stride 3 dilation 2; conv with asymmetric pads; MaxPool ceil_mode=1 with " \
        "asymmetric pads; AveragePool count_include_pad 0 and 1 (asymmetric pads); 1x1 conv stride 2; channel " \
        "concat; channels 3/5/13/17/30/33; the full final feature map is an output"


def case_basic_block():
    """ResNet-18 style basic blocks, BN folded (Conv with bias), opset 12."""
    net = Net(108)
    h = net.conv("conv1", "input", 3, 16, 3)
    h = net.node("Relu", [h], "relu")
    # identity-shortcut block
    r = net.conv("layer1.0.conv1", h, 16, 16, 3)
    r = net.node("Relu", [r], "layer1.0.relu1")
    r = net.conv("layer1.0.conv2", r, 16, 16, 3, gain=0.3)
    h = net.node("Add", [r, h], "layer1.0.add")
    h = net.node("Relu", [h], "layer1.0.relu2")
    # downsampling block with a 1x1 stride-2 projection shortcut
    r = net.conv("layer2.0.conv1", h, 16, 32, 3, stride=2)
    r = net.node("Relu", [r], "layer2.0.relu1")
    r = net.conv("layer2.0.conv2", r, 32, 32, 3, gain=0.3)
    s = net.conv("layer2.0.downsample", h, 16, 32, 1, stride=2)
    h = net.node("Add", [s, r], "layer2.0.add")  # shortcut first
    h = net.node("Relu", [h], "layer2.0.relu2")
    h = net.node("GlobalAveragePool", [h], "avgpool")
    h = net.node("Flatten", [h], "flatten", axis=1)
    net.gemm("fc", h, 32, 4, out="logits")
    model = make_model(net, "basic_blocks", [float_input("input", ["N", 3, 24, 24])],
                       [float_input("logits", ["N", 4])], 12)
    image, _ = qualitynet.random_inputs(np.random.default_rng(208), 2, 24)
    return model, {"input": image}, \
        "ResNet-18 style basic blocks (identity and 1x1/2 projection shortcuts, residual Add then Relu, " \
        "operands in either order), Conv with bias, opset 12"


def case_feature_model():
    model = feature_model.build(seed=0)
    x = np.random.default_rng(109).uniform(0.0, 1.0, (5, len(feature_model.FEATURES))).astype(np.float32)
    x[0] = 0.0  # the corners of the (normalised) feature box
    x[1] = 1.0
    return model, {"features": x}, \
        "the image-feature SSIM predictor (tools/feature_model.py): Gemm 6-64-32-1, ReLU, Sigmoid, batch 5"


def case_unsupported():
    net = Net(110)
    h = net.conv("conv", "image", 3, 4, 3)
    scales = net.init("up.scales", np.array([1.0, 1.0, 2.0, 2.0], dtype=np.float32))
    h = net.node("Resize", [h, "", scales], "up/resize:out", name="up/resize", mode="nearest")
    h = net.node("GlobalAveragePool", [h], "gap")
    h = net.node("Flatten", [h], "flat", axis=1)
    h = net.gemm("fc", h, 4, 3)
    net.node("Softmax", [h], "probs", name="head/softmax", axis=1)
    model = make_model(net, "unsupported_ops", [float_input("image", ["N", 3, 8, 8])],
                       [float_input("probs", ["N", 3])], 13)
    return model, None, "model with ops qp does not support (Resize, Softmax): conversion must fail naming them"


CASES = [
    ("tiny_bn", case_tiny_bn),
    ("tiny_folded", case_tiny_folded),
    ("torch_training_style", case_torch_training_style),
    ("legacy_view", case_legacy_view),
    ("matmul_add", case_matmul_add),
    ("multi_io", case_multi_io),
    ("pool_variants", case_pool_variants),
    ("basic_block", case_basic_block),
    ("feature_model", case_feature_model),
    ("unsupported", case_unsupported),
]


def io_entry(name, array, folder):
    return {"name": name, "file": f"{folder}/{ort_run.npy_name(name)}", "shape": list(array.shape),
            "dtype": str(array.dtype)}


def write_case(root, case, model, feeds, description):
    folder = os.path.join(root, case)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(folder, "model.onnx"))
    meta = {"description": description}
    if feeds is None:
        bad = [n for n in model.graph.node if n.op_type in ("Softmax", "Resize")]
        meta["inputs"] = [{"name": i.name} for i in model.graph.input]
        meta["outputs"] = [{"name": o.name} for o in model.graph.output]
        meta["expect_error"] = sorted({n.op_type for n in bad}, reverse=True)
        meta["nodes"] = [n.name for n in bad]
    else:
        results = ort_run.run(model, feeds, threads=1)
        if not all(np.isfinite(v).all() for v in results.values()):
            raise RuntimeError(f"{case}: non-finite reference output")
        for sub in ("inputs", "expected"):
            os.makedirs(os.path.join(folder, sub))
        meta["inputs"] = [io_entry(n, a, "inputs") for n, a in feeds.items()]
        meta["outputs"] = [io_entry(n, a, "expected") for n, a in results.items()]
        for n, a in feeds.items():
            np.save(os.path.join(folder, "inputs", ort_run.npy_name(n)), a)
        for n, a in results.items():
            np.save(os.path.join(folder, "expected", ort_run.npy_name(n)), a)
        meta["rtol"] = RTOL
    with open(os.path.join(folder, "case.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    shapes = ", ".join(f"{e['name']} {e.get('shape', '')}" for e in meta["outputs"])
    print(f"{case:22s} {size / 1024:8.1f} KiB  opset {model.opset_import[0].version:2d}  outputs: {shapes}")
    return size


def check(committed, fresh):
    """Compare a fresh generation with the committed fixtures; return a list of problems."""
    problems = []
    def case_files(root):  # files inside case folders (not e.g. the top-level README)
        paths = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
        return {p for p in paths if os.sep in p}

    committed_files, fresh_files = case_files(committed), case_files(fresh)
    problems += [f"{f}: not generated any more" for f in sorted(committed_files - fresh_files)]
    problems += [f"{f}: missing from the committed fixtures" for f in sorted(fresh_files - committed_files)]
    for f in sorted(committed_files & fresh_files):
        a_path, b_path = os.path.join(committed, f), os.path.join(fresh, f)
        if f.split(os.sep)[1:2] == ["expected"]:
            a, b = np.load(a_path), np.load(b_path)
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-6, atol=1e-7):
                problems.append(f"{f}: differs from a fresh ONNX Runtime result")
        elif open(a_path, "rb").read() != open(b_path, "rb").read():
            problems.append(f"{f}: bytes differ from a fresh generation")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixtures directory (default: tests/fixtures)")
    ap.add_argument("--only", action="append", default=[], help="regenerate only this case (repeatable)")
    ap.add_argument("--check", action="store_true", help="compare a fresh generation with --out, write nothing")
    args = ap.parse_args(argv)
    if args.check:
        if args.only:
            ap.error("--check regenerates every case; drop --only")
        with tempfile.TemporaryDirectory() as tmp:
            main(["--out", tmp])
            problems = check(args.out, tmp)
        for p in problems:
            print("MISMATCH", p)
        print("fixtures are up to date" if not problems else f"{len(problems)} fixture file(s) out of date")
        return 1 if problems else 0
    known = [c for c, _ in CASES]
    for name in args.only:
        if name not in known:
            ap.error(f"unknown case {name!r}; known: {', '.join(known)}")
    total = 0
    for case, make in CASES:
        if args.only and case not in args.only:
            continue
        model, feeds, description = make()
        total += write_case(args.out, case, model, feeds, description)
    print(f"total {total / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
