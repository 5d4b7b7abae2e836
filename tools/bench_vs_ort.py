#!/usr/bin/env python3
"""Side-by-side latency of qp and ONNX Runtime on one ONNX model, same machine, same run.

    python tools/bench_vs_ort.py MODEL.onnx --qp-engine target/release/qp-engine
        [--batch 1,8] [--threads 2] [--rounds 3] [--warmup 3] [--iterations 20]
        [--qpw FILE.qpw] [--time-limit 900] [--json OUT.json]

1. Converts MODEL.onnx with qp-convert (looked up beside qp-engine) unless --qpw names an
   existing file, and reads the model's input metadata with `qp-engine info --json`.
2. Runs --rounds rounds. Each round times ONNX Runtime (CPUExecutionProvider,
   intra_op_num_threads=--threads, inter_op_num_threads=1, graph optimizations ALL,
   sequential execution) and `qp-engine bench --json --tiers simd` (every SIMD tier the CPU
   has, so AVX2 is measured next to AVX-512 where both exist) over every batch size. The
   order alternates between rounds (ORT first, then qp first) so that slow drifts in machine
   load hit both alike.
3. Per (batch, tier): the median over rounds of each round's median latency; prints a
   markdown table with the qp/ORT latency ratio (< 1 means qp is faster) and each round's
   own ratio (both sides timed back to back, so a drift in the host's speed between rounds
   shows as spread rather than moving one side), and writes every per-round number to
   --json if asked.

Inputs follow the same distribution on both sides (not the same values): normalized images
~ N(0, 1), features uniform over their range ([0, 1] when the model normalizes them), other
tensors N(0, 1). Rounds stop early when the next one would pass --time-limit seconds.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


class ToolError(Exception):
    pass


def load_average():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def run_tool(cmd, timeout):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except OSError as err:
        raise ToolError(f"cannot run {cmd[0]}: {err}") from err
    except subprocess.TimeoutExpired as err:
        raise ToolError(f"{' '.join(cmd)} ran past {timeout} s") from err
    if proc.returncode != 0:
        raise ToolError(f"{os.path.basename(cmd[0])} exited with {proc.returncode}:\n{proc.stderr.rstrip()}")
    return proc.stdout


def model_inputs(meta, batch, rng):
    """Random feeds {name: array} shaped and distributed from the .qpw metadata."""
    feeds = {}
    for spec in meta["inputs"]:
        shape = [batch] + list(spec["shape"])
        features = spec.get("features")
        if features and len(features) == int(np.prod(spec["shape"])):
            lo = np.array([0.0 if f.get("normalize") else f["min"] for f in features])
            hi = np.array([1.0 if f.get("normalize") else f["max"] for f in features])
            data = lo + (hi - lo) * rng.random((batch, len(features)))
            feeds[spec["name"]] = data.reshape(shape).astype(np.float32)
        else:
            feeds[spec["name"]] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def ort_session(model_path, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


def time_ort(session, feeds, warmup, iterations):
    """Median and p90 (nearest rank) latency in ms of `iterations` runs after `warmup`."""
    for _ in range(warmup + 1):
        session.run(None, feeds)
    ms = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(None, feeds)
        ms.append((time.perf_counter() - start) * 1e3)
    ms.sort()
    return {"median_ms": statistics.median(ms), "p90_ms": ms[max(1, int(np.ceil(0.9 * len(ms)))) - 1]}


def time_qp(qp_engine, qpw, batches, threads, warmup, iterations, timeout):
    cmd = [qp_engine, "bench", "--model", qpw, "--batch", ",".join(map(str, batches)),
           "--threads", str(threads), "--tiers", "simd", "--warmup", str(warmup),
           "--iterations", str(iterations), "--json"]
    out = run_tool(cmd, timeout)
    try:
        return json.loads(out)
    except json.JSONDecodeError as err:
        raise ToolError(f"qp-engine bench printed no JSON object: {err}\n{out[:500]}") from err


def ort_round(session, feeds_by_batch, warmup, iterations):
    return {b: time_ort(session, feeds, warmup, iterations) for b, feeds in feeds_by_batch.items()}


def summarize(rounds, batches):
    """Rows per (batch, tier): medians over rounds."""
    rows = []
    tiers = []
    for r in rounds:
        for res in r["qp"]["results"]:
            if res["tier"] not in tiers:
                tiers.append(res["tier"])
    for b in batches:
        ort_ms = statistics.median(r["ort"][b]["median_ms"] for r in rounds)
        for tier in tiers:
            qp = [res for r in rounds for res in r["qp"]["results"] if res["batch"] == b and res["tier"] == tier]
            if not qp:
                continue
            qp_ms = statistics.median(res["median_ms"] for res in qp)
            # Each round times both sides back to back, so its own ratio is less exposed
            # to the host's speed drifting between rounds than the ratio of the medians.
            per_round = [res["median_ms"] / r["ort"][b]["median_ms"]
                         for r in rounds for res in r["qp"]["results"] if res["batch"] == b and res["tier"] == tier]
            rows.append({
                "batch": b, "tier": tier, "threads": qp[0]["threads"],
                "ort_median_ms": ort_ms, "qp_median_ms": qp_ms, "qp_over_ort": qp_ms / ort_ms,
                "qp_over_ort_per_round": per_round,
                "ort_images_per_s": b / ort_ms * 1e3, "qp_images_per_s": b / qp_ms * 1e3,
                "ort_round_medians_ms": [r["ort"][b]["median_ms"] for r in rounds],
                "qp_round_medians_ms": [res["median_ms"] for res in qp],
                "qp_first_inference_ms": statistics.median(res["first_inference_ms"] for res in qp),
                "qp_activation_mb": qp[0]["activation_bytes"] / 1e6,
            })
    return rows


def markdown(rows):
    lines = ["| batch | qp tier | threads | ORT median ms | qp median ms | qp/ORT | qp/ORT by round "
             "| ORT img/s | qp img/s |",
             "|---:|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        by_round = " / ".join(f"{x:.2f}" for x in r["qp_over_ort_per_round"])
        lines.append(f"| {r['batch']} | {r['tier']} | {r['threads']} | {r['ort_median_ms']:.2f} | "
                     f"{r['qp_median_ms']:.2f} | {r['qp_over_ort']:.2f} | {by_round} | "
                     f"{r['ort_images_per_s']:.1f} | {r['qp_images_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="ONNX model")
    ap.add_argument("--qp-engine", required=True, help="path to the qp-engine binary")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20, help="timed runs per batch per round and side")
    ap.add_argument("--qpw", help="converted model to use (written here when missing)")
    ap.add_argument("--time-limit", type=float, default=900, help="seconds; later rounds are skipped past it")
    ap.add_argument("--json", dest="json_out", help="write every number to this file")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batch: {args.batch!r} is not a comma-separated list of integers")
    if not batches or min(batches) < 1 or args.threads < 1 or args.rounds < 1 or args.iterations < 1:
        ap.error("batch sizes, --threads, --rounds and --iterations must be positive")

    try:
        import onnxruntime as ort
        started = time.monotonic()
        load_start = load_average()
        qp_engine = os.path.abspath(args.qp_engine)
        workdir = tempfile.mkdtemp(prefix="bench_vs_ort_")
        qpw = args.qpw or os.path.join(workdir, "model.qpw")
        if not os.path.exists(qpw):
            convert = os.path.join(os.path.dirname(qp_engine), "qp-convert")
            print(f"converting {args.model} -> {qpw}", flush=True)
            run_tool([convert, args.model, "-o", qpw], timeout=600)
        meta = json.loads(run_tool([qp_engine, "info", "--json", qpw], timeout=60))
        rng = np.random.default_rng(args.seed)
        feeds_by_batch = {b: model_inputs(meta, b, rng) for b in batches}
        session = ort_session(args.model, args.threads)
        print(f"ONNX Runtime {ort.__version__}, {args.threads} threads; qp {qp_engine}; "
              f"{args.rounds} rounds x {args.iterations} iterations; load {load_start}", flush=True)

        rounds = []
        for r in range(args.rounds):
            elapsed = time.monotonic() - started
            if rounds:
                per_round = (elapsed - rounds[0]["started_s"]) / len(rounds)
                if elapsed + per_round > args.time_limit:
                    print(f"stopping after {len(rounds)} rounds: the next would pass --time-limit", flush=True)
                    break
            timeout = max(60, args.time_limit - elapsed)
            record = {"started_s": elapsed, "load": load_average()}
            order = ["ort", "qp"] if r % 2 == 0 else ["qp", "ort"]
            for side in order:
                if side == "ort":
                    record["ort"] = ort_round(session, feeds_by_batch, args.warmup, args.iterations)
                else:
                    record["qp"] = time_qp(qp_engine, qpw, batches, args.threads, args.warmup,
                                           args.iterations, timeout)
            rounds.append(record)
            summary = ", ".join(
                f"b{b}: ORT {record['ort'][b]['median_ms']:.1f} ms" for b in batches) + "; " + ", ".join(
                f"b{res['batch']} {res['tier']}: qp {res['median_ms']:.1f} ms" for res in record["qp"]["results"])
            print(f"round {r + 1} ({' then '.join(order)}): {summary}", flush=True)

        rows = summarize(rounds, batches)
        print()
        print(markdown(rows))
        load_end = load_average()
        print(f"\nload average (1/5/15 min) before {load_start}, after {load_end}; "
              f"{time.monotonic() - started:.0f} s in all")
        if args.json_out:
            report = {
                "model": os.path.abspath(args.model), "qpw": qpw, "onnxruntime": ort.__version__,
                "python": platform.python_version(), "cpu": rounds[0]["qp"]["cpu"] if rounds else None,
                "threads": args.threads, "warmup": args.warmup, "iterations": args.iterations,
                "load_before": load_start, "load_after": load_end,
                "rows": rows,
                "rounds": [{**r, "ort": {str(b): v for b, v in r["ort"].items()}} for r in rounds],
            }
            with open(args.json_out, "w") as f:
                json.dump(report, f, indent=1)
            print(f"wrote {args.json_out}")
    except ToolError as err:
        print(f"bench_vs_ort: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
