//! Turns a converted FP32 model into an INT8 one: the chosen convolutions become `QConv`
//! (per-channel symmetric s8 weights, packed for the input's element type, the input zero
//! point folded into an i32 bias), a value is stored quantized (u8, or i16 on a wider
//! grid) exactly when every reader is INT8 and reads it as its input (not only as a
//! residual), and a `Quantize` node
//! appears only where an f32 value first feeds an INT8 layer. An INT8 layer whose
//! output any FP32 layer reads writes f32 directly from its epilogue, so there is no
//! separate dequantize step, and no quantize/dequantize pair between two INT8 layers.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};

use super::range::QuantParams;
use crate::convert::{Converted, TensorData};
use crate::format::meta::{DType, NodeSpec, TensorSpec, ValueSpec};
use crate::graph::op::{Op, PACK_LANES, QPACK_GROUP};

/// Largest |i32 bias| accepted: leaves headroom for the accumulator (see
/// `qp_kernels::qconv::MAX_REDUCTION`).
const MAX_BIAS: f64 = (1u64 << 30) as f64;

/// `fp32` with the conv nodes `int8` (node indices) quantized; `grid(value)` gives the
/// grid of every value an INT8 layer reads or writes, `weights` the rounded weights of
/// every node in `int8`.
pub fn quantize_model(
    fp32: &Converted,
    int8: &BTreeSet<usize>,
    grid: &dyn Fn(usize) -> QuantParams,
    weights: &BTreeMap<usize, RoundedWeights>,
) -> Result<Converted> {
    let meta = &fp32.meta;
    for &n in int8 {
        if !matches!(meta.nodes.get(n).map(|n| &n.op), Some(Op::Conv { .. })) {
            bail!("node {n} is not a convolution; only convolutions are quantized");
        }
    }
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); meta.values.len()];
    for (i, n) in meta.nodes.iter().enumerate() {
        for &v in &n.inputs {
            readers[v].push(i);
        }
    }
    let model_outputs: BTreeSet<usize> = meta.outputs.iter().map(|o| o.value).collect();
    // A value read only as a residual (one side of a residual block) stays f32: that
    // costs no quantize pass, and a u8 grid would have to span both signs (measured on the
    // reference model: mean |delta ssim| 0.061 -> 0.052).
    let residual_only = |v: usize| {
        readers[v]
            .iter()
            .all(|&r| meta.nodes[r].inputs.get(1) == Some(&v) && meta.nodes[r].inputs[0] != v)
    };
    let stored_u8 = |v: usize, producer: usize| -> bool {
        int8.contains(&producer)
            && !model_outputs.contains(&v)
            && readers[v].iter().all(|r| int8.contains(r))
            && !residual_only(v)
    };

    let mut values = meta.values.clone();
    let mut nodes: Vec<NodeSpec> = Vec::new();
    let mut tensors: Vec<TensorSpec> = Vec::new();
    let mut data: Vec<TensorData> = Vec::new();
    let mut add_tensor = |spec: TensorSpec, d: TensorData, tensors: &mut Vec<TensorSpec>| -> usize {
        tensors.push(spec);
        data.push(d);
        tensors.len() - 1
    };
    // f32 value -> its u8 copy, made by one Quantize node shared by every INT8 reader.
    let mut quantized: BTreeMap<usize, usize> = BTreeMap::new();

    for (i, node) in meta.nodes.iter().enumerate() {
        let out = node.outputs[0];
        if !int8.contains(&i) {
            let params = node
                .params
                .iter()
                .map(|&p| add_tensor(meta.tensors[p].clone(), fp32.tensors[p].clone(), &mut tensors))
                .collect();
            nodes.push(NodeSpec { params, ..node.clone() });
            continue;
        }
        let Op::Conv {
            cin,
            cout,
            window,
            activation,
        } = node.op
        else {
            unreachable!("checked above")
        };
        let x = node.inputs[0];
        let xq = if values[x].quant.is_some() {
            x
        } else {
            *quantized.entry(x).or_insert_with(|| {
                let q = values.len();
                let grid = grid(x);
                values.push(ValueSpec {
                    name: format!("{}.{}", values[x].name, if grid.is_wide() { "i16" } else { "u8" }),
                    shape: values[x].shape.clone(),
                    quant: Some(grid),
                });
                nodes.push(NodeSpec {
                    name: format!("{}.quantize", values[x].name),
                    op: Op::Quantize,
                    inputs: vec![x],
                    outputs: vec![q],
                    params: vec![],
                });
                q
            })
        };
        if stored_u8(out, i) {
            values[out].quant = Some(grid(out));
        }
        let input_grid = values[xq].quant.expect("quantized input");
        let [kh, kw] = window.kernel;
        let rounded = weights
            .get(&i)
            .ok_or_else(|| anyhow::anyhow!("node {:?}: no rounded weights", node.name))?;
        let bias = fp32.tensors[node.params[1]].as_f32().expect("fp32 model: f32 bias");
        let q = quantize_conv(rounded, bias, cout, cin, kh, kw, input_grid)
            .map_err(|e| anyhow::anyhow!("node {:?}: {e}", node.name))?;
        let lanes = cout.div_ceil(PACK_LANES) * PACK_LANES;
        let w = add_tensor(
            TensorSpec {
                name: format!("{}.weight", node.name),
                dtype: DType::I8,
                dims: vec![
                    lanes / PACK_LANES,
                    kh,
                    kw,
                    cin.div_ceil(QPACK_GROUP),
                    PACK_LANES,
                    QPACK_GROUP,
                ],
            },
            TensorData::I8(q.weights),
            &mut tensors,
        );
        let b = add_tensor(
            TensorSpec {
                name: format!("{}.bias", node.name),
                dtype: DType::I32,
                dims: vec![lanes],
            },
            TensorData::I32(q.bias),
            &mut tensors,
        );
        let s = add_tensor(
            TensorSpec {
                name: format!("{}.scale", node.name),
                dtype: DType::F32,
                dims: vec![lanes],
            },
            TensorData::F32(q.scale),
            &mut tensors,
        );
        let mut inputs = vec![xq];
        inputs.extend(node.inputs.get(1));
        nodes.push(NodeSpec {
            name: node.name.clone(),
            op: Op::QConv {
                cin,
                cout,
                window,
                activation,
            },
            inputs,
            outputs: vec![out],
            params: vec![w, b, s],
        });
    }

    let mut out_meta = meta.clone();
    out_meta.values = values;
    out_meta.nodes = nodes;
    out_meta.tensors = tensors;
    out_meta.precision = "int8".into();
    out_meta.stats.engine_ops.clear();
    for n in &out_meta.nodes {
        *out_meta.stats.engine_ops.entry(n.op.kind().to_string()).or_default() += 1;
    }
    Ok(Converted {
        meta: out_meta,
        tensors: data,
    })
}

