//! How a convolution's output is divided into tasks for the worker pool, shared by the
//! FP32 (`conv`) and INT8 (`qconv`) kernels so both keep one disjointness argument and
//! one splitting rule.

use std::ops::Range;

use crate::parallel::ParallelFor;

/// How a tier tiles the output: pixels per register tile and 16-channel panels per
/// channel tile.
pub(crate) trait Tiling {
    const PIXELS: usize;
    const PANELS: usize;
}

/// The sizes that decide a split.
pub(crate) struct Work {
    /// Output pixels (batch x out_h x out_w).
    pub pixels: usize,
    /// 16-channel output panels.
    pub panels: usize,
    /// Weight elements one pass over all channels reads (taps x cin x padded cout).
    pub weights: usize,
    /// Input elements (pixels x cin): what one pass over all pixels streams.
    pub input: usize,
}

impl Work {
    /// Whether one pass reads more weights than input: such layers split their
    /// channels across tasks, and the pointwise kernel prefetches their weights.
    pub(crate) fn weight_heavy(&self) -> bool {
        self.weights > self.input
    }
}

/// The weight bytes of one channel-tile group: half of a 512 KiB L2, so the group's
/// weights stay there while its pixel tiles pass. The direct, Winograd and INT8 kernels
/// run every channel tile of a group on a pixel tile before the next pixel tile.
const CHANNEL_GROUP_WEIGHT_BUDGET: usize = 256 << 10;

/// Channel tiles per group when one tile's weights take `tile_weight_bytes` (at least
/// one).
pub(crate) fn channel_group_len(tile_weight_bytes: usize) -> usize {
    (CHANNEL_GROUP_WEIGHT_BUDGET / tile_weight_bytes.max(1)).max(1)
}

/// Splits the output into (pixel range, channel-tile range) tasks and runs them.
///
/// Disjointness: pixel tiles `[t*PIXELS, (t+1)*PIXELS)` partition the output pixels and
/// channel tiles `[c*PANELS*16, (c+1)*PANELS*16) ∩ [0, cout)` partition the channels; task
/// `t` gets the product of the `t / co_chunks`-th pixel chunk and the `t % co_chunks`-th
/// channel chunk, and the chunks partition the tile index ranges. So every output element
/// belongs to exactly one task, and a task writes only elements it owns.
///
/// A few tasks per thread keep threads busy when tiles differ in cost (edges, the ragged
/// last tile). Every task streams all the weights of its channel range past each of its
/// pixels, so the larger operand decides the split: where the input is larger (early
/// layers: 3136 pixels, 64-256 channels) pixels are split and every task shares the
/// weights; where the weights are larger (late layers: 49 pixels, up to 4 MB of weights)
/// output channels are split, so each weight is read by one task, not by every task.
/// Measured on the 7x7 layers of ResNet-50 (Zen 3, 2 threads, FP32): splitting pixels
/// there re-read the weights from L3 once per task and ran at 30% of peak, splitting
/// channels at about 50%.
pub(crate) fn run_tasks<T: Tiling>(
    par: &dyn ParallelFor,
    work: &Work,
    task: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let px_tiles = work.pixels.div_ceil(T::PIXELS);
    let co_tiles = work.panels.div_ceil(T::PANELS);
    let threads = par.threads().max(1);
    let target = if threads == 1 { 1 } else { threads * 4 };
    let (px_chunks, co_chunks) = if work.weight_heavy() {
        let co_chunks = co_tiles.min(target).max(1);
        (px_tiles.min(target.div_ceil(co_chunks)).max(1), co_chunks)
    } else {
        let px_chunks = px_tiles.min(target).max(1);
        (px_chunks, co_tiles.min(target.div_ceil(px_chunks)).max(1))
    };
    let chunk = |i: usize, chunks: usize, total: usize| i * total / chunks..(i + 1) * total / chunks;
    let pixels = work.pixels;
    let run_one = |t: usize| {
        let tiles = chunk(t / co_chunks, px_chunks, px_tiles);
        let px = (tiles.start * T::PIXELS).min(pixels)..(tiles.end * T::PIXELS).min(pixels);
        let co = chunk(t % co_chunks, co_chunks, co_tiles);
        if !px.is_empty() && !co.is_empty() {
            task(px, co);
        }
    };
    if px_chunks * co_chunks == 1 {
        run_one(0);
    } else {
        par.run(px_chunks * co_chunks, &run_one);
    }
}
