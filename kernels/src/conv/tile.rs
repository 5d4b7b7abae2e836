//! The one generic register-tile kernel, written against a small vector abstraction and
//! instantiated per ISA (`x86`).
//!
//! A tile is MR consecutive output pixels (flattened over batch, rows and columns, so a tile
//! may wrap to the next row or image) by NV vectors of output channels. Each input tap is
//! an implicit-GEMM rank-1 update: broadcast one input value per pixel, multiply by the
//! channel vectors of the packed weights, accumulate in registers. Out-of-bounds taps read a
//! zero row instead of branching per element; a tap row wholly out of bounds for every
//! pixel is skipped; when every in-bounds pixel sees all `kw` taps of a row contiguously
//! (dilation 1, no horizontal padding), the `kw` and `cin` loops run as one.

#![allow(clippy::needless_range_loop)] // index loops over const-size register arrays unroll

use std::ops::Range;

use super::{Job, Windows, PANEL};

/// A SIMD vector of `LANES` f32 (`LANES` divides `PANEL`).
///
/// Every method is `unsafe`: it may only be called where the ISA it uses is enabled, and
/// pointer arguments must be valid for the lanes accessed.
pub(super) trait Vector {
    type R: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::R;
    /// All lanes = `*p`.
    unsafe fn splat(p: *const f32) -> Self::R;
    unsafe fn load(p: *const f32) -> Self::R;
    /// Lanes `0..n` from `p` (only those are read), the rest zero.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::R;
    /// `a * b + c`
    unsafe fn fma(a: Self::R, b: Self::R, c: Self::R) -> Self::R;
    unsafe fn add(a: Self::R, b: Self::R) -> Self::R;
    /// `a - b`
    unsafe fn sub(a: Self::R, b: Self::R) -> Self::R;
    unsafe fn relu(a: Self::R) -> Self::R;
    unsafe fn store(p: *mut f32, a: Self::R);
    /// Lanes `0..n` to `p` (only those are written).
    unsafe fn store_partial(p: *mut f32, a: Self::R, n: usize);
    /// Hints that the cache line holding `p` is used soon. `p` need not be valid: a
    /// prefetch never faults.
    #[inline(always)]
    fn prefetch(_p: *const f32) {}
    /// `prefetch` for a line about to be written (where the ISA can ask for it owned).
    #[inline(always)]
    fn prefetch_write(p: *const f32) {
        Self::prefetch(p)
    }

    /// `load` when `n == LANES`, else `load_partial`.
    #[inline(always)]
    unsafe fn load_lanes(p: *const f32, n: usize) -> Self::R {
        // safety: forwarded (lanes 0..n readable).
        unsafe {
            if n == Self::LANES {
                Self::load(p)
            } else {
                Self::load_partial(p, n)
            }
        }
    }

    /// `store` when `n == LANES`, else `store_partial`.
    #[inline(always)]
    unsafe fn store_lanes(p: *mut f32, a: Self::R, n: usize) {
        // safety: forwarded (lanes 0..n writable).
        unsafe {
            if n == Self::LANES {
                Self::store(p, a)
            } else {
                Self::store_partial(p, a, n)
            }
        }
    }
}

/// The fused epilogue of one output vector, shared by the direct and Winograd kernels:
/// `act(acc + bias + residual)` stored to lanes `0..lanes` of `out`.
///
/// # Safety
/// The ISA of `V` is enabled; `bias` has LANES readable floats; `residual` (if any) has
/// `lanes` readable floats and `out` `lanes` writable ones.
#[inline(always)]
pub(super) unsafe fn finish<V: Vector>(
    acc: V::R,
    bias: *const f32,
    residual: Option<*const f32>,
    relu: bool,
    out: *mut f32,
    lanes: usize,
) {
    // safety (this block): the pointers' extents are the contract's.
    unsafe {
        let mut y = V::add(acc, V::load(bias));
        if let Some(r) = residual {
            y = V::add(y, V::load_lanes(r, lanes));
        }
        if relu {
            y = V::relu(y);
        }
        V::store_lanes(out, y, lanes)
    }
}