/// Largest |s8 weight|: symmetric, so that -128 never appears.
pub const WEIGHT_QMAX: f32 = 127.0;

/// One convolution's weights on per-output-channel symmetric grids: `w ≈ q * step`,
/// `step = max|w| / 127` per output channel, q in [-127, 127]. Independent of the
/// activation grids, so it is computed once per convolution and reused by every
/// candidate model.
#[derive(Clone, Debug)]
pub struct RoundedWeights {
    /// `[cout][kh][kw][cin]`: each output channel's row in input-patch order.
    pub q: Vec<i8>,
    pub step: Vec<f32>,
}

/// A conv's FP32 weights from the packed layout `[ceil(cout/16)][kh][kw][cin][16]` as
/// `[cout][kh][kw][cin]` rows (the order of the input patches `gptq` measures).
pub fn weight_rows(packed: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<f32> {
    let mut rows = Vec::with_capacity(cout * kh * kw * cin);
    for co in 0..cout {
        for k in 0..kh * kw {
            for ci in 0..cin {
                rows.push(packed[(((co / PACK_LANES) * kh * kw + k) * cin + ci) * PACK_LANES + co % PACK_LANES]);
            }
        }
    }
    rows
}

/// Writes `rows` (as [`weight_rows`] returns them) back into the packed layout.
pub fn set_weight_rows(packed: &mut [f32], rows: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) {
    let mut row = rows.iter();
    for co in 0..cout {
        for k in 0..kh * kw {
            for ci in 0..cin {
                packed[(((co / PACK_LANES) * kh * kw + k) * cin + ci) * PACK_LANES + co % PACK_LANES] =
                    *row.next().expect("rows hold cout x kh x kw x cin weights");
            }
        }
    }
}

/// Each output channel's grid step (`max|w| / 127` in f32, the kernels' scale; 1 for an
/// all-zero channel).
pub fn weight_steps(rows: &[f32], cout: usize) -> Result<Vec<f32>, String> {
    let len = rows.len() / cout.max(1);
    (0..cout)
        .map(|co| {
            let max = rows[co * len..(co + 1) * len].iter().fold(0f32, |m, w| m.max(w.abs()));
            if !max.is_finite() {
                return Err(format!("output channel {co} has non-finite weights"));
            }
            Ok(if max > 0.0 { max / WEIGHT_QMAX } else { 1.0 })
        })
        .collect()
}

/// One convolution's INT8 parameters, padded to whole 16-channel panels.
pub struct QuantizedConv {
    pub weights: Vec<i8>,
    pub bias: Vec<i32>,
    pub scale: Vec<f32>,
}

/// The INT8 parameters of a conv with rounded weights `w` reading `input`: `scale =
/// input scale * weight step`, and the bias in accumulator units with the input zero
/// point folded in: `round(b / scale) - zero * Σ q`. The weights are packed for the
/// input's element type (u8 or i16), whose grid must keep the layer's sums exact.
pub fn quantize_conv(
    w: &RoundedWeights,
    bias: &[f32],
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    input: QuantParams,
) -> Result<QuantizedConv, String> {
    let lanes = cout.div_ceil(PACK_LANES) * PACK_LANES;
    let len = kh * kw * cin;
    if input.is_wide() {
        let reduction = kh * kw * cin.div_ceil(QPACK_GROUP) * QPACK_GROUP;
        let limit = qp_kernels::qconv::max_reduction_i16(input.max());
        if reduction > limit {
            return Err(format!(
                "its {reduction} products per output would overflow exact i32 sums on a {}-bit input grid \
                 (at most {limit}); use fewer --activation-bits",
                input.bits
            ));
        }
    }
    let mut oihw = vec![0i8; cout * len];
    let mut bias_q = vec![0i32; lanes];
    let mut scale = vec![0f32; lanes];
    for co in 0..cout {
        let row = &w.q[co * len..(co + 1) * len];
        for k in 0..kh * kw {
            for ci in 0..cin {
                oihw[(co * cin + ci) * kh * kw + k] = row[k * cin + ci];
            }
        }
        let sum: i64 = row.iter().map(|&q| q as i64).sum();
        scale[co] = input.scale * w.step[co];
        let b = (bias[co] as f64 / scale[co] as f64).round() - input.zero as f64 * sum as f64;
        if b.is_nan() || b.abs() > MAX_BIAS {
            return Err(format!(
                "output channel {co}: bias {} is {b:.3e} accumulator units, too large for exact INT8 arithmetic; \
                 keep this layer FP32 (--keep-fp32) or recalibrate",
                bias[co]
            ));
        }
        bias_q[co] = b as i32;
    }
    let weights = if input.is_wide() {
        qp_kernels::qconv::pack_weights_for::<i16>(&oihw, cout, cin, kh, kw)
    } else {
        qp_kernels::qconv::pack_weights_for::<u8>(&oihw, cout, cin, kh, kw)
    };
    Ok(QuantizedConv {
        weights,
        bias: bias_q,
        scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows out and back in give the packed tensor again, ragged last panel included
    /// (its padding lanes stay as they were).
    #[test]
    fn weight_rows_go_back_where_they_came_from() {
        let (cout, cin, kh, kw): (usize, usize, usize, usize) = (20, 5, 3, 3);
        let packed: Vec<f32> = (0..cout.div_ceil(PACK_LANES) * PACK_LANES * kh * kw * cin)
            .map(|i| i as f32)
            .collect();
        let rows = weight_rows(&packed, cout, cin, kh, kw);
        assert_eq!(rows.len(), cout * kh * kw * cin);
        let mut back = vec![-1.0; packed.len()];
        set_weight_rows(&mut back, &rows, cout, cin, kh, kw);
        for (i, (&b, &p)) in back.iter().zip(&packed).enumerate() {
            let lane = i % PACK_LANES;
            let panel = i / (PACK_LANES * kh * kw * cin);
            if panel * PACK_LANES + lane < cout {
                assert_eq!(b, p, "index {i}");
            } else {
                assert_eq!(b, -1.0, "padding lane written at {i}");
            }
        }
    }

    /// A 1x1 conv's packed weights rounded to the nearest step.
    fn nearest(packed: &[f32], cout: usize, cin: usize) -> RoundedWeights {
        let rows = weight_rows(packed, cout, cin, 1, 1);
        let step = weight_steps(&rows, cout).unwrap();
        RoundedWeights {
            q: crate::quant::gptq::nearest(&rows, cout, cin, &step, WEIGHT_QMAX),
            step,
        }
    }

    #[test]
    fn weights_are_symmetric_per_channel_and_the_zero_point_is_folded() {
        // 2 output channels, 1 input channel, 1x1: channel 0 weight 0.5, channel 1 -2.0.
        let mut packed = vec![0f32; PACK_LANES];
        packed[0] = 0.5;
        packed[1] = -2.0;
        let input = QuantParams::u8(0.1, 10);
        let q = quantize_conv(&nearest(&packed, 2, 1), &[1.0, 0.0], 2, 1, 1, 1, input).unwrap();
        // Each channel's largest weight maps to +-127.
        // Packed [panel][kh][kw][ci/4][16 lanes][4]: channel 1, input 0 is byte 4.
        assert_eq!(q.weights[0], 127);
        assert_eq!(q.weights[4], -127);
        let s0 = 0.1 * 0.5 / 127.0;
        assert!((q.scale[0] - s0).abs() < 1e-9);
        // bias 1.0 in accumulator units, minus zero point * sum(q).
        assert_eq!(q.bias[0], (1.0 / s0 as f64).round() as i32 - 10 * 127);
        assert_eq!(q.bias[1], 10 * 127);
        // Real check: x = 2.0 -> q = 30; y = (30 * 127 + bias) * scale = 0.5 * 2 + 1.
        let y = (30 * 127 + q.bias[0]) as f32 * q.scale[0];
        assert!((y - 2.0).abs() < 1e-3, "{y}");
    }

    #[test]
    fn a_bias_too_large_for_the_accumulator_is_refused() {
        let mut packed = vec![0f32; PACK_LANES];
        packed[0] = 1e-6;
        let input = QuantParams::u8(1e-3, 0);
        let err = quantize_conv(&nearest(&packed, 1, 1), &[1e6], 1, 1, 1, 1, input)
            .err()
            .unwrap();
        assert!(err.contains("too large"), "{err}");
    }
}
