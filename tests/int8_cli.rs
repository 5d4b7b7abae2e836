//! `qp-convert --precision int8` from the command line: calibration from a folder of
//! images or `.npy` arrays, the report it prints and stores, and clear errors for every
//! way to hold it wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qp::format::{DType, QpwFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn convert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qp-convert"))
        .args(args)
        .output()
        .expect("run qp-convert")
}

/// The tiny model converted at `precision`, calibrated on `data`, to `out`, with `extra`
/// flags.
fn convert_calibrated(precision: &str, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let model = fixture("tiny_bn/model.onnx");
    let mut args = vec![
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--precision",
        precision,
        "--calibrate",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    convert(&args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What `qp-engine info` prints about `model`.
fn engine_info(model: &Path) -> String {
    let info = Command::new(env!("CARGO_BIN_EXE_qp-engine"))
        .args(["info", model.to_str().unwrap()])
        .output()
        .unwrap();
    let shown = text(&info);
    assert!(info.status.success(), "{shown}");
    shown
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qp-int8-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Logo-like test images: flat shapes on white, each different.
fn write_images(dir: &Path, n: u32) {
    for i in 0..n {
        let img = image::RgbImage::from_fn(40 + i, 32 + 2 * i, |x, y| {
            let inside = (x as i64 - 20).pow(2) + (y as i64 - 16).pow(2) < (60 + 40 * i as i64);
            if inside {
                image::Rgb([(37 * i % 256) as u8, (91 * i % 256) as u8, 200])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        img.save(dir.join(format!("logo{i:02}.png"))).unwrap();
    }
}

#[test]
fn images_calibrate_and_the_report_is_printed_and_stored() {
    let dir = scratch("images");
    std::fs::create_dir_all(dir.join("icons")).unwrap();
    write_images(&dir.join("icons"), 12);
    let out = dir.join("tiny.int8.qpw");
    let o = convert_calibrated(
        "int8",
        &dir.join("icons"),
        &out,
        &[
            "--pseudo-samples",
            "8",
            // Off by default with GPTQ rounding; on here for the VNNI advice check below.
            "--bias-correction-samples",
            "9",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let printed = text(&o);
    assert!(
        printed.contains(
            "profile conservative, 12-bit activations (i16), clipping mse, gptq weight rounding, 9 calibration samples, biases corrected on 9"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("images (3)") && printed.contains("pseudo-images (8)"),
        "{printed}"
    );
    // On a CPU without VNNI the engine advises the FP32 file once per process, although
    // bias correction loads an engine per convolution.
    assert!(printed.matches("has no VNNI").count() <= 1, "{printed}");

    let shown = engine_info(&out);
    assert!(shown.contains("precision   int8"), "{shown}");
    assert!(shown.contains("accuracy vs FP32 (held out)"), "{shown}");

    // bench --accuracy measures the same thing against the FP32 file.
    let fp32 = dir.join("tiny.qpw");
    assert!(convert(&[
        fixture("tiny_bn/model.onnx").to_str().unwrap(),
        "-o",
        fp32.to_str().unwrap()
    ])
    .status
    .success());
    // The sets `bench --accuracy` measured on, as its JSON.
    let bench_accuracy = |extra: &[&str]| -> serde_json::Value {
        let o = Command::new(env!("CARGO_BIN_EXE_qp-engine"))
            .args(["bench", "--model", out.to_str().unwrap()])
            .args(["--accuracy", fp32.to_str().unwrap(), "--json"])
            .args(["--accuracy-images", dir.join("icons").to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let sets = bench_accuracy(&["--accuracy-samples", "4"]);
    assert_eq!(sets[0]["set"], "pseudo-images");
    assert_eq!(sets[1]["samples"], 4);
    let cosine = sets[1]["pooled_features"]["mean"].as_f64().unwrap();
    assert!(cosine > 0.9 && cosine <= 1.0 + 1e-9, "{cosine}");
    // --accuracy-held-out keeps the icons the conversion held out: 3 of the 12.
    let sets = bench_accuracy(&["--accuracy-samples", "8", "--accuracy-held-out"]);
    assert_eq!(sets[1]["set"], "held-out images");
    assert_eq!(sets[1]["samples"], 3);

    // QP_MAX_INT8 caps the INT8 kernels; an unknown tier is refused, not ignored.
    let bench_capped = |cap: &str| {
        Command::new(env!("CARGO_BIN_EXE_qp-engine"))
            .args([
                "bench",
                "--model",
                out.to_str().unwrap(),
                "--iterations",
                "1",
                "--warmup",
                "0",
            ])
            .env("QP_MAX_INT8", cap)
            .output()
            .unwrap()
    };
    let capped = bench_capped("avx2");
    assert!(capped.status.success(), "{}", text(&capped));
    let refused = bench_capped("vnni");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("QP_MAX_INT8") && text(&refused).contains("avx512-vnni, amx"),
        "{}",
        text(&refused)
    );

    // `run` names the kernels that ran, which the test scripts read to tell a tier that
    // ran from a cap this CPU lowered.
    let inputs = fixture("tiny_bn/inputs");
    let ran = Command::new(env!("CARGO_BIN_EXE_qp-engine"))
        .args(["run", "--model", out.to_str().unwrap(), "--out"])
        .arg(dir.join("outputs"))
        .arg(format!("--input=image={}", inputs.join("image.npy").display()))
        .arg(format!("--input=params={}", inputs.join("params.npy").display()))
        .env("QP_MAX_ISA", "scalar")
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", text(&ran));
    assert!(
        text(&ran).lines().any(|l| l == "tier: scalar (int8: scalar)"),
        "{}",
        text(&ran)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn npy_arrays_calibrate_too() {
    let dir = scratch("npy");
    for name in ["image", "params"] {
        std::fs::copy(
            fixture(&format!("tiny_bn/inputs/{name}.npy")),
            dir.join(format!("{name}.npy")),
        )
        .unwrap();
    }
    let out = dir.join("tiny.int8.qpw");
    let o = convert_calibrated(
        "int8",
        &dir,
        &out,
        &[
            "--profile",
            "aggressive",
            "--calibration-method",
            "percentile99.9",
            "--weight-rounding",
            "gptq",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("profile aggressive, 8-bit activations (u8), clipping percentile(99.9), gptq weight rounding, 3 calibration samples, biases not corrected"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wider_activation_grids_are_stored_as_i16_and_reported() {
    let dir = scratch("wide");
    write_images(&dir, 6);
    let out = dir.join("tiny.int8-15.qpw");
    let o = convert_calibrated(
        "int8",
        &dir,
        &out,
        &["--pseudo-samples", "4", "--activation-bits", "15"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("15-bit activations (i16)"), "{}", text(&o));
    assert!(engine_info(&out).contains("15-bit activations (i16)"));
    // On 15 bits a sum of more than 511 products could overflow i32: the inputs of the
    // 3x3 layers with 64 channels (576 products) get 14 bits, every other value 15.
    let file = QpwFile::open(&out).unwrap();
    let meta = &file.meta;
    let mut seen = std::collections::BTreeSet::new();
    for n in &meta.nodes {
        if let qp::graph::op::Op::QConv { cin, window, .. } = n.op {
            let q = meta.values[n.inputs[0]].quant.expect("quantized input");
            let reduction = window.kernel[0] * window.kernel[1] * cin.div_ceil(4) * 4;
            let want = if reduction > 511 { 14 } else { 15 };
            assert_eq!(q.bits, want, "{}: reduction {reduction}", n.name);
            seen.insert(q.bits);
        }
    }
    assert_eq!(seen, [14, 15].into(), "both grids occur");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `qp-convert --precision fp16` of the tiny_bn fixture into `dir/name`, calibrated on
/// `icons` with 8 pseudo-images held out, plus `extra`; it must succeed.
fn convert_fp16_calibrated(dir: &Path, icons: &Path, name: &str, extra: &[&str]) -> (PathBuf, Output) {
    let out = dir.join(name);
    let mut args = vec!["--pseudo-samples", "8"];
    args.extend_from_slice(extra);
    let o = convert_calibrated("fp16", icons, &out, &args);
    assert!(o.status.success(), "{}", text(&o));
    (out, o)
}

/// `--precision fp16 --calibrate` rounds the conv and dense weights with GPTQ onto f16
/// values and reports the accuracy on held-out images; `--weight-rounding nearest` keeps
/// plain rounding with the same report.
#[test]
fn calibrated_fp16_rounds_with_gptq_and_reports() {
    let dir = scratch("fp16");
    let icons = dir.join("icons");
    std::fs::create_dir_all(&icons).unwrap();
    write_images(&icons, 12);
    let run = |name: &str, extra: &[&str]| {
        let (out, o) = convert_fp16_calibrated(&dir, &icons, name, extra);
        (out, text(&o))
    };
    let (gptq, printed) = run("gptq.qpw", &[]);
    // 9 calibration images plus 5 pseudo-images; 3 held-out images and 8 pseudo-images.
    assert!(
        printed.contains("fp16        gptq weight rounding, 14 calibration samples"),
        "{printed}"
    );
    assert!(
        printed.contains("images (3)") && printed.contains("all (11)"),
        "{printed}"
    );
    let (nearest, printed) = run("nearest.qpw", &["--weight-rounding", "nearest"]);
    assert!(
        printed.contains("fp16        nearest weight rounding, 0 calibration samples"),
        "{printed}"
    );

    let shown = engine_info(&gptq);
    assert!(
        shown.contains("precision   fp16") && shown.contains("gptq weight rounding"),
        "{shown}"
    );

    // Same file size (every value an f16), different weights: GPTQ moved some roundings.
    let (a, b) = (std::fs::read(&gptq).unwrap(), std::fs::read(&nearest).unwrap());
    assert_eq!(a.len(), b.len());
    assert_ne!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With calibration data an f16 file keeps the layers most sensitive to f16 rounding
/// f32, within `--keep-fp32-share` of the parameters: the report names them, the file
/// stores exactly those weights f32, and the held-out error falls. `--keep-fp32` adds
/// layers by name.
#[test]
fn fp16_keeps_the_most_sensitive_layers_f32() {
    let dir = scratch("fp16-keep");
    let icons = dir.join("icons");
    std::fs::create_dir_all(&icons).unwrap();
    write_images(&icons, 12);
    let run = |name: &str, extra: &[&str]| {
        let (out, o) = convert_fp16_calibrated(&dir, &icons, name, &[extra, &["--json"]].concat());
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let report = summary["reports"]["fp16"].clone();
        let kept: Vec<String> = serde_json::from_value(report["kept_f32"].clone()).unwrap();
        let all = report["accuracy"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(all["set"], "all");
        let mean = all["outputs"][0]["mean_abs_delta"].as_f64().unwrap();
        (QpwFile::open(&out).unwrap(), kept, mean)
    };
    // The dtype of each conv and dense layer's weights, by node name.
    let weights = |file: &QpwFile| -> Vec<(String, DType, usize)> {
        let meta = &file.meta;
        meta.nodes
            .iter()
            .filter(|n| n.op.kind() == "conv" || n.op.kind() == "dense")
            .map(|n| {
                let t = &meta.tensors[n.params[0]];
                (n.name.clone(), t.dtype, t.numel())
            })
            .collect()
    };

    let (none, kept, mean_none) = run("none.qpw", &["--keep-fp32-share", "0"]);
    assert!(kept.is_empty(), "{kept:?}");
    let (chosen, kept, mean_chosen) = run("chosen.qpw", &["--keep-fp32-share", "10"]);
    assert!(!kept.is_empty());
    let parameters = chosen.meta.stats.parameters as usize;
    let mut kept_weights = 0;
    for ((name, before, count), (_, after, _)) in weights(&none).into_iter().zip(weights(&chosen)) {
        if kept.contains(&name) {
            assert_eq!((before, after), (DType::F16, DType::F32), "{name}");
            kept_weights += count;
        } else {
            assert_eq!(before, after, "{name}");
        }
    }
    assert!(kept_weights * 10 <= parameters, "{kept_weights} of {parameters}");
    assert!(
        mean_chosen < mean_none,
        "keeping {kept:?} f32: mean |d| {mean_chosen} vs {mean_none}"
    );

    let (named, kept, _) = run(
        "named.qpw",
        &["--keep-fp32-share", "0", "--keep-fp32", "layer3.1.conv2"],
    );
    assert_eq!(kept, ["layer3.1.conv2"]);
    let dtypes = weights(&named);
    assert!(dtypes.iter().any(|(n, d, _)| n == "layer3.1.conv2" && *d == DType::F32));
    assert_eq!(
        dtypes.iter().filter(|(_, d, _)| *d == DType::F32).count(),
        1 + weights(&none).iter().filter(|(_, d, _)| *d == DType::F32).count()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn misuse_is_a_clear_error() {
    let model = fixture("tiny_bn/model.onnx");
    let model = model.to_str().unwrap();
    let empty = scratch("empty");
    let out = empty.join("x.qpw");
    let out = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![model, "-o", out, "--precision", "int8"], "--calibrate DIR"),
        (
            vec![
                model,
                "-o",
                out,
                "--precision",
                "int8",
                "--calibrate",
                empty.to_str().unwrap(),
            ],
            "no calibration data",
        ),
        (
            vec![
                model,
                "-o",
                out,
                "--precision",
                "int8",
                "--calibrate",
                "/nonexistent/dir",
            ],
            "not a directory",
        ),
        (
            vec![model, "-o", out, "--calibrate", empty.to_str().unwrap()],
            "applies to --precision int8 and fp16 only",
        ),
        (
            vec![
                model,
                "-o",
                out,
                "--precision",
                "int8",
                "--calibration-method",
                "median",
            ],
            "expected mse, minmax, percentile",
        ),
        (
            vec![model, "-o", out, "--precision", "int8", "--profile", "fast"],
            "expected aggressive, balanced or conservative",
        ),
        (
            vec![model, "-o", out, "--precision", "int8", "--weight-rounding", "up"],
            "expected gptq or nearest",
        ),
        (
            vec![model, "-o", out, "--precision", "fp16", "--weight-rounding", "gptq"],
            "GPTQ rounding to f16 needs calibration data: --calibrate DIR",
        ),
        (
            vec![model, "-o", out, "--weight-rounding", "gptq"],
            "--weight-rounding applies to --precision int8 and fp16 only",
        ),
        (
            vec![model, "-o", out, "--precision", "fp16", "--profile", "conservative"],
            "--profile applies to --precision int8 only",
        ),
        (
            vec![model, "-o", out, "--compare"],
            "--compare applies to --precision int8 only",
        ),
        (
            vec![model, "-o", out, "--holdout-samples", "10"],
            "--holdout-samples applies to --precision int8 and fp16 only",
        ),
        (
            vec![model, "-o", out, "--precision", "fp16", "--pseudo-samples", "4"],
            "--pseudo-samples needs --calibrate DIR",
        ),
        (
            vec![model, "-o", out, "--precision", "int8", "--calibration-samples", "8"],
            "--calibration-samples needs --calibrate DIR",
        ),
        (
            vec![model, "-o", out, "--precision", "fp16", "--keep-fp32-share", "2"],
            "--keep-fp32-share needs --calibrate DIR",
        ),
        (
            vec![model, "-o", out, "--precision", "int8", "--keep-fp32-share", "2"],
            "--keep-fp32-share applies to --precision fp16 only",
        ),
        (
            vec![model, "-o", out, "--keep-fp32-share", "2"],
            "--keep-fp32-share applies to --precision fp16 only",
        ),
        (
            vec![model, "-o", out, "--precision", "fp16", "--keep-fp32-share", "120"],
            "expected a percentage from 0 to 100",
        ),
        (
            vec![model, "-o", out, "--precision", "fp16", "--keep-fp32", "layer9.conv1"],
            "no convolution or dense layer has that name",
        ),
        (
            vec![model, "-o", out, "--keep-fp32", "layer1.0.conv1"],
            "--keep-fp32 applies to --precision int8 and fp16 only",
        ),
        (
            vec![model, "-o", out, "--precision", "int8", "--activation-bits", "16"],
            "16 is not in 8..=15",
        ),
        (
            vec![model, "-o", out, "--precision", "fp16", "--activation-bits", "11"],
            "--activation-bits applies to --precision int8 only",
        ),
    ];
    for (args, want) in cases {
        let o = convert(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{args:?}: {}", text(&o));
    }
    // A layer to keep FP32 that does not exist is named, with the ones that do.
    let images = scratch("keep");
    write_images(&images, 4);
    let o = convert_calibrated("int8", &images, Path::new(out), &["--keep-fp32", "layer9.conv1"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("\"layer9.conv1\"") && t.contains("layer1.0.conv1"), "{t}");
    assert!(!Path::new(out).exists(), "nothing is written on error");
    let _ = std::fs::remove_dir_all(&empty);
    let _ = std::fs::remove_dir_all(&images);
}
