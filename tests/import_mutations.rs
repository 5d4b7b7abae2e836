//! Damaged ONNX models, generated: each case takes a supported fixture and changes a few
//! of the things an exporter or a disk can get wrong (an attribute, a dimension, a wire
//! between nodes, an op type, a weight). Whatever comes out, the converter must answer
//! with an error or a model that runs and agrees with the scalar reference executor
//! (past a finite but absurd weight: that runs finite or refuses the inputs clearly):
//! never a panic, and never a file the engine refuses or runs differently per executor.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use prost::Message;
use qp::convert::{convert_bytes, ConvertOptions};
use qp::engine::{Engine, EngineOptions, Tensor};
use qp::format::QpwFile;
use qp::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto, ModelProto};

/// Every fixture that converts as it is, decoded.
fn fixtures() -> &'static [ModelProto] {
    static MODELS: OnceLock<Vec<ModelProto>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .expect("fixtures folder")
            .map(|e| e.expect("fixture entry").path().join("model.onnx"))
            .filter(|p| p.exists())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| std::fs::read(&p).expect("fixture"))
            .filter(|b| convert_bytes(b, "fixture", &ConvertOptions::default()).is_ok())
            .map(|b| ModelProto::decode(&b[..]).expect("fixture decodes"))
            .collect()
    })
}

/// One change; the numbers pick the node, attribute, tensor or index (modulo the
/// counts the model has), `value` the new integer.
#[derive(Clone, Debug)]
enum Mutation {
    NodeAttribute {
        node: usize,
        attribute: usize,
        index: usize,
        value: i64,
        drop: bool,
    },
    InitializerDim {
        tensor: usize,
        index: usize,
        value: i64,
    },
    InputDim {
        input: usize,
        index: usize,
        value: i64,
    },
    Rewire {
        node: usize,
        input: usize,
        from: usize,
    },
    DropInput {
        node: usize,
    },
    OpType {
        node: usize,
        op: usize,
    },
    Weight {
        tensor: usize,
        index: usize,
        poison: usize,
    },
}

/// The values a `Weight` change writes. On a raw buffer the last one (`0.0`) is not
/// written: the buffer loses its last value instead.
const POISONS: [f32; 4] = [f32::NAN, f32::INFINITY, ABSURD_WEIGHT, 0.0];

/// Finite, so the converter keeps it, but far beyond any trained weight.
const ABSURD_WEIGHT: f32 = 1e30;

const OPS: [&str; 13] = [
    "Relu",
    "Add",
    "Conv",
    "MaxPool",
    "GlobalAveragePool",
    "Flatten",
    "Gemm",
    "Concat",
    "Sigmoid",
    "Reshape",
    "MatMul",
    "AveragePool",
    "Identity",
];

fn interesting_int() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..10,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i32::MAX as i64 + 1),
        Just(1 << 40),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let n = || 0usize..1000;
    prop_oneof![
        3 => (n(), n(), n(), interesting_int(), any::<bool>())
            .prop_map(|(node, attribute, index, value, drop)| Mutation::NodeAttribute { node, attribute, index, value, drop }),
        1 => (n(), n(), interesting_int()).prop_map(|(tensor, index, value)| Mutation::InitializerDim { tensor, index, value }),
        1 => (n(), n(), interesting_int()).prop_map(|(input, index, value)| Mutation::InputDim { input, index, value }),
        1 => (n(), n(), n()).prop_map(|(node, input, from)| Mutation::Rewire { node, input, from }),
        1 => n().prop_map(|node| Mutation::DropInput { node }),
        1 => (n(), 0..OPS.len()).prop_map(|(node, op)| Mutation::OpType { node, op }),
        1 => (n(), n(), 0usize..4).prop_map(|(tensor, index, poison)| Mutation::Weight { tensor, index, poison }),
    ]
}

