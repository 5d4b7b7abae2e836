//! Golden tests: every fixture under tests/fixtures (small ONNX models written the way
//! real exporters write them, with inputs and ONNX Runtime's outputs) converts, loads
//! and matches ONNX Runtime within the fixture's tolerance, on the reference executor and
//! on every kernel tier this CPU runs.

use std::path::{Path, PathBuf};

use qp::convert::{convert_bytes, ConvertOptions};
use qp::engine::{Engine, EngineOptions, Isa, Tensor};
use qp::format::{DType, QpwFile};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 9, "expected the committed fixtures, found {}", v.len());
    v
}

fn case_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap()
}

/// |qp - ort| / max(|ort|, floor) <= rtol for every element, where the floor is the
/// larger of `min_floor` and 1% of the tensor's RMS: an element that is the result of
/// heavy cancellation (0.004 in a map whose values reach 7) carries the rounding error of
/// its large terms, which no summation order avoids, so it is judged on the tensor's scale.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rtol: f64, min_floor: f64) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    let rms = (want.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / want.data.len().max(1) as f64).sqrt();
    let floor = min_floor.max(1e-2 * rms);
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.data.iter().zip(&want.data).enumerate() {
        let err = (g as f64 - w as f64).abs() / (w as f64).abs().max(floor);
        if err > worst.0 || err.is_nan() {
            worst = (if err.is_nan() { f64::INFINITY } else { err }, i);
        }
    }
    assert!(
        worst.0 <= rtol,
        "{what}: relative error {:.3e} at {} (qp {}, ort {}) exceeds {rtol:e}",
        worst.0,
        worst.1,
        got.data[worst.1],
        want.data[worst.1]
    );
}

fn convert_case(dir: &Path) -> anyhow::Result<QpwFile> {
    let onnx = std::fs::read(dir.join("model.onnx"))?;
    let converted = convert_bytes(&onnx, "fixture", &ConvertOptions::default())?;
    Ok(QpwFile::from_bytes(&converted.to_bytes()?)?)
}

fn executors() -> Vec<(String, EngineOptions)> {
    let mut v = vec![(
        "reference".to_string(),
        EngineOptions {
            reference: true,
            ..Default::default()
        },
    )];
    let best = qp_kernels::cpu::features().best_isa();
    for isa in Isa::ALL.into_iter().filter(|&i| i <= best) {
        v.push((
            isa.to_string(),
            EngineOptions {
                max_isa: Some(isa),
                threads: Some(2),
                ..Default::default()
            },
        ));
    }
    v
}

#[test]
fn every_fixture_matches_onnx_runtime() {
    let mut checked = 0;
    for dir in cases() {
        let case = case_json(&dir);
        if case.get("expect_error").is_some() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let rtol = case["rtol"].as_f64().unwrap_or(1e-4);
        let inputs: Vec<(String, Tensor)> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let t = qp::npy::read(&dir.join(i["file"].as_str().unwrap())).unwrap();
                (i["name"].as_str().unwrap().to_string(), t)
            })
            .collect();
        for (exec, options) in executors() {
            let file = convert_case(&dir).unwrap_or_else(|e| panic!("{name}: conversion failed: {e:#}"));
            let mut engine = Engine::from_file(file, options).unwrap();
            let named: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            let outputs = engine.run(&named).unwrap_or_else(|e| panic!("{name}/{exec}: {e}"));
            let want = case["outputs"].as_array().unwrap();
            assert_eq!(outputs.len(), want.len(), "{name}: output count");
            for (o, w) in outputs.iter().zip(want) {
                assert_eq!(o.0, w["name"].as_str().unwrap(), "{name}: output order");
                let expected = qp::npy::read(&dir.join(w["file"].as_str().unwrap())).unwrap();
                assert_close(&format!("{name}/{exec}/{}", o.0), &o.1, &expected, rtol, 1e-3);
            }
            checked += 1;
        }
    }
    assert!(checked >= 9);
}

