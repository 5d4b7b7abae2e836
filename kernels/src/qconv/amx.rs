//! AMX INT8 convolution (Sapphire Rapids and later): `tdpbusd` on tile registers.
//!
//! Why it exists: one `tdpbusd` multiplies a 16 x 64 u8 tile by a 64 x 16 s8 tile into
//! 16 x 16 i32 accumulators, 16K products in about 16 cycles, where two zmm `vpdpbusd` a
//! cycle do 128. Measured on one core of the Xeon in docs/PERFORMANCE.md: 7.6 TOP/s for
//! a loop of `tdpbusd` against 0.94 for `vpdpbusd`. The AVX512-VNNI kernel runs
//! ResNet-50's INT8 layers at about 60% of its peak; at an eighth of the tile unit's,
//! this kernel is already 1.6x faster over the whole model.
//!
//! Shape: a block is 32 output pixels by 32 output channels, four C tiles (tmm0-3: pixels
//! 0-15 / 16-31 by channels 0-15 / 16-31) held across the whole reduction. Each 64-byte
//! step of the reduction loads two A tiles (tmm4-5: 16 pixels x 64 input bytes) and two
//! B tiles (tmm6-7) and issues four `tdpbusd`: 4 KB of tile loads per 64K products.
//!
//! Operands, with no repacking of the weights:
//! - B: the packed weights (`pack_weights_s8`, `[panel][kh][kw][cin/4][16][4]`) are rows
//!   of 4 input channels by 16 output channels, 64 bytes each, exactly a B tile row; 16
//!   consecutive rows are one B tile (row stride 64), the panel after it the second.
//! - A: a pointwise layer (1x1, stride 1, unpadded) reads the input in place, 16 pixels
//!   at a row stride of `cin`. Any other layer first gathers each pixel's window
//!   (`kh * kw * cin` bytes, taps in the padding read `x_zero`) into a buffer, once per
//!   pixel block, reused by every channel block of the group; so does a ragged last block.
//!
//! Taken only when `cin` is a multiple of 64, so no 64-byte step straddles two taps
//! (every ResNet-50 layer but the 3-channel stem); other layers run the AVX512-VNNI
//! kernel. The C tiles go through a 32 x 32 i32 buffer into the zmm epilogue of `tile`,
//! with the bias added on the way: the i32 sums are exact, so outputs are bit-identical
//! to every other tier.

use std::arch::asm;
use std::arch::x86_64::__m512i;
use std::ops::Range;

use super::tile::{epilogue, QVector};
use super::x86::Vnni512;
use super::{Job, OutPtr, QConvGeometry, QResidual, Tiling, GROUP, PANEL};

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

/// One cache line: the gather buffer is made of them, so every A tile row is 64-byte
/// aligned. Rows that straddle two lines made each `tileloadd` about 6x slower (a
/// measured 13-15 ns against 2 ns, Sapphire Rapids class), the 2x2 block 2.7x slower.
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

/// AMX blocks over pixels `px` and 32-channel tiles `co`.
///
/// # Safety
/// AMX-TILE and AMX-INT8 must be usable (the CPU has them and the OS granted the tile
/// state: `cpu::features`), and AVX-512 F/BW/VL with AVX512-VNNI; `job` passed
/// `check_args` and `takes(job.g)`; no other thread writes the output elements of (`px`
/// x channels of `co`) meanwhile; `px.start` is a multiple of `AmxTiles::PIXELS`.
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
pub(super) unsafe fn run_amx(job: &Job, px: Range<usize>, co: Range<usize>) {
    let g = job.g;
    let k_bytes = g.kernel[0] * g.kernel[1] * g.cin;
    let steps = k_bytes / STEP;
    let panels = g.cout.div_ceil(PANEL);
    // Bytes of one panel's packed weights: a row of 64 per 4 reduction bytes.
    let panel_stride = k_bytes / GROUP * PANEL * GROUP;
    // As the vector kernels: channel tiles in groups whose weights fit in half of L2,
    // pixel blocks the outer loop within a group.
    let group_len = crate::split::channel_group_len(2 * panel_stride);
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
        let mut q0 = px.start;
        while q0 < px.end {
            let rows = BLOCK_PIXELS.min(px.end - q0);
            let (a, a_stride) = if job.pointwise && rows == BLOCK_PIXELS {
                // safety: pixels q0..q0+32 are output pixels (rows == 32), so input
                // pixels of a pointwise layer, `cin` bytes each.
                (unsafe { job.input.as_ptr().add(q0 * g.cin) }, g.cin)
            } else {
                let lines = BLOCK_PIXELS * k_bytes / 64;
                if gathered.len() < lines {
                    gathered = vec![Line([0; 64]); lines];
                }
                // safety: AVX-512 is enabled here; `job` is checked and taken (contract);
                // the buffer has 32 rows of `k_bytes` (a multiple of 64); the pixels are
                // this task's.
                unsafe { gather(job, q0, rows, gathered.as_mut_ptr().cast()) };
                (gathered.as_ptr().cast::<u8>(), k_bytes)
            };
            for ct in group.clone() {
                let first_panel = ct * 2;
                let two_panels = panels - first_panel >= 2;
                let slot = pending.map_or(0, |p| 1 - p.slot);
                // safety: `first_panel < panels`; the weights hold `panels` panels.
                let w = unsafe { job.weights.as_ptr().add(first_panel * panel_stride) };
                // safety: tiles configured above; the A rows (32 at `a_stride` from `a`,
                // `k_bytes` each) and B rows (`steps * 16` of 64 bytes from `w`, and from
                // `w + panel_stride` when a second panel exists) are readable: the input
                // or the gather buffer, and the weights.
                unsafe { multiply_block(a, a_stride, w, panel_stride, steps, two_panels, &mut sums[slot]) };
                prefetch_block(job, q0, rows, first_panel);
                if let Some(p) = pending {
                    // safety: as this function's contract; the block's pixels are ours.
                    unsafe { store_block(job, p.q0, p.rows, p.first_panel, &sums[p.slot]) };
                }
                pending = Some(Pending {
                    q0,
                    rows,
                    first_panel,
                    slot,
                });
            }
            q0 += rows;
        }
    }
    if let Some(p) = pending {
        // safety: as above.
        unsafe { store_block(job, p.q0, p.rows, p.first_panel, &sums[p.slot]) };
    }
    GATHER_BUFFER.set(gathered);
    // Back to the init state: the next context switch saves no tile data.
    // safety: AMX-TILE is usable (contract).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// A block whose sums are stored in `sums[slot]` and whose epilogue has not run yet.
