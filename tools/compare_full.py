#!/usr/bin/env python3
"""Full-size check: qp-convert + qp-engine against ONNX Runtime on the full QualityNet.

    python tools/compare_full.py --qp-engine PATH/TO/qp-engine --workdir DIR [--batch 1,3]
                                 [--tier scalar|avx2|avx512] [--tol 1e-4] [--floor 1e-3] [--ort-only]

Steps (files land in DIR):
 1. DIR/qualitynet.onnx: the full model from tools/qualitynet.py, unless already there.
 2. DIR/qualitynet_features.onnx: a copy that also outputs the pooled `features` [N,2048].
 3. per batch size B: DIR/b<B>/inputs/{image,params}.npy from qualitynet.random_inputs,
    DIR/b<B>/ort/*.npy from ONNX Runtime (graph optimisations off).
 4. `qp-convert DIR/qualitynet_features.onnx -o DIR/qualitynet_features.qpw` (qp-convert is
    looked up beside qp-engine), then per batch
    `qp-engine run --model ... --input image=... --input params=... --out DIR/b<B>/qp`.
 5. Every element of every output is compared:
        err = |qp - ort| / max(|ort|, floor)     must be <= tol
    i.e. relative error, with values smaller than `floor` in magnitude judged against
    `floor` (an absolute tolerance of tol*floor) so that near-zero references do not
    demand impossible precision. The worst element of each output is printed.
--tier caps the engine's kernels (QP_MAX_ISA) and checks that tier ran: a CPU without it
lowers the cap silently, and that run is reported as skipped, not passed.
Exit status: 0 when every output of every batch passes (or the tier is skipped), 1 on a
mismatch, 2 on a usage or tool error. --ort-only stops after step 3 (no qp binaries needed).
"""
import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ort_run  # noqa: E402
import qualitynet  # noqa: E402

FEATURES_OUTPUT = "features"
INPUT_SEED = 2024


class ToolError(Exception):
    pass


def ensure_models(workdir):
    """Write the full QualityNet (unless present) and its copy exposing the pooled features."""
    base = os.path.join(workdir, "qualitynet.onnx")
    if not os.path.exists(base):
        print(f"writing {base} (tools/qualitynet.py, full size)")
        onnx.save(qualitynet.build(), base)
    model = onnx.load(base)
    if not any(n.output and n.output[0] == FEATURES_OUTPUT for n in model.graph.node):
        raise ToolError(f"{base} has no node producing '{FEATURES_OUTPUT}'")
    if FEATURES_OUTPUT not in {o.name for o in model.graph.output}:
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        batch_dim = batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "N")
        model.graph.output.append(helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT,
                                                                [batch_dim, None]))
    path = os.path.join(workdir, "qualitynet_features.onnx")
    onnx.save(model, path)
    return path, model