/// Runs a ragged pixel tile (`mr` below the full tile) with the matching instantiation.
macro_rules! remainder_tile {
    ($V:ty, $nv:literal, $nv_tail:literal, $job:expr, $q0:expr, $mr:expr, $block:expr,
     $one_panel:expr, [$($m:literal)*]) => {
        match ($mr, $one_panel) {
            // safety: forwarded from `run_range`'s caller, which checked the ISA, the
            // arguments and ownership; `q0 + m` is within the pixels and the panel count
            // matches what is left.
            $(
                ($m, false) => unsafe { $crate::conv::tile::tile::<$V, $m, $nv>($job, $q0, $block) },
                ($m, true) => unsafe { $crate::conv::tile::tile::<$V, $m, $nv_tail>($job, $q0, $block) },
            )*
            _ => unreachable!("remainder tile of {} pixels", $mr),
        }
    };
}
pub(super) use remainder_tile;

/// Runs tiles of MR pixels over pixel range `px` (whose start is a multiple of MR) and
/// channel tiles `co` of `NV * LANES` channels. `NV_TAIL` is the vector count of a
/// one-panel tile, used when the last channel tile has a single panel left. Full tiles run
/// here; a ragged last pixel tile goes to `tile_remainder(q0, mr, block, one_panel)`,
/// which picks the instantiation for `mr` pixels.
///
/// # Safety
/// The ISA of `V` must be enabled; `job` must have passed `check_args`; no other thread may
/// write the output elements of (`px` x channels of `co`) meanwhile.
#[inline(always)]
pub(super) unsafe fn run_range<V: Vector, const MR: usize, const NV: usize, const NV_TAIL: usize>(
    job: &Job,
    px: Range<usize>,
    co: Range<usize>,
    tile_remainder: impl Fn(usize, usize, Block, bool),
) {
    let panels_per_tile = NV * V::LANES / PANEL;
    debug_assert!(NV_TAIL * V::LANES == PANEL && panels_per_tile <= 2);
    let g = job.g;
    let panels = g.panels();
    let taps_cin = g.kernel[0] * g.kernel[1] * g.cin;
    let cin_blocks = cin_blocks(taps_cin, g.cin, panels_per_tile);
    // Channel tiles are taken in groups whose weights fit in half of L2, and within a
    // group pixel tiles are the outer loop: every channel tile of a pixel tile runs
    // before the next, so the output and residual are walked in address order (one
    // group's channels contiguous per pixel) while the group's weights stay in L2.
    // Channel tiles one at a time over all pixels would stride the output by `cout`
    // floats per pixel, which no hardware prefetcher follows. Split input channels
    // (weights too large for one tile) keep one channel tile per group, so one block's
    // weights stay in cache while the pixels stream past.
    let group_len = if cin_blocks == 1 {
        crate::split::channel_group_len(tile_weight_bytes(taps_cin, panels_per_tile))
    } else {
        1
    };
    let pixel_tiles = (px.end - px.start).div_ceil(MR);
    // Small-channel windows (the stem: 7 rows of 7 x 3 floats) are packed per pixel tile,
    // so each tile runs one long loop instead of a short one per kernel row.
    // On the stack: a heap buffer's drop on unwind made LLVM keep the accumulators in
    // memory in every tile of every layer (2.3x slower).
    let packs = cin_blocks == 1 && MR <= PACKED_PIXELS && packs_windows(g);
    // Filled (and zeroed) only where the layer packs: 14 KiB per task otherwise.
    let mut storage;
    let patches: &mut [f32] = if packs {
        storage = [0.0f32; PACKED_PIXELS * PACKED_WINDOW_MAX + PANEL];
        &mut storage
    } else {
        &mut []
    };
    // One call site per tile shape: the kernel body is inlined at every call site, and
    // extra copies have made LLVM spill the accumulators (a third copy once made the
    // whole model 1.6x slower).
    for group_start in co.clone().step_by(group_len) {
        let group = group_start..co.end.min(group_start + group_len);
        for block_index in 0..cin_blocks {
            for pixel_tile in 0..pixel_tiles {
                let q0 = px.start + pixel_tile * MR;
                let mr = MR.min(px.end - q0);
                let windows = g.windows::<MR>(q0);
                let packed = packs.then(|| {
                    // safety: the ISA of `V` is enabled (caller); `patches` holds
                    // PACKED_PIXELS windows of up to PACKED_WINDOW_MAX floats (`packs`).
                    unsafe { pack_windows::<V, MR>(job, &windows, mr, patches) };
                    patches.as_ptr()
                });
                for ct in group.clone() {
                    let first_panel = ct * panels_per_tile;
                    let one_panel = panels - first_panel < panels_per_tile;
                    let block = Block {
                        first_panel,
                        c0: block_index * g.cin / cin_blocks,
                        c1: (block_index + 1) * g.cin / cin_blocks,
                        packed,
                    };
                    match (mr == MR, one_panel) {
                        // safety: forwarded from the caller; `first_panel + NV*LANES/16
                        // <= panels` in the full case, `first_panel + 1 <= panels` in the
                        // one-panel case; the blocks of a tile run in order, so its partial
                        // sums are written before the next block reads them; `windows`
                        // are those of this pixel tile.
                        (true, false) => unsafe { tile_in::<V, MR, NV>(job, q0, &windows, block) },
                        (true, true) => unsafe { tile_in::<V, MR, NV_TAIL>(job, q0, &windows, block) },
                        (false, _) => tile_remainder(q0, mr, block, one_panel),
                    }
                }
            }
        }
    }
}

