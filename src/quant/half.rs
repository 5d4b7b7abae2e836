//! f16 weights for `qp-convert --precision fp16`: which rounding, and what it costs.
//!
//! Why GPTQ here too: nearest rounding to f16 moves each folded weight by 1.7-1.8e-4 of
//! its magnitude, uniformly over the layers, and this model's head turns the summed
//! feature error into up to 0.0045 of SSIM (160 icons: mean 0.0009, p99 0.0044).
//! Rounding each layer's weights against its calibration inputs
//! (`gptq::round_to_f16`) leaves mean 0.0003, p99 0.0013 and max 0.0017 on the same
//! icons (docs/PERFORMANCE.md, "FP16 accuracy").

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::accuracy::{compare_sets, run_sets, Accuracy};
use super::dataset::{self, NamedSet, Sample};
use super::{gptq, rewrite, WeightRounding};
use crate::convert::{Converted, TensorData};
use crate::graph::op::Op;

/// The `reports.fp16` entry of an f16 file converted with calibration data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HalfReport {
    pub weight_rounding: WeightRounding,
    /// Samples the rounding was measured against (images and pseudo-images).
    pub calibration_samples: usize,
    /// Against the FP32 model, per held-out set and over all of them (`all`).
    pub accuracy: Vec<Accuracy>,
}

/// The samples GPTQ rounds against: the calibration images plus half as many
/// pseudo-images. Either alone fits its own kind and leaves the other's systematic
/// shift (icons alone: pseudo-image p99 0.0022; pseudo-images alone: icon max 0.0035);
/// the mix measured best on both (docs/PERFORMANCE.md).
pub fn rounding_samples(model: &Converted, calibration: &[Sample], seed: u64) -> Result<Vec<Sample>> {
    let mut samples = calibration.to_vec();
    samples.extend(dataset::pseudo_images(
        &model.meta,
        calibration.len().div_ceil(2),
        seed,
    )?);
    Ok(samples)
}

/// Rounds the weights of `layers` (convolutions and dense layers of the FP32 model
/// `model`, `fp32` its bytes) to f16 values with GPTQ against their inputs on `samples`,
/// in place: the tensors stay f32 in memory, each value exactly an f16, and are written
/// as f16.
pub fn round_weights(model: &mut Converted, fp32: &[u8], layers: &[usize], samples: &[Sample]) -> Result<()> {
    let started = std::time::Instant::now();
    tracing::info!(
        "measuring the inputs of {} layers on {} samples for GPTQ rounding to f16",
        layers.len(),
        samples.len()
    );
    let mut moments = gptq::input_moments(fp32, samples, layers)?;
    let meta = &model.meta;
    let work: Vec<(usize, gptq::InputMoment)> = layers
        .iter()
        .map(|&n| (n, moments.remove(&n).expect("a moment per layer")))
        .collect();
    let rounded = work
        .into_par_iter()
        .map(|(n, moment)| {
            let node = &meta.nodes[n];
            // A dense layer's packing is a 1x1 convolution's.
            let (cin, cout, [kh, kw]) = match node.op {
                Op::Conv { cin, cout, window, .. } => (cin, cout, window.kernel),
                Op::Dense { input, output, .. } => (input, output, [1, 1]),
                _ => bail!("node {:?} is neither a direct convolution nor a dense layer", node.name),
            };
            let packed = model.tensors[node.params[0]]
                .as_f32()
                .context("f16 rounding starts from f32 weights")?;
            let rows = rewrite::weight_rows(packed, cout, cin, kh, kw);
            let snapped = gptq::round_to_f16(&rows, cout, &moment)
                .with_context(|| format!("rounding the weights of {:?}", node.name))?;
            let mut packed = packed.to_vec();
            rewrite::set_weight_rows(&mut packed, &snapped, cout, cin, kh, kw);
            Ok((node.params[0], packed))
        })
        .collect::<Result<Vec<_>>>()?;
    for (tensor, packed) in rounded {
        model.tensors[tensor] = TensorData::F32(packed);
    }
    tracing::info!("GPTQ rounding to f16 took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The accuracy of the f16 model `half` against `fp32` (its FP32 original, as bytes) on
/// each held-out set and over all of them.
pub fn report(
    half: &Converted,
    fp32: &[u8],
    holdout: &[NamedSet],
    weight_rounding: WeightRounding,
    calibration_samples: usize,
) -> Result<HalfReport> {
    let accuracy = compare_sets(
        holdout,
        &run_sets(fp32, holdout)?,
        &run_sets(&half.to_bytes()?, holdout)?,
    );
    Ok(HalfReport {
        weight_rounding,
        calibration_samples,
        accuracy,
    })
}

/// The report as `qp-convert` and `qp-engine info` print it.
pub fn report_text(value: &serde_json::Value) -> String {
    let Ok(r) = serde_json::from_value::<HalfReport>(value.clone()) else {
        return format!("fp16 {value}\n");
    };
    let mut s = format!(
        "fp16        {} weight rounding, {} calibration samples\naccuracy vs FP32 (held out):\n",
        r.weight_rounding.name(),
        r.calibration_samples
    );
    for a in &r.accuracy {
        // f16's deltas are a few ten-thousandths: one more decimal than INT8's report.
        s.push_str(&super::accuracy_line(&format!("  {} ({})", a.set, a.samples), a, 5));
    }
    s
}
