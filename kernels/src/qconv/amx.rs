//! AMX INT8 convolution (Sapphire Rapids and later): `tdpbusd` on tile registers.
//!
//! Why it exists: one `tdpbusd` multiplies a 16 x 64 u8 tile by a 64 x 16 s8 tile into
//! 16 x 16 i32 accumulators, 16K products in about 16 cycles, where two zmm `vpdpbusd` a
//! cycle do 128. Measured on one core of the Xeon in docs/PERFORMANCE.md: 7.6 TOP/s for
//! a loop of `tdpbusd` against 0.94 for `vpdpbusd`. The AVX512-VNNI kernel runs
//! ResNet-50's INT8 layers at about 60% of its peak; at an eighth of the tile unit's,
//! this kernel is already 1.6x faster over the whole model.
//!
//! Shape: a block is 32 output pixels (two segments of up to 16) by 32 output channels,
//! four C tiles (tmm0-3: segment 0 / 1 by channels 0-15 / 16-31) held across the whole
//! reduction. Each 64-byte
//! step of the reduction loads two A tiles (tmm4-5: 16 pixels x 64 input bytes) and two
//! B tiles (tmm6-7) and issues four `tdpbusd`: 4 KB of tile loads per 64K products.
//!
//! Operands, with no repacking of the weights:
//! - B: the packed weights (`pack_weights_s8`, `[panel][kh][kw][cin/4][16][4]`) are rows
//!   of 4 input channels by 16 output channels, 64 bytes each, exactly a B tile row; 16
//!   consecutive rows are one B tile (row stride 64), the panel after it the second.
//! - A, three ways:
//!   - a pointwise layer (1x1, stride 1, unpadded) reads the input in place, 16 pixels
//!     at a row stride of `cin`;
//!   - a stride-1 layer with rows at least 14 wide (`reads_padded`) reads, per tap, a
//!     copy of the input with its padding written out (`PaddedInput`, made once per
//!     call): each A tile holds up to 16 pixels of one output row;
//!   - any other layer, and a pointwise layer's ragged last block, first gathers each
//!     pixel's window (`kh * kw * cin` bytes, taps in the padding read `x_zero`) into a
//!     buffer, once per pixel block, reused by every channel block of the group.
//!
//! Taken only when `cin` is a multiple of 64, so no 64-byte step straddles two taps
//! (every ResNet-50 layer but the 3-channel stem); other layers run the AVX512-VNNI
//! kernel. The C tiles go through a 32 x 32 i32 buffer into the zmm epilogue of `tile`,
//! with the bias added on the way: the i32 sums are exact, so outputs are bit-identical
//! to every other tier.

use std::arch::asm;
use std::arch::x86_64::{__m512i, _mm_prefetch, _MM_HINT_T0};
use std::ops::Range;

use super::tile::{epilogue, QVector};
use super::x86::Vnni512;
use super::{Job, OutPtr, QConvGeometry, QResidual, Tiling, GROUP, PANEL};
use crate::parallel::ParallelFor;

/// Output pixels per block: two A tiles of 16 rows.
const BLOCK_PIXELS: usize = 32;
/// Rows of every tile.
const TILE_ROWS: usize = 16;
/// Reduction bytes per step: the 64-byte width of an A tile row.
const STEP: usize = 64;
/// Bytes of one B tile: 16 rows of 64.
const B_TILE_BYTES: usize = TILE_ROWS * PANEL * GROUP;

pub(super) struct AmxTiles;
impl Tiling for AmxTiles {
    const PIXELS: usize = BLOCK_PIXELS;
    const PANELS: usize = 2;
}

/// Whether the AMX kernel takes layer `g` (module docs).
pub(super) fn takes(g: &QConvGeometry) -> bool {
    g.cin.is_multiple_of(STEP)
}

/// Palette 1 with all eight tiles 16 rows of 64 bytes (`ldtilecfg`'s 64-byte operand:
/// byte 0 the palette, bytes 16.. the bytes per row of each tile as u16, bytes 48.. the
/// rows of each tile).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16_by_64() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(STEP as u16).to_le_bytes());
            c[48 + t] = TILE_ROWS as u8;
        }
        TileConfig(c)
    }
}

