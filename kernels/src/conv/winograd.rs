//! Winograd F(2x2, 3x3) convolution for 3x3, stride-1, dilation-1 layers: each 2x2 block
//! of output pixels (a *tile*) comes from a 4x4 input window in 16 multiplies per channel
//! pair instead of 36, so 2.25x fewer multiplies than the direct kernel (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2015).
//!
//! Why it exists: the direct kernel already runs the 3x3 layers near the FMA peak, so
//! fewer multiplies are the only way below that floor; the 3x3 stride-1 layers are about
//! a third of ResNet-50's work.
//!
//! Per chunk of tiles (bounded so the transformed input stays cache-sized):
//! 1. input transform `V = Bᵀ d B` of every tile and input channel into the scratch,
//!    16 rows of `cin` floats per tile;
//! 2. per (tiles, output-channel tile) task, 16 GEMMs `M[k] = V[k] · U[k]` with the direct
//!    kernel's register tile (`tile::accumulate`) over the weights `U = G g Gᵀ` that
//!    `qp-convert` transformed and packed, then the output transform `Y = Aᵀ M A` with
//!    the fused epilogue (bias, residual, ReLU) while the tile's 16 products are hot.
//!
//! The transforms only add and subtract, so the error stays near the direct kernel's
//! (one rounding of the 1/2 and 1/4 weight factors, exact in binary).

#![allow(clippy::needless_range_loop)] // index loops over const-size register arrays unroll

use std::ops::Range;

use super::tile::{accumulate, finish, Vector};
use super::{effective_isa, product, ConvGeometry, Epilogue, CALLS_PER_TIER, PANEL};
use crate::cpu::Isa;
use crate::parallel::ParallelFor;
use crate::split::channel_group_len;
use crate::split::{Tiling, Work};

/// Products per tile and channel pair: the 4x4 transformed window.
pub const WINOGRAD_POINTS: usize = 16;

/// Bytes of transformed input one chunk may hold: the scratch size, and a bound that
/// keeps a chunk's transformed input in the last-level cache between its two phases.
const CHUNK_BYTES: usize = 2 << 20;

/// Whether `g` is a layer this kernel computes: 3x3, stride 1, dilation 1, any padding.
pub fn supports_winograd(g: &ConvGeometry) -> bool {
    g.kernel == [3, 3] && g.stride == [1, 1] && g.dilation == [1, 1]
}

/// Floats in the packed transformed weights: `[ceil(cout/16)][16][cin][16]`.
pub fn winograd_weight_len(cin: usize, cout: usize) -> usize {
    product(&[cout.div_ceil(PANEL), WINOGRAD_POINTS, cin, PANEL])
}

/// Transforms 3x3 OIHW weights to `U = G g Gᵀ` and packs them `[ceil(cout/16)][16][cin][16]`
/// (lanes past `cout` zero): for each transformed point `k`, a panel reads like a 1x1
/// convolution's. Computed in f64, rounded once.
pub fn pack_winograd_weights(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        product(&[cout, cin, 9]),
        "pack_winograd_weights: {} floats for OIHW [{cout}, {cin}, 3, 3]",
        w.len()
    );
    let mut packed = vec![0.0f32; winograd_weight_len(cin, cout)];
    transform_into(&mut packed, cout, cin, |co, ci, tap| w[(co * cin + ci) * 9 + tap]);
    packed
}

/// `pack_winograd_weights` from 3x3 weights packed for the direct kernel
/// (`pack_weights_oihw`, `[ceil(cout/16)][3][3][cin][16]`), into `dst`
/// (`winograd_weight_len(cin, cout)` floats): an f16 file stores a Winograd layer's
/// weights this way (half the bytes), and the engine transforms them once at load, straight
/// into the buffer the kernel reads.
pub fn pack_winograd_weights_from_direct(packed: &[f32], cout: usize, cin: usize, dst: &mut [f32]) {
    assert_eq!(
        packed.len(),
        product(&[cout.div_ceil(PANEL), 3, 3, cin, PANEL]),
        "pack_winograd_weights_from_direct: {} floats for cout {cout}, cin {cin}",
        packed.len()
    );
    assert_eq!(
        dst.len(),
        winograd_weight_len(cin, cout),
        "pack_winograd_weights_from_direct: destination of {} floats",
        dst.len()
    );
    dst.fill(0.0);
    transform_into(dst, cout, cin, |co, ci, tap| {
        packed[(((co / PANEL) * 9 + tap) * cin + ci) * PANEL + co % PANEL]
    });
}

