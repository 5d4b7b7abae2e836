//! End to end with the real engine: fixture ONNX models converted to `.qpw`, served,
//! and every answer compared with the engine run directly on the same inputs.

mod serve_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qp::convert::{convert_file, ConvertOptions};
use qp::engine::{Engine, EngineOptions, Tensor};
use qp::preprocess::{features_to_vec, image_to_tensor};
use qp::serve::ModelSpec;
use serde_json::{json, Value};
use serve_common::*;

fn convert(fixture: &str, dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture)
        .join("model.onnx");
    let out = dir.join(format!("{name}.qpw"));
    convert_file(&src, &out, &ConvertOptions::default()).expect("fixture converts");
    out
}

fn run_engine(path: &Path, inputs: Vec<(&str, Tensor)>) -> Vec<f32> {
    let mut engine = Engine::load(path, EngineOptions::default()).unwrap();
    let outputs = engine.run(&inputs).expect("engine runs");
    outputs[0].1.data.clone()
}

/// A value inside each feature's range, different per feature.
fn feature_values(features: &Value, t: f64) -> BTreeMap<String, f64> {
    features
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (min, max) = (f["min"].as_f64().unwrap(), f["max"].as_f64().unwrap());
            let frac = (t + 0.13 * i as f64).fract();
            (f["name"].as_str().unwrap().to_string(), min + (max - min) * frac)
        })
        .collect()
}

