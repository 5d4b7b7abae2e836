//! Whole-model latency per kernel tier at batch 1. Uses the full QualityNet when it is
//! present (/tmp/qn.qpw, or weights/qualitynet.qpw), otherwise the tiny BatchNorm fixture
//! converted in-process, so the bench always has a model to run.
//!
//!     cargo bench --bench model

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use qp::bench::inputs::random_inputs;
use qp::bench::{tiers_to_run, TierChoice, INPUT_SEED};
use qp::engine::{Engine, EngineOptions, Tensor};
use qp::format::QpwFile;

const FULL_MODELS: [&str; 2] = ["/tmp/qn.qpw", "weights/qualitynet.qpw"];
const TINY_FIXTURE: &str = "tests/fixtures/tiny_bn/model.onnx";

/// The model file image and a label for the bench ids.
fn model_bytes() -> (String, Vec<u8>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for candidate in FULL_MODELS {
        let path = root.join(candidate);
        if let Ok(bytes) = std::fs::read(&path) {
            return ("qualitynet".to_string(), bytes);
        }
    }
    let onnx = std::fs::read(root.join(TINY_FIXTURE)).expect("the tiny_bn fixture ships with the repository");
    let converted = qp::convert::convert_bytes(&onnx, "tiny_bn", &Default::default()).expect("fixture converts");
    ("tiny_bn".to_string(), converted.to_bytes().expect("fixture serializes"))
}

fn bench_model(c: &mut Criterion) {
    let (label, bytes) = model_bytes();
    let mut group = c.benchmark_group(format!("model/{label}"));
    // A full-model run takes tens of milliseconds (seconds on the scalar tier).
    group.sample_size(10);
    for tier in tiers_to_run(&TierChoice::All, None).expect("tier selection") {
        let file = QpwFile::from_bytes(&bytes).expect("valid model");
        let options = EngineOptions {
            max_isa: Some(tier),
            threads: None,
            reference: false,
        };
        let mut engine = Engine::from_file(file, options).expect("engine");
        let feeds = random_inputs(engine.meta(), 1, INPUT_SEED);
        let feeds: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        engine.run(&feeds).expect("first run");
        let id = BenchmarkId::new(tier.name(), format!("b1/t{}", engine.threads()));
        group.bench_function(id, |b| b.iter(|| engine.run(&feeds).expect("run")));
    }
    group.finish();
}

criterion_group!(benches, bench_model);
criterion_main!(benches);
