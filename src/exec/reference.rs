//! The reference executor: plain scalar loops over NCHW tensors, one function per op,
//! written to be obviously correct rather than fast. It is the oracle the optimized
//! executor and every SIMD kernel are tested against; keep it simple.

use crate::format::meta::NodeSpec;
use crate::graph::op::{Activation, Op, Window, PACK_LANES};

/// Parameters of one node as f32 slices (read in place from the model file).
pub struct Params<'a> {
    pub tensors: Vec<&'a [f32]>,
}

/// Runs `node` on NCHW inputs into `out`. `in_shapes`/`out_shape` are per-sample.
pub fn run_node(
    node: &NodeSpec,
    batch: usize,
    inputs: &[&[f32]],
    in_shapes: &[&[usize]],
    out_shape: &[usize],
    params: &Params<'_>,
    out: &mut [f32],
) {
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
            let algorithm = if matches!(node.op, Op::ConvWinograd { .. }) {
                conv_winograd
            } else {
                conv
            };
            algorithm(
                batch,
                *cin,
                *cout,
                window,
                (in_shapes[0][1], in_shapes[0][2]),
                (out_shape[1], out_shape[2]),
                inputs[0],
                params.tensors[0],
                params.tensors[1],
                inputs.get(1).copied(),
                *activation,
                out,
            )
        }
        Op::Dense {
            input,
            output,
            activation,
        } => dense(
            batch,
            *input,
            *output,
            inputs[0],
            params.tensors[0],
            params.tensors[1],
            *activation,
            out,
        ),
        Op::QConv { .. } | Op::Quantize => {
            unreachable!("the engine refuses INT8 models on the reference executor")
        }
        Op::MaxPool { window, .. } => pool(batch, in_shapes[0], out_shape, window, PoolKind::Max, inputs[0], out),
        Op::AveragePool {
            window,
            count_include_pad,
            ..
        } => pool(
            batch,
            in_shapes[0],
            out_shape,
            window,
            PoolKind::Average {
                count_include_pad: *count_include_pad,
            },
            inputs[0],
            out,
        ),
        Op::GlobalAveragePool => {
            let c = in_shapes[0][0];
            let hw = in_shapes[0][1] * in_shapes[0][2];
            for (o, plane) in out.iter_mut().zip(inputs[0].chunks_exact(hw)).take(batch * c) {
                *o = plane.iter().map(|&v| v as f64).sum::<f64>() as f32 / hw as f32;
            }
        }
        Op::Add { activation } => {
            for ((o, a), b) in out.iter_mut().zip(inputs[0]).zip(inputs[1]) {
                *o = activate(a + b, *activation);
            }
        }
        Op::Relu => {
            for (o, x) in out.iter_mut().zip(inputs[0]) {
                *o = activate(*x, Activation::Relu);
            }
        }
        Op::Sigmoid => {
            for (o, x) in out.iter_mut().zip(inputs[0]) {
                *o = sigmoid(*x);
            }
        }
        Op::Reshape => out.copy_from_slice(inputs[0]),
        Op::Concat { axis } => {
            let outer: usize = out_shape[..*axis].iter().product::<usize>() * batch;
            let mut pos = 0;
            for k in 0..outer {
                for (x, s) in inputs.iter().zip(in_shapes) {
                    let chunk: usize = s[*axis..].iter().product();
                    out[pos..pos + chunk].copy_from_slice(&x[k * chunk..(k + 1) * chunk]);
                    pos += chunk;
                }
            }
        }
    }
}

pub fn activate(x: f32, a: Activation) -> f32 {
    match a {
        Activation::None => x,
        // NaN stays NaN (max would turn it into 0 and hide it).
        Activation::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
    }
}

pub fn sigmoid(x: f32) -> f32 {
    // exp of a non-positive argument only: exp(-x) for x below about -709 would overflow
    // f64 and raise the overflow flag the executors count, for a result that is just 0.
    let x = x as f64;
    let e = (-x.abs()).exp();
    (if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) }) as f32
}