/// One cache line: the gather and padded-input buffers are made of them, so every A
/// tile row is 64-byte aligned. Rows that straddle two lines made each `tileloadd` about
/// 6x slower (a measured 13-15 ns against 2 ns, Sapphire Rapids class), the 2x2 block
/// 2.7x slower.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    /// Each thread's gather buffer, kept between calls rather than allocated and zeroed
    /// for every task (up to 147 KB for ResNet-50's last 3x3 layers).
    static GATHER_BUFFER: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The four C tiles of a block, stored: pixel-major, 32 channels per pixel.
#[repr(C, align(64))]
struct Sums([[i32; 2 * PANEL]; BLOCK_PIXELS]);

/// The input with its padding written out, `[batch][in_h + top + bottom][in_w + left +
/// right][cin]` with `x_zero` in the border, and slack after it: an A tile then reads any
/// 16 pixels of an output row in place for every tap, at a row stride of `stride_w *
/// cin`, where gathering the windows copied `kh * kw` bytes per input byte (the 56x56
/// 64-channel 3x3 layer, one thread: 120 µs, 49 of them gathering).
pub(super) struct PaddedInput {
    lines: Vec<Line>,
    height: usize,
    width: usize,
}

thread_local! {
    /// The calling thread's padded-input buffer, kept between calls.
    static PADDED_BUFFER: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Whether layer `g` (taken, not pointwise) reads a padded copy of its input rather than
/// gathered windows. A tile's rows must lie in one output row, so blocks of narrow rows
/// leave rows idle (7 wide: 14 of 32 used). One thread, against gathering: 56x56 3x3
/// 159 -> 93 µs, 14x14 (256 channels) 136 -> 111; 28x28 131 both ways; 28x28 stride 2
/// 136 -> 144; 7x7 218 -> 250. So: stride 1, rows at least 14 wide, several taps.
pub(super) fn reads_padded(g: &QConvGeometry) -> bool {
    g.kernel[0] * g.kernel[1] > 1 && g.stride == [1, 1] && g.out_w >= 14
}

impl PaddedInput {
    /// Writes `job`'s padded input, rows split over `par`.
    pub(super) fn new(job: &Job<u8>, par: &dyn ParallelFor) -> PaddedInput {
        let g = job.g;
        let cin = g.cin;
        let [top, left, bottom, right] = g.pads;
        let (height, width) = (g.in_h + top + bottom, g.in_w + left + right);
        let row_bytes = width * cin;
        let rows = g.batch * height;
        // An A tile's last row starts 15 pixels after a segment's first, which may be the
        // last pixel of the last row.
        let slack = (TILE_ROWS * g.stride[1] + 1) * cin;
        let mut lines = PADDED_BUFFER.take();
        lines.resize((rows * row_bytes + slack).div_ceil(64), Line([0; 64]));
        let data = RowsPtr(lines.as_mut_ptr().cast::<u8>());
        let tasks = par.threads().min(rows).max(1);
        par.run(tasks, &|t| {
            for r in t * rows / tasks..(t + 1) * rows / tasks {
                // safety: the buffer holds `rows * row_bytes` bytes and more, and every
                // task writes its own rows `r` only, while `lines` is not otherwise used.
                let dst = unsafe { std::slice::from_raw_parts_mut(data.at(r * row_bytes), row_bytes) };
                let (n, y) = (r / height, r % height);
                if y < top || y >= top + g.in_h {
                    dst.fill(job.x_zero);
                    continue;
                }
                let src = ((n * g.in_h + y - top) * g.in_w) * cin;
                dst[..left * cin].fill(job.x_zero);
                dst[left * cin..(left + g.in_w) * cin].copy_from_slice(&job.input[src..src + g.in_w * cin]);
                dst[(left + g.in_w) * cin..].fill(job.x_zero);
            }
        });
        PaddedInput { lines, height, width }
    }

    /// Keeps the buffer for the calling thread's next layer.
    pub(super) fn recycle(self) {
        PADDED_BUFFER.set(self.lines);
    }

    /// Where tap (0, 0) of output pixel `q` reads: padded row `oh * stride_h`, column
    /// `ow * stride_w` (the padding offset cancels the border).
    fn origin(&self, g: &QConvGeometry, q: usize) -> *const u8 {
        let plane = g.out_h * g.out_w;
        let (n, oh, ow) = (q / plane, q % plane / g.out_w, q % g.out_w);
        let at = ((n * self.height + oh * g.stride[0]) * self.width + ow * g.stride[1]) * g.cin;
        self.lines.as_ptr().cast::<u8>().wrapping_add(at)
    }
}

/// The padded buffer's bytes, shared by the tasks that write its rows.
#[derive(Clone, Copy)]
struct RowsPtr(*mut u8);

// safety: only `PaddedInput::new` uses it, where each task writes disjoint rows and the
// buffer outlives the parallel run.
unsafe impl Sync for RowsPtr {}

impl RowsPtr {
    /// The address `offset` bytes in (a method, so closures capture the whole `Sync`
    /// wrapper rather than its pointer field).
    fn at(self, offset: usize) -> *mut u8 {
        self.0.wrapping_add(offset)
    }
}

/// Up to 16 output pixels `q0..q0 + len`, the rows of one A tile.
#[derive(Clone, Copy)]
struct Segment {
    q0: usize,
    len: usize,
}

/// The segment from pixel `q` on: up to 16 pixels, within one output row and below `end`.
fn segment_at(g: &QConvGeometry, q: usize, end: usize) -> Segment {
    let len = TILE_ROWS.min(g.out_w - q % g.out_w).min(end - q);
    Segment { q0: q, len }
}

/// AMX blocks over pixels `px` and 32-channel tiles `co`; `padded` is `job`'s padded
/// input when `reads_padded(job.g)`.
///
/// # Safety
/// AMX-TILE and AMX-INT8 must be usable (the CPU has them and the OS granted the tile
/// state: `cpu::features`), and AVX-512 F/BW/VL with AVX512-VNNI; `job` passed
/// `check_args` and `takes(job.g)`; `padded` is `Some` exactly when `!job.pointwise &&
/// reads_padded(job.g)`, and was made from `job`; no other thread writes the output
/// elements of (`px` x channels of `co`) meanwhile; `px.start` is a multiple of
/// `AmxTiles::PIXELS`.
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
pub(super) unsafe fn run_amx(job: &Job<u8>, padded: Option<&PaddedInput>, px: Range<usize>, co: Range<usize>) {
    let g = job.g;
    let cin = g.cin;
    let k_bytes = g.kernel[0] * g.kernel[1] * cin;
    let steps = k_bytes / STEP;
    let panels = g.cout.div_ceil(PANEL);
    // Bytes of one panel's packed weights: a row of 64 per 4 reduction bytes.
    let panel_stride = k_bytes / GROUP * PANEL * GROUP;
    // Where step s of the reduction reads, from an A tile's origin: 64 bytes on per step
    // in a gathered or pointwise row; in the padded input, tap s / (cin / 64) of the
    // window (`[kh][kw]` order, as the weight rows), its channels s % (cin / 64).
    let step_offsets: Vec<usize> = match padded {
        Some(p) => (0..steps)
            .map(|s| {
                let (tap, chunk) = (s / (cin / STEP), s % (cin / STEP));
                let (kh, kw) = (tap / g.kernel[1], tap % g.kernel[1]);
                (kh * g.dilation[0] * p.width + kw * g.dilation[1]) * cin + chunk * STEP
            })
            .collect(),
        None => (0..steps).map(|s| s * STEP).collect(),
    };
    // As the vector kernels: channel tiles in groups whose weights fit in half of L2,
    // pixel blocks the outer loop within a group. A layer that gathers its windows
    // gathers each block once per group, so its groups take half of the 2 MiB L2 that
    // every AMX CPU has rather than the vector kernels' 256 KiB: the 7x7 3x3 layers
    // of ResNet-50 (512 channels, 147 KB of weights per channel tile) gathered each
    // block once per channel tile. Batch 8, 2 threads: 1.0-1.2 -> 0.78-0.82 ms each.
    let group_len = if padded.is_none() && !job.pointwise {
        (GATHERED_GROUP_WEIGHT_BUDGET / (2 * panel_stride)).max(1)
    } else {
        crate::split::channel_group_len(2 * panel_stride)
    };
    let mut gathered = GATHER_BUFFER.take();
    // Two sum buffers: block N's tiles are multiplied and stored into one while block
    // N-1's epilogue reads the other, so the tile unit works during the vector epilogue
    // and the epilogue never waits for tile stores it has just issued.
    let mut sums = [
        Sums([[0; 2 * PANEL]; BLOCK_PIXELS]),
        Sums([[0; 2 * PANEL]; BLOCK_PIXELS]),
    ];
    let mut pending: Option<Pending> = None;
    let config = TileConfig::all_16_by_64();
    // safety: the CPU has AMX-TILE and the OS permits it (contract); the operand is the
    // 64-byte configuration, aligned as the instruction needs.
    unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
    for group_start in co.clone().step_by(group_len) {
        let group = group_start..co.end.min(group_start + group_len);
        let mut q = px.start;
        while q < px.end {
            // The block: two segments, the origin of each one's A tile and their row stride.
            let (segments, a0, a1, a_stride) = if let Some(p) = padded {
                let first = segment_at(g, q, px.end);
                let q1 = first.q0 + first.len;
                let second = if q1 < px.end {
                    segment_at(g, q1, px.end)
                } else {
                    Segment { q0: q1, len: 0 }
                };
                let a0 = p.origin(g, first.q0);
                let a1 = if second.len > 0 { p.origin(g, second.q0) } else { a0 };
                ([first, second], a0, a1, g.stride[1] * cin)
            } else {
                let rows = BLOCK_PIXELS.min(px.end - q);
                let segments = [
                    Segment {
                        q0: q,
                        len: rows.min(TILE_ROWS),
                    },
                    Segment {
                        q0: q + TILE_ROWS,
                        len: rows.saturating_sub(TILE_ROWS),
                    },
                ];
                let (a, a_stride) = if job.pointwise && rows == BLOCK_PIXELS {
                    // pixels q..q+32 are output pixels (rows == 32), so input pixels of a
                    // pointwise layer, `cin` bytes each.
                    (job.input.as_ptr().wrapping_add(q * cin), cin)
                } else {
                    let lines = BLOCK_PIXELS * k_bytes / 64;
                    if gathered.len() < lines {
                        gathered = vec![Line([0; 64]); lines];
                    }
                    // safety: AVX-512 is enabled here; `job` is checked and taken
                    // (contract); the buffer has 32 rows of `k_bytes` (a multiple of 64);
                    // the pixels are this task's.
                    unsafe { gather(job, q, rows, gathered.as_mut_ptr().cast()) };
                    (gathered.as_ptr().cast::<u8>(), k_bytes)
                };
                (segments, a, a.wrapping_add(TILE_ROWS * a_stride), a_stride)
            };
            for ct in group.clone() {
                let first_panel = ct * 2;
                let slot = pending.map_or(0, |p| 1 - p.slot);
                // safety: `first_panel < panels`; the weights hold `panels` panels.
                let w0 = unsafe { job.weights.as_ptr().add(first_panel * panel_stride) };
                // A last tile with one panel multiplies it twice: the second half of its
                // sums lies past `cout` and is never stored.
                let w1 = if panels - first_panel >= 2 {
                    w0.wrapping_add(panel_stride)
                } else {
                    w0
                };
                // safety: tiles configured above. A: 16 rows at `a_stride` from `a0` and
                // from `a1`, plus each step's offset, 64 bytes each, are readable: inside
                // the pointwise input (32 whole pixels), the gather buffer (32 rows of
                // `k_bytes`), or the padded input with its slack (the window of a segment's
                // first pixel, then 15 pixels on). B: `steps * 16` rows of 64 bytes from
                // `w0` and from `w1`, each a panel of the weights.
                unsafe { multiply_block(a0, a1, a_stride, &step_offsets, w0, w1, &mut sums[slot]) };
                prefetch_block(job, segments, first_panel);
                if let Some(p) = pending {
                    // safety: as this function's contract; the block's pixels are ours.
                    unsafe { store_block(job, p.segments, p.first_panel, &sums[p.slot]) };
                }
                pending = Some(Pending {
                    segments,
                    first_panel,
                    slot,
                });
            }
            q = segments[1].q0 + segments[1].len;
        }
    }
    if let Some(p) = pending {
        // safety: as above.
        unsafe { store_block(job, p.segments, p.first_panel, &sums[p.slot]) };
    }
    GATHER_BUFFER.set(gathered);
    // Back to the init state: the next context switch saves no tile data.
    // safety: AMX-TILE is usable (contract).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// The weight bytes of one channel group of a layer that gathers its windows (`run_amx`).
const GATHERED_GROUP_WEIGHT_BUDGET: usize = 1 << 20;

/// A block whose sums are stored in `sums[slot]` and whose epilogue has not run yet.
#[derive(Clone, Copy)]
struct Pending {
    segments: [Segment; 2],
    first_panel: usize,
    slot: usize,
}

/// Asks for the f32 cache lines that the epilogue of the block of `segments` (run in the
/// next iteration) writes and reads as the residual, so they arrive while the tile unit
/// works. A 56x56 64 -> 256 1x1 layer, one thread: f32 output 350 -> 300 µs, f32
/// residual 457 -> 350 µs; prefetching u8 outputs and residuals changed nothing.
#[inline(always)]
fn prefetch_block(job: &Job<u8>, segments: [Segment; 2], first_panel: usize) {
    let cout = job.g.cout;
    let channels = (2 * PANEL).min(cout - first_panel * PANEL);

    let (out, out_elem): (*const u8, usize) = match job.out {
        OutPtr::F32(p) => (p.cast_const().cast(), 4),
        OutPtr::I16 { ptr, .. } => (ptr.cast_const().cast(), 2),
        OutPtr::U8 { .. } => (std::ptr::null(), 0),
    };
    let (res, res_elem): (*const u8, usize) = match job.residual {
        QResidual::None => (std::ptr::null(), 0),
        QResidual::F32(r) => (r.as_ptr().cast(), 4),
        QResidual::I16 { data, .. } => (data.as_ptr().cast(), 2),
        QResidual::U8 { .. } => (std::ptr::null(), 0),
    };
    // Nothing to ask for: skip the loop over the block's pixels, which the compiler
    // kept (one thread, criterion: 1x1 56x56 64 -> 256 166 -> 150 µs, 3x3 56x56 64 ->
    // 64 119 -> 114 µs).
    if out_elem == 0 && res_elem == 0 {
        return;
    }
    let pixels = segments.iter().flat_map(|s| s.q0..s.q0 + s.len);
    for q in pixels {
        let at = q * cout + first_panel * PANEL;
        for line in (0..channels * out_elem).step_by(64) {
            // safety: a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(out.wrapping_add(at * out_elem + line).cast()) };
        }
        for line in (0..channels * res_elem).step_by(64) {
            // safety: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(res.wrapping_add(at * res_elem + line).cast()) };
        }
    }
}

/// Copies the windows of pixels `q0..q0+rows` into `buf`, `kh * kw * cin` bytes a pixel
/// in `[kh][kw][cin]` order (the order of the packed weights' rows), `x_zero` for taps in
/// the padding (from `job.pad_row`). Rows past `rows` keep what they held: their sums are
/// never stored. Where a kernel row lies wholly inside the input with dilation 1, its `kw`
/// taps are one contiguous run of the input and are copied as one.
///
/// Why not `copy_from_slice`: a 64-512 byte `memcpy` call per tap took longer than the
/// tile multiplies of a 3x3 layer with 64 channels; inline zmm copies take a fraction.
///
/// # Safety
/// AVX-512 F usable; `job` passed `check_args` and `takes(job.g)`; `buf` has `rows` rows
/// of `kh * kw * cin` writable bytes; pixels `q0..q0+rows` are output pixels.
#[inline(always)]
unsafe fn gather(job: &Job<u8>, q0: usize, rows: usize, buf: *mut u8) {
    let g = job.g;
    let cin = g.cin;
    let [kh_n, kw_n] = g.kernel;
    let k_bytes = kh_n * kw_n * cin;
    let (in_h, in_w) = (g.in_h as isize, g.in_w as isize);
    let kw_span = ((kw_n - 1) * g.dilation[1]) as isize;
    let windows = g.windows::<BLOCK_PIXELS>(q0);
    let input = job.input.as_ptr();
    let pad = job.pad_row.as_ptr();
    // safety (this block): every source is `cin` bytes (a whole kernel row: `kw * cin`)
    // of an in-bounds input pixel, or of `pad_row` (`kw * cin` bytes of `x_zero`); every
    // destination is inside row i < rows of `buf`; all lengths are multiples of 64.
    unsafe {
        for i in 0..rows {
            let mut dst = buf.add(i * k_bytes);
            let whole_width = g.dilation[1] == 1 && windows.iw0[i] >= 0 && windows.iw0[i] + kw_span < in_w;
            for kh in 0..kh_n {
                let ih = windows.ih0[i] + (kh * g.dilation[0]) as isize;
                let row_in = (0..in_h).contains(&ih);
                let row_start = (windows.image_row[i] + ih.max(0) as usize) * g.in_w;
                if !row_in || whole_width {
                    let src = if row_in {
                        input.add((row_start + windows.iw0[i] as usize) * cin)
                    } else {
                        pad
                    };
                    copy_64s(src, dst, kw_n * cin);
                    dst = dst.add(kw_n * cin);
                    continue;
                }
                for kw in 0..kw_n {
                    let iw = windows.iw0[i] + (kw * g.dilation[1]) as isize;
                    let src = if (0..in_w).contains(&iw) {
                        input.add((row_start + iw as usize) * cin)
                    } else {
                        pad
                    };
                    copy_64s(src, dst, cin);
                    dst = dst.add(cin);
                }
            }
        }
    }
}

/// Copies `len` bytes, a multiple of 64, in zmm moves.
///
/// # Safety
/// AVX-512 F usable; `len` bytes readable from `src` and writable at `dst`, not
/// overlapping.
#[inline(always)]
unsafe fn copy_64s(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{_mm512_loadu_si512, _mm512_storeu_si512};
    debug_assert!(len.is_multiple_of(64));
    for at in (0..len).step_by(64) {
        // safety: `at + 64 <= len` (len a multiple of 64), within both ranges.
        unsafe { _mm512_storeu_si512(dst.add(at).cast(), _mm512_loadu_si512(src.add(at).cast())) };
    }
}

/// The sums of one block of 32 pixels (two A tiles) by 32 channels (the panels at `w0`
/// and `w1`) over the whole reduction, into `sums`.
///
/// # Safety
/// Tiles configured 16 x 64 bytes; for every step s, 16 rows of 64 bytes at `a_stride`
/// from `a0 + step_offsets[s]` and from `a1 + step_offsets[s]` readable, and `steps * 16`
/// rows of 64 bytes from `w0` and from `w1`, `steps = step_offsets.len()`.
#[inline(always)]
unsafe fn multiply_block(
    a0: *const u8,
    a1: *const u8,
    a_stride: usize,
    step_offsets: &[usize],
    w0: *const i8,
    w1: *const i8,
    sums: &mut Sums,
) {
    // safety (every asm block): the tiles are configured (caller) and every address is
    // inside the ranges of the contract: step s reads the A rows from its offset and B
    // rows 16s.. of each panel. A prefetch never faults, whatever the address.
    unsafe {
        // Not loading the bias into the C tiles (row stride 0): that made the 56x56 64 ->
        // 256 1x1 layer 1.4x slower than adding it in the epilogue.
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for (s, &offset) in step_offsets.iter().enumerate() {
            // The next step's B tiles, a line at a time: the weights of a layer with a
            // long reduction come from L2, and `tileloadd` waits for them. After the last
            // step this asks for the next channel tile's first panel. One thread,
            // criterion: 3x3 28x28 128 -> 128 133 -> 128 µs, 3x3 7x7 512 -> 512 156 ->
            // 144 µs, 1x1 7x7 2048 -> 512 86 -> 80 µs, 1x1 14x14 1024 -> 256 unchanged
            // (2 steps ahead: the same or slower, 4 and 8 slower).
            let next = (s + 1) * B_TILE_BYTES;
            for line in (0..B_TILE_BYTES).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(next + line).cast());
                _mm_prefetch::<_MM_HINT_T0>(w1.wrapping_add(next + line).cast());
            }
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbusd tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(offset),
                a1 = in(reg) a1.add(offset),
                b0 = in(reg) w0.add(s * B_TILE_BYTES),
                b1 = in(reg) w1.add(s * B_TILE_BYTES),
                sa = in(reg) a_stride,
                sb = in(reg) STEP,
                options(nostack, readonly)
            );
        }
        let c = sums.0.as_mut_ptr().cast::<i32>();
        let row = 2 * PANEL * 4;
        asm!(
            "tilestored [{c0} + {sc}*1], tmm0",
            "tilestored [{c1} + {sc}*1], tmm1",
            "tilestored [{c2} + {sc}*1], tmm2",
            "tilestored [{c3} + {sc}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(PANEL),
            c2 = in(reg) c.add(TILE_ROWS * 2 * PANEL),
            c3 = in(reg) c.add(TILE_ROWS * 2 * PANEL + PANEL),
            sc = in(reg) row,
            options(nostack)
        );
    }
}