/// The most weight bytes one tile reads before its layer is split into input-channel
/// blocks (`cin_blocks`, `fewest_cin_blocks`).
const TILE_WEIGHT_BUDGET: usize = 64 << 10;

/// The weight bytes one tile of `panels_per_tile` panels reads over `taps_cin` rows.
pub(super) fn tile_weight_bytes(taps_cin: usize, panels_per_tile: usize) -> usize {
    taps_cin * panels_per_tile * PANEL * 4
}

/// The fewest input-channel blocks whose tile weights fit `TILE_WEIGHT_BUDGET` (the
/// AVX2 pointwise schedule's split: partial sums go to memory and back least often).
pub(super) fn fewest_cin_blocks(taps_cin: usize, panels_per_tile: usize) -> usize {
    tile_weight_bytes(taps_cin, panels_per_tile).div_ceil(TILE_WEIGHT_BUDGET)
}

/// Input-channel blocks per channel tile: splits `cin` when one tile's weights would
/// exceed 64 KiB, into blocks of about 256 channels, so a block's weights stay near
/// the core while every pixel tile passes (1x1 convolutions with cin 1024-2048 otherwise
/// stream their weights and inputs through L2 together). Small layers stay in one block,
/// which keeps whole kernel rows contiguous.
pub(super) fn cin_blocks(taps_cin: usize, cin: usize, panels_per_tile: usize) -> usize {
    const BLOCK_CHANNELS: usize = 256;
    if tile_weight_bytes(taps_cin, panels_per_tile) <= TILE_WEIGHT_BUDGET {
        1
    } else {
        cin.div_ceil(BLOCK_CHANNELS)
    }
}

/// What one tile call computes besides its pixels: the channel tile (from panel
/// `first_panel`) and the input-channel block `c0..c1`. Blocks after the first add to the
/// partial sums the previous block stored in the output; only the last one applies the
/// epilogue.
#[derive(Clone, Copy)]
pub(super) struct Block {
    pub first_panel: usize,
    pub c0: usize,
    pub c1: usize,
    /// The tile's pixel windows packed by `pack_windows` (`kh * kw * cin` floats per pixel,
    /// pixel after pixel), when the layer packs them (`packs_windows`).
    pub packed: Option<*const f32>,
}

/// Whether `run_range` packs each pixel tile's windows: where a kernel row (`kw * cin`
/// floats) is shorter than this, the per-row pointer setup outweighs the row's loop. The
/// stem's rows are 21 floats; packing runs its 147 steps as one loop, and its border tiles
/// without a loop per tap. The 7x7/2 stem at 224x224, one thread: AVX-512 1.94 -> 1.73 ms,
/// AVX2 2.72 -> 2.53 ms (median of 200).
const PACKED_ROW_MAX: usize = 32;
/// The most floats of one packed window, and the most pixels of a packed tile.
const PACKED_WINDOW_MAX: usize = 256;
const PACKED_PIXELS: usize = 14;