/// Index of weight (co, ci, ky, kx) in the packed layout `[co/16][kh][kw][cin][16]`.
fn packed_index(co: usize, ci: usize, ky: usize, kx: usize, cin: usize, kh: usize, kw: usize) -> usize {
    ((((co / PACK_LANES) * kh + ky) * kw + kx) * cin + ci) * PACK_LANES + co % PACK_LANES
}

#[allow(clippy::too_many_arguments)]
pub fn conv(
    batch: usize,
    cin: usize,
    cout: usize,
    w: &Window,
    (ih, iw): (usize, usize),
    (oh, ow): (usize, usize),
    x: &[f32],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) {
    let [kh, kw] = w.kernel;
    for n in 0..batch {
        for co in 0..cout {
            let plane = &mut out[(n * cout + co) * oh * ow..][..oh * ow];
            plane.fill(bias[co]);
            for ci in 0..cin {
                let src = &x[(n * cin + ci) * ih * iw..][..ih * iw];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let wv = weights[packed_index(co, ci, ky, kx, cin, kh, kw)];
                        for y in 0..oh {
                            let iy = (y * w.stride[0] + ky * w.dilation[0]) as isize - w.pads[0] as isize;
                            if iy < 0 || iy >= ih as isize {
                                continue;
                            }
                            let row = &src[iy as usize * iw..][..iw];
                            for (xo, o) in plane[y * ow..(y + 1) * ow].iter_mut().enumerate() {
                                let ix = (xo * w.stride[1] + kx * w.dilation[1]) as isize - w.pads[1] as isize;
                                if ix >= 0 && ix < iw as isize {
                                    *o += wv * row[ix as usize];
                                }
                            }
                        }
                    }
                }
            }
            if let Some(r) = residual {
                let rp = &r[(n * cout + co) * oh * ow..][..oh * ow];
                for (o, r) in plane.iter_mut().zip(rp) {
                    *o += r;
                }
            }
            for o in plane.iter_mut() {
                *o = activate(*o, act);
            }
        }
    }
}