#[derive(Clone, Copy)]
struct Pending {
    q0: usize,
    rows: usize,
    first_panel: usize,
    slot: usize,
}

/// Asks for the f32 cache lines that the epilogue of the block at `q0` (run in the next
/// iteration) writes and reads as the residual, so they arrive while the tile unit
/// works. A 56x56 64 -> 256 1x1 layer, one thread: f32 output 350 -> 300 µs, f32
/// residual 457 -> 350 µs; prefetching u8 outputs and residuals changed nothing.
#[inline(always)]
fn prefetch_block(job: &Job, q0: usize, rows: usize, first_panel: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let cout = job.g.cout;
    let channels = (2 * PANEL).min(cout - first_panel * PANEL);
    let first = q0 * cout + first_panel * PANEL;
    let (out, out_elem): (*const u8, usize) = match job.out {
        OutPtr::F32(p) => (p.cast_const().cast(), 4),
        OutPtr::U8 { .. } => (std::ptr::null(), 0),
    };
    let (res, res_elem): (*const u8, usize) = match job.residual {
        QResidual::None => (std::ptr::null(), 0),
        QResidual::F32(r) => (r.as_ptr().cast(), 4),
        QResidual::U8 { .. } => (std::ptr::null(), 0),
    };
    for i in 0..rows {
        let at = first + i * cout;
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
unsafe fn gather(job: &Job, q0: usize, rows: usize, buf: *mut u8) {
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

/// The sums of one 32-pixel by 32-channel block (16 channels when `!two_panels`; the
/// other half of `sums` is then zero) over the whole reduction, into `sums`.
///
/// # Safety
/// Tiles configured 16 x 64 bytes; 32 rows of `steps * 64` bytes at `a_stride` from `a`
/// and `steps * 16` rows of 64 bytes from `w` (and from `w + panel_stride` when
/// `two_panels`) readable.
#[inline(always)]
unsafe fn multiply_block(
    a: *const u8,
    a_stride: usize,
    w: *const i8,
    panel_stride: usize,
    steps: usize,
    two_panels: bool,
    sums: &mut Sums,
) {
    // safety (every asm block): the tiles are configured (caller) and every address is
    // inside the ranges of the contract: step s reads A bytes s*64.. of each row and B
    // rows 16s.. of each panel.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for s in 0..steps {
            let a0 = a.add(s * STEP);
            let a1 = a0.add(TILE_ROWS * a_stride);
            let b0 = w.add(s * B_TILE_BYTES);
            if two_panels {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbusd tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbusd tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbusd tmm2, tmm5, tmm6",
                    "tdpbusd tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    b1 = in(reg) b0.add(panel_stride),
                    sa = in(reg) a_stride,
                    sb = in(reg) STEP,
                    options(nostack, readonly)
                );
            } else {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbusd tmm0, tmm4, tmm6",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbusd tmm2, tmm5, tmm6",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    sa = in(reg) a_stride,
                    sb = in(reg) STEP,
                    options(nostack, readonly)
                );
            }
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

/// Bias, then the shared epilogue, for pixels `q0..q0+rows` of a block.
///
/// # Safety
/// AVX-512 F/BW/VL usable; as `run_amx` for the output elements of these pixels and the
/// channels of panels `first_panel..first_panel + 2` below `cout`.
#[inline(always)]
unsafe fn store_block(job: &Job, q0: usize, rows: usize, first_panel: usize, sums: &Sums) {
    let cout = job.g.cout;
    // safety (this block): AVX-512 is enabled (caller); `bias` has `cout` elements, so the
    // lanes below `cout` are readable; every `sums` row has 32 i32.
    unsafe {
        let mut bias = [Vnni512::zero(); 2];
        for (v, b) in bias.iter_mut().enumerate() {
            let ch = (first_panel + v) * PANEL;
            if ch < cout {
                *b = Vnni512::load_i32(job.bias.as_ptr().add(ch), PANEL.min(cout - ch));
            }
        }
        let load = |i: usize| -> [__m512i; 2] {
            let row = sums.0[i].as_ptr();
            [
                Vnni512::add_i32(Vnni512::load_i32(row, PANEL), bias[0]),
                Vnni512::add_i32(Vnni512::load_i32(row.add(PANEL), PANEL), bias[1]),
            ]
        };
        let mut i = 0;
        while i + TILE_ROWS <= rows {
            let acc: [[__m512i; 2]; TILE_ROWS] = std::array::from_fn(|r| load(i + r));
            // safety: pixels q0+i.. q0+i+16 are within this task's (caller).
            epilogue::<Vnni512, TILE_ROWS, 2>(job, q0 + i, first_panel, &acc);
            i += TILE_ROWS;
        }
        while i < rows {
            // safety: as above, one pixel.
            epilogue::<Vnni512, 1, 2>(job, q0 + i, first_panel, &[load(i)]);
            i += 1;
        }
    }
}