/// Writes `U = G g Gᵀ` of every `(co, ci)` kernel, whose 3x3 taps `weight(co, ci, tap)`
/// reads (tap = row * 3 + column), into the zeroed `packed`.
fn transform_into(packed: &mut [f32], cout: usize, cin: usize, weight: impl Fn(usize, usize, usize) -> f32) {
    const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
    for co in 0..cout {
        for ci in 0..cin {
            let g: [f64; 9] = std::array::from_fn(|tap| weight(co, ci, tap) as f64);
            for a in 0..4 {
                for b in 0..4 {
                    let mut u = 0.0f64;
                    for y in 0..3 {
                        for x in 0..3 {
                            u += G[a][y] * g[y * 3 + x] * G[b][x];
                        }
                    }
                    let k = a * 4 + b;
                    packed[(((co / PANEL) * WINOGRAD_POINTS + k) * cin + ci) * PANEL + co % PANEL] = u as f32;
                }
            }
        }
    }
}

/// Floats of scratch `conv2d_winograd_nhwc` needs for `g`.
pub fn winograd_scratch_len(g: &ConvGeometry) -> usize {
    product(&[chunk_tiles(g), tile_stride(g.cin)])
}

/// Tiles per chunk: the tiles split evenly into as few chunks as `CHUNK_BYTES` allows
/// (each at least one register tile's worth), so no chunk is a small remainder that
/// leaves threads idle.
fn chunk_tiles(g: &ConvGeometry) -> usize {
    let per_tile = tile_stride(g.cin) * 4;
    let total = TileGrid::of(g).total();
    let most = (CHUNK_BYTES / per_tile).max(16);
    total.div_ceil(total.div_ceil(most).max(1))
}

/// Floats from one tile's transformed input to the next: its 16 rows of `cin`, plus one
/// cache line, so that a register tile's rows do not all fall in the same L1 sets when
/// `16 * cin` floats is a multiple of 4 KiB (cin 64, 128, ...). Measured single-thread
/// against the direct kernel (Zen 3): 28x28x128 1.51-1.66x with the skew, 1.44-1.54x
/// without; 56x56x64 the same within noise (1.2-1.3x). Rows laid out point-major instead
/// (`[16][tile][cin]`, 16 regions a power of two apart) ran 56x56x64 at 1.15x.
fn tile_stride(cin: usize) -> usize {
    WINOGRAD_POINTS * cin + PANEL
}

/// The output's 2x2 tiles: `rows x cols` per image.
#[derive(Clone, Copy)]
struct TileGrid {
    batch: usize,
    rows: usize,
    cols: usize,
}

impl TileGrid {
    fn of(g: &ConvGeometry) -> TileGrid {
        TileGrid {
            batch: g.batch,
            rows: g.out_h.div_ceil(2),
            cols: g.out_w.div_ceil(2),
        }
    }
    fn total(&self) -> usize {
        product(&[self.batch, self.rows, self.cols])
    }
    /// (image, tile row, tile column) of flattened tile `t`.
    fn position(&self, t: usize) -> (usize, usize, usize) {
        let plane = self.rows * self.cols;
        (t / plane, t % plane / self.cols, t % self.cols)
    }
}

/// Everything a task needs, shared read-only between tasks.
pub(super) struct WinogradJob<'a> {
    g: &'a ConvGeometry,
    grid: TileGrid,
    input: &'a [f32],
    weights: &'a [f32],
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
    output: *mut f32,
    /// Transformed input of tiles `chunk.start..`: tile `t`'s 16 rows of `cin` floats
    /// from `(t - chunk.start) * tile_stride(cin)`.
    scratch: *mut f32,
    chunk: Range<usize>,
}