fn packs_windows(g: &super::ConvGeometry) -> bool {
    let window = g.kernel[0] * g.kernel[1] * g.cin;
    g.kernel != [1, 1] && g.kernel[1] * g.cin < PACKED_ROW_MAX && window <= PACKED_WINDOW_MAX
}

/// Copies the windows of the first `mr` pixels of a tile (`windows`) into `patches`, pixel
/// `i` at `i * kh * kw * cin`, taps in the packed weights' order (kh, kw, cin); taps in the
/// padding are zero. A kernel row inside the input is one contiguous run of `kw * cin`
/// floats (dilation 1), copied by vectors (the last one masked on load): a
/// `copy_from_slice` per tap is a `memcpy` call per 3 floats on the stem, which made
/// packing cost more than it saved.
///
/// # Safety
/// The ISA of `V` is enabled; `windows` are those of the tile's pixels; `patches` holds
/// `mr * kh * kw * cin` floats and one vector more (whole vectors are stored).
#[inline(always)]
unsafe fn pack_windows<V: Vector, const MR: usize>(job: &Job, windows: &Windows<MR>, mr: usize, patches: &mut [f32]) {
    let g = job.g;
    let (cin, [kh_n, kw_n]) = (g.cin, g.kernel);
    let (in_h, in_w) = (g.in_h as isize, g.in_w as isize);
    let (row_len, taps_cin) = (kw_n * cin, kh_n * kw_n * cin);
    assert!(patches.len() >= mr * taps_cin + V::LANES && job.input.len() == g.input_len());
    let dst = patches.as_mut_ptr();
    // safety (this block): `copy` reads `n` floats from `src`, which callers below take
    // inside the input (bounds checked), and writes `n` rounded up to whole vectors at
    // `at`, with `at + n <= mr * taps_cin` (asserted room, plus one vector).
    let copy = |at: usize, src: Option<*const f32>, n: usize| unsafe {
        for k in (0..n).step_by(V::LANES) {
            let lanes = V::LANES.min(n - k);
            let v = match src {
                Some(p) => V::load_lanes(p.add(k), lanes),
                None => V::zero(),
            };
            // Whole vectors, zeros past `n`: the next copy overwrites them, and the
            // tile's loads right after this can be forwarded from whole stores (not
            // from AVX2's masked ones, which stalled them: the AVX2 stem ran 2x slower).
            V::store(dst.add(at + k), v);
        }
    };
    let input = job.input.as_ptr();
    for i in 0..mr {
        for kh in 0..kh_n {
            let at = i * taps_cin + kh * row_len;
            let ih = windows.ih0[i] + (kh * g.dilation[0]) as isize;
            if !(0..in_h).contains(&ih) {
                copy(at, None, row_len);
                continue;
            }
            let row_start = (windows.image_row[i] + ih as usize) * g.in_w;
            let (iw0, span) = (windows.iw0[i], ((kw_n - 1) * g.dilation[1]) as isize);
            if g.dilation[1] == 1 && iw0 >= 0 && iw0 + span < in_w {
                // safety: pixels iw0 ..= iw0 + kw - 1 of row `ih` are inside the input.
                copy(
                    at,
                    Some(unsafe { input.add((row_start + iw0 as usize) * cin) }),
                    row_len,
                );
                continue;
            }
            for kw in 0..kw_n {
                let iw = iw0 + (kw * g.dilation[1]) as isize;
                let src = (0..in_w).contains(&iw).then(|| {
                    // safety: pixel iw of row `ih` is inside the input.
                    unsafe { input.add((row_start + iw as usize) * cin) }
                });
                copy(at + kw * cin, src, cin);
            }
        }
    }
}

/// One register tile: output pixels `q0..q0+MR`, channels from panel `block.first_panel`
/// on, `NV * LANES` of them (the ones below `cout` are stored), input channels `block.c0 ..
/// block.c1`.
///
/// # Safety
/// As `run_range`, plus `q0 + MR <= pixels`, `first_panel * 16 + NV * LANES <=` the
/// padded channel count, `c0 < c1 <= cin` or `c0 == c1 == cin == 0`, and when `c0 > 0` the
/// tile's output holds the partial sums of channels `0..c0`.
#[inline(always)]
pub(super) unsafe fn tile<V: Vector, const MR: usize, const NV: usize>(job: &Job, q0: usize, block: Block) {
    // safety: forwarded; the windows are those of pixels q0..q0+MR.
    unsafe { tile_in::<V, MR, NV>(job, q0, &job.g.windows(q0), block) }
}

