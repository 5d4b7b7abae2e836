//! Convolution of layers with few input channels (the stem: 7x7/2 over 3), from input
//! rows copied once per output row: AVX-512 tiles of 14 pixels x 32 channels, AVX2 tiles
//! of 6 x 16.
//!
//! Why it exists: the general kernel packs each pixel tile's windows (14 x 147 floats
//! for the stem) before its FMAs, and its 14 row pointers do not fit the registers beside
//! the loop's own, so LLVM reloads some from the stack every step. Here the `kh` input
//! rows an output row reads are copied once, padding included, into a band; a tile's
//! pixels then read the band at evenly spaced offsets (`stride_w * cin` floats apart),
//! so the hand-scheduled loops of `strided_rows` address them from two or three
//! registers, and no tile needs a border case. The stem at 224x224, AVX-512, alone: one
//! thread 2.24 -> 1.46 ms, two threads 1.08 -> 0.72 ms, bit-identical outputs (same
//! products, same order). AVX2 numbers at `run_avx2`.
//!
//! Taken when `takes` / `takes_avx2` say so (whole channel tiles, no dilation, rows short
//! enough to be worth it; AVX-512 also output rows of whole tiles); other layers use
//! `tile`. A tile never spans two output rows: each task's pixels are tiled row by row,
//! the last tile of a row ragged where the row is not whole tiles.

use std::ops::Range;

use super::strided_rows::{accumulate_14x2, accumulate_6x2, AVX2_MR, MR};
use super::tile::{finish_whole_tile, prefetch_next_tile, RaggedTile, Vector};
use super::x86::{Avx2, Avx512};
use super::{ConvGeometry, Job, PANEL};

/// Longest band (all `kh` padded input rows), in floats: 1 MiB.
const BAND_MAX: usize = 256 << 10;

/// Whether the layer has few input channels under a window of one dilation, and its
/// band fits `BAND_MAX`.
fn few_channels(g: &ConvGeometry) -> bool {
    let band = g.kernel[0] * (g.in_w + g.pads[1] + g.pads[3]) * g.cin;
    g.kernel != [1, 1] && g.cin > 0 && g.kernel[1] * g.cin < 32 && g.dilation == [1, 1] && band <= BAND_MAX
}

/// Whether `run` runs this layer on AVX-512.
pub(super) fn takes(g: &ConvGeometry) -> bool {
    few_channels(g) && g.out_w.is_multiple_of(MR) && g.cout.is_multiple_of(2 * PANEL)
}

/// Whether `run_avx2` runs this layer.
pub(super) fn takes_avx2(g: &ConvGeometry) -> bool {
    few_channels(g) && g.cout.is_multiple_of(PANEL)
}

/// Output pixels `px` (from a multiple of 14; rows are whole tiles) by 32-channel tiles
/// `co`.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ must be usable; `job` passed `check_args` and `takes(job.g)` holds;
/// `px.end <= pixels`; no other thread writes the output elements of (`px` x channels of
/// `co`) meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) unsafe fn run(job: &Job, px: Range<usize>, co: Range<usize>) {
    assert!(takes(job.g));
    // safety: forwarded; `accumulate_14x2`'s rows and panels are those `run_rows` vouches
    // for, and AVX-512 is enabled here. Nothing to prefetch: the band is in cache (costs
    // the stem 2%), so the loop prefetches its own rows.
    unsafe {
        run_rows::<Avx512, MR, 2>(job, px, co, |acc, base, stride, w, panel2, len| {
            accumulate_14x2(acc, base, stride, w, panel2, len, base)
        })
    }
}

/// Output pixels `px` by 16-channel tiles `co`, in tiles of 6 pixels.
///
/// Against the general AVX2 tile, which packs each tile's windows (the stem at 224x224,
/// Zen 1, FMA peak 40 GFLOP/s a core): one thread 29.8 -> 37.0 GFLOP/s (criterion), two
/// threads in the whole model 4.11 -> 3.32-3.46 ms (`--cpu-profile`, alternating runs).
/// Its rows of 112 pixels are 18 tiles and a ragged one of 4.
///
/// # Safety
/// AVX2 and FMA must be usable; `job` passed `check_args` and `takes_avx2(job.g)` holds;
/// otherwise as `run`.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
pub(super) unsafe fn run_avx2(job: &Job, px: Range<usize>, co: Range<usize>) {
    assert!(takes_avx2(job.g));
    // safety: forwarded; `accumulate_6x2`'s rows and panel are those `run_rows` vouches
    // for (one panel per tile, so `panel2` is unused), and AVX2+FMA are enabled here.
    unsafe {
        run_rows::<Avx2, AVX2_MR, 2>(job, px, co, |acc, base, stride, w, _panel2, len| {
            accumulate_6x2(acc, base, stride, w, len, base)
        })
    }
}

