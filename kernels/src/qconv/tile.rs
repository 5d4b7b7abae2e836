//! The one generic INT8 register-tile kernel, written against a small vector abstraction
//! and instantiated per ISA (`x86`).
//!
//! A tile is MR consecutive output pixels (flattened over batch, rows and columns) by NV
//! vectors of output channels, accumulated in i32. Each step takes 4 input channels of a
//! tap: broadcast those 4 elements (u8 or i16) per pixel and multiply them by the 4
//! weights of every channel lane (`QDot`). Out-of-bounds taps read a row of `x_zero`; a tap
//! row wholly out of bounds for every pixel is skipped; when `cin` is a multiple of 4 and
//! every in-bounds pixel sees all `kw` taps of a row contiguously (dilation 1, no
//! horizontal padding), the `kw` and channel loops run as one. The epilogue runs on the
//! tile in registers with the same f32 operations as `reference::real_value`.

#![allow(clippy::needless_range_loop)] // index loops over const-size register arrays unroll

use std::ops::Range;

use super::{Job, OutPtr, QElement, QResidual, GROUP, PANEL};
use crate::conv::Windows;

/// LANES output channels of i32 accumulators and the f32 epilogue on them.
///
/// Every method is `unsafe`: it may only be called where the ISA it uses is enabled, and
/// pointer arguments must be valid for the lanes accessed. `n`-lane loads read only lanes
/// `0..n` (the others are zero) and `n`-lane stores write only lanes `0..n`, `n <= LANES`.
pub(super) trait QVector {
    /// LANES i32.
    type I: Copy;
    /// LANES f32.
    type F: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::I;
    unsafe fn load_i32(p: *const i32, n: usize) -> Self::I;
    /// Wrapping.
    unsafe fn add_i32(a: Self::I, b: Self::I) -> Self::I;
    /// Round to nearest even.
    unsafe fn to_f32(a: Self::I) -> Self::F;
    unsafe fn splat(x: f32) -> Self::F;
    unsafe fn load_f32(p: *const f32, n: usize) -> Self::F;
    /// Bytes as f32 values.
    unsafe fn load_u8(p: *const u8, n: usize) -> Self::F;
    /// i16 elements as f32 values.
    unsafe fn load_i16(p: *const i16, n: usize) -> Self::F;
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a > b ? a : b` per lane (`reference::max_f32`).
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    /// `a < b ? a : b` per lane (`reference::min_f32`).
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
    /// Round half to even (`reference::round_to_i32`: NaN and values outside i32's range
    /// give i32::MIN).
    unsafe fn to_i32_round(a: Self::F) -> Self::I;
    unsafe fn splat_i32(x: i32) -> Self::I;
    unsafe fn max_i32(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn store_f32(p: *mut f32, a: Self::F, n: usize);
    /// Lanes hold integers in 0..=255.
    unsafe fn store_u8(p: *mut u8, a: Self::I, n: usize);
    /// Lanes hold integers in i16's range.
    unsafe fn store_i16(p: *mut i16, a: Self::I, n: usize);
    /// Stores `a`, whose lanes are at least 0 (a ReLU's output), rounded half to even and
    /// saturated to 255: `reference::requantize(a, 0)`.
    #[inline(always)]
    unsafe fn store_nonnegative_u8(p: *mut u8, a: Self::F, n: usize) {
        // safety: forwarded (trait contract).
        unsafe { Self::store_u8(p, Self::to_i32_round(Self::min(Self::splat(255.0), a)), n) }
    }
    /// Hints that the cache line holding `p` is used soon. `p` need not be valid: a
    /// prefetch never faults.
    #[inline(always)]
    fn prefetch(_p: *const u8) {}
}

/// The products of 4 input channels of activation type `E` with the s8 weights of
/// LANES output channels. Every method is `unsafe` as `QVector`'s.
pub(super) trait QDot<E: QElement>: QVector {
    /// The weights of LANES channels by 4 input channels, prepared for `dot`.
    type W: Copy;
    /// Four input elements for every lane, prepared for `dot`.
    type X: Copy;
    /// `4 * LANES` packed weight bytes (lane-major, 4 per lane, in `E::GROUP_ORDER`)
    /// from `p`.
    unsafe fn load_weights(p: *const i8) -> Self::W;
    /// The 4 elements from `p` (input channels k..k+4 of one pixel) for every lane.
    unsafe fn load_quad(p: *const E) -> Self::X;
    /// `acc[l] + Σ_k x[k] * w[l][k]`, exact (wrapping i32).
    unsafe fn dot(acc: Self::I, x: Self::X, w: Self::W) -> Self::I;
}

/// Runs a ragged pixel tile (`mr` below the full tile) with the matching instantiation.
macro_rules! remainder_tile {
    ($V:ty, $nv:literal, $nv_tail:literal, $job:expr, $q0:expr, $mr:expr, $first_panel:expr,
     $one_panel:expr, [$($m:literal)*]) => {
        match ($mr, $one_panel) {
            // safety: forwarded from `run_range`'s caller, which checked the ISA, the
            // arguments and ownership; `q0 + m` is within the pixels and the panel count
            // matches what is left.
            $(
                ($m, false) => unsafe {
                    $crate::qconv::tile::tile::<$V, _, $m, $nv>($job, $q0, $first_panel)
                },
                ($m, true) => unsafe {
                    $crate::qconv::tile::tile::<$V, _, $m, $nv_tail>($job, $q0, $first_panel)
                },
            )*
            _ => unreachable!("remainder tile of {} pixels", $mr),
        }
    };
}
pub(super) use remainder_tile;

/// Runs tiles of MR pixels over pixel range `px` (whose start is a multiple of MR) and
/// channel tiles `co` of `NV * LANES` channels. `NV_TAIL` is the vector count of a
/// one-panel tile, used when the last channel tile has a single panel left. Full tiles run
/// here; a ragged last pixel tile goes to `tile_remainder(q0, mr, first_panel, one_panel)`,
/// which picks the instantiation for `mr` pixels.
///
/// # Safety
/// The ISA of `V` must be enabled; `job` must have passed `check_args`; no other thread may
/// write the output elements of (`px` x channels of `co`) meanwhile.
#[inline(always)]
pub(super) unsafe fn run_range<V: QDot<E>, E: QElement, const MR: usize, const NV: usize, const NV_TAIL: usize>(
    job: &Job<E>,
    px: Range<usize>,
    co: Range<usize>,
    tile_remainder: impl Fn(usize, usize, usize, bool),
) {
    let panels_per_tile = NV * V::LANES / PANEL;
    debug_assert!(NV_TAIL * V::LANES == PANEL && panels_per_tile <= 2);
    let g = job.g;
    let panels = g.cout.div_ceil(PANEL);
    // As in the FP32 kernel: channel tiles are taken in groups whose weights fit in half
    // of L2, and within a group pixel tiles are the outer loop, so the output and the
    // residual are written and read in address order, and a pixel tile's windows are
    // computed once and its inputs stay in L1 across the group's channel tiles.
    let tile_weight_bytes = g.kernel[0] * g.kernel[1] * g.cin.div_ceil(GROUP) * PANEL * GROUP * panels_per_tile;
    let group_len = crate::split::channel_group_len(tile_weight_bytes);
    // One call site per tile shape (see the FP32 kernel: extra inlined copies spill).
    for group_start in co.clone().step_by(group_len) {
        let group = group_start..co.end.min(group_start + group_len);
        let mut q0 = px.start;
        while q0 < px.end {
            let mr = MR.min(px.end - q0);
            let windows = g.windows::<MR>(q0);
            for ct in group.clone() {
                let first_panel = ct * panels_per_tile;
                let one_panel = panels - first_panel < panels_per_tile;
                match (mr == MR, one_panel) {
                    // safety: forwarded from the caller; `first_panel + NV*LANES/16 <=
                    // panels` in the full case, `first_panel + 1 <= panels` in the
                    // one-panel case; `windows` are those of this pixel tile.
                    (true, false) => unsafe { tile_in::<V, E, MR, NV>(job, q0, &windows, first_panel) },
                    (true, true) => unsafe { tile_in::<V, E, MR, NV_TAIL>(job, q0, &windows, first_panel) },
                    (false, _) => tile_remainder(q0, mr, first_panel, one_panel),
                }
            }
            q0 += mr;
        }
    }
}

