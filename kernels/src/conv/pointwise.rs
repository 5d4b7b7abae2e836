//! 1x1 unpadded convolution (a GEMM over NHWC pixels) on the hand-scheduled loops of
//! `strided_rows`: AVX-512 tiles of 14 pixels x 32 channels, AVX2 tiles of 6 x 16.
//!
//! Why it exists: half of ResNet-50's time is 1x1 layers, and the general tile's loop
//! reloads row pointers from the stack every step. A 1x1 layer's tile reads its input
//! pixels `stride_w * cin` floats apart (consecutive ones at stride 1), which the loops
//! address from two or three registers. On AVX2 the general tile's pointers fit the
//! registers, but it keeps its accumulators on the stack between the loop and the
//! epilogue (numbers at `run_avx2`).
//!
//! Taken when `takes` says so (whole channel tiles). A ragged last pixel tile runs on the
//! general kernel's accumulation right after the whole tiles of each channel block, while
//! their weights are in cache.

use std::ops::Range;

use super::strided_rows::{accumulate_14x2, accumulate_6x2, AVX2_MR, MR};
use super::tile::{
    cin_blocks, fewest_cin_blocks, finish_whole_tile, prefetch_next_tile, tile_weight_bytes, RaggedTile, Vector,
};
use super::x86::{Avx2, Avx512};
use super::{Job, PANEL};

/// Whether the kernel with `mr`-pixel tiles of `tile_channels` channels runs the layer:
/// 1x1, unpadded, whole channel tiles, and either stride 1 (consecutive pixels, so tiles
/// may span output rows) or output rows of whole tiles (the stride-2 shortcuts: a tile's
/// pixels `stride_w * cin` floats apart).
fn takes_tiles(job: &Job, mr: usize, tile_channels: usize) -> bool {
    let g = job.g;
    g.kernel == [1, 1]
        && g.pads == [0; 4]
        && g.cin > 0
        && g.cout.is_multiple_of(tile_channels)
        && (g.stride == [1, 1] || g.out_w.is_multiple_of(mr))
}

/// Whether `run_avx512` runs the layer.
pub(super) fn takes(job: &Job) -> bool {
    takes_tiles(job, MR, 2 * PANEL)
}

/// Whether `run_avx2` runs the layer.
pub(super) fn takes_avx2(job: &Job) -> bool {
    takes_tiles(job, AVX2_MR, PANEL)
}

/// Output pixels `px` (from a multiple of 14) by 32-channel tiles `co`, in the general
/// kernel's loop order (`tile::run_range`).
///
/// # Safety
/// AVX-512 F/BW/VL/DQ must be usable; `job` passed `check_args` and `takes(job)` holds;
/// `px.start` is a multiple of 14, `px.end <= pixels`, and `px` is whole tiles unless it
/// ends at the last pixel of a stride-1 layer; no other thread writes the output elements
/// of (`px` x channels of `co`) meanwhile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
#[inline(never)]
pub(super) unsafe fn run(job: &Job, px: Range<usize>, co: Range<usize>) {
    // safety: forwarded; `accumulate_14x2`'s rows and panels are those `run_tiles` vouches
    // for, and AVX-512 is enabled here.
    unsafe {
        run_tiles::<Avx512, MR, 2>(
            job,
            px,
            co,
            Schedule::AVX512,
            |acc, base, stride, w, panel2, len, prefetch| accumulate_14x2(acc, base, stride, w, panel2, len, prefetch),
        )
    }
}

/// Output pixels `px` (from a multiple of 6) by 16-channel tiles `co`.
///
/// Against the general AVX2 tile (`kernels/benches/conv.rs`, one thread, Zen 1 with an
/// FMA peak of 38.3 GFLOP/s): 1x1 56x56 64 -> 256 30.7 -> 33.9 GFLOP/s, 256 -> 64 33.6 ->
/// 38.0, 7x7 2048 -> 512 30.6 -> 35.0, the stride-2 56x56 256 -> 512 27.0 -> 32.7. In the
/// whole model (2 threads) the direct convolutions take 3% less time.
///
/// # Safety
/// AVX2 and FMA must be usable; otherwise as `run` with `takes_avx2` and tiles of 6.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
pub(super) unsafe fn run_avx2(job: &Job, px: Range<usize>, co: Range<usize>) {
    // safety: forwarded; `accumulate_6x2`'s rows and panel are those `run_tiles` vouches
    // for (one panel per tile, so `panel2` is unused), and AVX2+FMA are enabled here.
    unsafe {
        run_tiles::<Avx2, AVX2_MR, 2>(
            job,
            px,
            co,
            Schedule::AVX2,
            |acc, base, stride, w, _panel2, len, prefetch| accumulate_6x2(acc, base, stride, w, len, prefetch),
        )
    }
}