#[test]
fn real_models_through_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let features_path = convert("feature_model", dir.path(), "qualitynet-features");
    let image_path = convert("tiny_bn", dir.path(), "qualitynet");
    let a = args(&["--model-dir", dir.path().to_str().unwrap()]);
    let specs: Vec<ModelSpec> = qp::serve::resolve_models(&a)
        .unwrap()
        .into_iter()
        .map(|(name, path)| ModelSpec::from_file(name, path, EngineOptions::default()))
        .collect();
    let server = qp::serve::start(&a, specs, false).expect("serves the converted models");
    let addr = server.local_addr();

    // Feature model via /predict vs the engine on the same normalized vector.
    let info = get(addr, "/model?model=qualitynet-features").json();
    let features_json = &info["inputs"][0]["features"];
    assert!(
        features_json.is_array(),
        "the feature model carries feature metadata: {info}"
    );
    let features: Vec<qp::format::meta::Feature> = serde_json::from_value(features_json.clone()).unwrap();
    let values = feature_values(features_json, 0.31);
    let r = post_json(addr, "/predict", &json!(values));
    assert_eq!(r.status, 200, "{}", r.text());
    let served = r.json()["predicted_ssim"].as_f64().unwrap() as f32;
    let vector = features_to_vec(&values, &features).unwrap();
    let direct = run_engine(
        &features_path,
        vec![("features", Tensor::new(vec![1, vector.len()], vector.clone()))],
    );
    assert_eq!(served, direct[0], "served and direct answers differ");

    // The same vector through KServe v2, batched with a second sample.
    let second = features_to_vec(&feature_values(features_json, 0.77), &features).unwrap();
    let mut both = vector.clone();
    both.extend_from_slice(&second);
    let v = post_json(
        addr,
        "/v2/models/qualitynet-features/infer",
        &json!({"inputs": [{"name": "features", "shape": [2, vector.len()], "datatype": "FP32", "data": both}]}),
    )
    .json();
    let direct2 = run_engine(
        &features_path,
        vec![("features", Tensor::new(vec![2, vector.len()], both.clone()))],
    );
    let data: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    assert_eq!(data, direct2, "{v}");

    // QualityNet (tiny) via /predict with a PNG.
    let info = get(addr, "/model?model=qualitynet").json();
    let image_spec: qp::format::meta::ImagePreprocess =
        serde_json::from_value(info["inputs"][0]["image"].clone()).expect("image metadata");
    let param_features: Vec<qp::format::meta::Feature> =
        serde_json::from_value(info["inputs"][1]["features"].clone()).expect("parameter metadata");
    let png_bytes = {
        let mut img = image::RgbaImage::new(50, 40);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgba([(x * 5) as u8, (y * 6) as u8, 128, 255]);
        }
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let params = feature_values(&info["inputs"][1]["features"], 0.4);
    let mut body = json!(params);
    body["image"] = json!(base64(&png_bytes));
    let r = post_json(addr, "/predict", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let served = r.json()["predicted_ssim"].as_f64().unwrap() as f32;
    let pixels = image_to_tensor(&png_bytes, &image_spec, 1 << 20).unwrap();
    let param_vec = features_to_vec(&params, &param_features).unwrap();
    let (h, w) = (image_spec.height, image_spec.width);
    let direct = run_engine(
        &image_path,
        vec![
            ("image", Tensor::new(vec![1, 3, h, w], pixels)),
            ("params", Tensor::new(vec![1, param_vec.len()], param_vec)),
        ],
    );
    assert_eq!(served, direct[0]);
    assert!(served > 0.0 && served < 1.0);

    // Batch with both models, and the cache on a repeat.
    let r = post_json(addr, "/predict/batch", &json!({"items": [values, body]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results[0]["cached"], true);
    assert_eq!(results[1]["cached"], true);
    assert_eq!(results[1]["predicted_ssim"].as_f64().unwrap() as f32, served);

    let m = get(addr, "/model?model=qualitynet").json();
    assert!(m["isa"].is_string() && m["threads"].as_u64().unwrap() >= 1, "{m}");
    server.shutdown().unwrap();
}

#[test]
fn an_int8_model_serves_and_shows_its_quantization_report() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_bn/model.onnx");
    let calibration = dir.path().join("calibration");
    std::fs::create_dir_all(&calibration).unwrap();
    for name in ["image", "params"] {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/tiny_bn/inputs/{name}.npy"));
        std::fs::copy(from, calibration.join(format!("{name}.npy"))).unwrap();
    }
    let path = dir.path().join("qualitynet.qpw");
    let options = ConvertOptions {
        precision: qp::convert::Precision::Int8,
        int8: qp::convert::Int8Options {
            calibrate: vec![calibration],
            pseudo_samples: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    convert_file(&src, &path, &options).expect("converts to INT8");
    let a = args(&["--model", path.to_str().unwrap()]);
    let specs: Vec<ModelSpec> = qp::serve::resolve_models(&a)
        .unwrap()
        .into_iter()
        .map(|(name, path)| ModelSpec::from_file(name, path, EngineOptions::default()))
        .collect();
    let server = qp::serve::start(&a, specs, false).expect("serves the INT8 model");
    let addr = server.local_addr();

    let m = get(addr, "/model?model=qualitynet").json();
    assert_eq!(m["precision"], "int8", "{m}");
    // The default profile stores activations as i16, which run AVX512-VNNI where the CPU
    // has AMX.
    let best = qp_kernels::qconv::select_int8_tier(qp_kernels::cpu::features().best_isa());
    let best = qp_kernels::qconv::effective_tier_for::<i16>(best);
    assert_eq!(m["int8_tier"], best.name(), "{m}");
    let report = &m["reports"]["quantization"];
    assert_eq!(report["profile"], "conservative", "{m}");
    assert_eq!(report["activation_bits"], 12, "{m}");
    assert!(report["accuracy"][0]["outputs"][0]["mean_abs_delta"].is_number(), "{m}");

    // Served answers equal the engine's on the same inputs.
    let params = feature_values(&m["inputs"][1]["features"], 0.3);
    let param_features: Vec<qp::format::meta::Feature> =
        serde_json::from_value(m["inputs"][1]["features"].clone()).unwrap();
    let image_spec: qp::format::meta::ImagePreprocess =
        serde_json::from_value(m["inputs"][0]["image"].clone()).unwrap();
    let png = {
        let img = image::RgbImage::from_fn(20, 30, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 40]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let mut body = json!(params);
    body["image"] = json!(base64(&png));
    let r = post_json(addr, "/predict", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let served = r.json()["predicted_ssim"].as_f64().unwrap() as f32;
    let (h, w) = (image_spec.height, image_spec.width);
    let direct = run_engine(
        &path,
        vec![
            (
                "image",
                Tensor::new(vec![1, 3, h, w], image_to_tensor(&png, &image_spec, 1 << 20).unwrap()),
            ),
            (
                "params",
                Tensor::new(vec![1, 8], features_to_vec(&params, &param_features).unwrap()),
            ),
        ],
    );
    assert_eq!(served, direct[0]);
}

/// The real engine, each run after a pause: requests sent while one runs queue up and
/// are batched together, deterministically.
struct PausedEngine {
    engine: Engine,
    pause: std::time::Duration,
    runs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl qp::serve::InferenceBackend for PausedEngine {
    fn meta(&self) -> &qp::format::meta::ModelMeta {
        self.engine.meta()
    }
    fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, qp::engine::EngineError> {
        self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.pause);
        self.engine.run(inputs)
    }
    fn info(&self) -> qp::serve::BackendInfo {
        qp::serve::BackendInfo {
            executor: "optimized".into(),
            ..Default::default()
        }
    }
}

#[test]
fn an_input_that_overflows_the_model_fails_only_its_own_request() {
    // Three requests batched together, one of them with values near f32::MAX that
    // overflow the first convolution: the engine refuses the whole batch, and the
    // server must then answer each request on its own, not fail the other two.
    let dir = tempfile::tempdir().unwrap();
    let path = convert("tiny_bn", dir.path(), "qualitynet");
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let spec = {
        let (path, runs) = (path.clone(), runs.clone());
        ModelSpec {
            name: "qualitynet".into(),
            path: Some(path.clone()),
            load: Box::new(move || {
                let engine = Engine::load(&path, EngineOptions::default())?;
                let pause = std::time::Duration::from_millis(300);
                Ok(Box::new(PausedEngine { engine, pause, runs }) as Box<dyn qp::serve::InferenceBackend>)
            }),
        }
    };
    let a = args(&["--max-batch", "8", "--max-delay-us", "2000000", "--cache-entries", "0"]);
    let server = qp::serve::start(&a, vec![spec], false).expect("serves");
    let addr = server.local_addr();
    let info = get(addr, "/model?model=qualitynet").json();
    let image_spec: qp::format::meta::ImagePreprocess =
        serde_json::from_value(info["inputs"][0]["image"].clone()).unwrap();
    let (h, w) = (image_spec.height, image_spec.width);
    let image = |k: usize| -> Vec<f32> {
        (0..3 * h * w)
            .map(|i| ((i * 31 + k * 7) % 97) as f32 / 97.0 - 0.5)
            .collect()
    };
    let params = vec![0.25f32; 8];
    let body = |data: Vec<f32>| {
        json!({"inputs": [
            {"name": "image", "shape": [1, 3, h, w], "datatype": "FP32", "data": data},
            {"name": "params", "shape": [1, 8], "datatype": "FP32", "data": params.clone()},
        ]})
    };
    // The first request finds the engine idle and runs alone; the next three arrive
    // during its pause and make one batch.
    let first = {
        let b = body(image(0));
        std::thread::spawn(move || post_json(addr, "/v2/models/qualitynet/infer", &b))
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let overflowing: Vec<f32> = image(1).iter().map(|v| if *v >= 0.0 { 3e38 } else { -3e38 }).collect();
    let bodies = [body(image(2)), body(overflowing), body(image(3))];
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|b| std::thread::spawn(move || post_json(addr, "/v2/models/qualitynet/infer", &b)))
        .collect();
    assert_eq!(first.join().unwrap().status, 200);
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (k, r) in [(2usize, &replies[0]), (3, &replies[2])] {
        assert_eq!(r.status, 200, "a clean request failed with its batch: {}", r.text());
        let got: Vec<f32> = serde_json::from_value(r.json()["outputs"][0]["data"].clone()).unwrap();
        let direct = run_engine(
            &path,
            vec![
                ("image", Tensor::new(vec![1, 3, h, w], image(k))),
                ("params", Tensor::new(vec![1, 8], params.clone())),
            ],
        );
        assert_eq!(got, direct);
    }
    assert_eq!(replies[1].status, 400, "{}", replies[1].text());
    assert_eq!(replies[1].error_code(), "bad_input");
    assert!(
        replies[1].text().contains("left the f32 range"),
        "{}",
        replies[1].text()
    );
    // One run alone, the batch of three, then each of the three again alone.
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 5);

    // One request of three samples, the middle one overflowing: refused whole, naming
    // the sample.
    let mut data = image(4);
    data.extend(image(1).iter().map(|v| if *v >= 0.0 { 3e38f32 } else { -3e38 }));
    data.extend(image(5));
    let batch = json!({"inputs": [
        {"name": "image", "shape": [3, 3, h, w], "datatype": "FP32", "data": data},
        {"name": "params", "shape": [3, 8], "datatype": "FP32", "data": params.repeat(3)},
    ]});
    let r = post_json(addr, "/v2/models/qualitynet/infer", &batch);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "bad_input");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with("sample 1 of the batch: ") && message.contains("left the f32 range"),
        "{message}"
    );
    // The batch, then samples 0 and 1 alone.
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 8);
    // Every refused run is counted: the batch of three requests, the overflowing request
    // alone, the three-sample batch and its sample 1 alone.
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("qp_engine_failed_runs_total{model=\"qualitynet\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("qp_engine_runs_total{model=\"qualitynet\"} 8"),
        "{metrics}"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_batch_item_the_engine_refuses_is_named() {
    // The feature model with its features' ranges widened to f32::MAX and left
    // unnormalized, so an item can pass the server's checks and still overflow the model.
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/feature_model/model.onnx");
    let mut model = qp::onnx::proto::ModelProto::decode(&std::fs::read(src).unwrap()[..]).unwrap();
    let entry = model
        .metadata_props
        .iter_mut()
        .find(|p| p.key.as_deref() == Some("qp.features.features"))
        .expect("the fixture describes its features");
    let mut features: Value = serde_json::from_str(entry.value.as_deref().unwrap()).unwrap();
    for f in features.as_array_mut().unwrap() {
        f["min"] = json!(0.0);
        f["max"] = json!(f32::MAX);
        f["normalize"] = json!(false);
    }
    entry.value = Some(features.to_string());
    let onnx = dir.path().join("wide.onnx");
    std::fs::write(&onnx, model.encode_to_vec()).unwrap();
    let qpw = dir.path().join("wide.qpw");
    convert_file(&onnx, &qpw, &ConvertOptions::default()).expect("converts");

    let a = args(&["--cache-entries", "0"]);
    let spec = ModelSpec::from_file("wide".into(), qpw, EngineOptions::default());
    let server = qp::serve::start(&a, vec![spec], false).expect("serves");
    let addr = server.local_addr();
    let item = |v: f64| -> Value {
        features
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap().to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let r = post_json(addr, "/predict/batch", &json!({"items": [item(0.5), item(0.25)]}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(
        addr,
        "/predict/batch",
        &json!({"items": [item(0.5), item(3e38), item(0.25)]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "bad_input");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.starts_with("items[1]: ") && message.contains("left the f32 range"),
        "{message}"
    );
    server.shutdown().unwrap();
}
