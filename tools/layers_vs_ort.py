#!/usr/bin/env python3
"""Per-layer time of qp next to ONNX Runtime's own profile of the same ONNX model.

    python tools/layers_vs_ort.py MODEL.onnx --qp-engine target/release/qp-engine
        --qpw FILE.qpw [--threads 2] [--runs 40] [--max-isa avx512]

1. Profiles ONNX Runtime (CPUExecutionProvider, intra_op_num_threads=--threads, graph
   optimizations ALL, `enable_profiling`) over --runs batch-1 runs after 10 warm-up
   runs, and takes each node's median kernel time. ORT fuses Conv+BatchNorm+ReLU(+Add)
   into one node named after one of the fused ops.
2. Runs `qp-engine bench --cpu-profile --batch 1` on FILE.qpw and reads its per-layer
   table (median of 30 profiled runs per node).
3. Prints one row per qp node with ORT's time for the node of the same layer: an ORT node
   whose name starts with the qp node's name (`layer1.0.conv3` -> `layer1.0.conv3.bn`) or
   ends with it (`fc1` -> `fused fc1`), else the ReLU that ends the layer (`layer1.0.conv2` -> `layer1.0.relu2`, the stem
   `conv1` -> `relu`). The mapping follows torchvision's ResNet names; nodes without a
   counterpart show `-`.

Inputs: normalized images ~ N(0, 1), other inputs uniform in [0, 1] (ORT side); qp's
bench uses its own synthetic inputs. Timings are per node, so a slow layer shows where it
is whatever the inputs.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def ort_profile(model, threads, runs):
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {}
        for i in sess.get_inputs():
            shape = [1 if not isinstance(d, int) else d for d in i.shape]
            if len(shape) == 4:
                feed[i.name] = rng.standard_normal(shape).astype(np.float32)
            else:
                feed[i.name] = rng.random(shape).astype(np.float32)
        for _ in range(10):
            sess.run(None, feed)
        start = time.perf_counter()
        for _ in range(runs):
            sess.run(None, feed)
        wall = (time.perf_counter() - start) / runs * 1e3
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    times = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            times.setdefault(name[: -len("_kernel_time")], []).append(e["dur"] / 1e3)
    # The warm-up runs are profiled too: keep the last `runs` samples of each node.
    return {k: statistics.median(v[-runs:]) for k, v in times.items()}, wall


ROW = re.compile(r"^(\S+)\s+(conv_winograd|conv|max_pool|dense|global_average_pool|qconv\S*)\s.*?\s([0-9.]+)\s+([0-9.]+|-)\s+(\d+%|-)\s*$")


def qp_profile(engine, qpw, threads, max_isa):
    cmd = [engine, "bench", "--cpu-profile", "--model", qpw, "--batch", "1", "--threads", str(threads)]
    if max_isa:
        cmd += ["--max-isa", max_isa]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = float(m.group(3))
    if not rows:
        sys.exit("no per-layer table in qp-engine bench --cpu-profile output")
    return rows


def ort_node_for(qp_name, ort_names):
    prefixed = [
        n for n in ort_names if n.startswith(qp_name + ".") or n.startswith(qp_name + "_") or n.endswith(" " + qp_name)
    ]
    if prefixed:
        return prefixed[0]
    m = re.match(r"^(?:(.*)\.)?conv(\d*)$", qp_name)
    if m:
        head, k = m.group(1), m.group(2)
        # Inside a block the ReLU is numbered like its conv; the stem's is plain `relu`.
        relu = f"{head}.relu{k}" if head else "relu"
        for n in ort_names:
            if n == relu or n.startswith(relu + "_") or n.startswith(relu + "."):
                return n
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--qp-engine", required=True)
    ap.add_argument("--qpw", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--max-isa", default=None)
    a = ap.parse_args()

    ort_times, ort_wall = ort_profile(a.model, a.threads, a.runs)
    qp_times = qp_profile(a.qp_engine, a.qpw, a.threads, a.max_isa)
    print(f"ONNX Runtime: {ort_wall:.2f} ms a run, nodes sum to {sum(ort_times.values()):.2f} ms; "
          f"qp: nodes sum to {sum(qp_times.values()):.2f} ms")
    print()
    print("| qp node | qp ms | ORT node | ORT ms | qp/ORT |")
    print("|---|---:|---|---:|---:|")
    for name, t in qp_times.items():
        o = ort_node_for(name, ort_times)
        if o is None:
            print(f"| {name} | {t:.3f} | - | - | - |")
        else:
            print(f"| {name} | {t:.3f} | {o} | {ort_times[o]:.3f} | {t / ort_times[o]:.2f} |")


if __name__ == "__main__":
    main()