// safety: the raw pointers are only written inside tasks of one phase of one call, each
// task writing a region disjoint from every other task's (argued at the two phases); the
// `&mut` slices they came from are borrowed for the whole call.
unsafe impl Sync for WinogradJob<'_> {}

/// 3x3 stride-1 NHWC convolution by Winograd F(2x2, 3x3), with the same fused epilogue as
/// `conv2d_nhwc`. `weights` from `pack_winograd_weights`; `scratch` at least
/// `winograd_scratch_len(g)` floats (its contents are overwritten). Runs the best tier the
/// CPU supports at or below `isa`; the scalar tier is the same algorithm in plain Rust.
///
/// # Panics
/// When `g` is not a Winograd layer, or a slice length does not match `g`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_winograd_nhwc(
    isa: Isa,
    par: &dyn ParallelFor,
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Epilogue,
    output: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(
        supports_winograd(g),
        "conv2d_winograd_nhwc: not a 3x3 stride-1 layer: {g:?}"
    );
    super::check_geometry(g, input, bias, residual, output);
    assert_eq!(
        weights.len(),
        winograd_weight_len(g.cin, g.cout),
        "conv2d_winograd_nhwc: weights have {} floats, geometry needs {}",
        weights.len(),
        winograd_weight_len(g.cin, g.cout)
    );
    assert!(
        scratch.len() >= winograd_scratch_len(g),
        "conv2d_winograd_nhwc: scratch has {} floats, needs {}",
        scratch.len(),
        winograd_scratch_len(g)
    );
    let isa = effective_isa(isa);
    CALLS_PER_TIER[isa as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let act = act == Epilogue::Relu;
    for_each_chunk(
        g,
        input,
        weights,
        bias,
        residual,
        act,
        output,
        scratch,
        |job| match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => run_chunk::<super::x86::Avx512Tiles>(par, job, |phase, r, co| {
                // safety: `effective_isa` returned Avx512, so AVX-512 F/BW/VL/DQ are usable;
                // the job's slices were checked above; the ranges come from `run_chunk`,
                // disjoint from every other task's of the same phase.
                unsafe { super::x86::winograd_avx512(job, phase, r, co) }
            }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => run_chunk::<super::x86::Avx2Tiles>(par, job, |phase, r, co| {
                // safety: as above with AVX2+FMA, which `effective_isa` confirmed.
                unsafe { super::x86::winograd_avx2(job, phase, r, co) }
            }),
            _ => run_chunk::<ScalarTiles>(par, job, |phase, r, co| {
                // safety: `Scalar` needs no CPU feature; otherwise as above.
                unsafe { run_phase::<Scalar, SCALAR_MR, PANEL, PANEL>(job, phase, r, co) }
            }),
        },
    );
}

/// Calls `run` on the job of each chunk of tiles, in order (arguments already checked).
#[allow(clippy::too_many_arguments)]
pub(super) fn for_each_chunk(
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    output: &mut [f32],
    scratch: &mut [f32],
    run: impl Fn(&WinogradJob),
) {
    let grid = TileGrid::of(g);
    if grid.total() == 0 || g.cout == 0 {
        return;
    }
    let step = chunk_tiles(g);
    let (output, scratch) = (output.as_mut_ptr(), scratch.as_mut_ptr());
    for start in (0..grid.total()).step_by(step) {
        run(&WinogradJob {
            g,
            grid,
            input,
            weights,
            bias,
            residual,
            relu,
            output,
            scratch,
            chunk: start..(start + step).min(grid.total()),
        });
    }
}

/// The two phases of a chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Input transform of tiles `r` (all input channels).
    Transform,
    /// GEMMs and output transform of tiles `r` by channel tiles `co`.
    Multiply,
}