#[test]
fn unsupported_ops_are_named_with_their_nodes() {
    let dir = fixtures().join("unsupported");
    let case = case_json(&dir);
    let err = format!("{:#}", convert_case(&dir).expect_err("must not convert"));
    for op in case["expect_error"].as_array().unwrap() {
        assert!(err.contains(op.as_str().unwrap()), "error {err:?} does not name {op}");
    }
    for node in case["nodes"].as_array().unwrap() {
        assert!(
            err.contains(node.as_str().unwrap()),
            "error {err:?} does not name node {node}"
        );
    }
    assert!(err.contains("opset"), "error {err:?} does not give the opset");
}

#[test]
fn non_finite_inputs_are_refused_with_their_index() {
    // The image (3 channels, reordered with the check fused in) and params (copied), on
    // every executor; a later run with clean inputs still works.
    let dir = fixtures().join("tiny_bn");
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    for (exec, options) in executors() {
        let mut engine = Engine::from_file(convert_case(&dir).unwrap(), options).unwrap();
        let last = image.data.len() - 1;
        for (name, at, value) in [
            ("image", 0, f32::NAN),
            ("image", last / 2, f32::INFINITY),
            ("image", last, f32::NEG_INFINITY),
            ("params", 1, f32::NAN),
        ] {
            let (mut bad_image, mut bad_params) = (image.clone(), params.clone());
            match name {
                "image" => bad_image.data[at] = value,
                _ => bad_params.data[at] = value,
            }
            let err = engine
                .run(&[("image", bad_image), ("params", bad_params)])
                .expect_err("a non-finite input must be refused")
                .to_string();
            assert!(
                err.contains(&format!(
                    "input \"{name}\" holds a non-finite value ({value}) at flat index {at}"
                )),
                "{exec}: {err}"
            );
        }
        engine
            .run(&[("image", image.clone()), ("params", params.clone())])
            .unwrap_or_else(|e| panic!("{exec}: clean inputs after refusals: {e}"));
    }
}

#[test]
fn inputs_that_overflow_the_model_are_refused_naming_the_node() {
    // Finite inputs near f32::MAX overflow the first convolution. The fast executor's
    // ReLU would turn the resulting NaN into 0 and answer something plausible; every
    // executor must refuse instead, and answer the next clean run.
    let dir = fixtures().join("tiny_bn");
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let huge = Tensor::new(
        image.shape.clone(),
        image
            .data
            .iter()
            .map(|v| if *v >= 0.0 { 3e38 } else { -3e38 })
            .collect(),
    );
    for (exec, options) in executors() {
        let mut engine = Engine::from_file(convert_case(&dir).unwrap(), options).unwrap();
        let err = engine
            .run(&[("image", huge.clone()), ("params", params.clone())])
            .expect_err("an overflowing input must be refused")
            .to_string();
        assert!(
            err.contains("left the f32 range at node") && err.contains("overflow"),
            "{exec}: {err}"
        );
        let first = &engine.meta().nodes[0].name;
        assert!(
            err.contains(&format!("{first:?}")),
            "{exec}: {err} does not name {first}"
        );
        let clean = engine
            .run(&[("image", image.clone()), ("params", params.clone())])
            .unwrap_or_else(|e| panic!("{exec}: clean inputs after the overflow: {e}"));
        assert!(clean[0].1.data.iter().all(|v| v.is_finite()), "{exec}");
    }
}

#[test]
fn large_inputs_that_stay_in_range_are_answered() {
    // 1e20 times the sample image saturates the sigmoid (a logit far below -88) without
    // any value leaving the f32 range: an answer (0), not an error, on every executor.
    let dir = fixtures().join("tiny_bn");
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let mut answers = Vec::new();
    for scale in [1e20f32, -1e20] {
        let big = Tensor::new(image.shape.clone(), image.data.iter().map(|v| v * scale).collect());
        for (exec, options) in executors() {
            let mut engine = Engine::from_file(convert_case(&dir).unwrap(), options).unwrap();
            let out = engine
                .run(&[("image", big.clone()), ("params", params.clone())])
                .unwrap_or_else(|e| panic!("{exec}, scale {scale}: {e}"));
            assert!(
                out[0].1.data.iter().all(|v| (0.0..=1.0).contains(v)),
                "{exec}: {:?}",
                out[0].1.data
            );
            answers.extend(out[0].1.data.iter().copied());
        }
    }
    // Saturated on both sides somewhere, or the test shows nothing about the sigmoid.
    assert!(
        answers.iter().any(|&v| v < 1e-30) && answers.iter().any(|&v| v > 1.0 - 1e-6),
        "{answers:?}"
    );
}

