//! The optimized executor: activations NHWC (channels innermost, what the SIMD kernels
//! read), every op a dispatched kernel from `qp-kernels`, work split over the pinned pool.
//!
//! Layout rule: a value with a per-sample rank of 3 (`[C, H, W]` in the model) is stored
//! `[H, W, C]`; every other value is stored as the model says. Model inputs and outputs
//! are NCHW at the boundary and reordered here, once.

use std::time::Instant;

use qp_kernels::conv::{conv2d_nhwc, conv2d_winograd_nhwc, Epilogue};
use qp_kernels::cpu::Isa;
use qp_kernels::parallel::ParallelFor;
use qp_kernels::qconv::{self, QOutput, QResidual};
use qp_kernels::{dense, eltwise, pool, quantize, reorder};

use super::arena::split_io;
use crate::format::meta::{ModelMeta, NodeSpec};
use crate::format::QpwFile;
use crate::graph::op::{Activation, Op, Window};
use crate::plan::{conv_geometry, Plan};

pub fn is_blocked(shape: &[usize]) -> bool {
    shape.len() == 3
}

fn epilogue(a: Activation) -> Epilogue {
    match a {
        Activation::None => Epilogue::None,
        Activation::Relu => Epilogue::Relu,
    }
}

/// Copies a model input (NCHW) into its slot in the executor's layout; returns whether
/// every value was finite (checked during the copy).
pub fn load_input(isa: Isa, shape: &[usize], batch: usize, src: &[f32], dst: &mut [f32]) -> bool {
    if is_blocked(shape) {
        reorder::nchw_to_nhwc_finite(isa, batch, shape[0], shape[1], shape[2], src, dst)
    } else {
        dst.copy_from_slice(src);
        src.iter().all(|v| v.is_finite())
    }
}

/// Copies a value out of its slot into the model's layout (NCHW).
pub fn store_output(isa: Isa, shape: &[usize], batch: usize, src: &[f32], dst: &mut [f32]) {
    if is_blocked(shape) {
        reorder::nhwc_to_nchw(isa, batch, shape[0], shape[1], shape[2], src, dst);
    } else {
        dst.copy_from_slice(src);
    }
}

/// Sees each node's output right after the node ran: `(node index, output slot)`. The
/// slot is in the executor's layout (NHWC for `[C, H, W]` values); calibration only
/// needs the distribution of its values.
pub type Observer<'a> = &'a mut (dyn FnMut(usize, &[f32]) + Send);