/// Runs both phases of `job.chunk` over the pool. Disjointness: the transform tasks take
/// disjoint tile ranges, and a tile's transformed input is its own scratch rows; the
/// multiply tasks come from `split::run_tasks` over (tiles, channel tiles), and a tile's
/// four output pixels belong to it alone, so its output elements of a channel tile belong
/// to one task.
pub(super) fn run_chunk<T: Tiling>(
    par: &dyn ParallelFor,
    job: &WinogradJob,
    task: impl Fn(Phase, Range<usize>, Range<usize>) + Sync,
) {
    let tiles = job.chunk.len();
    let pieces = (par.threads() * 2).min(tiles).max(1);
    let piece = |i: usize| job.chunk.start + i * tiles / pieces..job.chunk.start + (i + 1) * tiles / pieces;
    par.run(pieces, &|i| task(Phase::Transform, piece(i), 0..0));
    let g = job.g;
    let work = Work {
        pixels: tiles,
        panels: g.panels(),
        weights: WINOGRAD_POINTS * g.cin * g.panels() * PANEL,
        input: tiles * WINOGRAD_POINTS * g.cin,
    };
    crate::split::run_tasks::<T>(par, &work, |r, co| {
        task(Phase::Multiply, job.chunk.start + r.start..job.chunk.start + r.end, co)
    });
}

/// One task of a phase with vector type `V`: tiles `r` (global indices within the
/// chunk), channel tiles `co` of `NV * LANES` channels (`NV_TAIL` vectors for a last tile
/// of one panel).
///
/// # Safety
/// The ISA of `V` must be enabled; `job`'s slices passed the checks of
/// `conv2d_winograd_nhwc`; no other task writes the same tiles' scratch rows (transform)
/// or output elements (multiply) meanwhile.
#[inline(always)]
pub(super) unsafe fn run_phase<V: Vector, const MR: usize, const NV: usize, const NV_TAIL: usize>(
    job: &WinogradJob,
    phase: Phase,
    r: Range<usize>,
    co: Range<usize>,
) {
    match phase {
        // safety: forwarded.
        Phase::Transform => unsafe { transform_inputs::<V>(job, r) },
        // safety: forwarded.
        Phase::Multiply => unsafe { multiply::<V, MR, NV, NV_TAIL>(job, r, co) },
    }
}

/// Writes `V = Bᵀ d B` of tiles `r`, every input channel, into their scratch rows.
///
/// # Safety
/// As `run_phase`.
#[inline(always)]
unsafe fn transform_inputs<V: Vector>(job: &WinogradJob, r: Range<usize>) {
    let g = job.g;
    let cin = g.cin;
    for t in r {
        let (n, ty, tx) = job.grid.position(t);
        let y0 = (2 * ty) as isize - g.pads[0] as isize;
        let x0 = (2 * tx) as isize - g.pads[1] as isize;
        // Input pixel offsets of the 4x4 window, None in the padding.
        let mut at = [[None; 4]; 4];
        for dy in 0..4 {
            for dx in 0..4 {
                let (y, x) = (y0 + dy as isize, x0 + dx as isize);
                if (0..g.in_h as isize).contains(&y) && (0..g.in_w as isize).contains(&x) {
                    at[dy][dx] = Some(((n * g.in_h + y as usize) * g.in_w + x as usize) * cin);
                }
            }
        }
        // safety: tile t is in the chunk, so its 16 * cin scratch floats are inside the
        // scratch (at least `chunk_tiles` tiles long) and this task's alone (caller).
        let rows = unsafe { job.scratch.add((t - job.chunk.start) * tile_stride(cin)) };
        for c in (0..cin).step_by(V::LANES) {
            let lanes = V::LANES.min(cin - c);
            // safety (this block): `at` offsets are pixels inside the input, and
            // `c + lanes <= cin`; the stores are row k of this tile's scratch.
            unsafe {
                let load = |p: Option<usize>| match p {
                    Some(p) => V::load_lanes(job.input.as_ptr().add(p + c), lanes),
                    None => V::zero(),
                };
                // Bᵀ d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3), per column.
                let mut s = [[V::zero(); 4]; 4];
                for dx in 0..4 {
                    let d = [load(at[0][dx]), load(at[1][dx]), load(at[2][dx]), load(at[3][dx])];
                    s[0][dx] = V::sub(d[0], d[2]);
                    s[1][dx] = V::add(d[1], d[2]);
                    s[2][dx] = V::sub(d[2], d[1]);
                    s[3][dx] = V::sub(d[1], d[3]);
                }
                // (Bᵀ d) B: the same along each row.
                for a in 0..4 {
                    let u = [
                        V::sub(s[a][0], s[a][2]),
                        V::add(s[a][1], s[a][2]),
                        V::sub(s[a][2], s[a][1]),
                        V::sub(s[a][1], s[a][3]),
                    ];
                    for b in 0..4 {
                        V::store_lanes(rows.add((a * 4 + b) * cin + c), u[b], lanes);
                    }
                }
            }
        }
    }
}