#[test]
fn batch_sizes_agree_with_each_other() {
    // The same sample must give the same answer alone and inside a batch.
    let dir = fixtures().join("tiny_bn");
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let file = convert_case(&dir).unwrap();
    let mut engine = Engine::from_file(
        file,
        EngineOptions {
            reference: true,
            ..Default::default()
        },
    )
    .unwrap();
    let full = engine
        .run(&[("image", image.clone()), ("params", params.clone())])
        .unwrap();
    let per_image = image.data.len() / image.shape[0];
    let per_param = params.data.len() / params.shape[0];
    for b in 0..image.shape[0] {
        let mut ishape = image.shape.clone();
        ishape[0] = 1;
        let mut pshape = params.shape.clone();
        pshape[0] = 1;
        let one = engine
            .run(&[
                (
                    "image",
                    Tensor::new(ishape, image.data[b * per_image..(b + 1) * per_image].to_vec()),
                ),
                (
                    "params",
                    Tensor::new(pshape, params.data[b * per_param..(b + 1) * per_param].to_vec()),
                ),
            ])
            .unwrap();
        assert_eq!(one[0].1.data[0], full[0].1.data[b], "sample {b}");
    }
}

#[test]
fn fp16_weights_halve_the_file_and_stay_close() {
    let dir = fixtures().join("tiny_bn");
    let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
    let fp32 = convert_bytes(&onnx, "t", &ConvertOptions::default())
        .unwrap()
        .to_bytes()
        .unwrap();
    let options = ConvertOptions {
        precision: qp::convert::Precision::Fp16,
        ..Default::default()
    };
    let fp16 = convert_bytes(&onnx, "t", &options).unwrap().to_bytes().unwrap();
    assert!(
        (fp16.len() as f64) <= 0.55 * fp32.len() as f64,
        "fp16 file {} bytes vs fp32 {}",
        fp16.len(),
        fp32.len()
    );
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let expected = qp::npy::read(&dir.join("expected/ssim.npy")).unwrap();
    for (exec, options) in executors() {
        let mut engine = Engine::from_file(QpwFile::from_bytes(&fp16).unwrap(), options).unwrap();
        assert_eq!(engine.meta().precision, "fp16");
        let out = engine
            .run(&[("image", image.clone()), ("params", params.clone())])
            .unwrap();
        for (g, w) in out[0].1.data.iter().zip(&expected.data) {
            // f16 rounding of the weights moves this model's output by about 1e-3 (measured:
            // 1.2e-3 on tiny_bn, 0.6e-3 to 1.6e-3 on the full model); 2e-3 bounds it.
            assert!((g - w).abs() <= 2e-3, "{exec}: fp16 output {g} vs fp32 reference {w}");
        }
    }
}

