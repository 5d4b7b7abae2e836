//! Empirical bias correction: quantization shifts the mean of a layer's output (clipped
//! tails, rounding near the ReLU threshold, the s8 weight grid), and these shifts add up
//! through the network into a systematic offset of the prediction. After quantizing, each
//! INT8 convolution in turn (in execution order, so every correction sees the upstream
//! ones already applied) compares the per-channel mean of its output on the calibration
//! samples against the FP32 model's and moves its i32 bias by the difference.
//!
//! The outputs compared are after the fused residual add and ReLU: a bias shift `d`
//! moves the mean of `relu(y + d)` by about `d * P(y > 0)`, so behind a ReLU the measured
//! shift is divided by the channel's share of positive outputs (without one, `d` moves
//! the mean by exactly `d`).

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::dataset::{batch, Sample, RUN_BATCH};
use crate::convert::{Converted, TensorData};
use crate::engine::{Engine, EngineOptions};
use crate::format::meta::ValueSpec;
use crate::format::QpwFile;
use crate::graph::op::{Activation, Op};

/// Below this share of positive outputs a channel is left alone: its mean says little
/// about its bias, and dividing by the share would amplify noise.
const MIN_ACTIVE: f64 = 0.05;

/// Per-channel mean and share of positive values of one `[C, H, W]` value.
#[derive(Clone, Debug)]
pub struct ChannelStats {
    sum: Vec<f64>,
    positive: Vec<u64>,
    per_channel: u64,
}

impl ChannelStats {
    fn new(channels: usize) -> ChannelStats {
        ChannelStats {
            sum: vec![0.0; channels],
            positive: vec![0; channels],
            per_channel: 0,
        }
    }

    /// Adds the values of `images` images in an executor slot (NHWC, channel fastest),
    /// f32, or u8 or i16 on `spec`'s grid.
    fn observe(&mut self, spec: &ValueSpec, slot: &[f32], images: usize) {
        let channels = self.sum.len();
        let n = images * spec.shape.iter().product::<usize>();
        let mut add = |i: usize, x: f32| {
            let c = i % channels;
            self.sum[c] += x as f64;
            self.positive[c] += (x > 0.0) as u64;
        };
        match spec.quant {
            Some(q) if q.is_wide() => {
                let words: &[i16] = bytemuck::cast_slice(slot);
                for (i, &w) in words[..n].iter().enumerate() {
                    add(i, (w as f32 - q.zero as f32) * q.scale);
                }
            }
            Some(q) => {
                let bytes: &[u8] = bytemuck::cast_slice(slot);
                for (i, &b) in bytes[..n].iter().enumerate() {
                    add(i, (b as f32 - q.zero as f32) * q.scale);
                }
            }
            None => {
                for (i, &x) in slot[..n].iter().enumerate() {
                    add(i, x);
                }
            }
        }
        self.per_channel += (n / channels) as u64;
    }

    fn mean(&self, c: usize) -> f64 {
        self.sum[c] / self.per_channel.max(1) as f64
    }

    fn active(&self, c: usize) -> f64 {
        self.positive[c] as f64 / self.per_channel.max(1) as f64
    }
}

/// Statistics over `samples` of the outputs of the nodes of `model` that `select(node
/// index, op)` picks, keyed by output value id.
fn output_stats(
    model: &[u8],
    samples: &[Sample],
    select: impl Fn(usize, &Op) -> bool,
) -> Result<BTreeMap<usize, ChannelStats>> {
    let file = QpwFile::from_bytes(model).context("loading a model for bias correction")?;
    let meta = file.meta.clone();
    let mut engine = Engine::from_file(file, EngineOptions::default())?;
    let nodes: Vec<usize> = (0..meta.nodes.len())
        .filter(|&n| select(n, &meta.nodes[n].op))
        .collect();
    let mut stats: BTreeMap<usize, ChannelStats> = nodes
        .iter()
        .map(|&n| (n, ChannelStats::new(meta.values[meta.nodes[n].outputs[0]].shape[0])))
        .collect();
    let last = nodes.last().copied().context("no node to observe")?;
    for chunk in samples.chunks(RUN_BATCH) {
        engine.run_through(&batch(&meta, chunk), last, &mut |node, out| {
            if let Some(s) = stats.get_mut(&node) {
                s.observe(&meta.values[meta.nodes[node].outputs[0]], out, chunk.len());
            }
        })?;
    }
    Ok(stats.into_iter().map(|(n, s)| (meta.nodes[n].outputs[0], s)).collect())
}

/// Output statistics of every convolution of the FP32 model `fp32`, keyed by output value.
pub fn reference_stats(fp32: &[u8], samples: &[Sample]) -> Result<BTreeMap<usize, ChannelStats>> {
    output_stats(fp32, samples, |_, op| matches!(op, Op::Conv { .. }))
}