fn apply(m: &mut ModelProto, change: &Mutation) {
    let g = m.graph.as_mut().expect("fixtures have graphs");
    let pick = |i: usize, len: usize| (len > 0).then(|| i % len);
    match *change {
        Mutation::NodeAttribute {
            node,
            attribute,
            index,
            value,
            drop,
        } => {
            let Some(n) = pick(node, g.node.len()) else { return };
            let Some(a) = pick(attribute, g.node[n].attribute.len()) else {
                return;
            };
            let at = &mut g.node[n].attribute[a];
            if let Some(i) = pick(index, at.ints.len()) {
                at.ints[i] = value;
                if drop {
                    at.ints.pop();
                }
            } else if at.i.is_some() {
                at.i = Some(value);
            } else if at.f.is_some() {
                at.f = Some(value as f32 * 0.5);
            }
        }
        Mutation::InitializerDim { tensor, index, value } => {
            let Some(t) = pick(tensor, g.initializer.len()) else {
                return;
            };
            let dims = &mut g.initializer[t].dims;
            match pick(index, dims.len()) {
                Some(i) => dims[i] = value,
                None => dims.push(value),
            }
        }
        Mutation::InputDim { input, index, value } => {
            let Some(k) = pick(input, g.input.len()) else { return };
            let ty = g.input[k].r#type.as_mut().and_then(|t| t.value.as_mut());
            if let Some(type_proto::Value::TensorType(tt)) = ty {
                if let Some(shape) = tt.shape.as_mut() {
                    if let Some(i) = pick(index, shape.dim.len()) {
                        shape.dim[i].value = Some(Value::DimValue(value));
                    }
                }
            }
        }
        Mutation::Rewire { node, input, from } => {
            let (Some(a), Some(b)) = (pick(node, g.node.len()), pick(from, g.node.len())) else {
                return;
            };
            let Some(source) = g.node[b].output.first().cloned() else {
                return;
            };
            if let Some(i) = pick(input, g.node[a].input.len()) {
                g.node[a].input[i] = source;
            }
        }
        Mutation::DropInput { node } => {
            if let Some(n) = pick(node, g.node.len()) {
                g.node[n].input.pop();
            }
        }
        Mutation::OpType { node, op } => {
            if let Some(n) = pick(node, g.node.len()) {
                g.node[n].op_type = Some(OPS[op].into());
            }
        }
        Mutation::Weight { tensor, index, poison } => {
            let Some(t) = pick(tensor, g.initializer.len()) else {
                return;
            };
            let t = &mut g.initializer[t];
            let value = POISONS[poison];
            if let Some(i) = pick(index, t.float_data.len()) {
                t.float_data[i] = value;
            } else if let Some(raw) = t.raw_data.as_mut() {
                match (poison, pick(index, raw.len() / 4)) {
                    // A raw buffer one value short.
                    (3, Some(_)) => raw.truncate(raw.len() - 4),
                    (_, Some(i)) => raw[i * 4..i * 4 + 4].copy_from_slice(&value.to_le_bytes()),
                    (_, None) => {}
                }
            }
        }
    }
}

/// What one executor made of the inputs: its outputs, flattened, or why it refused them.
type Run = Result<Vec<f32>, String>;

/// Runs a converted file on the fast and the reference executor with the same inputs;
/// `Err` when the engine refuses the file (it must not: the converter validated it).
fn run_both(bytes: &[u8], batch: usize) -> Result<(Run, Run), String> {
    let load = |reference: bool| {
        let file = QpwFile::from_bytes(bytes).map_err(|e| e.to_string())?;
        let options = EngineOptions {
            reference,
            threads: Some(2),
            ..Default::default()
        };
        Engine::from_file(file, options).map_err(|e| e.to_string())
    };
    let (mut fast, mut reference) = (load(false)?, load(true)?);
    let inputs: Vec<(String, Tensor)> = fast
        .meta()
        .inputs
        .iter()
        .map(|i| {
            let shape: Vec<usize> = std::iter::once(batch).chain(i.shape.iter().copied()).collect();
            let n = shape.iter().product();
            let data = (0..n).map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            (i.name.clone(), Tensor::new(shape, data))
        })
        .collect();
    let named: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let flat = |outs: Vec<(String, Tensor)>| outs.into_iter().flat_map(|(_, t)| t.data).collect::<Vec<f32>>();
    let fast_run = fast.run(&named).map(flat).map_err(|e| e.to_string());
    let reference_run = reference.run(&named).map(flat).map_err(|e| e.to_string());
    Ok((fast_run, reference_run))
}

/// The engine's refusal of inputs on which the arithmetic left the f32 range.
fn overflowed(run: &Run) -> bool {
    matches!(run, Err(e) if e.contains("left the f32 range at node"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_model_is_an_error_or_runs_the_same_everywhere(
        fixture in 0usize..1000,
        changes in prop::collection::vec(mutation(), 1..4),
        batch in 1usize..4,
    ) {
        let models = fixtures();
        let mut model = models[fixture % models.len()].clone();
        for c in &changes {
            apply(&mut model, c);
        }
        let Ok(converted) = convert_bytes(&model.encode_to_vec(), "case", &ConvertOptions::default()) else {
            return Ok(());
        };
        let bytes = converted.to_bytes().expect("a converted model serializes");
        let (fast, reference) = run_both(&bytes, batch).map_err(|e| TestCaseError::fail(format!("converted, then: {e}")))?;
        // A weight can be finite and still absurd: the converter cannot know which
        // inputs will then overflow, so the engine refuses those inputs, clearly. Near
        // the edge of the range the summation order (blocked channels, Winograd)
        // decides whether a sum overflows, and sums of terms near 1e30 cancel to far
        // smaller outputs that the order moves by more than 1e-3 of what is left: past
        // an absurd weight the executors are held to refusing clearly or running
        // finite, not to agreeing.
        let absurd = changes
            .iter()
            .any(|c| matches!(c, Mutation::Weight { poison, .. } if POISONS[*poison] == ABSURD_WEIGHT));
        let (got, want) = match (fast, reference) {
            (Ok(got), Ok(want)) => (got, want),
            (f, r) if overflowed(&f) && overflowed(&r) => return Ok(()),
            (f, r) if absurd && (overflowed(&f) || overflowed(&r)) && (f.is_ok() || r.is_ok()) => return Ok(()),
            (f, r) => return Err(TestCaseError::fail(format!("fast: {f:?}; reference: {r:?}"))),
        };
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert!(g.is_finite(), "non-finite output {} (reference {})", g, w);
            prop_assert!(absurd || (g - w).abs() <= 1e-3 * w.abs().max(1.0), "fast {} vs reference {}", g, w);
        }
    }
}