/// `tile` with the pixel windows already computed.
///
/// # Safety
/// As `tile`, and `windows` must be `job.g.windows(q0)`.
#[inline(always)]
pub(super) unsafe fn tile_in<V: Vector, const MR: usize, const NV: usize>(
    job: &Job,
    q0: usize,
    windows: &Windows<MR>,
    block: Block,
) {
    let Block {
        first_panel,
        c0,
        c1,
        packed,
    } = block;
    let g = job.g;
    let (cin, [kh_n, kw_n]) = (g.cin, g.kernel);
    let panel_stride = kh_n * kw_n * cin * PANEL;

    let Windows { image_row, ih0, iw0 } = *windows;

    // Offset of vector v's lanes from a weight row: panel, then lane within the panel.
    let mut wofs = [0usize; NV];
    for v in 0..NV {
        wofs[v] = (v * V::LANES / PANEL) * panel_stride + (v * V::LANES) % PANEL;
    }
    // safety: `first_panel < panels`, so the panel start is within `weights`.
    let wpanel = unsafe { job.weights.as_ptr().add(first_panel * panel_stride) };
    let input = job.input.as_ptr();
    let zeros = job.zeros.as_ptr();
    let (in_h, in_w) = (g.in_h as isize, g.in_w as isize);
    let kw_span = ((kw_n - 1) * g.dilation[1]) as isize;

    let out = job.output.ptr;
    let cout = g.cout;
    let kc = c1 - c0;

    // safety: the ISA of `V` is enabled (caller).
    let mut acc = [[unsafe { V::zero() }; NV]; MR];
    if c0 > 0 {
        // Resume from the partial sums the previous input-channel block stored.
        for i in 0..MR {
            for v in 0..NV {
                let ch = first_panel * PANEL + v * V::LANES;
                if ch < cout {
                    let lanes = V::LANES.min(cout - ch);
                    // safety: `q0 + i < pixels` and `ch + lanes <= cout`, inside the
                    // output, which this task owns (caller).
                    let p = unsafe { out.add((q0 + i) * cout + ch) };
                    // safety: as above.
                    acc[i][v] = unsafe { V::load_lanes(p, lanes) };
                }
            }
        }
    }
    prefetch_next_tile::<V, MR, NV>(job, q0, first_panel * PANEL, c1 == cin);
    let mut ptrs = [zeros; MR];
    // 1x1, stride 1, unpadded, all input channels: output pixel q reads input pixel q's
    // `cin` floats, found without the windows (about 100 instructions a tile less).
    let pointwise = job.pointwise && kc == cin;
    // Packed windows are one row of all taps: one pass of the loop below.
    let (row_count, row_len) = match packed {
        Some(_) => (1, kh_n * kw_n * cin),
        None => (kh_n, kw_n * cin),
    };
    for kh in 0..row_count {
        let dy = (kh * g.dilation[0]) as isize;
        // Input row of each pixel for this kernel row, None in the padding.
        let mut rows = [None; MR];
        // Rows found without the windows: pixel i's row starts at `base + i * stride`.
        let direct = match packed {
            // safety: the packed windows hold `row_len` floats per pixel.
            Some(p) => Some((p, row_len)),
            // safety: pixel q0 is inside the output (caller), so inside the input, which
            // has the same pixels, `cin` floats each.
            None if pointwise => Some((unsafe { input.add(q0 * cin) }, cin)),
            None => None,
        };
        let mut whole_rows = direct.is_some();
        if let Some((base, stride)) = direct {
            for i in 0..MR {
                // safety: pixel i's row: `row_len` readable floats (see `direct`).
                ptrs[i] = unsafe { base.add(i * stride) };
            }
        } else {
            whole_rows = g.dilation[1] == 1 && kc == cin;
            for i in 0..MR {
                let ih = ih0[i] + dy;
                if (0..in_h).contains(&ih) {
                    rows[i] = Some(image_row[i] + ih as usize);
                    whole_rows &= iw0[i] >= 0 && iw0[i] + kw_span < in_w;
                }
            }
            if rows.iter().all(Option::is_none) {
                continue;
            }
            if whole_rows {
                for i in 0..MR {
                    ptrs[i] = match rows[i] {
                        // safety: `iw0 >= 0` and `iw0 + kw - 1 < in_w` (checked above), so
                        // the `kw * cin` floats from here are pixels iw0.. of input row `r`.
                        Some(r) => unsafe { input.add((r * g.in_w + iw0[i] as usize) * cin) },
                        None => zeros,
                    };
                }
            }
        }
        if whole_rows {
            // safety: every pointer has `row_len` readable floats (above; `zeros` has
            // `kw * cin`, used only when `row_len` is that); the weight rows from
            // `kh * row_len` on, `row_len` of them, are inside each panel used (all
            // `kh * kw * cin` of them when packed).
            unsafe { accumulate::<V, MR, NV>(&mut acc, &ptrs, wpanel.add(kh * row_len * PANEL), &wofs, row_len) };
            continue;
        }
        for kw in 0..kw_n {
            let dx = (kw * g.dilation[1]) as isize;
            let mut any = false;
            for i in 0..MR {
                let iw = iw0[i] + dx;
                ptrs[i] = match rows[i] {
                    Some(r) if (0..in_w).contains(&iw) => {
                        any = true;
                        // safety: row `r` and column `iw` are inside the input, so the
                        // `kc` floats from channel `c0` on are that pixel's channels.
                        unsafe { input.add((r * g.in_w + iw as usize) * cin + c0) }
                    }
                    _ => zeros,
                };
            }
            if any {
                // safety: every pointer has `kc` readable floats (`zeros` has `kw * cin`);
                // weight rows (kh, kw, c0..c1) of each panel used are inside the panel.
                unsafe {
                    accumulate::<V, MR, NV>(
                        &mut acc,
                        &ptrs,
                        wpanel.add(((kh * kw_n + kw) * cin + c0) * PANEL),
                        &wofs,
                        kc,
                    )
                };
            }
        }
    }

    // Epilogue while the tile is in registers: + bias, + residual, activation, store the
    // channels below cout. Blocks before the last store the partial sums as they are.
    let last_block = c1 == cin;
    if first_panel * PANEL + NV * V::LANES <= cout {
        // Every vector of the tile is whole (all of ResNet-50's tiles): straight-line code
        // with no per-vector bounds and lane counts. 190-290 fewer instructions per tile
        // than the general loop below (cachegrind, AVX2, 1x1 layers with 64 input
        // channels, whose loop is 64 steps of 24 instructions).
        // safety: the tile's pixels are inside the output (`q0 + MR <= pixels`, caller)
        // and its channels below `cout`.
        unsafe { finish_whole_tile::<V, MR, NV>(job, acc, q0, first_panel * PANEL, last_block) };
        return;
    }
    for i in 0..MR {
        let q = q0 + i;
        for v in 0..NV {
            let ch = first_panel * PANEL + v * V::LANES;
            if ch >= cout {
                break;
            }
            let lanes = V::LANES.min(cout - ch);
            // safety (this block): the bias is padded to whole panels, so LANES floats from
            // `ch` are in bounds; `q < pixels` and `ch + lanes <= cout`, so the residual and
            // output accesses are inside their `pixels * cout` buffers; this task owns
            // these output elements (caller).
            unsafe {
                let o = out.add(q * cout + ch);
                if !last_block {
                    V::store_lanes(o, acc[i][v], lanes);
                    continue;
                }
                let residual = job.residual.map(|r| r.as_ptr().add(q * cout + ch));
                finish::<V>(acc[i][v], job.bias.as_ptr().add(ch), residual, job.relu, o, lanes);
            }
        }
    }
}