/// An f16 file's Winograd layers keep their weights in the direct layout, as f16, and the
/// engine transforms them at load: same file size as with `--direct-conv`, and the same
/// outputs within the transform's rounding, on both executors.
#[test]
fn fp16_winograd_layers_are_transformed_at_load() {
    let dir = fixtures().join("tiny_bn");
    let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
    let fp16 = |direct_conv: bool| {
        let options = ConvertOptions {
            precision: qp::convert::Precision::Fp16,
            direct_conv,
            ..Default::default()
        };
        convert_bytes(&onnx, "t", &options).unwrap()
    };
    let (winograd, direct) = (fp16(false), fp16(true));
    let layers: Vec<_> = winograd
        .meta
        .nodes
        .iter()
        .filter(|n| n.op.kind() == "conv_winograd")
        .collect();
    assert_eq!(layers.len(), 3);
    for n in layers {
        let t = &winograd.meta.tensors[n.params[0]];
        assert_eq!(
            (t.dtype, t.dims.len()),
            (DType::F16, 5),
            "{}: direct f16 weights",
            n.name
        );
    }
    let (winograd, direct) = (winograd.to_bytes().unwrap(), direct.to_bytes().unwrap());
    assert_eq!(winograd.len(), direct.len());

    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let inputs = [("image", image), ("params", params)];
    for (exec, options) in executors() {
        let run = |bytes: &[u8]| {
            let mut engine = Engine::from_file(QpwFile::from_bytes(bytes).unwrap(), options.clone()).unwrap();
            engine.run(&inputs.clone()).unwrap()
        };
        let (got, want) = (run(&winograd), run(&direct));
        assert_close(
            &format!("{exec} f16 winograd vs direct"),
            &got[0].1,
            &want[0].1,
            1e-5,
            1e-3,
        );
    }
}

#[test]
fn winograd_layers_agree_with_the_direct_ones() {
    let dir = fixtures().join("tiny_bn");
    let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
    let convert = |options: ConvertOptions| convert_bytes(&onnx, "t", &options).unwrap();
    let kinds =
        |c: &qp::convert::Converted| -> Vec<&'static str> { c.meta.nodes.iter().map(|n| n.op.kind()).collect() };
    let winograd = convert(ConvertOptions::default());
    let direct = convert(ConvertOptions {
        direct_conv: true,
        ..Default::default()
    });
    let fp16 = convert(ConvertOptions {
        precision: qp::convert::Precision::Fp16,
        ..Default::default()
    });
    // The fixture's three stride-1 3x3 layers on 8x8 maps; those on smaller maps and the
    // stride-2 ones stay direct.
    assert_eq!(kinds(&winograd).iter().filter(|&&k| k == "conv_winograd").count(), 3);
    assert!(!kinds(&direct).contains(&"conv_winograd"));
    // An f16 file marks the same layers Winograd; it keeps their weights direct.
    assert_eq!(kinds(&fp16), kinds(&winograd));
    let options = qp::quant::QuantizeOptions {
        profile: qp::quant::DEFAULT_PROFILE,
        method: qp::quant::DEFAULT_METHOD,
        calibration: vec![],
        holdout: vec![],
        compare: false,
        sensitivity: false,
        keep_fp32: vec![],
        bias_correction_samples: 0,
        weight_rounding: qp::quant::DEFAULT_PROFILE.default_weight_rounding(),
        activation_bits: None,
    };
    match qp::quant::quantize(&winograd, &options) {
        Err(e) => assert!(format!("{e:#}").contains("Winograd"), "{e:#}"),
        Ok(_) => panic!("quantized Winograd weights as if they were direct"),
    }

    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let direct = QpwFile::from_bytes(&direct.to_bytes().unwrap()).unwrap();
    let mut want = Engine::from_file(direct, EngineOptions::default()).unwrap();
    let want = want
        .run(&[("image", image.clone()), ("params", params.clone())])
        .unwrap();
    for (exec, options) in executors() {
        let file = QpwFile::from_bytes(&winograd.to_bytes().unwrap()).unwrap();
        let got = Engine::from_file(file, options)
            .unwrap()
            .run(&[("image", image.clone()), ("params", params.clone())])
            .unwrap();
        assert_close(&format!("{exec} winograd vs direct"), &got[0].1, &want[0].1, 1e-5, 1e-3);
    }
}

/// Converts the tiny QualityNet to INT8, calibrated on pseudo-images, with the report's
/// held-out set.
fn tiny_int8(profile: qp::quant::Profile) -> (Vec<u8>, Vec<u8>) {
    tiny_int8_rounded(profile, profile.default_weight_rounding(), None)
}