/// Corrects the biases of the INT8 convolutions of `model` in execution order against
/// `reference` (from `reference_stats` on the same samples).
pub fn correct_biases(
    model: &mut Converted,
    reference: &BTreeMap<usize, ChannelStats>,
    samples: &[Sample],
) -> Result<()> {
    let qconvs: Vec<usize> = (0..model.meta.nodes.len())
        .filter(|&i| matches!(model.meta.nodes[i].op, Op::QConv { .. }))
        .collect();
    tracing::info!(
        "correcting the biases of {} INT8 convolutions on {} samples",
        qconvs.len(),
        samples.len()
    );
    for (done, &n) in qconvs.iter().enumerate() {
        if done > 0 && done % 10 == 0 {
            tracing::info!("bias correction: {done}/{} convolutions", qconvs.len());
        }
        let node = &model.meta.nodes[n];
        let Some(want) = reference.get(&node.outputs[0]) else {
            continue;
        };
        let relu = matches!(
            node.op,
            Op::QConv {
                activation: Activation::Relu,
                ..
            }
        );
        let (bias_t, scale_t) = (node.params[1], node.params[2]);
        let got = output_stats(&model.to_bytes()?, samples, |i, _| i == n)?
            .remove(&node.outputs[0])
            .expect("observed");
        let scale = model.tensors[scale_t].as_f32().expect("f32 scale").to_vec();
        let TensorData::I32(bias) = &mut model.tensors[bias_t] else {
            unreachable!("qconv bias is i32")
        };
        for c in 0..want.sum.len() {
            let active = if relu { want.active(c) } else { 1.0 };
            if active < MIN_ACTIVE || scale[c] <= 0.0 {
                continue;
            }
            let shift = (got.mean(c) - want.mean(c)) / active;
            let steps = (shift / scale[c] as f64).round();
            // Within the accumulator headroom the rewrite keeps (|bias| <= 2^30).
            bias[c] = (bias[c] as f64 - steps).clamp(-(1i64 << 29) as f64, (1i64 << 29) as f64) as i32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::direct_fixture;
    use crate::quant::dataset::pseudo_images;
    use crate::quant::{quantize, QuantizeOptions, DEFAULT_METHOD};

    /// A shift put into one INT8 convolution's biases is measured and taken back out.
    #[test]
    fn a_shifted_bias_is_corrected_back() {
        let fp32 = direct_fixture("tiny_bn");
        let samples = pseudo_images(&fp32.meta, 16, 3).unwrap();
        let options = QuantizeOptions {
            profile: crate::quant::Profile::Balanced,
            method: DEFAULT_METHOD,
            calibration: samples.clone(),
            holdout: vec![("pseudo".into(), pseudo_images(&fp32.meta, 4, 4).unwrap())],
            compare: false,
            sensitivity: false,
            keep_fp32: vec![],
            bias_correction_samples: 0,
            weight_rounding: crate::quant::WeightRounding::Nearest,
            activation_bits: None,
        };
        let int8 = quantize(&fp32, &options).unwrap();
        let reference = reference_stats(&fp32.to_bytes().unwrap(), &samples).unwrap();

        // Shift every channel of the first INT8 convolution by 0.2 in real units.
        let n = (0..int8.meta.nodes.len())
            .find(|&i| matches!(int8.meta.nodes[i].op, Op::QConv { .. }))
            .unwrap();
        let Op::QConv { cout, .. } = int8.meta.nodes[n].op else {
            unreachable!()
        };
        let (bias_t, scale_t) = (int8.meta.nodes[n].params[1], int8.meta.nodes[n].params[2]);
        let scale = int8.tensors[scale_t].as_f32().unwrap().to_vec();
        let mut shifted = int8.clone();
        let TensorData::I32(bias) = &mut shifted.tensors[bias_t] else {
            panic!()
        };
        let shift: Vec<i32> = (0..cout).map(|c| (0.2 / scale[c]).round() as i32).collect();
        for c in 0..cout {
            bias[c] += shift[c];
        }

        let mut plain = int8.clone();
        correct_biases(&mut plain, &reference, &samples).unwrap();
        correct_biases(&mut shifted, &reference, &samples).unwrap();
        let (TensorData::I32(want), TensorData::I32(got)) = (&plain.tensors[bias_t], &shifted.tensors[bias_t]) else {
            panic!()
        };
        let active = (0..cout).filter(|&c| reference[&plain.meta.nodes[n].outputs[0]].active(c) >= 0.2);
        let mut checked = 0;
        for c in active {
            let left = (got[c] - want[c]).abs() as f64 / shift[c] as f64;
            assert!(left < 0.25, "channel {c}: {left:.2} of the shift left after correction");
            checked += 1;
        }
        assert!(checked > 0, "no channel active enough to check");
    }
}