/// Runs the nodes up to and including `last` (every node when `None`); `timings`, if
/// given, receives each node's wall time in seconds. Stops at the first node that
/// overflows (the floating-point flags of every thread that ran its tasks, read after
/// the node; what `observe` raises is not counted).
#[allow(clippy::too_many_arguments)]
pub fn run(
    file: &QpwFile,
    weights: &super::params::Params,
    plan: &Plan,
    arena: &mut [f32],
    isa: Isa,
    par: &dyn ParallelFor,
    mut timings: Option<&mut Vec<f64>>,
    mut observe: Option<Observer<'_>>,
    last: Option<usize>,
) -> Result<(), super::Overflow> {
    let meta = &file.meta;
    let end = last.map_or(meta.nodes.len(), |l| (l + 1).min(meta.nodes.len()));
    par.take_fp_exceptions();
    for (index, node) in meta.nodes[..end].iter().enumerate() {
        let start = timings.as_ref().map(|_| Instant::now());
        let out_v = node.outputs[0];
        let in_slots: Vec<_> = node.inputs.iter().map(|&v| &plan.slots[v]).collect();
        let (values, scratch) = arena.split_at_mut(plan.scratch.offset);
        let scratch = &mut scratch[..plan.scratch.len];
        let (out, ins) = split_io(values, &plan.slots[out_v], &in_slots);
        if let Op::QConv { .. } | Op::Quantize = node.op {
            run_int8_node(file, node, plan.batch, &ins, out, isa, par);
        } else {
            let params: Vec<&[f32]> = node.params.iter().map(|&p| weights.get(file, p)).collect();
            run_node(meta, node, plan.batch, &ins, &params, out, scratch, isa, par);
        }
        if let (Some(t), Some(s)) = (timings.as_deref_mut(), start) {
            t.push(s.elapsed().as_secs_f64());
        }
        let raised = par.take_fp_exceptions();
        if !raised.is_empty() {
            return Err(super::Overflow { node: index, raised });
        }
        if let Some(f) = observe.as_mut() {
            let slot = &plan.slots[out_v];
            f(index, &arena[slot.offset..slot.offset + slot.len]);
            par.take_fp_exceptions();
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_node(
    meta: &ModelMeta,
    node: &NodeSpec,
    batch: usize,
    ins: &[&[f32]],
    params: &[&[f32]],
    out: &mut [f32],
    scratch: &mut [f32],
    isa: Isa,
    par: &dyn ParallelFor,
) {
    let shape = |v: usize| meta.values[v].shape.as_slice();
    let is = shape(node.inputs[0]);
    let os = shape(node.outputs[0]);
    match &node.op {
        Op::Conv {
            cin,
            cout,
            window,
            activation,
        }
        | Op::ConvWinograd {
            cin,
            cout,
            window,
            activation,
        } => {
            let g = conv_geometry(batch, is, os, *cin, *cout, window);
            let (x, w, b, residual, act) = (ins[0], params[0], params[1], ins.get(1).copied(), epilogue(*activation));
            if let Op::ConvWinograd { .. } = node.op {
                conv2d_winograd_nhwc(isa, par, &g, x, w, b, residual, act, out, scratch);
            } else {
                conv2d_nhwc(isa, par, &g, x, w, b, residual, act, out);
            }
        }
        Op::Dense {
            input,
            output,
            activation,
        } => dense::dense(
            isa,
            par,
            batch,
            *input,
            *output,
            ins[0],
            params[0],
            params[1],
            *activation == Activation::Relu,
            out,
        ),
        Op::MaxPool { window, .. } => pool::max_pool_nhwc(isa, par, &pool_geometry(batch, is, os, window), ins[0], out),
        Op::AveragePool {
            window,
            count_include_pad,
            ..
        } => pool::avg_pool_nhwc(
            isa,
            par,
            &pool_geometry(batch, is, os, window),
            *count_include_pad,
            ins[0],
            out,
        ),
        Op::GlobalAveragePool => pool::global_avg_pool_nhwc(isa, batch, is[1] * is[2], is[0], ins[0], out),
        Op::Add { activation } => eltwise::add(isa, ins[0], ins[1], *activation == Activation::Relu, out),
        Op::Relu => {
            out.copy_from_slice(ins[0]);
            eltwise::relu_inplace(isa, out);
        }
        Op::Sigmoid => {
            out.copy_from_slice(ins[0]);
            eltwise::sigmoid_inplace(isa, out);
        }
        Op::Reshape => reshape(isa, batch, is, os, ins[0], out),
        Op::QConv { .. } | Op::Quantize => unreachable!("INT8 ops run in run_int8_node"),
        Op::Concat { axis } => {
            let in_shapes: Vec<&[usize]> = node.inputs.iter().map(|&v| shape(v)).collect();
            concat(batch, *axis, &in_shapes, os, ins, out);
        }
    }
}

/// A u8 value's bytes in its slot (four to an f32 word; see `plan`).
fn as_u8(slot: &[f32], elements: usize) -> &[u8] {
    &bytemuck::cast_slice(slot)[..elements]
}

fn as_u8_mut(slot: &mut [f32], elements: usize) -> &mut [u8] {
    &mut bytemuck::cast_slice_mut(slot)[..elements]
}

/// An i16 value's elements in its slot (two to an f32 word).
fn as_i16(slot: &[f32], elements: usize) -> &[i16] {
    &bytemuck::cast_slice(slot)[..elements]
}

fn as_i16_mut(slot: &mut [f32], elements: usize) -> &mut [i16] {
    &mut bytemuck::cast_slice_mut(slot)[..elements]
}

/// The INT8 ops: their operands are u8, i16 or f32 as the values' grids say.
fn run_int8_node(
    file: &QpwFile,
    node: &NodeSpec,
    batch: usize,
    ins: &[&[f32]],
    out: &mut [f32],
    isa: Isa,
    par: &dyn ParallelFor,
) {
    let meta = &file.meta;
    let value = |v: usize| &meta.values[v];
    let elements = |v: usize| value(v).shape.iter().product::<usize>() * batch;
    let (x, y) = (node.inputs[0], node.outputs[0]);
    // Validated: every grid has 8 to 15 bits and its zero point on it, so the narrowing
    // casts below are exact.
    match &node.op {
        Op::Quantize => {
            let q = value(y).quant.expect("validated: quantize writes a quantized value");
            if q.is_wide() {
                quantize::quantize_i16(isa, par, ins[0], q.scale, q.zero, q.max(), as_i16_mut(out, elements(y)));
            } else {
                quantize::quantize_u8(isa, par, ins[0], q.scale, q.zero as u8, as_u8_mut(out, elements(y)));
            }
        }
        Op::QConv {
            cin,
            cout,
            window,
            activation,
        } => {
            let g = conv_geometry(batch, &value(x).shape, &value(y).shape, *cin, *cout, window);
            let xq = value(x).quant.expect("validated: qconv reads a quantized value");
            let residual = match node.inputs.get(1) {
                None => QResidual::None,
                Some(&r) => match value(r).quant {
                    Some(q) if q.is_wide() => QResidual::I16 {
                        data: as_i16(ins[1], elements(r)),
                        scale: q.scale,
                        zero: q.zero as i16,
                    },
                    Some(q) => QResidual::U8 {
                        data: as_u8(ins[1], elements(r)),
                        scale: q.scale,
                        zero: q.zero as u8,
                    },
                    None => QResidual::F32(ins[1]),
                },
            };
            let output = match value(y).quant {
                Some(q) if q.is_wide() => QOutput::I16 {
                    data: as_i16_mut(out, elements(y)),
                    scale: q.scale,
                    zero: q.zero as i16,
                    max: q.max() as i16,
                },
                Some(q) => QOutput::U8 {
                    data: as_u8_mut(out, elements(y)),
                    scale: q.scale,
                    zero: q.zero as u8,
                },
                None => QOutput::F32(out),
            };
            let [w, b, s] = [0, 1, 2].map(|k| node.params[k]);
            let weights = file.tensor_i8(w).expect("validated: i8 weights");
            // Stored padded to whole panels; the kernel takes exactly `cout`.
            let bias = &file.tensor_i32(b).expect("validated: i32 bias")[..*cout];
            let scale = &file.tensor_f32(s).expect("validated: f32 scale")[..*cout];
            let relu = *activation == Activation::Relu;
            if xq.is_wide() {
                let input = as_i16(ins[0], elements(x));
                qconv::qconv2d_nhwc(
                    isa,
                    par,
                    &g,
                    input,
                    xq.zero as i16,
                    weights,
                    bias,
                    scale,
                    residual,
                    relu,
                    output,
                );
            } else {
                let input = as_u8(ins[0], elements(x));
                qconv::qconv2d_nhwc(
                    isa,
                    par,
                    &g,
                    input,
                    xq.zero as u8,
                    weights,
                    bias,
                    scale,
                    residual,
                    relu,
                    output,
                );
            }
        }
        other => unreachable!("{} is not an INT8 op", other.kind()),
    }
}

fn pool_geometry(batch: usize, is: &[usize], os: &[usize], w: &Window) -> pool::PoolGeometry {
    pool::PoolGeometry {
        batch,
        in_h: is[1],
        in_w: is[2],
        channels: is[0],
        out_h: os[1],
        out_w: os[2],
        kernel: w.kernel,
        stride: w.stride,
        dilation: w.dilation,
        pads: w.pads,
    }
}

/// Reshape keeps row-major NCHW order; a blocked value first goes back to NCHW.
fn reshape(isa: Isa, batch: usize, is: &[usize], os: &[usize], x: &[f32], out: &mut [f32]) {
    let spatial = |s: &[usize]| is_blocked(s) && s[1] * s[2] > 1;
    match (spatial(is), is_blocked(os) && spatial(os)) {
        (false, false) => out.copy_from_slice(x),
        (true, false) => reorder::nhwc_to_nchw(isa, batch, is[0], is[1], is[2], x, out),
        (false, true) => reorder::nchw_to_nhwc(isa, batch, os[0], os[1], os[2], x, out),
        (true, true) => {
            let mut tmp = vec![0f32; x.len()];
            reorder::nhwc_to_nchw(isa, batch, is[0], is[1], is[2], x, &mut tmp);
            reorder::nchw_to_nhwc(isa, batch, os[0], os[1], os[2], &tmp, out);
        }
    }
}

/// Concatenation along a model axis, done in the stored layout: for a blocked value the
/// model's axis (C, H, W) = stored axis (2, 0, 1).
fn concat(batch: usize, axis: usize, in_shapes: &[&[usize]], os: &[usize], ins: &[&[f32]], out: &mut [f32]) {
    let stored = |s: &[usize]| -> Vec<usize> {
        if is_blocked(s) {
            vec![s[1], s[2], s[0]]
        } else {
            s.to_vec()
        }
    };
    let axis = if is_blocked(os) { [2, 0, 1][axis] } else { axis };
    let so = stored(os);
    let outer: usize = so[..axis].iter().product::<usize>() * batch;
    let mut pos = 0;
    for k in 0..outer {
        for (x, s) in ins.iter().zip(in_shapes) {
            let chunk: usize = stored(s)[axis..].iter().product();
            out[pos..pos + chunk].copy_from_slice(&x[k * chunk..(k + 1) * chunk]);
            pos += chunk;
        }
    }
}