/// Winograd F(2x2, 3x3) from the transformed weights `U` (`[ceil(cout/16)][16][cin][16]`):
/// per 2x2 output tile, `V = Bᵀ d B` of each input channel's 4x4 window,
/// `M = Σ_ci U[co][ci] ⊙ V[ci]`, `Y = Aᵀ M A`.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // loops read as the matrix formulas
pub fn conv_winograd(
    batch: usize,
    cin: usize,
    cout: usize,
    w: &Window,
    (ih, iw): (usize, usize),
    (oh, ow): (usize, usize),
    x: &[f32],
    u: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) {
    const BT: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
    let (rows, cols) = (oh.div_ceil(2), ow.div_ceil(2));
    let u_index =
        |co: usize, k: usize, ci: usize| (((co / PACK_LANES) * 16 + k) * cin + ci) * PACK_LANES + co % PACK_LANES;
    for n in 0..batch {
        // V of every tile and input channel of this image: [tile][ci][16].
        let mut v = vec![0.0f32; rows * cols * cin * 16];
        for t in 0..rows * cols {
            let (y0, x0) = (
                (2 * (t / cols)) as isize - w.pads[0] as isize,
                (2 * (t % cols)) as isize - w.pads[1] as isize,
            );
            for ci in 0..cin {
                let mut d = [[0.0f32; 4]; 4];
                for (r, row) in d.iter_mut().enumerate() {
                    for (c, e) in row.iter_mut().enumerate() {
                        let (y, xx) = (y0 + r as isize, x0 + c as isize);
                        if y >= 0 && xx >= 0 && (y as usize) < ih && (xx as usize) < iw {
                            *e = x[((n * cin + ci) * ih + y as usize) * iw + xx as usize];
                        }
                    }
                }
                for a in 0..4 {
                    for b in 0..4 {
                        let mut acc = 0.0f32;
                        for r in 0..4 {
                            for c in 0..4 {
                                acc += BT[a][r] * d[r][c] * BT[b][c];
                            }
                        }
                        v[(t * cin + ci) * 16 + a * 4 + b] = acc;
                    }
                }
            }
        }
        for co in 0..cout {
            let plane = &mut out[(n * cout + co) * oh * ow..][..oh * ow];
            for t in 0..rows * cols {
                let mut m = [0.0f32; 16];
                for ci in 0..cin {
                    for (k, mk) in m.iter_mut().enumerate() {
                        *mk += u[u_index(co, k, ci)] * v[(t * cin + ci) * 16 + k];
                    }
                }
                for a in 0..2 {
                    for b in 0..2 {
                        let (y, xx) = (2 * (t / cols) + a, 2 * (t % cols) + b);
                        if y >= oh || xx >= ow {
                            continue;
                        }
                        let mut acc = 0.0f32;
                        for r in 0..4 {
                            for c in 0..4 {
                                acc += AT[a][r] * m[r * 4 + c] * AT[b][c];
                            }
                        }
                        let o = y * ow + xx;
                        let r = residual.map_or(0.0, |r| r[(n * cout + co) * oh * ow + o]);
                        plane[o] = activate(acc + bias[co] + r, act);
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn dense(
    batch: usize,
    input: usize,
    output: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    act: Activation,
    y: &mut [f32],
) {
    for n in 0..batch {
        let xr = &x[n * input..(n + 1) * input];
        for o in 0..output {
            let mut acc = b[o] as f64;
            for (i, &xv) in xr.iter().enumerate() {
                acc += xv as f64 * w[packed_index(o, i, 0, 0, input, 1, 1)] as f64;
            }
            y[n * output + o] = activate(acc as f32, act);
        }
    }
}

enum PoolKind {
    Max,
    Average { count_include_pad: bool },
}

/// ONNX pooling. A window is clipped to the input for max and for the average of valid
/// taps; with `count_include_pad` the divisor counts the window clipped to the padded
/// input (pads count, the ceil-mode overhang beyond them does not), as ONNX Runtime does.
fn pool(batch: usize, is: &[usize], os: &[usize], w: &Window, kind: PoolKind, x: &[f32], out: &mut [f32]) {
    let (c, ih, iw) = (is[0], is[1] as isize, is[2] as isize);
    let (oh, ow) = (os[1], os[2]);
    for nc in 0..batch * c {
        let src = &x[nc * (ih * iw) as usize..][..(ih * iw) as usize];
        for y in 0..oh {
            for xo in 0..ow {
                let y0 = (y * w.stride[0]) as isize - w.pads[0] as isize;
                let x0 = (xo * w.stride[1]) as isize - w.pads[1] as isize;
                let mut max = f32::NEG_INFINITY;
                let mut sum = 0f64;
                let mut valid = 0usize;
                for ky in 0..w.kernel[0] {
                    let iy = y0 + (ky * w.dilation[0]) as isize;
                    if iy < 0 || iy >= ih {
                        continue;
                    }
                    for kx in 0..w.kernel[1] {
                        let ix = x0 + (kx * w.dilation[1]) as isize;
                        if ix < 0 || ix >= iw {
                            continue;
                        }
                        let v = src[(iy * iw + ix) as usize];
                        if v > max || v.is_nan() {
                            max = v;
                        }
                        sum += v as f64;
                        valid += 1;
                    }
                }
                out[(nc * oh + y) * ow + xo] = match kind {
                    PoolKind::Max => max,
                    PoolKind::Average { count_include_pad } => {
                        let count = if count_include_pad {
                            let y1 = (y0 + w.kernel[0] as isize).min(ih + w.pads[2] as isize);
                            let x1 = (x0 + w.kernel[1] as isize).min(iw + w.pads[3] as isize);
                            ((y1 - y0) * (x1 - x0)) as usize
                        } else {
                            valid
                        };
                        (sum / count.max(1) as f64) as f32
                    }
                };
            }
        }
    }
}