/// Fetches the lines the tile of the next MR pixels (`q0 + MR ..`) writes in channels
/// `ch0 .. ch0 + NV * LANES`, asked for owned, and with `residual` the residual lines it
/// adds, so they arrive while this tile computes. The output of a pixel tile is written
/// channel tile by channel tile, a `cout * 4`-byte stride per pixel that the hardware
/// prefetchers do not follow; unprefetched, the stores of a 3 MB output missed to memory
/// one line at a time. Prefetches never fault, so the last tile's run past the end.
#[inline(always)]
pub(super) fn prefetch_next_tile<V: Vector, const MR: usize, const NV: usize>(
    job: &Job,
    q0: usize,
    ch0: usize,
    residual: bool,
) {
    let (out, cout) = (job.output.ptr, job.g.cout);
    for i in 0..MR {
        let next = (q0 + MR + i) * cout + ch0;
        for v in (0..NV).step_by(PANEL / V::LANES) {
            V::prefetch_write(out.wrapping_add(next + v * V::LANES));
            if let (Some(r), true) = (job.residual, residual) {
                V::prefetch(r.as_ptr().wrapping_add(next + v * V::LANES));
            }
        }
    }
}

/// The epilogue of a tile whose channels (from `ch0`) are all below `cout`, its pixels
/// from `q0`: `act(acc + bias + residual)` on the last input-channel block, the partial
/// sums as they are before it.
///
/// # Safety
/// The ISA of `V` is enabled; the tile's MR pixels are inside the output and its
/// `NV * LANES` channels below `cout`; this task owns those output elements.
#[inline(always)]
pub(super) unsafe fn finish_whole_tile<V: Vector, const MR: usize, const NV: usize>(
    job: &Job,
    acc: [[V::R; NV]; MR],
    q0: usize,
    ch0: usize,
    last_block: bool,
) {
    let cout = job.g.cout;
    let at = q0 * cout + ch0;
    // safety (this block): the bias is padded to whole panels and the tile's channels are
    // below `cout`, so every vector read from the bias, the residual and written to the
    // output (`pixels * cout` each) is in bounds (contract).
    unsafe {
        let out = job.output.ptr.add(at);
        if !last_block {
            for (i, row) in acc.iter().enumerate() {
                for (v, &a) in row.iter().enumerate() {
                    V::store(out.add(i * cout + v * V::LANES), a);
                }
            }
            return;
        }
        let bias = job.bias.as_ptr().add(ch0);
        let b: [V::R; NV] = std::array::from_fn(|v| V::load(bias.add(v * V::LANES)));
        // One branch-free loop per (residual, ReLU) case: with the tests inside, LLVM kept
        // the accumulators on the stack and looped over them (1x1 56x56 64 -> 256, AVX2:
        // 14% of the time outside the accumulation loop).
        match (job.residual, job.relu) {
            (Some(r), true) => finish_rows::<V, MR, NV>(acc, b, Some(r.as_ptr().add(at)), true, out, cout),
            (Some(r), false) => finish_rows::<V, MR, NV>(acc, b, Some(r.as_ptr().add(at)), false, out, cout),
            (None, true) => finish_rows::<V, MR, NV>(acc, b, None, true, out, cout),
            (None, false) => finish_rows::<V, MR, NV>(acc, b, None, false, out, cout),
        }
    }
}

