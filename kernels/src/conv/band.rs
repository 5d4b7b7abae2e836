//! AVX-512 convolution of layers with few input channels (the stem: 7x7/2 over 3), from
//! input rows copied once per output row.
//!
//! Why it exists: the general kernel packs each 14-pixel tile's windows (14 x 147 floats
//! for the stem) before its FMAs, and its 14 row pointers do not fit the registers beside
//! the loop's own, so LLVM reloads some from the stack every step. Here the `kh` input
//! rows an output row reads are copied once, padding included, into a band; a tile's
//! pixels then read the band at evenly spaced offsets (`stride_w * cin` floats apart),
//! so a hand-scheduled loop addresses all 14 from three registers, and no tile needs a
//! border case. The stem at 224x224, AVX-512, alone: one thread 2.24 -> 1.46 ms, two
//! threads 1.08 -> 0.72 ms, bit-identical outputs (same products, same order).
//!
//! Taken when `takes` says so (output rows a whole number of tiles, whole 32-channel
//! tiles, no dilation, rows short enough to be worth it); other layers use `tile`.

use std::arch::x86_64::*;
use std::ops::Range;

use super::strided_rows::{accumulate_14x2, MR};

use super::tile::{finish_whole_tile, prefetch_next_tile};
use super::x86::Avx512;
use super::{ConvGeometry, Job, PANEL};

/// Longest band (all `kh` padded input rows), in floats: 1 MiB.
const BAND_MAX: usize = 256 << 10;

/// Whether the band kernel runs this layer on AVX-512.
pub(super) fn takes(g: &ConvGeometry) -> bool {
    let band = g.kernel[0] * (g.in_w + g.pads[1] + g.pads[3]) * g.cin;
    g.kernel != [1, 1]
        && g.cin > 0
        && g.kernel[1] * g.cin < 32
        && g.dilation == [1, 1]
        && g.out_w.is_multiple_of(MR)
        && g.cout.is_multiple_of(2 * PANEL)
        && band <= BAND_MAX
}

/// Output pixels `px` (whole tiles: `px.start` is a multiple of 14, and so is every row)
/// by 32-channel tiles `co`.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ must be usable; `job` passed `check_args` and `takes(job.g)` holds;
/// no other thread writes the output elements of (`px` x channels of `co`) meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) unsafe fn run(job: &Job, px: Range<usize>, co: Range<usize>) {
    let g = job.g;
    let (cin, [kh_n, kw_n], [sh, sw]) = (g.cin, g.kernel, g.stride);
    let row_len = (g.in_w + g.pads[1] + g.pads[3]) * cin;
    let input_row = g.in_w * cin;
    let left = g.pads[1] * cin;
    let panel_stride = kh_n * kw_n * cin * PANEL;
    assert!(takes(g) && px.start.is_multiple_of(MR) && px.end <= g.pixels() && job.input.len() == g.input_len());
    // Zero once: the padding columns are never written, the input columns are rewritten
    // for each output row.
    let mut band = vec![0.0f32; kh_n * row_len];
    let mut band_row = None;
    for q0 in px.step_by(MR) {
        // Rows are whole tiles, so the tile is pixels ox0.. of one output row.
        let (row, ox0) = (q0 / g.out_w, q0 % g.out_w);
        if band_row != Some(row) {
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
            band_row = Some(row);
        }
        for ct in co.clone() {
            let ch0 = ct * 2 * PANEL;
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            for kh in 0..kh_n {
                // Pixel ox reads padded columns ox * sw .. ox * sw + kw: inside the band,
                // as the output extent follows from the padded width.
                // safety: rows `kh * row_len + (ox0 + i) * sw * cin`, `kw * cin` floats
                // each, end at or before `(kh + 1) * row_len`; the weight rows of panels
                // `2 ct` and `2 ct + 1` for kernel row kh are inside the packed weights
                // (cout is a whole number of 32-channel tiles, checked by `check_args`).
                unsafe {
                    accumulate_14x2(
                        &mut acc,
                        band.as_ptr().add(kh * row_len + ox0 * sw * cin),
                        (sw * cin) as isize,
                        job.weights
                            .as_ptr()
                            .add(2 * ct * panel_stride + kh * kw_n * cin * PANEL),
                        panel_stride,
                        kw_n * cin,
                        // Nothing to prefetch: the band is in cache (costs the stem 2%).
                        band.as_ptr(),
                    )
                };
            }
            // The lines the next tile writes, asked for owned while this one stores.
            prefetch_next_tile::<Avx512, MR, 2>(job, q0, ch0, false);
            // safety: the tile's 14 pixels are inside the output (whole tiles, `px.end <=
            // pixels`) and its 32 channels below cout (`takes`); this task owns them.
            unsafe { finish_whole_tile::<Avx512, MR, 2>(job, acc, q0, ch0, true) };
        }
    }
}