/// One register tile: output pixels `q0..q0+MR`, channels from panel `first_panel` on,
/// `NV * LANES` of them (the ones below `cout` are stored), all input channels.
///
/// # Safety
/// As `run_range`, plus `q0 + MR <= pixels` and `first_panel * 16 + NV * LANES <=` the
/// padded channel count.
#[inline(always)]
pub(super) unsafe fn tile<V: QDot<E>, E: QElement, const MR: usize, const NV: usize>(
    job: &Job<E>,
    q0: usize,
    first_panel: usize,
) {
    // safety: forwarded; the windows are those of pixels q0..q0+MR.
    unsafe { tile_in::<V, E, MR, NV>(job, q0, &job.g.windows(q0), first_panel) }
}

/// `tile` with the pixel windows already computed (once per pixel tile, not per channel
/// tile).
///
/// # Safety
/// As `tile`, and `windows` must be `job.g.windows(q0)`.
#[inline(always)]
unsafe fn tile_in<V: QDot<E>, E: QElement, const MR: usize, const NV: usize>(
    job: &Job<E>,
    q0: usize,
    windows: &Windows<MR>,
    first_panel: usize,
) {
    let g = job.g;
    let (cin, cout, [kh_n, kw_n]) = (g.cin, g.cout, g.kernel);
    let groups = cin.div_ceil(GROUP);
    // Weight rows (one per 4 input channels of a tap) are PANEL * GROUP bytes.
    let row_bytes = PANEL * GROUP;
    let panel_stride = kh_n * kw_n * groups * row_bytes;

    let Windows { image_row, ih0, iw0 } = *windows;

    // Offset of vector v's lanes from a weight row: panel, then lane within the panel.
    let mut wofs = [0usize; NV];
    for v in 0..NV {
        wofs[v] = (v * V::LANES / PANEL) * panel_stride + (v * V::LANES) % PANEL * GROUP;
    }
    // safety: `first_panel < panels`, so the panel start is within `weights`.
    let wpanel = unsafe { job.weights.as_ptr().add(first_panel * panel_stride) };
    let input = job.input.as_ptr();
    let pad_row = job.pad_row.as_ptr();
    let (in_h, in_w) = (g.in_h as isize, g.in_w as isize);
    let kw_span = ((kw_n - 1) * g.dilation[1]) as isize;

    // The accumulators start at the bias: the epilogue's wrapping `acc + bias` for free.
    // safety: the ISA of `V` is enabled (caller).
    let mut acc = [[unsafe { V::zero() }; NV]; MR];
    for v in 0..NV {
        let ch = first_panel * PANEL + v * V::LANES;
        if ch < cout {
            // safety: `bias` has `cout` elements and `ch + lanes <= cout`.
            let bias = unsafe { V::load_i32(job.bias.as_ptr().add(ch), V::LANES.min(cout - ch)) };
            for i in 0..MR {
                acc[i][v] = bias;
            }
        }
    }
    // Fetch the lines this channel tile writes (and reads as the residual) in the next
    // pixel tile now, so they arrive while this tile computes, as the FP32 kernel does:
    // without it, a 64 -> 256 1x1 layer with f32 output (3.2 MB) took 1.3x as long.
    let next = (q0 + MR) * cout + first_panel * PANEL;
    let tile_channels = NV * V::LANES;
    let (out_bytes, out_elem) = match job.out {
        OutPtr::F32(p) => (p.cast::<u8>().cast_const(), 4),
        OutPtr::I16 { ptr, .. } => (ptr.cast::<u8>().cast_const(), 2),
        OutPtr::U8 { .. } => (std::ptr::null(), 0),
    };
    let (res_bytes, res_elem) = match job.residual {
        QResidual::F32(r) => (r.as_ptr().cast::<u8>(), 4),
        QResidual::I16 { data, .. } => (data.as_ptr().cast::<u8>(), 2),
        QResidual::None | QResidual::U8 { .. } => (std::ptr::null(), 0),
    };
    for i in 0..MR {
        let at = next + i * cout;
        for line in (0..tile_channels * out_elem).step_by(64) {
            V::prefetch(out_bytes.wrapping_add(at * out_elem + line));
        }
        for line in (0..tile_channels * res_elem).step_by(64) {
            V::prefetch(res_bytes.wrapping_add(at * res_elem + line));
        }
    }
    let mut ptrs = [pad_row; MR];
    for kh in 0..kh_n {
        let dy = (kh * g.dilation[0]) as isize;
        // Input row of each pixel for this kernel row, None in the padding.
        let mut rows = [None; MR];
        let whole_rows;
        if job.pointwise {
            // 1x1, stride 1, unpadded: output pixel q reads input pixel q's `cin` elements,
            // found without the windows.
            for i in 0..MR {
                // safety: pixel q0 + i is inside the output (caller), so inside the input,
                // which has the same pixels, `cin` elements each.
                ptrs[i] = unsafe { input.add((q0 + i) * cin) };
            }
            whole_rows = true;
        } else {
            let mut whole = g.dilation[1] == 1 && cin % GROUP == 0;
            for i in 0..MR {
                let ih = ih0[i] + dy;
                if (0..in_h).contains(&ih) {
                    rows[i] = Some(image_row[i] + ih as usize);
                    whole &= iw0[i] >= 0 && iw0[i] + kw_span < in_w;
                }
            }
            if rows.iter().all(Option::is_none) {
                // Every pixel reads x_zero here; the taps still count (x_zero * w).
                whole = cin % GROUP == 0;
            }
            if whole {
                for i in 0..MR {
                    ptrs[i] = match rows[i] {
                        // safety: `iw0 >= 0` and `iw0 + kw - 1 < in_w` (checked above), so
                        // the `kw * cin` elements from here are pixels iw0.. of input row `r`.
                        Some(r) => unsafe { input.add((r * g.in_w + iw0[i] as usize) * cin) },
                        None => pad_row,
                    };
                }
            }
            whole_rows = whole;
        }
        if whole_rows {
            // safety: every pointer has `kw * cin` readable elements (above; `pad_row` has
            // exactly that many) and `cin` is a multiple of 4 unless the layer is
            // pointwise (one tap: the rows of a tap are `ceil(cin/4)`); the weight rows
            // kh*kw*groups .. (kh+1)*kw*groups of each panel used are inside the panel.
            unsafe {
                accumulate::<V, E, MR, NV>(
                    &mut acc,
                    &ptrs,
                    wpanel.add(kh * kw_n * groups * row_bytes),
                    &wofs,
                    kw_n * cin,
                )
            };
            continue;
        }
        for kw in 0..kw_n {
            let dx = (kw * g.dilation[1]) as isize;
            for i in 0..MR {
                let iw = iw0[i] + dx;
                ptrs[i] = match rows[i] {
                    // safety: row `r` and column `iw` are inside the input, so the `cin`
                    // elements from here are that pixel's channels.
                    Some(r) if (0..in_w).contains(&iw) => unsafe { input.add((r * g.in_w + iw as usize) * cin) },
                    _ => pad_row,
                };
            }
            // safety: every pointer has `cin` readable elements (`pad_row` has `kw * cin`);
            // weight rows (kh, kw, 0..groups) of each panel used are inside the panel.
            unsafe {
                accumulate::<V, E, MR, NV>(
                    &mut acc,
                    &ptrs,
                    wpanel.add((kh * kw_n + kw) * groups * row_bytes),
                    &wofs,
                    cin,
                )
            };
        }
    }

    // safety: the epilogue's contract is this function's.
    unsafe { epilogue::<V, E, MR, NV>(job, q0, first_panel, &acc, None) };
}