/// `act(acc + bias + residual)` of a whole tile, stored at `out` (rows `cout` apart); the
/// caller passes constant `residual`-ness and `relu` so each case inlines branch-free.
///
/// # Safety
/// The ISA of `V` is enabled; `out` and `residual` (if any) have MR rows of `NV * LANES`
/// floats, `cout` apart, writable and readable.
#[inline(always)]
unsafe fn finish_rows<V: Vector, const MR: usize, const NV: usize>(
    acc: [[V::R; NV]; MR],
    bias: [V::R; NV],
    residual: Option<*const f32>,
    relu: bool,
    out: *mut f32,
    cout: usize,
) {
    for (i, row) in acc.iter().enumerate() {
        for (v, &a) in row.iter().enumerate() {
            let k = i * cout + v * V::LANES;
            // safety: element k is within the rows of the contract.
            unsafe {
                let mut y = V::add(a, bias[v]);
                if let Some(r) = residual {
                    y = V::add(y, V::load(r.add(k)));
                }
                if relu {
                    y = V::relu(y);
                }
                V::store(out.add(k), y);
            }
        }
    }
}

/// A tile of `rows` pixels (fewer than a whole tile, 1 to 13) by `NV` vectors whose
/// pixels read evenly spaced rows: the ragged last tiles of the kernels on
/// `strided_rows`, run on the general accumulation. Pixel `i` of the tile is output pixel
/// `q0 + i`; `steps` calls of `len` steps each, call `k` reading rows `base + k *
/// step_rows + i * stride` and weight rows from `w + k * step_weights` (`len` rows of 16
/// floats per panel, a vector's panel `v * LANES / 16` being `panel_stride` floats after
/// the first). The partial sums stored in the output are resumed when `resume`; the
/// epilogue applies when `last`.
pub(super) struct RaggedTile {
    pub rows: usize,
    pub q0: usize,
    pub ch0: usize,
    pub base: *const f32,
    pub stride: usize,
    pub steps: usize,
    pub step_rows: usize,
    pub len: usize,
    pub w: *const f32,
    pub step_weights: usize,
    pub panel_stride: usize,
    pub resume: bool,
    pub last: bool,
}