def run_tool(cmd, env=None):
    print("$", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except OSError as err:
        raise ToolError(f"cannot run {cmd[0]}: {err}") from err
    if proc.stdout.strip():
        print(proc.stdout.rstrip())
    if proc.returncode != 0:
        raise ToolError(f"{os.path.basename(cmd[0])} exited with {proc.returncode}:\n{proc.stderr.rstrip()}")
    return proc.stdout


def tier_ran(stdout):
    """The FP32 tier `qp-engine run` reports on its `tier: X` line (None without one)."""
    for line in stdout.splitlines():
        if line.startswith("tier: "):
            return line.split()[1]
    return None


def compare(name, qp, ref, tol, floor):
    """Return (ok, line) for one output."""
    if qp.shape != ref.shape:
        return False, f"{name}: shape {list(qp.shape)} from qp, {list(ref.shape)} from ORT"
    if not np.isfinite(qp).all():
        return False, f"{name}: qp output has non-finite values"
    qp64, ref64 = qp.astype(np.float64), ref.astype(np.float64)
    err = np.abs(qp64 - ref64) / np.maximum(np.abs(ref64), floor)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    ok = bool(err.max() <= tol)
    return ok, (f"{name:10s} {str(list(ref.shape)):12s} max rel err {err.max():.3e} at {list(map(int, worst))} "
                f"(qp {qp64[worst]:.7g}, ort {ref64[worst]:.7g}), {int((err > tol).sum())} elements over tol "
                f"-> {'OK' if ok else 'FAIL'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qp-engine", help="path to the qp-engine binary (qp-convert must sit beside it)")
    ap.add_argument("--workdir", required=True, help="directory for models, inputs and outputs")
    ap.add_argument("--batch", default="1,3", help="comma-separated batch sizes (default 1,3)")
    ap.add_argument("--tol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    ap.add_argument("--floor", type=float, default=1e-3,
                    help="references smaller than this in magnitude are judged against it (default 1e-3)")
    ap.add_argument("--ort-only", action="store_true", help="only write the models, inputs and ORT outputs")
    ap.add_argument("--tier", help="run qp with QP_MAX_ISA=TIER and skip (exit 0) where the CPU lacks it")
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batch expects comma-separated integers, got {args.batch!r}")
    if not batches or min(batches) < 1:
        ap.error("--batch needs at least one size >= 1")
    if not args.ort_only:
        if not args.qp_engine:
            ap.error("--qp-engine is required unless --ort-only")
        engine = os.path.abspath(args.qp_engine)
        suffix = ".exe" if engine.endswith(".exe") else ""
        convert = os.path.join(os.path.dirname(engine), "qp-convert" + suffix)
        for tool in (engine, convert):
            if not os.access(tool, os.X_OK):
                ap.error(f"{tool} is not an executable file")

    os.makedirs(args.workdir, exist_ok=True)
    try:
        model_path, model = ensure_models(args.workdir)
        output_names = [o.name for o in model.graph.output]
        print(f"tolerance: |qp - ort| / max(|ort|, {args.floor:g}) <= {args.tol:g}")
        if not args.ort_only:
            qpw = os.path.join(args.workdir, "qualitynet_features.qpw")
            run_tool([convert, model_path, "-o", qpw])
        all_ok = True
        for batch in batches:
            folder = os.path.join(args.workdir, f"b{batch}")
            image, params = qualitynet.random_inputs(np.random.default_rng([INPUT_SEED, batch]), batch, 224)
            feeds = {"image": image, "params": params}
            shutil.rmtree(os.path.join(folder, "qp"), ignore_errors=True)  # no stale outputs
            for sub in ("inputs", "ort", "qp"):
                os.makedirs(os.path.join(folder, sub), exist_ok=True)
            for name, array in feeds.items():
                np.save(os.path.join(folder, "inputs", ort_run.npy_name(name)), array)
            reference = ort_run.run(model_path, feeds)
            for name, array in reference.items():
                np.save(os.path.join(folder, "ort", ort_run.npy_name(name)), array)
            print(f"batch {batch}: ORT ssim {np.array2string(reference['ssim'].ravel(), precision=5)}")
            if args.ort_only:
                continue
            out_dir = os.path.join(folder, "qp")
            cmd = [engine, "run", "--model", qpw]
            for name in feeds:
                cmd += ["--input", f"{name}={os.path.join(folder, 'inputs', ort_run.npy_name(name))}"]
            env = dict(os.environ, QP_MAX_ISA=args.tier) if args.tier else None
            ran = tier_ran(run_tool(cmd + ["--out", out_dir], env))
            if args.tier and ran != args.tier:
                print(f"tier {args.tier}: skipped, this CPU runs at most {ran}")
                return 0
            for name in output_names:
                path = os.path.join(out_dir, ort_run.npy_name(name))
                if not os.path.exists(path):
                    print(f"{name}: qp-engine wrote no {path} -> FAIL")
                    all_ok = False
                    continue
                ok, line = compare(name, np.load(path), reference[name], args.tol, args.floor)
                print(f"batch {batch}: {line}")
                all_ok &= ok
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.ort_only:
        print("ORT reference written (qp not run)")
        return 0
    print("PASS" if all_ok else "FAIL")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
