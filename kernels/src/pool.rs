//! Max, average and global average pooling over NHWC activations.
//!
//! Window semantics follow ONNX MaxPool / AveragePool: output `o` on an axis looks at input
//! positions `o * stride - pad_begin + k * dilation` for `k in 0..kernel`; taps outside the
//! input are skipped (max) or count as zeros (average with `count_include_pad`). The output
//! extent is the caller's (see [`pool_out_extent`] for the ONNX rule); every window must
//! overlap the input, which [`PoolGeometry::check`] verifies.

use crate::cpu::Isa;
use crate::parallel::ParallelFor;
use crate::simd::{for_each_chunk_mut, resolve, task_count};
#[cfg(target_arch = "x86_64")]
use crate::simd::{
    x86::{Avx2, Avx512},
    F32x,
};

/// Shape and window of one pooling op. `pads` are `[top, left, bottom, right]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub pads: [usize; 4],
}

/// ONNX output extent of one spatial axis. In ceil mode, a last window that would start
/// in the end padding (past the input) is dropped, as the ONNX spec and PyTorch do.
/// `None` when the padded input is shorter than the dilated kernel or a parameter is zero.
pub fn pool_out_extent(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
    ceil_mode: bool,
) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let span = dilation.checked_mul(kernel - 1)?.checked_add(1)?;
    let padded = input.checked_add(pad_begin)?.checked_add(pad_end)?;
    if padded < span {
        return None;
    }
    let num = padded - span;
    let mut out = if ceil_mode { num.div_ceil(stride) } else { num / stride } + 1;
    if ceil_mode && (out - 1) * stride >= input + pad_begin {
        out -= 1;
    }
    Some(out)
}