impl RaggedTile {
    /// # Safety
    /// The ISA of `V` is enabled; every row and weight row the description names is
    /// readable; output pixels `q0 .. q0 + rows` and the tile's channels are inside the
    /// output and no other thread writes them meanwhile.
    #[inline(always)]
    pub(super) unsafe fn run<V: Vector, const NV: usize>(&self, job: &Job) {
        macro_rules! rows {
            ($($m:literal)*) => {
                match self.rows {
                    // safety: forwarded; `$m` is `rows`.
                    $($m => unsafe { self.run_rows::<V, $m, NV>(job) },)*
                    _ => unreachable!("ragged tile of {} pixels", self.rows),
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12 13)
    }

    /// `run` with the pixel count `M` as a constant.
    ///
    /// # Safety
    /// As `run`, `M` being `rows`.
    #[inline(always)]
    unsafe fn run_rows<V: Vector, const M: usize, const NV: usize>(&self, job: &Job) {
        let cout = job.g.cout;
        let out = job.output.ptr;
        let wofs: [usize; NV] =
            std::array::from_fn(|v| v * V::LANES / PANEL * self.panel_stride + v * V::LANES % PANEL);
        // safety: the ISA of `V` is enabled (contract).
        let mut acc = [[unsafe { V::zero() }; NV]; M];
        if self.resume {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, a) in row.iter_mut().enumerate() {
                    // safety: the partial sums stored for this tile's own elements.
                    *a = unsafe { V::load(out.add((self.q0 + i) * cout + self.ch0 + v * V::LANES)) };
                }
            }
        }
        for k in 0..self.steps {
            let ptrs: [*const f32; M] =
                std::array::from_fn(|i| self.base.wrapping_add(k * self.step_rows + i * self.stride));
            // safety: the rows and weight rows of call k (contract).
            unsafe { accumulate::<V, M, NV>(&mut acc, &ptrs, self.w.add(k * self.step_weights), &wofs, self.len) };
        }
        // safety: the tile's pixels and channels are this task's (contract).
        unsafe { finish_whole_tile::<V, M, NV>(job, acc, self.q0, self.ch0, self.last) };
    }
}

/// The hot loop: `len` rank-1 updates of the MR x NV tile. Step j reads float j of every
/// pixel pointer and weight row j (16 floats apart) of each panel.
///
/// # Safety
/// The ISA of `V` is enabled; each `ptrs[i]` has `len` readable floats; `w + wofs[v]` has
/// `len` rows of 16 readable floats from it, LANES used per row.
#[inline(always)]
pub(super) unsafe fn accumulate<V: Vector, const MR: usize, const NV: usize>(
    acc: &mut [[V::R; NV]; MR],
    ptrs: &[*const f32; MR],
    w: *const f32,
    wofs: &[usize; NV],
    len: usize,
) {
    for j in 0..len {
        // safety (this block): j < len, within the readable ranges of the contract.
        unsafe {
            let wj = w.add(j * PANEL);
            let mut b = [V::zero(); NV];
            for v in 0..NV {
                b[v] = V::load(wj.add(wofs[v]));
            }
            for i in 0..MR {
                let a = V::splat(ptrs[i].add(j));
                for v in 0..NV {
                    acc[i][v] = V::fma(a, b[v], acc[i][v]);
                }
            }
        }
    }
}