/// The band loop of `run` and `run_avx2`: tiles of MR pixels (ragged at a row's end) by
/// `NV * LANES` channels, whose accumulation is `accumulate(acc, base, stride, w, panel2,
/// len)`: `len` steps over rows `base + i * stride` and weight rows of 16 floats at `w`
/// (the tile's second panel `panel2` floats after it).
///
/// # Safety
/// The ISA of `V` is enabled; `job` passed `check_args`, and the layer passes
/// `few_channels` and has whole `NV * LANES`-channel tiles; `px.end <= pixels`; no other
/// thread writes the output elements of (`px` x channels of `co`) meanwhile.
/// `accumulate` reads only the rows and panels described.
#[inline(always)]
pub(super) unsafe fn run_rows<V: Vector, const MR: usize, const NV: usize>(
    job: &Job,
    px: Range<usize>,
    co: Range<usize>,
    accumulate: impl Fn(&mut [[V::R; NV]; MR], *const f32, isize, *const f32, usize, usize),
) {
    let g = job.g;
    let (cin, [kh_n, kw_n], [sh, sw]) = (g.cin, g.kernel, g.stride);
    let panels_per_tile = NV * V::LANES / PANEL;
    let row_len = (g.in_w + g.pads[1] + g.pads[3]) * cin;
    let input_row = g.in_w * cin;
    let left = g.pads[1] * cin;
    let panel_stride = kh_n * kw_n * cin * PANEL;
    assert!(
        few_channels(g)
            && g.cout.is_multiple_of(NV * V::LANES)
            && px.end <= g.pixels()
            && job.input.len() == g.input_len()
    );
    // Zero once: the padding columns are never written, the input columns are rewritten
    // for each output row.
    let mut band = vec![0.0f32; kh_n * row_len];
    let mut q = px.start;
    while q < px.end {
        let row = q / g.out_w;
        let row_end = px.end.min((row + 1) * g.out_w);
        let (n, oy) = (row / g.out_h, row % g.out_h);
        for kh in 0..kh_n {
            let dst = &mut band[kh * row_len + left..kh * row_len + left + input_row];
            let iy = (oy * sh + kh) as isize - g.pads[0] as isize;
            if (0..g.in_h as isize).contains(&iy) {
                let start = (n * g.in_h + iy as usize) * input_row;
                dst.copy_from_slice(&job.input[start..start + input_row]);
            } else {
                dst.fill(0.0);
            }
        }
        for q0 in (q..row_end).step_by(MR) {
            let (ox0, rows) = (q0 % g.out_w, MR.min(row_end - q0));
            // Pixel ox reads padded columns ox * sw .. ox * sw + kw of each band row:
            // inside the band, as the output extent follows from the padded width.
            let base = band.as_ptr().wrapping_add(ox0 * sw * cin);
            for ct in co.clone() {
                let ch0 = ct * panels_per_tile * PANEL;
                let w = job.weights.as_ptr().wrapping_add(ct * panels_per_tile * panel_stride);
                if rows < MR {
                    let tile = RaggedTile {
                        rows,
                        q0,
                        ch0,
                        base,
                        stride: sw * cin,
                        steps: kh_n,
                        step_rows: row_len,
                        len: kw_n * cin,
                        w,
                        step_weights: kw_n * cin * PANEL,
                        panel_stride,
                        resume: false,
                        last: true,
                    };
                    // safety: as the whole tiles below, for `rows` pixels.
                    unsafe { tile.run::<V, NV>(job) };
                    continue;
                }
                // safety: the ISA of `V` is enabled (contract).
                let mut acc = [[unsafe { V::zero() }; NV]; MR];
                for kh in 0..kh_n {
                    // Rows `kh * row_len + (ox0 + i) * sw * cin`, `kw * cin` floats each,
                    // end at or before `(kh + 1) * row_len`; the weight rows of the tile's
                    // panels for kernel row kh are inside the packed weights (whole
                    // channel tiles).
                    accumulate(
                        &mut acc,
                        base.wrapping_add(kh * row_len),
                        (sw * cin) as isize,
                        w.wrapping_add(kh * kw_n * cin * PANEL),
                        panel_stride,
                        kw_n * cin,
                    );
                }
                // The lines the next tile writes, asked for owned while this one stores.
                prefetch_next_tile::<V, MR, NV>(job, q0, ch0, false);
                // safety: the tile's pixels are inside the output (`q0 + MR <= row_end <=
                // px.end <= pixels`) and its channels below cout; this task owns them.
                unsafe { finish_whole_tile::<V, MR, NV>(job, acc, q0, ch0, true) };
            }
        }
        q = row_end;
    }
}
