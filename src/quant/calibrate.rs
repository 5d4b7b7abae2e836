//! Calibration: runs the FP32 model over the calibration samples and records the
//! distribution of every value an INT8 layer could read or write, in two passes (the
//! extent first, then a fine histogram over it).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::dataset::{batch, Sample, RUN_BATCH};
use super::range::{Extent, Histogram};
use crate::engine::{Engine, EngineOptions};
use crate::format::QpwFile;

/// Histograms of the values `wanted` (value ids of `fp32`'s metadata) over `samples`.
pub fn histograms(fp32: &[u8], samples: &[Sample], wanted: &[usize]) -> Result<BTreeMap<usize, Histogram>> {
    if samples.is_empty() {
        bail!("calibration needs at least one sample");
    }
    let file = QpwFile::from_bytes(fp32).context("loading the FP32 model for calibration")?;
    let meta = file.meta.clone();
    let mut engine = Engine::from_file(file, EngineOptions::default())?;
    // Where each wanted value shows up: as a node's output or as a model input.
    let node_of: BTreeMap<usize, usize> = meta
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| wanted.contains(&n.outputs[0]))
        .map(|(i, n)| (i, n.outputs[0]))
        .collect();
    let input_of: Vec<(usize, usize)> = meta
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, io)| wanted.contains(&io.value))
        .map(|(k, io)| (k, io.value))
        .collect();

    // Feeds every wanted value of every sample to `see`.
    let mut each_value = |see: &mut dyn FnMut(usize, &[f32])| -> Result<()> {
        for chunk in samples.chunks(RUN_BATCH) {
            for &(k, v) in &input_of {
                for s in chunk {
                    see(v, &s.inputs[k]);
                }
            }
            engine.run_observed(&batch(&meta, chunk), &mut |node, out| {
                if let Some(&v) = node_of.get(&node) {
                    see(v, out);
                }
            })?;
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
