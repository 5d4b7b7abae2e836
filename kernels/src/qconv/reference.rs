//! The scalar oracle: direct loops over the definition, no tiling, and the scalar form of
//! the epilogue that every SIMD tier reproduces operation for operation.

use std::ops::Range;

use super::{Job, OutPtr, QElement, QResidual, Tiling, GROUP, PANEL};

/// One pixel per task unit and every channel in one unit: tasks split pixels only.
pub(super) struct ReferenceTiles;

impl Tiling for ReferenceTiles {
    const PIXELS: usize = 1;
    const PANELS: usize = usize::MAX;
}

/// `a > b ? a : b`: `maxps` semantics (the second operand when either is NaN).
pub(super) fn max_f32(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `a < b ? a : b`: `minps` semantics (the second operand when either is NaN).
pub(super) fn min_f32(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// The value of output element `q * cout + co` from its accumulator, in units of the
/// output's quantization step (module docs): bias, scale, residual, activation.
pub(super) fn real_value<E>(job: &Job<E>, q: usize, co: usize, acc: i32) -> f32 {
    let i = q * job.g.cout + co;
    let mut y = acc.wrapping_add(job.bias[co]) as f32 * (job.scale[co] * job.unit);
    match job.residual {
        QResidual::None => {}
        QResidual::F32(r) => y += r[i] * job.residual_scale,
        QResidual::U8 { data, zero, .. } => y += (data[i] as f32 - zero as f32) * job.residual_scale,
        QResidual::I16 { data, zero, .. } => y += (data[i] as f32 - zero as f32) * job.residual_scale,
    }
    if job.relu {
        y = max_f32(y, 0.0);
    }
    y
}

/// `max(round_half_even(min(y, 255 - zero)) + zero, 0)`, NaN to 0.
pub(super) fn requantize(y: f32, zero: u8) -> u8 {
    let q = round_to_i32(min_f32(255.0 - zero as f32, y));
    (q.wrapping_add(zero as i32)).max(0) as u8
}

/// `max(round_half_even(min(y, max - zero)) + zero, 0)`, NaN to 0: the i16 grid
/// `[0, max]`.
pub(super) fn requantize_i16(y: f32, zero: i16, max: i16) -> i16 {
    let q = round_to_i32(min_f32((max as i32 - zero as i32) as f32, y));
    (q.wrapping_add(zero as i32)).max(0) as i16
}

/// Round half to even, `vcvtps2dq` semantics: NaN and values outside i32's range give
/// i32::MIN.
pub(super) fn round_to_i32(t: f32) -> i32 {
    if t.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&t) {
        i32::MIN
    } else {
        t.round_ties_even() as i32
    }
}

/// The exact accumulator of output channel `co` at output pixel `q`.
pub(super) fn accumulator<E: QElement>(job: &Job<E>, q: usize, co: usize) -> i32 {
    let g = job.g;
    let [kh_n, kw_n] = g.kernel;
    let groups = g.cin.div_ceil(GROUP);
    let weight = |kh: usize, kw: usize, ci: usize| {
        let row = (((co / PANEL) * kh_n + kh) * kw_n + kw) * groups + ci / GROUP;
        job.weights[(row * PANEL + co % PANEL) * GROUP + E::GROUP_ORDER[ci % GROUP]] as i32
    };
    let n = q / (g.out_h * g.out_w);
    let oh = q / g.out_w % g.out_h;
    let ow = q % g.out_w;
    let x_zero = job.x_zero.to_i32();
    let mut acc = 0i32;
    for kh in 0..kh_n {
        let ih = (oh * g.stride[0] + kh * g.dilation[0]).checked_sub(g.pads[0]);
        let ih = ih.filter(|&ih| ih < g.in_h);
        for kw in 0..kw_n {
            let iw = (ow * g.stride[1] + kw * g.dilation[1]).checked_sub(g.pads[1]);
            let iw = iw.filter(|&iw| iw < g.in_w);
            for ci in 0..g.cin {
                // A tap in the padding reads the zero point.
                let x = match (ih, iw) {
                    (Some(ih), Some(iw)) => job.input[((n * g.in_h + ih) * g.in_w + iw) * g.cin + ci].to_i32(),
                    _ => x_zero,
                };
                // Wrapping, as the SIMD sums: i16 sums may pass i32 (module docs).
                acc = acc.wrapping_add(x * weight(kh, kw, ci));
            }
        }
    }
    acc
}

/// Computes output pixels `px` (flattened over batch, rows, columns), all channels.
pub(super) fn conv_pixels<E: QElement>(job: &Job<E>, px: Range<usize>) {
    let cout = job.g.cout;
    let (start, len) = (px.start * cout, px.len() * cout);
    // safety (both arms): `px` lies within the output pixels (from `run_tasks`), so these
    // `len` elements from `start` are inside the output buffer, whose length `check_args`
    // confirmed; the pixel ranges of different tasks are disjoint and each covers whole
    // pixels, so no other live reference covers them.
    match job.out {
        OutPtr::F32(ptr) => {
            let out = unsafe { std::slice::from_raw_parts_mut(ptr.add(start), len) };
            for (k, y) in out.iter_mut().enumerate() {
                let (q, co) = (px.start + k / cout, k % cout);
                *y = real_value(job, q, co, accumulator(job, q, co));
            }
        }
        OutPtr::U8 { ptr, zero } => {
            let out = unsafe { std::slice::from_raw_parts_mut(ptr.add(start), len) };
            for (k, y) in out.iter_mut().enumerate() {
                let (q, co) = (px.start + k / cout, k % cout);
                *y = requantize(real_value(job, q, co, accumulator(job, q, co)), zero);
            }
        }
        OutPtr::I16 { ptr, zero, max } => {
            let out = unsafe { std::slice::from_raw_parts_mut(ptr.add(start), len) };
            for (k, y) in out.iter_mut().enumerate() {
                let (q, co) = (px.start + k / cout, k % cout);
                *y = requantize_i16(real_value(job, q, co, accumulator(job, q, co)), zero, max);
            }
        }
    }
}
