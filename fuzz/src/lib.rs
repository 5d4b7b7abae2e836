//! Shared by the fuzz targets: run a model that passed validation once, with zero inputs,
//! when it is small enough to run in a fuzzing budget.

use qp::engine::{Engine, EngineOptions, Tensor};
use qp::format::layout::{checksum, header_checksum, Header, TensorEntry, ENTRY_SIZE, HEADER_SIZE};
use qp::format::{ModelMeta, QpwFile};
use qp::graph::op::Op;

/// Multiply-adds (or element visits) one sample costs, saturating; a valid model can ask
/// for hours of compute or gigabytes of activations, which is allowed but not fuzzable.
pub fn work_per_sample(meta: &ModelMeta) -> u64 {
    let numel = |v: usize| -> u64 {
        meta.values[v]
            .shape
            .iter()
            .fold(1u64, |a, &d| a.saturating_mul(d as u64))
    };
    meta.nodes.iter().fold(0u64, |total, n| {
        let out = numel(n.outputs[0]);
        let per_output = match &n.op {
            Op::Conv { cin, window, .. } => (*cin as u64).saturating_mul((window.kernel[0] * window.kernel[1]) as u64),
            Op::Dense { input, .. } => *input as u64,
            Op::MaxPool { window, .. } | Op::AveragePool { window, .. } => (window.kernel[0] * window.kernel[1]) as u64,
            Op::GlobalAveragePool => numel(n.inputs[0]) / out.max(1),
            _ => n.inputs.len() as u64,
        };
        total.saturating_add(out.saturating_mul(per_output.max(1)))
    })
}

const MAX_WORK: u64 = 20_000_000;
const MAX_ARENA_BYTES: usize = 64 << 20;

/// Builds a reference engine over `file`; if validation passes and the model is small,
/// runs batch 1 of zeros and checks the outputs have the promised shapes.
pub fn validate_and_run(file: QpwFile) {
    let reference = EngineOptions {
        reference: true,
        ..Default::default()
    };
    let Ok(mut engine) = Engine::from_file(file, reference) else {
        return;
    };
    if work_per_sample(engine.meta()) > MAX_WORK || engine.activation_bytes(1) > MAX_ARENA_BYTES {
        return;
    }
    let meta = engine.meta().clone();
    let inputs: Vec<(&str, Tensor)> = meta
        .inputs
        .iter()
        .map(|i| {
            let mut shape = vec![1];
            shape.extend_from_slice(&i.shape);
            let n = shape.iter().product();
            (i.name.as_str(), Tensor::new(shape, vec![0.0; n]))
        })
        .collect();
    // Duplicate input names are refused by the engine; that is a valid outcome.
    let Ok(outputs) = engine.run(&inputs) else {
        return;
    };
    assert_eq!(outputs.len(), meta.outputs.len());
    for ((name, t), spec) in outputs.iter().zip(&meta.outputs) {
        assert_eq!(name, &spec.name);
        assert_eq!(t.shape[0], 1);
        assert_eq!(&t.shape[1..], spec.shape.as_slice());
        assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
    }
}

/// Recomputes every checksum a mutated file image can have: metadata, tensor table,
/// each tensor whose entry lies in the image, then the header. Lets mutations reach
/// the structural and semantic checks instead of stopping at a checksum.
pub fn fix_checksums(bytes: &mut [u8]) {
    if bytes.len() < HEADER_SIZE {
        return;
    }
    let mut h: Header = bytemuck::pod_read_unaligned(&bytes[..HEADER_SIZE]);
    let range = |off: u64, len: u64| -> Option<std::ops::Range<usize>> {
        let end = off.checked_add(len)?;
        (end <= bytes.len() as u64).then_some(off as usize..end as usize)
    };
    if let Some(r) = range(h.meta_offset, h.meta_len) {
        h.meta_checksum = checksum(&bytes[r]);
    }
    if let Some(r) = h
        .tensor_count
        .checked_mul(ENTRY_SIZE as u64)
        .and_then(|n| range(h.table_offset, n))
    {
        let mut entries: Vec<TensorEntry> = bytes[r.clone()]
            .chunks_exact(ENTRY_SIZE)
            .map(bytemuck::pod_read_unaligned)
            .collect();
        for e in &mut entries {
            if let Some(t) = range(e.offset, e.len) {
                e.checksum = checksum(&bytes[t]);
            }
        }
        let table: Vec<u8> = entries.iter().flat_map(|e| bytemuck::bytes_of(e).to_vec()).collect();
        bytes[r].copy_from_slice(&table);
        h.table_checksum = checksum(&table);
    }
    h.header_checksum = header_checksum(&h);
    bytes[..HEADER_SIZE].copy_from_slice(bytemuck::bytes_of(&h));
}

/// Converts ONNX bytes; a model that converts must also write, load and validate, since
/// the converter promises to emit only runnable files.
pub fn convert_and_load(onnx: &[u8]) {
    let Ok(converted) = qp::convert::convert_bytes(onnx, "fuzz", &qp::convert::ConvertOptions::default()) else {
        return;
    };
    let bytes = converted.to_bytes().expect("a converted model serializes");
    let file = QpwFile::from_bytes(&bytes).expect("a converted model loads");
    qp::plan::validate::validate(&file.meta).expect("a converted model validates");
    validate_and_run(file);
}