/// `tiny_int8` with the given weight rounding and bias correction samples (`None`: the
/// rounding's default).
fn tiny_int8_rounded(
    profile: qp::quant::Profile,
    rounding: qp::quant::WeightRounding,
    bias_correction: Option<usize>,
) -> (Vec<u8>, Vec<u8>) {
    tiny_int8_with(profile, rounding, bias_correction, None)
}

/// `tiny_int8_rounded` with activation grids of `activation_bits` (`None`: the
/// profile's).
fn tiny_int8_with(
    profile: qp::quant::Profile,
    rounding: qp::quant::WeightRounding,
    bias_correction: Option<usize>,
    activation_bits: Option<u8>,
) -> (Vec<u8>, Vec<u8>) {
    use qp::quant::dataset::pseudo_images;
    let onnx = std::fs::read(fixtures().join("tiny_bn/model.onnx")).unwrap();
    let direct = ConvertOptions {
        direct_conv: true,
        ..Default::default()
    };
    let fp32 = convert_bytes(&onnx, "t", &direct).unwrap();
    let options = qp::quant::QuantizeOptions {
        profile,
        method: qp::quant::DEFAULT_METHOD,
        calibration: pseudo_images(&fp32.meta, 48, 1).unwrap(),
        holdout: vec![("pseudo-images".into(), pseudo_images(&fp32.meta, 24, 2).unwrap())],
        compare: false,
        sensitivity: false,
        keep_fp32: vec![],
        bias_correction_samples: bias_correction.unwrap_or(qp::quant::default_bias_correction_samples(rounding)),
        weight_rounding: rounding,
        activation_bits,
    };
    let int8 = qp::quant::quantize(&fp32, &options).unwrap();
    (fp32.to_bytes().unwrap(), int8.to_bytes().unwrap())
}

#[test]
fn int8_model_runs_on_every_tier_close_to_onnx_runtime() {
    let dir = fixtures().join("tiny_bn");
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let expected = qp::npy::read(&dir.join("expected/ssim.npy")).unwrap();
    for profile in qp::quant::Profile::ALL {
        let (fp32, int8) = tiny_int8(profile);
        // The conservative profile keeps the first stage FP32.
        let budget = if profile == qp::quant::Profile::Conservative {
            0.6
        } else {
            0.5
        };
        assert!(
            (int8.len() as f64) < budget * fp32.len() as f64,
            "{profile:?}: int8 file {} bytes vs fp32 {}",
            int8.len(),
            fp32.len()
        );
        let file = QpwFile::from_bytes(&int8).unwrap();
        assert_eq!(file.meta.precision, "int8");
        let report = &file.meta.reports["quantization"];
        assert_eq!(report["profile"], serde_json::json!(profile.name()));
        let kept: Vec<&str> = report["fp32_convolutions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let want: &[&str] = match profile {
            qp::quant::Profile::Aggressive => &[],
            qp::quant::Profile::Balanced => &["conv1"],
            // The stem, and the first stage: layer1 and the three convolutions of layer2.0
            // that read maps of its size (conv2 strides).
            qp::quant::Profile::Conservative => &[
                "conv1",
                "layer1.0.conv1",
                "layer1.0.conv2",
                "layer1.0.conv3",
                "layer1.0.downsample",
                "layer1.1.conv1",
                "layer1.1.conv2",
                "layer1.1.conv3",
                "layer1.2.conv1",
                "layer1.2.conv2",
                "layer1.2.conv3",
                "layer2.0.conv1",
                "layer2.0.conv2",
                "layer2.0.downsample",
            ],
        };
        assert_eq!(kept, want, "{profile:?}: convolutions kept FP32");
        let bits = if profile == qp::quant::Profile::Conservative {
            12
        } else {
            8
        };
        assert_eq!(report["activation_bits"], bits, "{profile:?}");
        assert!(
            file.meta.values.iter().filter_map(|v| v.quant).all(|q| q.bits == bits),
            "{profile:?}: grids of {bits} bits"
        );
        // The pooled features keep the FP32 ones' direction (measured on this narrow model:
        // mean cosine 0.974 aggressive, above 0.99 for the others; 0.9994 on the full one).
        let cosine = report["accuracy"][1]["pooled_features"]["mean"].as_f64().unwrap();
        assert!(cosine >= 0.95, "{profile:?}: feature cosine {cosine}");
        // The reference executor has no INT8 path and says so.
        let refused = Engine::from_file(
            QpwFile::from_bytes(&int8).unwrap(),
            EngineOptions {
                reference: true,
                ..Default::default()
            },
        );
        assert!(matches!(refused, Err(e) if e.to_string().contains("INT8")));
        let mut first: Option<Vec<f32>> = None;
        for (exec, options) in executors().into_iter().filter(|(e, _)| e != "reference") {
            let mut engine = Engine::from_file(QpwFile::from_bytes(&int8).unwrap(), options).unwrap();
            let out = engine
                .run(&[("image", image.clone()), ("params", params.clone())])
                .unwrap();
            let ssim = &out[0].1.data;
            for (g, w) in ssim.iter().zip(&expected.data) {
                // Measured on this model (widths / 8, so few channels to average the
                // rounding over): |delta| up to 0.09 against ONNX Runtime FP32.
                assert!((g - w).abs() <= 0.15, "{profile:?} {exec}: int8 {g} vs fp32 {w}");
            }
            // The integer kernels are exact and identical across tiers; only the FP32
            // layers around them (stem, head) differ in summation order. Where one of
            // those differences moves a value across a rounding boundary of the next
            // quantization, the INT8 layers carry it on. The conservative profile's grid
            // is 8x finer and follows ten FP32 layers: on this narrow model its tiers
            // differed by 0.003 (one element of 1536 at the quantization, then a growing
            // number of 1-step differences downstream).
            let agree = if profile == qp::quant::Profile::Conservative {
                1e-2
            } else {
                2e-3
            };
            match &first {
                None => first = Some(ssim.clone()),
                Some(f) => {
                    for (a, b) in ssim.iter().zip(f) {
                        assert!((a - b).abs() <= agree, "{profile:?} {exec}: tiers disagree: {a} vs {b}");
                    }
                }
            }
        }
    }
}