/// The hot loop: the products of `len` input elements per pixel pointer with
/// `ceil(len/4)` weight rows. Step j reads elements 4j..4j+4 of every pixel pointer (a
/// ragged last step only the elements below `len`; its weights past them are zero
/// padding) and weight row j (64 bytes apart) of each panel.
///
/// # Safety
/// The ISA of `V` is enabled; each `ptrs[i]` has `len` readable elements; `w + wofs[v]`
/// has `ceil(len/4)` rows of 64 readable bytes from it, `4 * LANES` used per row.
#[inline(always)]
unsafe fn accumulate<V: QDot<E>, E: QElement, const MR: usize, const NV: usize>(
    acc: &mut [[V::I; NV]; MR],
    ptrs: &[*const E; MR],
    w: *const i8,
    wofs: &[usize; NV],
    len: usize,
) {
    let full = len / GROUP;
    for j in 0..full {
        // safety (this block): j < full, within the readable ranges of the contract.
        unsafe {
            let wj = w.add(j * PANEL * GROUP);
            let mut b = [V::load_weights(wj); NV];
            for v in 1..NV {
                b[v] = V::load_weights(wj.add(wofs[v]));
            }
            for i in 0..MR {
                let x = V::load_quad(ptrs[i].add(j * GROUP));
                for v in 0..NV {
                    acc[i][v] = V::dot(acc[i][v], x, b[v]);
                }
            }
        }
    }
    let tail = len % GROUP;
    if tail > 0 {
        // safety (this block): row `full` exists (ceil(len/4) rows); elements
        // 4*full..len of every pointer are readable; `quad` has 4.
        unsafe {
            let wj = w.add(full * PANEL * GROUP);
            let mut b = [V::load_weights(wj); NV];
            for v in 1..NV {
                b[v] = V::load_weights(wj.add(wofs[v]));
            }
            for i in 0..MR {
                let mut quad = [E::default(); GROUP];
                std::ptr::copy_nonoverlapping(ptrs[i].add(full * GROUP), quad.as_mut_ptr(), tail);
                let x = V::load_quad(quad.as_ptr());
                for v in 0..NV {
                    acc[i][v] = V::dot(acc[i][v], x, b[v]);
                }
            }
        }
    }
}