/// How `run_tiles` orders and prefetches a layer's work, per ISA (each measured on its
/// own hosts).
#[derive(Clone, Copy)]
pub(super) struct Schedule {
    /// Split `cin` as `tile::fewest_cin_blocks` does, instead of `tile::cin_blocks`'
    /// blocks of about 256 channels.
    pub fewest_blocks: bool,
    /// On layers whose weights outweigh their input, the floats the accumulation's
    /// prefetch pointer advances per step, pointed at the weights the next channel group
    /// or input-channel block reads first (`None`: it fetches input, as described in
    /// `run_tiles`).
    pub weight_prefetch_step: Option<usize>,
}

impl Schedule {
    /// As measured on AVX-512 hosts before weight prefetching existed; not yet measured
    /// with it.
    pub(super) const AVX512: Schedule = Schedule {
        fewest_blocks: false,
        weight_prefetch_step: None,
    };
    /// `accumulate_6x2` advances its prefetch pointer 24 bytes a step. Zen 1, the whole
    /// model at 2 threads (so the 7x7 layers' 4 MB of weights come from memory), against
    /// the AVX-512 schedule in four alternating rounds: 7x7 2048 -> 512 at 0.87-0.89x its
    /// time, 7x7 512 -> 2048 0.92-0.96x, 14x14 256 -> 1024 0.92-0.95x, the model 0.975x.
    /// Of the 2048 -> 512 layers' gain, blocks of 1024 channels alone gave a third, the
    /// weight prefetch alone two thirds.
    pub(super) const AVX2: Schedule = Schedule {
        fewest_blocks: true,
        weight_prefetch_step: Some(6),
    };
}

