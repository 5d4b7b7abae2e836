//! AVX-512 1x1 unpadded convolution (a GEMM over NHWC pixels) on the hand-scheduled loop
//! of `strided_rows`.
//!
//! Why it exists: half of ResNet-50's time is 1x1 layers, and the general tile's loop
//! reloads row pointers from the stack every step. A 1x1 layer's tile reads 14 input
//! pixels `stride_w * cin` floats apart (consecutive ones at stride 1), which
//! `accumulate_14x2` addresses from three registers.
//!
//! Taken when `takes` says so (whole 32-channel tiles); the caller hands the ragged last
//! pixel tile to the general kernel. Same products in the same order as the general
//! kernel, so the outputs are bit-identical.

use std::arch::x86_64::*;
use std::ops::Range;

use super::strided_rows::{accumulate_14x2, MR};
use super::tile::{cin_blocks, finish_whole_tile, prefetch_next_tile, Vector};
use super::x86::Avx512;
use super::{Job, PANEL};

/// Whether this kernel runs the layer on AVX-512: 1x1, unpadded, whole 32-channel tiles,
/// and either stride 1 (consecutive pixels, so tiles may span output rows) or output rows
/// of whole tiles (the stride-2 shortcuts: a tile's pixels `stride_w * cin` floats apart).
pub(super) fn takes(job: &Job) -> bool {
    let g = job.g;
    g.kernel == [1, 1]
        && g.pads == [0; 4]
        && g.cin > 0
        && g.cout.is_multiple_of(2 * PANEL)
        && (g.stride == [1, 1] || g.out_w.is_multiple_of(MR))
}

/// Output pixels `px` (whole tiles from a multiple of 14) by 32-channel tiles `co`, in
/// the general kernel's loop order (`tile::run_range`).
///
/// # Safety
/// AVX-512 F/BW/VL/DQ must be usable; `job` passed `check_args` and `takes(job)` holds;
/// `px.start` and `px.end - px.start` are multiples of 14 and `px.end <= pixels`; no other
/// thread writes the output elements of (`px` x channels of `co`) meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) unsafe fn run(job: &Job, px: Range<usize>, co: Range<usize>) {
    let g = job.g;
    let (cin, cout) = (g.cin, g.cout);
    assert!(
        takes(job)
            && px.start.is_multiple_of(MR)
            && (px.end - px.start).is_multiple_of(MR)
            && px.end <= g.pixels()
            && job.input.len() == g.input_len()
    );
    let panel_stride = cin * PANEL;
    let blocks = cin_blocks(cin, cin, 2);
    let group_len = if blocks == 1 {
        crate::split::channel_group_len(cin * 2 * PANEL * 4)
    } else {
        1
    };
    let (input, out) = (job.input.as_ptr(), job.output.ptr);
    let [sh, sw] = g.stride;
    // Input offset of output pixel q (the first of its tile); its tile's pixels follow
    // `sw * cin` floats apart, in one output row unless the stride is 1.
    let input_at = |q: usize| {
        let (n, oy, ox) = (q / (g.out_h * g.out_w), q / g.out_w % g.out_h, q % g.out_w);
        ((n * g.in_h + oy * sh) * g.in_w + ox * sw) * cin
    };
    // At stride 1 with one input-channel block, the next pixel tile's input is the
    // `14 * cin` floats after this tile's: the loop fetches one 64-byte line of it per
    // step, and its `cin` steps cover the `14 * cin / 16` lines. Left to the hardware
    // prefetchers, the tiles waited on memory: 0.39 -> 0.32 ms for 256 -> 64 at 56x56
    // (layer1.1.conv1, 2 threads), 0.70 -> 0.64 for layer2.0.conv1, 0.44 -> 0.41 for
    // layer3.1.conv3. Elsewhere it fetches lines of the tile's own input, already cached.
    let prefetch_next = blocks == 1 && g.stride == [1, 1];
    for group_start in co.clone().step_by(group_len) {
        let group = group_start..co.end.min(group_start + group_len);
        for block in 0..blocks {
            let (c0, c1) = (block * cin / blocks, (block + 1) * cin / blocks);
            let last_block = c1 == cin;
            for q0 in px.clone().step_by(MR) {
                for ct in group.clone() {
                    let ch0 = ct * 2 * PANEL;
                    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
                    if c0 > 0 {
                        // Resume from the partial sums the previous block stored.
                        for (i, row) in acc.iter_mut().enumerate() {
                            for (v, a) in row.iter_mut().enumerate() {
                                // safety: pixel q0 + i < pixels, channels ch0 + 16 v .. +16
                                // <= cout: inside the output, this task's.
                                *a = unsafe { Avx512::load(out.add((q0 + i) * cout + ch0 + v * PANEL)) };
                            }
                        }
                    }
                    prefetch_next_tile::<Avx512, MR, 2>(job, q0, ch0, last_block);
                    // safety: output pixel q0 + i (i < 14) reads the input pixel at
                    // `input_at(q0) + i * sw * cin` (consecutive pixels at stride 1, one
                    // output row otherwise: `takes`), `cin` floats, so `c1 - c0 >= 1` from
                    // channel c0; the panels 2 ct and 2 ct + 1 exist (cout is whole
                    // 32-channel tiles) and hold `cin` rows of 16 floats, rows c0..c1 read.
                    unsafe {
                        accumulate_14x2(
                            &mut acc,
                            input.add(input_at(q0) + c0),
                            (sw * cin) as isize,
                            job.weights.as_ptr().add(2 * ct * panel_stride + c0 * PANEL),
                            panel_stride,
                            c1 - c0,
                            if prefetch_next {
                                input.wrapping_add(input_at(q0) + MR * cin)
                            } else {
                                input
                            },
                        )
                    };
                    // safety: the tile's 14 pixels are inside the output and its 32
                    // channels below cout; this task owns them.
                    unsafe { finish_whole_tile::<Avx512, MR, 2>(job, acc, q0, ch0, last_block) };
                }
            }
        }
    }
}