/// Scale, residual, activation and the store of the channels below `cout`, as
/// `reference::real_value` and `reference::requantize` do per element, on `acc` plus
/// `bias` (`None`: the bias is in the accumulators already).
///
/// The residual, output and activation kinds are fixed per layer: the four that ResNet
/// layers use get loops with no branch on them (`epilogue_as`), the rest one loop that
/// tests them per vector. With the AMX kernel reading its sums in place and the
/// pixel-major order below, a 56x56 64 -> 256 1x1 layer (one thread, the epilogue most
/// of its time): AMX 213 -> 173 µs, AVX512-VNNI 320 -> 296 µs.
///
/// # Safety
/// As `tile`.
#[inline(always)]
pub(super) unsafe fn epilogue<V: QVector, E, const MR: usize, const NV: usize>(
    job: &Job<E>,
    q0: usize,
    first_panel: usize,
    acc: &[[V::I; NV]; MR],
    bias: Option<&[V::I; NV]>,
) {
    // safety (every arm): forwarded.
    unsafe {
        match (job.residual, job.out, job.relu) {
            // A ReLU's output has zero point 0 (`quant::range`): every inner layer's.
            (QResidual::None, OutPtr::U8 { zero: 0, .. }, true) => {
                epilogue_as::<V, E, MR, NV, RESIDUAL_NONE, OUT_NONNEGATIVE_U8>(job, q0, first_panel, acc, bias)
            }
            // The last layer of a residual block.
            (QResidual::U8 { .. }, OutPtr::U8 { zero: 0, .. }, true) => {
                epilogue_as::<V, E, MR, NV, RESIDUAL_U8, OUT_NONNEGATIVE_U8>(job, q0, first_panel, acc, bias)
            }
            (QResidual::F32(_), OutPtr::U8 { zero: 0, .. }, true) => {
                epilogue_as::<V, E, MR, NV, RESIDUAL_F32, OUT_NONNEGATIVE_U8>(job, q0, first_panel, acc, bias)
            }
            // The same three on 16-bit grids.
            (QResidual::None, OutPtr::I16 { zero: 0, .. }, true) => {
                epilogue_as::<V, E, MR, NV, RESIDUAL_NONE, OUT_NONNEGATIVE_I16>(job, q0, first_panel, acc, bias)
            }
            (QResidual::I16 { .. }, OutPtr::I16 { zero: 0, .. }, true) => {
                epilogue_as::<V, E, MR, NV, RESIDUAL_I16, OUT_NONNEGATIVE_I16>(job, q0, first_panel, acc, bias)
            }
            (QResidual::F32(_), OutPtr::I16 { zero: 0, .. }, true) => {
                epilogue_as::<V, E, MR, NV, RESIDUAL_F32, OUT_NONNEGATIVE_I16>(job, q0, first_panel, acc, bias)
            }
            // A projection shortcut, read only as a residual.
            (QResidual::None, OutPtr::F32(_), _) => {
                epilogue_as::<V, E, MR, NV, RESIDUAL_NONE, OUT_F32>(job, q0, first_panel, acc, bias)
            }
            _ => epilogue_as::<V, E, MR, NV, RESIDUAL_ANY, OUT_ANY>(job, q0, first_panel, acc, bias),
        }
    }
}

