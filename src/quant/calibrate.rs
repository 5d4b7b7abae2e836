//! Calibration: runs the FP32 model over the calibration samples and records the
//! distribution of every value an INT8 layer could read or write, in two passes (the
//! extent first, then a fine histogram over it).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use qp_kernels::cpu::Isa;
use qp_kernels::reorder;

use super::dataset::{batch, Sample, RUN_BATCH};
use super::range::{Extent, Histogram};
use crate::engine::{Engine, EngineOptions};
use crate::format::{ModelMeta, QpwFile};

/// Runs `engine` (an FP32 model with metadata `meta`) on one batch of samples and calls
/// `see(value, data)` for each value in `wanted`, a node output or a model input, with the
/// whole batch's data in the executor's layout: NHWC for a `[C, H, W]` value, model inputs
/// reordered the same way.
pub fn observe_chunk(
    engine: &mut Engine,
    meta: &ModelMeta,
    chunk: &[Sample],
    wanted: &[usize],
    see: &mut (dyn FnMut(usize, &[f32]) + Send),
) -> Result<()> {
    for (k, io) in meta.inputs.iter().enumerate() {
        if !wanted.contains(&io.value) {
            continue;
        }
        let data: Vec<f32> = chunk.iter().flat_map(|s| s.inputs[k].iter().copied()).collect();
        if let [c, h, w] = io.shape[..] {
            let mut nhwc = vec![0f32; data.len()];
            reorder::nchw_to_nhwc(Isa::Scalar, chunk.len(), c, h, w, &data, &mut nhwc);
            see(io.value, &nhwc);
        } else {
            see(io.value, &data);
        }
    }
    engine.run_observed(&batch(meta, chunk), &mut |node, out| {
        let v = meta.nodes[node].outputs[0];
        if wanted.contains(&v) {
            see(v, out);
        }
    })?;
    Ok(())
}

/// Histograms of the values `wanted` (value ids of `fp32`'s metadata) over `samples`.
pub fn histograms(fp32: &[u8], samples: &[Sample], wanted: &[usize]) -> Result<BTreeMap<usize, Histogram>> {
    if samples.is_empty() {
        bail!("calibration needs at least one sample");
    }
    let file = QpwFile::from_bytes(fp32).context("loading the FP32 model for calibration")?;
    let meta = file.meta.clone();
    let mut engine = Engine::from_file(file, EngineOptions::default())?;

    // Feeds every wanted value of every sample to `see`.
    let mut each_value = |see: &mut (dyn FnMut(usize, &[f32]) + Send)| -> Result<()> {
        for chunk in samples.chunks(RUN_BATCH) {
            observe_chunk(&mut engine, &meta, chunk, wanted, &mut |v, data| see(v, data))?;
        }
        Ok(())
    };

    // Pass one: extents.
    let mut extents: BTreeMap<usize, Extent> = wanted.iter().map(|&v| (v, Extent::default())).collect();
    each_value(&mut |v, data| extents.get_mut(&v).expect("wanted").observe(data))?;
    for (v, e) in &extents {
        if e.non_finite > 0 {
            bail!(
                "value {:?} took {} non-finite values during calibration; the FP32 model overflows on this data",
                meta.values[*v].name,
                e.non_finite
            );
        }
    }

    // Pass two: histograms over the extents.
    let mut hists: BTreeMap<usize, Histogram> = extents.iter().map(|(&v, e)| (v, Histogram::new(e))).collect();
    each_value(&mut |v, data| hists.get_mut(&v).expect("wanted").observe(data))?;
    Ok(hists)
}