/// The multiply phase over tiles `r` and channel tiles `co`, in the direct kernel's loop
/// order: channel tiles in groups whose weights fit half of L2, register tiles of MR
/// tiles outer within a group.
///
/// # Safety
/// As `run_phase`.
#[inline(always)]
unsafe fn multiply<V: Vector, const MR: usize, const NV: usize, const NV_TAIL: usize>(
    job: &WinogradJob,
    r: Range<usize>,
    co: Range<usize>,
) {
    let g = job.g;
    let panels_per_tile = NV * V::LANES / PANEL;
    let tile_weight_bytes = super::tile::tile_weight_bytes(WINOGRAD_POINTS * g.cin, panels_per_tile);
    let group_len = channel_group_len(tile_weight_bytes);
    for group_start in co.clone().step_by(group_len) {
        let group = group_start..co.end.min(group_start + group_len);
        for t0 in r.clone().step_by(MR) {
            let mr = MR.min(r.end - t0);
            for ct in group.clone() {
                let first_panel = ct * panels_per_tile;
                // safety: forwarded; `t0 + mr <= r.end` is within the chunk; the channel
                // tile's panels exist (one panel left selects the one-panel shape).
                unsafe {
                    if g.panels() - first_panel < panels_per_tile {
                        multiply_tile::<V, MR, NV_TAIL>(job, t0, mr, first_panel)
                    } else {
                        multiply_tile::<V, MR, NV>(job, t0, mr, first_panel)
                    }
                }
            }
        }
    }
}

