#!/usr/bin/env python3
"""Full-size INT8 check: qp-convert --precision int8 on the full QualityNet, then qp-engine
on every kernel tier against ONNX Runtime FP32.

    python tools/check_int8.py --qp-engine PATH/TO/qp-engine --workdir DIR [--calibrate DIR]
                               [--tiers scalar,avx2,avx512,amx]

Runs after tools/compare_full.py has written DIR/qualitynet_features.onnx and
DIR/b3/{inputs,ort}/ (it reuses them). Calibration data: --calibrate, else the PNG icons of
Debian's adwaita-icon-theme when installed, else 96 pseudo-images written as .npy.

Checks the default conversion (the conservative profile: 12-bit activations), each a
regression budget set from measurements on this model (docs/PERFORMANCE.md):
  - the INT8 file is at most 30% of the FP32 one (measured 27.4%);
  - the converter's held-out report (all sets): mean |delta ssim| <= 0.02, Pearson r >= 0.99,
    pooled-feature cosine >= 0.9995 (measured with the icons: 0.0065, 0.9995, 0.99997);
  - on the batch-3 pseudo-inputs, every tier's ssim is within 0.06 of ORT FP32 (measured:
    0.013-0.016) and the tiers agree with each other within 1e-2 (measured 0.0042: the FP32
    first stage sums in a different order per tier, and where that moves a value across a
    rounding boundary of the fine grid it enters, the INT8 layers carry the step on), the
    pooled features within cosine 0.9995; where the CPU has AMX, the AMX and AVX512-VNNI
    tiers agree bit for bit.
A tier this CPU cannot run (the engine's `tier:` line shows what ran) is reported as skipped.
Exit status: 0 on success, 1 on a failed check, 2 on a usage or tool error.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qualitynet  # noqa: E402

ICONS = "/usr/share/icons/Adwaita"


def run(cmd, env=None):
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        sys.exit(2)
    return proc.stdout


def calibration_dir(workdir, given):
    if given:
        return given
    if os.path.isdir(ICONS):
        return ICONS
    folder = os.path.join(workdir, "calibration")
    os.makedirs(folder, exist_ok=True)
    image, params = qualitynet.random_inputs(np.random.default_rng(77), 96, 224)
    np.save(os.path.join(folder, "image.npy"), image)
    np.save(os.path.join(folder, "params.npy"), params)
    return folder


def cosine(a, b):
    """The smallest per-sample cosine similarity of two [N, F] arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.min((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def kernels_ran(stdout):
    """(FP32 tier, INT8 tier) from the `tier: X (int8: Y)` line of `qp-engine run`."""
    for line in stdout.splitlines():
        if line.startswith("tier: ") and "(int8: " in line:
            fp32, int8 = line[len("tier: "):].split(" (int8: ")
            return fp32, int8.rstrip(")")
    return None, None


# What each --tiers entry must run; a CPU without it lowers the caps silently, and the
# tier is then reported as skipped.
EXPECTED = {"scalar": ("scalar", "scalar"), "avx2": ("avx2", None), "avx512": ("avx512", "avx512-vnni"),
            "amx": ("avx512", "amx")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qp-engine", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--calibrate")
    ap.add_argument("--tiers", default="scalar,avx2,avx512,amx",
                    help="avx512 runs the AVX512-VNNI kernels (QP_MAX_INT8=avx512-vnni); amx the AMX "
                         "ones, where the CPU has them")
    args = ap.parse_args(argv)
    engine = os.path.abspath(args.qp_engine)
    convert = os.path.join(os.path.dirname(engine), "qp-convert")
    model = os.path.join(args.workdir, "qualitynet_features.onnx")
    fp32 = os.path.join(args.workdir, "qualitynet_features.qpw")
    b3 = os.path.join(args.workdir, "b3")
    for path in (model, fp32, b3):
        if not os.path.exists(path):
            print(f"{path} is missing: run tools/compare_full.py first", file=sys.stderr)
            return 2
    int8 = os.path.join(args.workdir, "qualitynet_features.int8.qpw")
    calib = calibration_dir(args.workdir, args.calibrate)
    summary = json.loads(run([convert, model, "-o", int8, "--precision", "int8", "--calibrate", calib, "--json"]))
    report = summary["reports"]["quantization"]
    failures = []

    ratio = os.path.getsize(int8) / os.path.getsize(fp32)
    print(f"file: int8 {os.path.getsize(int8) / 1e6:.1f} MB = {100 * ratio:.1f}% of fp32")
    if ratio > 0.30:
        failures.append(f"INT8 file is {100 * ratio:.1f}% of the FP32 one (budget 30%)")
    for acc in report["accuracy"]:
        ssim = next(o for o in acc["outputs"] if o["output"] == "ssim")
        cos = acc.get("pooled_features", {}).get("mean", float("nan"))
        print(f"report {acc['set']:14s} ({acc['samples']}): mean |d| {ssim['mean_abs_delta']:.4f} "
              f"(bias {ssim.get('mean_delta', float('nan')):+.4f}) p99 {ssim['p99_abs_delta']:.4f} r {ssim['pearson_r']:.4f} features cos {cos:.5f}")
        if acc["set"] == "all":
            if ssim["mean_abs_delta"] > 0.02:
                failures.append(f"held-out mean |delta ssim| {ssim['mean_abs_delta']:.4f} > 0.02")
            if not ssim["pearson_r"] >= 0.99:
                failures.append(f"held-out Pearson r {ssim['pearson_r']:.4f} < 0.99")
            if not cos >= 0.9995:
                failures.append(f"held-out feature cosine {cos:.5f} < 0.9995")

    ort = {n: np.load(os.path.join(b3, "ort", f"{n}.npy")) for n in ("ssim", "features")}
    inputs = [f"--input=image={os.path.join(b3, 'inputs', 'image.npy')}",
              f"--input=params={os.path.join(b3, 'inputs', 'params.npy')}"]
    first = None
    outputs = {}
    for tier in args.tiers.split(","):
        if tier not in EXPECTED:
            print(f"unknown tier {tier!r} (expected one of {', '.join(EXPECTED)})", file=sys.stderr)
            return 2
        out = os.path.join(args.workdir, f"int8_{tier}")
        os.makedirs(out, exist_ok=True)
        env = dict(os.environ, QP_MAX_ISA="avx512" if tier == "amx" else tier)
        env.pop("QP_MAX_INT8", None)
        if tier == "avx512":
            env["QP_MAX_INT8"] = "avx512-vnni"
        ran = kernels_ran(run([engine, "run", "--model", int8, *inputs, "--out", out], env=env))
        want_fp32, want_int8 = EXPECTED[tier]
        if ran[0] != want_fp32 or want_int8 not in (None, ran[1]):
            print(f"tier {tier:7s}: skipped, this CPU runs {ran[0]} with INT8 kernels {ran[1]}")
            continue
        got = {n: np.load(os.path.join(out, f"{n}.npy")) for n in ("ssim", "features")}
        outputs[tier] = got
        delta = float(np.abs(got["ssim"] - ort["ssim"]).max())
        cos = cosine(got["features"], ort["features"])
        print(f"tier {tier:7s}: ({ran[1]}) max |ssim - ort fp32| {delta:.4f}, min feature cosine {cos:.5f}")
        if delta > 0.06 or cos < 0.9995:
            failures.append(f"tier {tier}: |delta ssim| {delta:.4f} (budget 0.06), cosine {cos:.5f} (>= 0.9995)")
        if first is None:
            first = got
        else:
            apart = float(np.abs(got["ssim"] - first["ssim"]).max())
            print(f"tier {tier:7s}: max |ssim - first tier's| {apart:.4f}")
            if apart > 1e-2:
                failures.append(f"tier {tier} disagrees with {args.tiers.split(',')[0]} by {apart:.4f} (> 1e-2)")
    # Both sum exactly in i32 and share one epilogue: any difference is a kernel bug.
    if "amx" in outputs and "avx512" in outputs:
        same = all(np.array_equal(outputs["amx"][n], outputs["avx512"][n]) for n in ("ssim", "features"))
        print(f"amx and avx512-vnni outputs bit-identical: {same}")
        if not same:
            failures.append("the AMX and AVX512-VNNI tiers differ (they must be bit-identical)")
    for f in failures:
        print("FAIL:", f)
    print("PASS" if not failures else "FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