/// `epilogue_as`'s residual kinds: none, f32, u8, i16, or whichever `job.residual` is.
const RESIDUAL_NONE: u8 = 0;
const RESIDUAL_F32: u8 = 1;
const RESIDUAL_U8: u8 = 2;
const RESIDUAL_I16: u8 = 3;
const RESIDUAL_ANY: u8 = 4;
/// `epilogue_as`'s output kinds: f32, u8 or i16 with zero point 0 after a ReLU, or
/// whichever `job.out` is.
const OUT_F32: u8 = 0;
const OUT_NONNEGATIVE_U8: u8 = 1;
const OUT_NONNEGATIVE_I16: u8 = 2;
const OUT_ANY: u8 = 3;

/// `epilogue` for a layer whose residual kind is `RESIDUAL` and output kind `OUT` (the
/// caller matched them against `job`).
///
/// # Safety
/// As `tile`.
#[inline(always)]
unsafe fn epilogue_as<V: QVector, E, const MR: usize, const NV: usize, const RESIDUAL: u8, const OUT: u8>(
    job: &Job<E>,
    q0: usize,
    first_panel: usize,
    acc: &[[V::I; NV]; MR],
    bias: Option<&[V::I; NV]>,
) {
    let cout = job.g.cout;
    let (residual_f32, residual_u8, residual_i16, residual_zero) = match job.residual {
        QResidual::None => (std::ptr::null(), std::ptr::null(), std::ptr::null(), 0.0),
        QResidual::F32(r) => (r.as_ptr(), std::ptr::null(), std::ptr::null(), 0.0),
        QResidual::U8 { data, zero, .. } => (std::ptr::null(), data.as_ptr(), std::ptr::null(), zero as f32),
        QResidual::I16 { data, zero, .. } => (std::ptr::null(), std::ptr::null(), data.as_ptr(), zero as f32),
    };
    let (out_f32, out_u8, out_i16, out_zero, out_max) = match job.out {
        OutPtr::F32(out) => (out, std::ptr::null_mut(), std::ptr::null_mut(), 0, 255),
        OutPtr::U8 { ptr, zero } => (std::ptr::null_mut(), ptr, std::ptr::null_mut(), zero as i32, 255),
        OutPtr::I16 { ptr, zero, max } => (std::ptr::null_mut(), std::ptr::null_mut(), ptr, zero as i32, max as i32),
    };
    let has_f32_residual = RESIDUAL == RESIDUAL_F32 || (RESIDUAL == RESIDUAL_ANY && !residual_f32.is_null());
    let has_u8_residual = RESIDUAL == RESIDUAL_U8 || (RESIDUAL == RESIDUAL_ANY && !residual_u8.is_null());
    let has_i16_residual = RESIDUAL == RESIDUAL_I16 || (RESIDUAL == RESIDUAL_ANY && !residual_i16.is_null());
    let relu = OUT == OUT_NONNEGATIVE_U8 || OUT == OUT_NONNEGATIVE_I16 || job.relu;
    let f32_out = OUT == OUT_F32 || (OUT == OUT_ANY && !out_f32.is_null());
    let i16_out = OUT == OUT_ANY && !out_i16.is_null();
    // safety (this block): the ISA of `V` is enabled (caller). For every access below, `q <
    // pixels` and `ch + lanes <= cout`: scale has `cout` elements, residual and output
    // `pixels * cout`, so the `lanes` elements from each pointer are in bounds (the
    // pointer of each kind used is the one `job` holds); this task owns these output
    // elements (caller).
    unsafe {
        let zero = V::splat(0.0);
        let residual_scale = V::splat(job.residual_scale);
        // Pixel-major: each pixel's channels are stored in one run.
        let mut scale = [zero; NV];
        let mut lanes = [0; NV];
        let mut live = 0;
        for v in 0..NV {
            let ch = first_panel * PANEL + v * V::LANES;
            if ch >= cout {
                break;
            }
            lanes[v] = V::LANES.min(cout - ch);
            scale[v] = V::mul(V::load_f32(job.scale.as_ptr().add(ch), lanes[v]), V::splat(job.unit));
            live = v + 1;
        }
        for i in 0..MR {
            for v in 0..NV {
                if v == live {
                    break;
                }
                let (scale, lanes) = (scale[v], lanes[v]);
                let at = (q0 + i) * cout + first_panel * PANEL + v * V::LANES;
                let sum = match bias {
                    Some(b) => V::add_i32(acc[i][v], b[v]),
                    None => acc[i][v],
                };
                let mut y = V::mul(V::to_f32(sum), scale);
                if has_f32_residual {
                    y = V::add(y, V::mul(V::load_f32(residual_f32.add(at), lanes), residual_scale));
                } else if has_u8_residual {
                    let r = V::sub(V::load_u8(residual_u8.add(at), lanes), V::splat(residual_zero));
                    y = V::add(y, V::mul(r, residual_scale));
                } else if has_i16_residual {
                    let r = V::sub(V::load_i16(residual_i16.add(at), lanes), V::splat(residual_zero));
                    y = V::add(y, V::mul(r, residual_scale));
                }
                if relu {
                    y = V::max(y, zero);
                }
                if OUT == OUT_NONNEGATIVE_U8 {
                    V::store_nonnegative_u8(out_u8.add(at), y, lanes);
                } else if OUT == OUT_NONNEGATIVE_I16 {
                    // y >= 0 (ReLU; NaN became 0), so clamping above is all requantization
                    // needs.
                    let q = V::to_i32_round(V::min(V::splat(out_max as f32), y));
                    V::store_i16(out_i16.add(at), q, lanes);
                } else if f32_out {
                    V::store_f32(out_f32.add(at), y, lanes);
                } else {
                    let q = V::to_i32_round(V::min(V::splat((out_max - out_zero) as f32), y));
                    let q = V::max_i32(V::add_i32(q, V::splat_i32(out_zero)), V::zero());
                    if i16_out {
                        V::store_i16(out_i16.add(at), q, lanes);
                    } else {
                        V::store_u8(out_u8.add(at), q, lanes);
                    }
                }
            }
        }
    }
}