/// Taps `lo..hi` of one axis whose position lies in the input, for output index `o`.
fn valid_taps(
    o: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    input: usize,
    kernel: usize,
) -> (usize, usize) {
    let start = o * stride; // window start in padded coordinates
    let lo = if start >= pad_begin {
        0
    } else {
        (pad_begin - start).div_ceil(dilation)
    };
    let hi = if input + pad_begin > start {
        (input + pad_begin - start).div_ceil(dilation).min(kernel)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Taps of one axis whose position lies in the padded input (`count_include_pad`'s count).
fn padded_taps(
    o: usize,
    stride: usize,
    dilation: usize,
    pad_begin: usize,
    pad_end: usize,
    input: usize,
    kernel: usize,
) -> usize {
    let start = o * stride;
    let end = input + pad_begin + pad_end;
    if end > start {
        (end - start).div_ceil(dilation).min(kernel)
    } else {
        0
    }
}

impl PoolGeometry {
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.channels
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_h * self.out_w * self.channels
    }

    /// Checks that the parameters are usable: no zero kernel, stride or dilation, sizes
    /// that do not overflow, and every output window overlapping the input.
    pub fn check(&self) -> Result<(), String> {
        for a in 0..2 {
            if self.kernel[a] == 0 || self.stride[a] == 0 || self.dilation[a] == 0 {
                return Err(format!(
                    "pool: kernel {:?}, stride {:?} and dilation {:?} must be positive",
                    self.kernel, self.stride, self.dilation
                ));
            }
        }
        let len = |dims: [usize; 4]| dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if len([self.batch, self.in_h, self.in_w, self.channels]).is_none()
            || len([self.batch, self.out_h, self.out_w, self.channels]).is_none()
        {
            return Err("pool: tensor size overflows usize".into());
        }
        let axes = [(self.out_h, self.in_h, 0), (self.out_w, self.in_w, 1)];
        // Every window, not only the last: a dilation larger than the input can skip it.
        for (out, input, a) in axes {
            for o in 0..out {
                let (lo, hi) = valid_taps(o, self.stride[a], self.dilation[a], self.pads[a], input, self.kernel[a]);
                if lo >= hi {
                    return Err(format!(
                        "pool: on axis {} output window {o} has no tap in the input",
                        ["H", "W"][a]
                    ));
                }
            }
        }
        Ok(())
    }

    fn assert_usable(&self, what: &str, input: &[f32], output: &[f32]) {
        if let Err(e) = self.check() {
            panic!("{what}: {e}");
        }
        assert!(
            input.len() == self.input_len() && output.len() == self.output_len(),
            "{what}: geometry needs input {} and output {} elements, got {} and {}",
            self.input_len(),
            self.output_len(),
            input.len(),
            output.len()
        );
    }
}

/// Below this many tap-channel visits a pool runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Max,
    Avg { count_include_pad: bool },
}

pub fn max_pool_nhwc(isa: Isa, par: &dyn ParallelFor, g: &PoolGeometry, input: &[f32], output: &mut [f32]) {
    g.assert_usable("max_pool_nhwc", input, output);
    pool(isa, par, g, Reduce::Max, input, output);
}

/// count_include_pad: divide by the full window (pads count as zeros) vs only valid taps.
/// In ceil mode the part of a window beyond the padded input never counts (ONNX semantics).
pub fn avg_pool_nhwc(
    isa: Isa,
    par: &dyn ParallelFor,
    g: &PoolGeometry,
    count_include_pad: bool,
    input: &[f32],
    output: &mut [f32],
) {
    g.assert_usable("avg_pool_nhwc", input, output);
    pool(isa, par, g, Reduce::Avg { count_include_pad }, input, output);
}

fn pool(isa: Isa, par: &dyn ParallelFor, g: &PoolGeometry, reduce: Reduce, input: &[f32], output: &mut [f32]) {
    let rows = g.batch * g.out_h;
    let row_len = g.out_w * g.channels;
    if rows == 0 || row_len == 0 {
        return;
    }
    let isa = resolve(isa);
    let work = g.output_len() * g.kernel[0] * g.kernel[1];
    let tasks = task_count(par, rows, work, PARALLEL_MIN_WORK);
    let rows_per_task = rows.div_ceil(tasks);
    for_each_chunk_mut(par, output, rows_per_task * row_len, &|task, out| {
        let first = task * rows_per_task;
        let count = out.len() / row_len;
        match isa {
            #[cfg(target_arch = "x86_64")]
            // safety: resolve() confirmed AVX-512; assert_usable() checked the input length
            // and that every window's taps are in bounds; `out` holds `count` whole rows.
            Isa::Avx512 => unsafe { pool_rows_avx512(g, reduce, input.as_ptr(), first, count, out.as_mut_ptr()) },
            #[cfg(target_arch = "x86_64")]
            // safety: as above, for AVX2+FMA.
            Isa::Avx2 => unsafe { pool_rows_avx2(g, reduce, input.as_ptr(), first, count, out.as_mut_ptr()) },
            _ => pool_rows_scalar(g, reduce, input, first, out),
        }
    });
}

/// Scalar tier: the same loops as the SIMD body, one channel at a time.
fn pool_rows_scalar(g: &PoolGeometry, reduce: Reduce, input: &[f32], first_row: usize, out: &mut [f32]) {
    let c = g.channels;
    for (r, out_row) in out.chunks_exact_mut(g.out_w * c).enumerate() {
        let (n, oh) = ((first_row + r) / g.out_h, (first_row + r) % g.out_h);
        let (ky0, ky1) = valid_taps(oh, g.stride[0], g.dilation[0], g.pads[0], g.in_h, g.kernel[0]);
        for ow in 0..g.out_w {
            let (kx0, kx1) = valid_taps(ow, g.stride[1], g.dilation[1], g.pads[1], g.in_w, g.kernel[1]);
            let divisor = divisor(g, reduce, oh, ow, (ky0, ky1), (kx0, kx1));
            for ch in 0..c {
                let mut acc = if reduce == Reduce::Max { f32::NEG_INFINITY } else { 0.0 };
                for ky in ky0..ky1 {
                    let iy = oh * g.stride[0] + ky * g.dilation[0] - g.pads[0];
                    for kx in kx0..kx1 {
                        let ix = ow * g.stride[1] + kx * g.dilation[1] - g.pads[1];
                        let v = input[((n * g.in_h + iy) * g.in_w + ix) * c + ch];
                        acc = if reduce == Reduce::Max { acc.max(v) } else { acc + v };
                    }
                }
                out_row[ow * c + ch] = if reduce == Reduce::Max { acc } else { acc / divisor };
            }
        }
    }
}

fn divisor(g: &PoolGeometry, reduce: Reduce, oh: usize, ow: usize, ky: (usize, usize), kx: (usize, usize)) -> f32 {
    match reduce {
        Reduce::Max => 1.0,
        Reduce::Avg {
            count_include_pad: false,
        } => ((ky.1 - ky.0) * (kx.1 - kx.0)) as f32,
        Reduce::Avg {
            count_include_pad: true,
        } => {
            let h = padded_taps(
                oh,
                g.stride[0],
                g.dilation[0],
                g.pads[0],
                g.pads[2],
                g.in_h,
                g.kernel[0],
            );
            let w = padded_taps(
                ow,
                g.stride[1],
                g.dilation[1],
                g.pads[1],
                g.pads[3],
                g.in_w,
                g.kernel[1],
            );
            (h * w) as f32
        }
    }
}

/// Scalar reference for [`max_pool_nhwc`]: every tap checked against the input bounds.
pub fn max_pool_nhwc_scalar(g: &PoolGeometry, input: &[f32], output: &mut [f32]) {
    g.assert_usable("max_pool_nhwc_scalar", input, output);
    reference(g, None, input, output);
}

/// Scalar reference for [`avg_pool_nhwc`].
pub fn avg_pool_nhwc_scalar(g: &PoolGeometry, count_include_pad: bool, input: &[f32], output: &mut [f32]) {
    g.assert_usable("avg_pool_nhwc_scalar", input, output);
    reference(g, Some(count_include_pad), input, output);
}

/// Plain loops over every tap of every window; `avg` is `Some(count_include_pad)`.
fn reference(g: &PoolGeometry, avg: Option<bool>, input: &[f32], output: &mut [f32]) {
    let c = g.channels;
    for n in 0..g.batch {
        for oh in 0..g.out_h {
            for ow in 0..g.out_w {
                for ch in 0..c {
                    let mut max = f32::NEG_INFINITY;
                    let mut sum = 0.0f32;
                    let (mut valid, mut in_padded) = (0usize, 0usize);
                    for ky in 0..g.kernel[0] {
                        let iy = (oh * g.stride[0] + ky * g.dilation[0]) as isize - g.pads[0] as isize;
                        for kx in 0..g.kernel[1] {
                            let ix = (ow * g.stride[1] + kx * g.dilation[1]) as isize - g.pads[1] as isize;
                            let inside_padded =
                                iy < (g.in_h + g.pads[2]) as isize && ix < (g.in_w + g.pads[3]) as isize;
                            in_padded += inside_padded as usize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < g.in_h && (ix as usize) < g.in_w {
                                let v = input[((n * g.in_h + iy as usize) * g.in_w + ix as usize) * c + ch];
                                max = max.max(v);
                                sum += v;
                                valid += 1;
                            }
                        }
                    }
                    output[((n * g.out_h + oh) * g.out_w + ow) * c + ch] = match avg {
                        None => max,
                        Some(true) => sum / in_padded as f32,
                        Some(false) => sum / valid as f32,
                    };
                }
            }
        }
    }
}

/// `[batch][hw][channels]` -> `[batch][channels]`, the mean over `hw`.
pub fn global_avg_pool_nhwc(isa: Isa, batch: usize, hw: usize, channels: usize, input: &[f32], output: &mut [f32]) {
    assert!(hw > 0, "global_avg_pool_nhwc: empty spatial extent");
    assert!(
        batch.checked_mul(hw).and_then(|x| x.checked_mul(channels)) == Some(input.len())
            && batch * channels == output.len(),
        "global_avg_pool_nhwc: {batch}x{hw}x{channels} needs input {} and output {} elements, got {} and {}",
        batch.saturating_mul(hw).saturating_mul(channels),
        batch.saturating_mul(channels),
        input.len(),
        output.len()
    );
    for (x, y) in input
        .chunks_exact(hw * channels.max(1))
        .zip(output.chunks_exact_mut(channels.max(1)))
    {
        match resolve(isa) {
            #[cfg(target_arch = "x86_64")]
            // safety: AVX-512 confirmed; x holds hw*channels and y channels elements.
            Isa::Avx512 => unsafe { gap_avx512(x.as_ptr(), hw, channels, y.as_mut_ptr()) },
            #[cfg(target_arch = "x86_64")]
            // safety: AVX2+FMA confirmed; sizes as above.
            Isa::Avx2 => unsafe { gap_avx2(x.as_ptr(), hw, channels, y.as_mut_ptr()) },
            _ => global_avg_pool_scalar(1, hw, channels, x, y),
        }
    }
}

/// Scalar reference for [`global_avg_pool_nhwc`].
pub fn global_avg_pool_scalar(batch: usize, hw: usize, channels: usize, input: &[f32], output: &mut [f32]) {
    assert!(hw > 0 && input.len() == batch * hw * channels && output.len() == batch * channels);
    for n in 0..batch {
        for ch in 0..channels {
            let mut sum = 0.0f32;
            for p in 0..hw {
                sum += input[(n * hw + p) * channels + ch];
            }
            output[n * channels + ch] = sum / hw as f32;
        }
    }
}

/// Pools output rows `first_row..first_row + count` (a row is one (n, oh)) into `out`.
///
/// # Safety
/// The ISA of `S` must be available, `g` must have passed `check()`, `input` must hold
/// `g.input_len()` elements and `out` `count * out_w * channels`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pool_rows_body<S: F32x>(
    g: &PoolGeometry,
    reduce: Reduce,
    input: *const f32,
    first_row: usize,
    count: usize,
    out: *mut f32,
) {
    let c = g.channels;
    let l = S::LANES;
    let is_max = reduce == Reduce::Max;
    let init = if is_max { S::splat(f32::NEG_INFINITY) } else { S::zero() };
    for r in 0..count {
        let (n, oh) = ((first_row + r) / g.out_h, (first_row + r) % g.out_h);
        let (ky0, ky1) = valid_taps(oh, g.stride[0], g.dilation[0], g.pads[0], g.in_h, g.kernel[0]);
        for ow in 0..g.out_w {
            let (kx0, kx1) = valid_taps(ow, g.stride[1], g.dilation[1], g.pads[1], g.in_w, g.kernel[1]);
            let div = S::splat(divisor(g, reduce, oh, ow, (ky0, ky1), (kx0, kx1)));
            let dst = out.add((r * g.out_w + ow) * c);
            // Offsets of the window's valid taps, relative to channel 0 of the sample.
            let tap = |ky: usize, kx: usize| {
                let iy = oh * g.stride[0] + ky * g.dilation[0] - g.pads[0];
                let ix = ow * g.stride[1] + kx * g.dilation[1] - g.pads[1];
                ((n * g.in_h + iy) * g.in_w + ix) * c
            };
            let mut cb = 0;
            while cb + 4 * l <= c {
                let mut acc = [init; 4];
                for ky in ky0..ky1 {
                    for kx in kx0..kx1 {
                        let p = input.add(tap(ky, kx) + cb);
                        for (k, a) in acc.iter_mut().enumerate() {
                            *a = combine::<S>(is_max, *a, S::load(p.add(k * l)));
                        }
                    }
                }
                for (k, a) in acc.iter().enumerate() {
                    S::store(dst.add(cb + k * l), finish::<S>(is_max, div, *a));
                }
                cb += 4 * l;
            }
            while cb + l <= c {
                let mut acc = init;
                for ky in ky0..ky1 {
                    for kx in kx0..kx1 {
                        acc = combine::<S>(is_max, acc, S::load(input.add(tap(ky, kx) + cb)));
                    }
                }
                S::store(dst.add(cb), finish::<S>(is_max, div, acc));
                cb += l;
            }
            if cb < c {
                let rem = c - cb;
                let mut acc = init;
                for ky in ky0..ky1 {
                    for kx in kx0..kx1 {
                        acc = combine::<S>(is_max, acc, S::load_partial(input.add(tap(ky, kx) + cb), rem));
                    }
                }
                S::store_partial(dst.add(cb), rem, finish::<S>(is_max, div, acc));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn combine<S: F32x>(is_max: bool, acc: S::V, v: S::V) -> S::V {
    if is_max {
        S::max(acc, v)
    } else {
        S::add(acc, v)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn finish<S: F32x>(is_max: bool, div: S::V, acc: S::V) -> S::V {
    if is_max {
        acc
    } else {
        S::div(acc, div)
    }
}

/// Channel means of one sample `[hw][channels]` into `[channels]`.
///
/// # Safety
/// The ISA of `S` must be available; `x` holds `hw * channels`, `y` `channels` elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gap_body<S: F32x>(x: *const f32, hw: usize, channels: usize, y: *mut f32) {
    let l = S::LANES;
    let div = S::splat(hw as f32);
    let mut cb = 0;
    while cb + 4 * l <= channels {
        let mut acc = [S::zero(); 4];
        for p in 0..hw {
            let src = x.add(p * channels + cb);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = S::add(*a, S::load(src.add(k * l)));
            }
        }
        for (k, a) in acc.iter().enumerate() {
            S::store(y.add(cb + k * l), S::div(*a, div));
        }
        cb += 4 * l;
    }
    while cb < channels {
        let rem = (channels - cb).min(l);
        let mut acc = S::zero();
        for p in 0..hw {
            let src = x.add(p * channels + cb);
            let v = if rem == l {
                S::load(src)
            } else {
                S::load_partial(src, rem)
            };
            acc = S::add(acc, v);
        }
        let v = S::div(acc, div);
        if rem == l {
            S::store(y.add(cb), v);
        } else {
            S::store_partial(y.add(cb), rem, v);
        }
        cb += rem;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pool_rows_avx2(
    g: &PoolGeometry,
    reduce: Reduce,
    input: *const f32,
    first_row: usize,
    count: usize,
    out: *mut f32,
) {
    pool_rows_body::<Avx2>(g, reduce, input, first_row, count, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn pool_rows_avx512(
    g: &PoolGeometry,
    reduce: Reduce,
    input: *const f32,
    first_row: usize,
    count: usize,
    out: *mut f32,
) {
    pool_rows_body::<Avx512>(g, reduce, input, first_row, count, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gap_avx2(x: *const f32, hw: usize, channels: usize, y: *mut f32) {
    gap_body::<Avx2>(x, hw, channels, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn gap_avx512(x: *const f32, hw: usize, channels: usize, y: *mut f32) {
    gap_body::<Avx512>(x, hw, channels, y)
}