/// The held-out mean |delta| and pooled-feature cosine an INT8 file's report gives.
fn reported_accuracy(int8: &[u8]) -> (f64, f64, String) {
    let file = QpwFile::from_bytes(int8).unwrap();
    let report = &file.meta.reports["quantization"];
    let all = report["accuracy"].as_array().unwrap().last().unwrap();
    (
        all["outputs"][0]["mean_abs_delta"].as_f64().unwrap(),
        all["pooled_features"]["mean"].as_f64().unwrap(),
        report["weight_rounding"].as_str().unwrap().to_string(),
    )
}

/// Without bias correction (so that the rounding alone differs), GPTQ rounding keeps the
/// INT8 model closer to FP32 than nearest rounding does, on held-out samples.
#[test]
fn gptq_rounding_beats_nearest_rounding() {
    use qp::quant::{Profile, WeightRounding};
    let (_, gptq) = tiny_int8_rounded(Profile::Balanced, WeightRounding::Gptq, Some(0));
    let (_, nearest) = tiny_int8_rounded(Profile::Balanced, WeightRounding::Nearest, Some(0));
    let (d_gptq, cos_gptq, name_gptq) = reported_accuracy(&gptq);
    let (d_nearest, cos_nearest, name_nearest) = reported_accuracy(&nearest);
    assert_eq!((name_gptq.as_str(), name_nearest.as_str()), ("gptq", "nearest"));
    eprintln!("mean |d| gptq {d_gptq:.4} nearest {d_nearest:.4}; cosine {cos_gptq:.5} vs {cos_nearest:.5}");
    assert!(d_gptq < d_nearest, "gptq {d_gptq} vs nearest {d_nearest}");
    assert!(cos_gptq > cos_nearest, "gptq {cos_gptq} vs nearest {cos_nearest}");
}