/// The tile loops of `run` and `run_avx2`: tiles of MR pixels by `NV * LANES` channels
/// (one or two panels), whose accumulation is `accumulate(acc, base, stride, w, panel2,
/// len, prefetch)`: `len` steps over pixel rows `base + i * stride` and weight rows of 16
/// floats at `w` (the tile's second panel `panel2` floats after it).
///
/// # Safety
/// The ISA of `V` is enabled; `job` passed `check_args` and the layer is 1x1, unpadded,
/// of whole channel tiles, with stride 1 or output rows of whole tiles; `px.start` is a
/// multiple of MR, `px.end <= pixels`, and `px` is whole tiles unless it ends at the last
/// pixel of a stride-1 layer; no other thread writes the output elements of (`px` x
/// channels of `co`) meanwhile. `accumulate` reads only the rows and panels described.
#[inline(always)]
pub(super) unsafe fn run_tiles<V: Vector, const MR: usize, const NV: usize>(
    job: &Job,
    px: Range<usize>,
    co: Range<usize>,
    schedule: Schedule,
    accumulate: impl Fn(&mut [[V::R; NV]; MR], *const f32, isize, *const f32, usize, usize, *const f32),
) {
    let g = job.g;
    let (cin, cout) = (g.cin, g.cout);
    let panels_per_tile = NV * V::LANES / PANEL;
    assert!(
        takes_tiles(job, MR, NV * V::LANES)
            && px.start.is_multiple_of(MR)
            && ((px.end - px.start).is_multiple_of(MR) || (px.end == g.pixels() && g.stride == [1, 1]))
            && px.end <= g.pixels()
            && job.input.len() == g.input_len()
    );
    let panel_stride = cin * PANEL;
    let blocks = if schedule.fewest_blocks {
        fewest_cin_blocks(cin, panels_per_tile)
    } else {
        cin_blocks(cin, cin, panels_per_tile)
    };
    let group_len = if blocks == 1 {
        crate::split::channel_group_len(tile_weight_bytes(cin, panels_per_tile))
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
    // `MR * cin` floats after this tile's: the loop fetches one 64-byte line of it per
    // step, and its `cin` steps cover the `MR * cin / 16` lines. Left to the hardware
    // prefetchers, the tiles waited on memory (AVX-512): 0.39 -> 0.32 ms for 256 -> 64 at
    // 56x56 (layer1.1.conv1, 2 threads), 0.70 -> 0.64 for layer2.0.conv1, 0.44 -> 0.41
    // for layer3.1.conv3. Elsewhere it fetches lines of the tile's own input, already
    // cached.
    let prefetch_next = blocks == 1 && g.stride == [1, 1];
    // Where the weights outweigh the input (the split's rule, `split::run_tasks`: per
    // input channel, `panels * 16` weights against `pixels` input floats; ResNet-50's 7x7
    // and 14x14 layers, 1-4 MB of weights read once, from memory), the first pixel tile
    // of every channel group or block waits on its weights. So the tiles of one (group,
    // block) fetch the weights the next one reads first, right after its own: `step`
    // floats a step, call after call, until they cover as many floats as this one reads.
    let weight_prefetch = schedule.weight_prefetch_step.filter(|_| g.split_work().weight_heavy());
    for group_start in co.clone().step_by(group_len) {
        let group = group_start..co.end.min(group_start + group_len);
        for block in 0..blocks {
            let (c0, c1) = (block * cin / blocks, (block + 1) * cin / blocks);
            let last_block = c1 == cin;
            // The weights this (group, block) reads first: its first tile's panel rows
            // c0..c1 for a block, all its tiles' panels for a group. The next (group,
            // block) reads the floats right after them.
            let (region_start, region_len) = if blocks == 1 {
                (
                    group.start * panels_per_tile * panel_stride,
                    group.len() * panels_per_tile * panel_stride,
                )
            } else {
                (
                    group.start * panels_per_tile * panel_stride + c0 * PANEL,
                    (c1 - c0) * PANEL,
                )
            };
            let mut calls = 0;
            for q0 in px.clone().step_by(MR) {
                let tile_input = input_at(q0);
                let rows = MR.min(px.end - q0);
                for ct in group.clone() {
                    let ch0 = ct * panels_per_tile * PANEL;
                    let w = job
                        .weights
                        .as_ptr()
                        .wrapping_add(ct * panels_per_tile * panel_stride + c0 * PANEL);
                    if rows < MR {
                        // On the general accumulation while the block's weights are in
                        // cache. Handed to the general kernel after all whole tiles, the
                        // 1-pixel rest of 1x1 7x7 2048 -> 512 streamed all 4 MB of weights
                        // again: 6.4% of the layer's time for 2% of its multiply-adds
                        // (AVX2, Zen 1).
                        let tile = RaggedTile {
                            rows,
                            q0,
                            ch0,
                            base: input.wrapping_add(tile_input + c0),
                            stride: cin,
                            steps: 1,
                            step_rows: 0,
                            len: c1 - c0,
                            w,
                            step_weights: 0,
                            panel_stride,
                            resume: c0 > 0,
                            last: last_block,
                        };
                        // safety: stride 1 (asserted for a ragged range), so pixel q0 + i
                        // reads input pixel q0 + i, channels c0..c1 at `base + i * cin`;
                        // the panels' rows c0..c1 as below; the pixels are inside the
                        // output and this task's.
                        unsafe { tile.run::<V, NV>(job) };
                        continue;
                    }
                    // safety: the ISA of `V` is enabled (contract).
                    let mut acc = [[unsafe { V::zero() }; NV]; MR];
                    if c0 > 0 {
                        // Resume from the partial sums the previous block stored.
                        for (i, row) in acc.iter_mut().enumerate() {
                            for (v, a) in row.iter_mut().enumerate() {
                                // safety: pixel q0 + i < pixels, channels ch0 + LANES v ..
                                // + LANES <= cout: inside the output, this task's.
                                *a = unsafe { V::load(out.add((q0 + i) * cout + ch0 + v * V::LANES)) };
                            }
                        }
                    }
                    prefetch_next_tile::<V, MR, NV>(job, q0, ch0, last_block);
                    if !prefetch_next && ct + 1 == group.end && q0 + MR < px.end {
                        let next = input_at(q0 + MR) + c0;
                        for i in 0..MR {
                            for c in (0..c1 - c0).step_by(16) {
                                V::prefetch(input.wrapping_add(next + i * sw * cin + c));
                            }
                        }
                    }
                    // Output pixel q0 + i (i < MR) reads the input pixel at `input_at(q0)
                    // + i * sw * cin` (consecutive pixels at stride 1, one output row
                    // otherwise: `takes_tiles`), `cin` floats, so `c1 - c0 >= 1` from
                    // channel c0; the tile's panels exist (cout is whole channel tiles)
                    // and hold `cin` rows of 16 floats, rows c0..c1 read.
                    accumulate(
                        &mut acc,
                        input.wrapping_add(tile_input + c0),
                        (sw * cin) as isize,
                        w,
                        panel_stride,
                        c1 - c0,
                        match weight_prefetch {
                            Some(step) if calls * step * (c1 - c0) < region_len => job
                                .weights
                                .as_ptr()
                                .wrapping_add(region_start + region_len + calls * step * (c1 - c0)),
                            Some(_) => input,
                            None if prefetch_next => input.wrapping_add(tile_input + MR * cin),
                            None => input,
                        },
                    );
                    calls += 1;
                    // safety: the tile's MR pixels are inside the output and its channels
                    // below cout; this task owns them.
                    unsafe { finish_whole_tile::<V, MR, NV>(job, acc, q0, ch0, last_block) };
                }
            }
        }
    }
}