/// Bias, then the shared epilogue, for the block's two segments: sum rows 0.. hold pixels
/// `segments[0]`, rows 16.. pixels `segments[1]` (each `(first pixel, count)`, count <=
/// 16).
///
/// # Safety
/// AVX-512 F/BW/VL usable; as `run_amx` for the output elements of these pixels and the
/// channels of panels `first_panel..first_panel + 2` below `cout`.
#[inline(always)]
unsafe fn store_block(job: &Job<u8>, segments: [Segment; 2], first_panel: usize, sums: &Sums) {
    let cout = job.g.cout;
    let mut bias = [Vnni512::zero(); 2];
    for (v, b) in bias.iter_mut().enumerate() {
        let ch = (first_panel + v) * PANEL;
        if ch < cout {
            // safety: AVX-512 is enabled (caller); `bias` has `cout` elements, so the lanes
            // below `cout` are readable.
            *b = unsafe { Vnni512::load_i32(job.bias.as_ptr().add(ch), PANEL.min(cout - ch)) };
        }
    }
    // Each sums row is two zmm vectors, read in place (64-byte aligned rows of 32 i32).
    let rows = sums.0.as_ptr().cast::<[__m512i; 2]>();
    for (half, seg) in segments.into_iter().enumerate() {
        let first_row = half * TILE_ROWS;
        // safety (this block): rows `first_row..first_row + seg.len` (<= 16) are sums rows;
        // the segment's pixels are this task's (caller); AVX-512 is enabled (caller).
        unsafe {
            if seg.len == TILE_ROWS {
                let acc = &*rows.add(first_row).cast::<[[__m512i; 2]; TILE_ROWS]>();
                epilogue::<Vnni512, u8, TILE_ROWS, 2>(job, seg.q0, first_panel, acc, Some(&bias));
            } else {
                for i in 0..seg.len {
                    let acc = &*rows.add(first_row + i).cast::<[[__m512i; 2]; 1]>();
                    epilogue::<Vnni512, u8, 1, 2>(job, seg.q0 + i, first_panel, acc, Some(&bias));
                }
            }
        }
    }
}

