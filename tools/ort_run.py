#!/usr/bin/env python3
"""Reference runner: execute an ONNX model with ONNX Runtime and save every output as .npy.

Graph optimisations are disabled (no fusion, no constant folding, no layout changes) and
only the CPU execution provider is used, so the result is the plain math of the graph.

    python tools/ort_run.py MODEL.onnx --input NAME=FILE.npy [--input ...] --out DIR [--expose-all]

Writes DIR/<file name of output>.npy per output (see `npy_name`: characters other than
letters, digits, '.', '_' and '-' become '_'). --expose-all also makes every node output
a graph output, to compare intermediate activations.
"""
import argparse
import os
import re
import sys

import numpy as np
import onnx
from onnx import helper


def npy_name(tensor_name):
    """File name for a tensor: ONNX names may contain '/', ':' and the like."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", tensor_name) + ".npy"


def expose_all_outputs(model):
    """Return a copy of `model` whose graph outputs include every node output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in existing:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
                existing.add(name)
    return model


def run(model, feeds, threads=None):
    """Run `model` (a ModelProto or a path) on `feeds` {name: array}; return {output name: array}."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3  # errors only: initializers listed as graph inputs are legitimate
    if threads:
        opts.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="ONNX model")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                    help="one model input (repeat for each)")
    ap.add_argument("--out", required=True, help="directory for the output .npy files")
    ap.add_argument("--expose-all", action="store_true", help="also write every intermediate node output")
    args = ap.parse_args(argv)

    feeds = {}
    for spec in args.input:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"--input expects NAME=FILE.npy, got {spec!r}")
        try:
            feeds[name] = np.load(path)
        except (OSError, ValueError) as err:
            ap.error(f"cannot read {path}: {err}")

    try:
        model = onnx.load(args.model)
    except Exception as err:  # onnx raises protobuf DecodeError, OSError, ...
        print(f"error: cannot load {args.model}: {err}", file=sys.stderr)
        return 2
    graph_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    missing = sorted(graph_inputs - feeds.keys())
    unknown = sorted(feeds.keys() - graph_inputs)
    if missing or unknown:
        print(f"error: missing inputs {missing}, unknown inputs {unknown}", file=sys.stderr)
        return 2
    if args.expose_all:
        model = expose_all_outputs(model)

    results = run(model, feeds)
    os.makedirs(args.out, exist_ok=True)
    for name, value in results.items():
        path = os.path.join(args.out, npy_name(name))
        np.save(path, value)
        print(f"{name}: {list(value.shape)} {value.dtype} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