/// Tiles `t0..t0 + mr` (mr <= MR) by `NV * LANES` channels from panel `first_panel`: 16
/// register-tile GEMMs over the input channels, then the output transform and epilogue.
///
/// # Safety
/// As `run_phase`; `t0 + mr` within the chunk; `first_panel * 16 + NV * LANES` within the
/// padded channels.
#[inline(always)]
unsafe fn multiply_tile<V: Vector, const MR: usize, const NV: usize>(
    job: &WinogradJob,
    t0: usize,
    mr: usize,
    first_panel: usize,
) {
    let g = job.g;
    let (cin, cout) = (g.cin, g.cout);
    let panel_stride = WINOGRAD_POINTS * cin * PANEL;
    let mut wofs = [0usize; NV];
    for v in 0..NV {
        wofs[v] = (v * V::LANES / PANEL) * panel_stride + (v * V::LANES) % PANEL;
    }
    // Rows past `mr` repeat the first tile's: computed, never stored, so one register
    // tile shape serves ragged ends.
    let mut rows = [job.scratch; MR];
    for i in 0..MR {
        let t = if i < mr { t0 + i } else { t0 };
        // safety: tile t is in the chunk, so its scratch rows are inside the scratch.
        rows[i] = unsafe { job.scratch.add((t - job.chunk.start) * tile_stride(cin)) };
    }
    // safety: `first_panel` is below the panel count, so its weights are inside `weights`.
    let wpanel = unsafe { job.weights.as_ptr().add(first_panel * panel_stride) };
    // safety: the ISA of `V` is enabled (caller).
    let mut m = [[[unsafe { V::zero() }; NV]; MR]; WINOGRAD_POINTS];
    for k in 0..WINOGRAD_POINTS {
        let mut acc = [[unsafe { V::zero() }; NV]; MR];
        let mut ptrs = [job.scratch.cast_const(); MR];
        for i in 0..MR {
            // safety: row k of a tile's 16 scratch rows.
            ptrs[i] = unsafe { rows[i].add(k * cin) };
        }
        // safety: every pointer has `cin` floats; weight rows (k, 0..cin) of each panel
        // used are inside the panel.
        unsafe { accumulate::<V, MR, NV>(&mut acc, &ptrs, wpanel.add(k * cin * PANEL), &wofs, cin) };
        m[k] = acc;
    }
    let grid = job.grid;
    for i in 0..mr {
        let (n, ty, tx) = grid.position(t0 + i);
        for v in 0..NV {
            let ch = first_panel * PANEL + v * V::LANES;
            if ch >= cout {
                break;
            }
            let lanes = V::LANES.min(cout - ch);
            // safety (this block): the bias is padded to whole panels; each stored pixel is
            // inside the output (checked) and `ch + lanes <= cout`; this task owns the
            // tile's elements of these channels (caller).
            unsafe {
                // Aᵀ M: rows (m0 + m1 + m2, m1 - m2 - m3), per column; then along rows.
                let p = |a: usize, b: usize| m[a * 4 + b][i][v];
                let mut s = [[V::zero(); 4]; 2];
                for b in 0..4 {
                    s[0][b] = V::add(V::add(p(0, b), p(1, b)), p(2, b));
                    s[1][b] = V::sub(V::sub(p(1, b), p(2, b)), p(3, b));
                }
                let bias = job.bias.as_ptr().add(ch);
                for a in 0..2 {
                    let oy = 2 * ty + a;
                    if oy >= g.out_h {
                        break;
                    }
                    let y = [
                        V::add(V::add(s[a][0], s[a][1]), s[a][2]),
                        V::sub(V::sub(s[a][1], s[a][2]), s[a][3]),
                    ];
                    for b in 0..2 {
                        let ox = 2 * tx + b;
                        if ox >= g.out_w {
                            break;
                        }
                        let q = (n * g.out_h + oy) * g.out_w + ox;
                        let residual = job.residual.map(|r| r.as_ptr().add(q * cout + ch));
                        finish::<V>(y[b], bias, residual, job.relu, job.output.add(q * cout + ch), lanes);
                    }
                }
            }
        }
    }
}

/// The scalar tier's register tile: 4 tiles by 16 one-lane "vectors".
const SCALAR_MR: usize = 4;

struct ScalarTiles;
impl Tiling for ScalarTiles {
    const PIXELS: usize = SCALAR_MR;
    const PANELS: usize = 1;
}

/// One f32 lane: runs the generic bodies in plain Rust.
struct Scalar;

impl Vector for Scalar {
    type R = f32;
    const LANES: usize = 1;
    unsafe fn zero() -> f32 {
        0.0
    }
    unsafe fn splat(p: *const f32) -> f32 {
        // safety: readable (trait contract).
        unsafe { *p }
    }
    unsafe fn load(p: *const f32) -> f32 {
        // safety: readable (trait contract).
        unsafe { *p }
    }
    unsafe fn load_partial(p: *const f32, _n: usize) -> f32 {
        // safety: n >= 1 lanes readable (trait contract).
        unsafe { *p }
    }
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // Unfused: `mul_add` is a library call on CPUs without FMA.
        a * b + c
    }
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    unsafe fn relu(a: f32) -> f32 {
        a.max(0.0)
    }
    unsafe fn store(p: *mut f32, a: f32) {
        // safety: writable (trait contract).
        unsafe { *p = a }
    }
    unsafe fn store_partial(p: *mut f32, a: f32, _n: usize) {
        // safety: n >= 1 lanes writable (trait contract).
        unsafe { *p = a }
    }
}