/// `iters` rounds of four `tdpbusd` (the 2x2 block of `multiply_block`) on operands
/// loaded once: the tile unit's rate for `qconv::peak`. Returns the ops (2 per
/// multiply-add).
///
/// # Safety
/// AMX-TILE and AMX-INT8 usable (the CPU has them and the OS granted the tile state).
pub(super) unsafe fn tdpbusd_loop(iters: u64) -> u64 {
    let config = TileConfig::all_16_by_64();
    let operand = [Line([1; 64]); TILE_ROWS];
    // safety (this block): the contract grants AMX; the configuration is the 64-byte
    // operand `ldtilecfg` reads; each `tileloadd` reads 16 rows of 64 bytes at a stride of
    // 64 from `operand` (16 lines).
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{p} + {s}*1]",
            "tileloadd tmm5, [{p} + {s}*1]",
            "tileloadd tmm6, [{p} + {s}*1]",
            "tileloadd tmm7, [{p} + {s}*1]",
            p = in(reg) operand.as_ptr(),
            s = in(reg) STEP,
            options(nostack, readonly)
        );
        for _ in 0..iters {
            asm!(
                "tdpbusd tmm0, tmm4, tmm6",
                "tdpbusd tmm1, tmm4, tmm7",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                options(nostack, nomem)
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
    iters * 4 * (TILE_ROWS * TILE_ROWS * STEP * 2) as u64
}
