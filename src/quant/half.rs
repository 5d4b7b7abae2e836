//! f16 weights for `qp-convert --precision fp16`: which rounding, and what it costs.
//!
//! Why GPTQ here too: nearest rounding to f16 moves each folded weight by 1.7-1.8e-4 of
//! its magnitude, uniformly over the layers, and this model's head turns the summed
//! feature error into up to 0.0045 of SSIM (160 icons: mean 0.0009, p99 0.0044).
//! Rounding each layer's weights against its calibration inputs
//! (`gptq::round_to_f16`) leaves mean 0.0003, p99 0.0013 and max 0.0017 on the same
//! icons; keeping the layers that carry most of the error f32 (`most_sensitive`) halves
//! the largest deltas again (docs/PERFORMANCE.md, "FP16 accuracy").

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::accuracy::{compare_sets, run_model, run_sets, Accuracy};
use super::dataset::{self, NamedSet, Sample};
use super::{gptq, rewrite, WeightRounding};
use crate::convert::{Converted, TensorData};
use crate::format::meta::DType;
use crate::graph::op::Op;

/// The share of a model's parameters `qp-convert --precision fp16 --calibrate` keeps f32
/// by default, in the layers whose f16 rounding moves the outputs most per weight
/// (`most_sensitive`). f16 error is far from uniform over the layers: on QualityNet the
/// 56x56 layers and the first projection shortcut, 1.4% of the weights, carry 60% of it,
/// and keeping 2.5% f32 halves the largest deltas (held-out max 0.00139 -> 0.00071,
/// pseudo-images 0.00189 -> 0.00076) for a file 51.5% of the FP32 one instead of 50.3%
/// (docs/PERFORMANCE.md, "FP16 accuracy").
pub const DEFAULT_KEEP_FP32_SHARE: f64 = 0.025;

/// Samples each layer's f16 sensitivity is measured on: enough to rank layers whose
/// errors differ by 10-100x per weight, in two batches per layer.
const SENSITIVITY_SAMPLES: usize = 16;

/// The `reports.fp16` entry of an f16 file converted with calibration data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HalfReport {
    pub weight_rounding: WeightRounding,
    /// Samples the rounding was measured against (images and pseudo-images).
    pub calibration_samples: usize,
    /// Against the FP32 model, per held-out set and over all of them (`all`).
    pub accuracy: Vec<Accuracy>,
    /// Conv and dense layers kept f32 beyond the stem and the small head layers: the
    /// most sensitive ones (`most_sensitive`) and those named with `--keep-fp32`.
    #[serde(default)]
    pub kept_f32: Vec<String>,
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

/// Of `layers` (conv and dense nodes of `model` whose weights would be stored as f16),
/// those to keep f32: each layer's weights alone are stored as f16 (nearest) and the
/// squared change of the outputs on `samples` measured against `fp32` (the FP32 model's
/// bytes); then, most change per weight first, every layer that changed them and whose
/// weights still fit `budget` (a count of weights). Nothing runs when no layer fits.
pub fn most_sensitive(
    model: &mut Converted,
    fp32: &[u8],
    layers: &[usize],
    samples: &[Sample],
    budget: usize,
) -> Result<Vec<usize>> {
    let weights = |m: &Converted, n: usize| m.tensors[m.meta.nodes[n].params[0]].len();
    let fitting: Vec<usize> = layers
        .iter()
        .copied()
        .filter(|&n| weights(model, n) <= budget)
        .collect();
    if fitting.is_empty() || samples.is_empty() {
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let subset = dataset::spread(samples, SENSITIVITY_SAMPLES);
    tracing::info!(
        "measuring the f16 sensitivity of {} layers on {} samples",
        fitting.len(),
        subset.len()
    );
    let reference = run_model(fp32, &subset)?;
    let mut scored = Vec::with_capacity(fitting.len());
    for &n in &fitting {
        let tensor = model.meta.nodes[n].params[0];
        let dtype = std::mem::replace(&mut model.meta.tensors[tensor].dtype, DType::F16);
        let bytes = model.to_bytes();
        model.meta.tensors[tensor].dtype = dtype;
        let outputs = run_model(&bytes?, &subset)?;
        let squared: f64 = reference
            .values
            .iter()
            .zip(&outputs.values)
            .flat_map(|(r, t)| r.iter().zip(t).map(|(a, b)| (*a as f64 - *b as f64).powi(2)))
            .sum();
        scored.push((squared / weights(model, n) as f64, n));
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut left = budget;
    let mut kept = Vec::new();
    for (score, n) in scored {
        let w = weights(model, n);
        if score > 0.0 && w <= left {
            left -= w;
            kept.push(n);
        }
    }
    tracing::info!(
        "keeping {} layers f32 ({} weights) after {:.1} s",
        kept.len(),
        budget - left,
        started.elapsed().as_secs_f64()
    );
    Ok(kept)
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
    kept_f32: Vec<String>,
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
        kept_f32,
    })
}

/// The report as `qp-convert` and `qp-engine info` print it.
pub fn report_text(value: &serde_json::Value) -> String {
    let Ok(r) = serde_json::from_value::<HalfReport>(value.clone()) else {
        return format!("fp16 {value}\n");
    };
    let mut s = format!(
        "fp16        {} weight rounding, {} calibration samples\n",
        r.weight_rounding.name(),
        r.calibration_samples
    );
    if !r.kept_f32.is_empty() {
        s.push_str(&format!("kept f32    {}\n", r.kept_f32.join(", ")));
    }
    s.push_str("accuracy vs FP32 (held out):\n");
    for a in &r.accuracy {
        // f16's deltas are a few ten-thousandths: one more decimal than INT8's report.
        s.push_str(&super::accuracy_line(&format!("  {} ({})", a.set, a.samples), a, 5));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::direct_fixture;
    use crate::quant::dataset::pseudo_images;

    /// With every other layer's weights already exact f16 values, only one layer moves
    /// the outputs when stored as f16: it is the one kept, and only while it fits.
    #[test]
    fn the_one_layer_f16_rounding_moves_is_kept() {
        let mut model = direct_fixture("tiny_bn");
        let layers: Vec<usize> = (0..model.meta.nodes.len())
            .filter(|&n| matches!(model.meta.nodes[n].op, Op::Conv { .. } | Op::Dense { .. }))
            .collect();
        let target = *layers
            .iter()
            .find(|&&n| model.meta.nodes[n].name == "layer2.0.conv2")
            .expect("the fixture has layer2.0.conv2");
        for &n in &layers {
            if n != target {
                let TensorData::F32(w) = &mut model.tensors[model.meta.nodes[n].params[0]] else {
                    panic!("f32 weights");
                };
                w.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32());
            }
        }
        let fp32 = model.to_bytes().unwrap();
        let samples = pseudo_images(&model.meta, 4, 7).unwrap();
        let size = model.tensors[model.meta.nodes[target].params[0]].len();
        let kept = most_sensitive(&mut model, &fp32, &layers, &samples, size).unwrap();
        assert_eq!(kept, [target]);
        assert_eq!(model.to_bytes().unwrap(), fp32, "the model is left as it was");
        let kept = most_sensitive(&mut model, &fp32, &layers, &samples, size - 1).unwrap();
        assert!(kept.is_empty(), "only layers that move the outputs are kept: {kept:?}");
        assert!(most_sensitive(&mut model, &fp32, &layers, &samples, 0)
            .unwrap()
            .is_empty());
    }
}