/// 11-bit activation grids (i16 values, paired weights, `vpmaddwd` / `vpdpwssd`): the
/// model runs on every tier, the tiers agree as closely as for u8, and it stays closer to
/// FP32 than the u8 model on held-out samples.
#[test]
fn wide_activation_grids_run_on_every_tier_closer_to_fp32() {
    use qp::quant::{Profile, WeightRounding};
    let dir = fixtures().join("tiny_bn");
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let expected = qp::npy::read(&dir.join("expected/ssim.npy")).unwrap();
    let (_, u8_file) = tiny_int8_with(Profile::Balanced, WeightRounding::Nearest, None, Some(8));
    let (_, wide) = tiny_int8_with(Profile::Balanced, WeightRounding::Nearest, None, Some(11));
    let file = QpwFile::from_bytes(&wide).unwrap();
    let grids: Vec<_> = file.meta.values.iter().filter_map(|v| v.quant).collect();
    assert!(
        !grids.is_empty() && grids.iter().all(|q| q.bits == 11 && q.max() == 2047),
        "{grids:?}"
    );
    assert_eq!(file.meta.reports["quantization"]["activation_bits"], 11);
    let (d_wide, cos_wide, _) = reported_accuracy(&wide);
    let (d_u8, cos_u8, _) = reported_accuracy(&u8_file);
    eprintln!("mean |d| 11-bit {d_wide:.4} u8 {d_u8:.4}; cosine {cos_wide:.5} vs {cos_u8:.5}");
    assert!(
        d_wide < d_u8 && cos_wide > cos_u8,
        "11-bit {d_wide} {cos_wide} vs u8 {d_u8} {cos_u8}"
    );
    let mut first: Option<Vec<f32>> = None;
    for (exec, options) in executors().into_iter().filter(|(e, _)| e != "reference") {
        let mut engine = Engine::from_file(QpwFile::from_bytes(&wide).unwrap(), options).unwrap();
        let out = engine
            .run(&[("image", image.clone()), ("params", params.clone())])
            .unwrap();
        let ssim = &out[0].1.data;
        for (g, w) in ssim.iter().zip(&expected.data) {
            // As for u8 (the bound of `int8_model_runs_on_every_tier_close_to_onnx_runtime`):
            // on this narrow model the s8 weights dominate single samples (up to 0.13 here).
            assert!((g - w).abs() <= 0.15, "{exec}: 11-bit {g} vs fp32 {w}");
        }
        match &first {
            None => first = Some(ssim.clone()),
            Some(f) => {
                for (a, b) in ssim.iter().zip(f) {
                    assert!((a - b).abs() <= 2e-3, "{exec}: tiers disagree: {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn run_through_stops_after_the_given_node() {
    let dir = fixtures().join("tiny_bn");
    let image = qp::npy::read(&dir.join("inputs/image.npy")).unwrap();
    let params = qp::npy::read(&dir.join("inputs/params.npy")).unwrap();
    let inputs = [("image", image), ("params", params)];
    let file = convert_case(&dir).unwrap();
    let nodes = file.meta.nodes.len();
    let mut engine = Engine::from_file(file, EngineOptions::default()).unwrap();
    let last = nodes / 2;
    let mut seen = Vec::new();
    engine
        .run_through(&inputs, last, &mut |node, _| seen.push(node))
        .unwrap();
    assert_eq!(seen, (0..=last).collect::<Vec<_>>());
    let past = engine.run_through(&inputs, nodes, &mut |_, _| {});
    assert!(matches!(past, Err(e) if e.to_string().contains("does not exist")));
    // A full run afterwards is unaffected by the partial one.
    let mut all = 0;
    let out = engine.run_observed(&inputs, &mut |_, _| all += 1).unwrap();
    assert_eq!(all, nodes);
    let mut fresh = Engine::from_file(convert_case(&dir).unwrap(), EngineOptions::default()).unwrap();
    assert_eq!(out[0].1.data, fresh.run(&inputs).unwrap()[0].1.data);
}
