//! FP32 NHWC convolution (group 1) with a fused epilogue: `y = act(acc + bias + residual)`.
//!
//! Three tiers share one packed weight layout, `[ceil(cout/16)][kh][kw][cin][16]`:
//! - `reference`: plain loops, the oracle every other tier is tested against;
//! - `x86`: AVX2+FMA and AVX-512 instantiations of one generic register-tile kernel
//!   (`tile`), an implicit GEMM of MR output pixels by NR output channels;
//! - `band` (the stem) and `pointwise` (1x1 layers), AVX-512 and AVX2: kernels
//!   with the general tiles whose pixels read evenly spaced rows, on the hand-scheduled
//!   loops of `strided_rows`.
//!
//! Work is split into disjoint (pixel-tile range, channel-tile range) tasks handed to the
//! caller's `ParallelFor`; the disjointness argument lives in `run_tasks` below.

#[cfg(target_arch = "x86_64")]
mod band;
#[cfg(target_arch = "x86_64")]
mod pointwise;
mod reference;
#[cfg(target_arch = "x86_64")]
mod strided_rows;
mod tile;
mod winograd;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(all(test, target_arch = "x86_64"))]
mod emulated_tests;

pub use winograd::{
    conv2d_winograd_nhwc, pack_winograd_weights, pack_winograd_weights_from_direct, supports_winograd,
    winograd_scratch_len, winograd_weight_len, WINOGRAD_POINTS,
};

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{self, Isa};
use crate::parallel::ParallelFor;

/// Output channels per packed weight panel (one AVX-512 register, two AVX2 registers).
pub const PANEL: usize = 16;

/// Shape of one NHWC convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub cin: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub cout: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
}

impl ConvGeometry {
    /// The geometry whose output extents the window implies (floor mode); `None` when the
    /// window does not fit the padded input.
    #[allow(clippy::too_many_arguments)]
    pub fn with_implied_output(
        batch: usize,
        in_hw: [usize; 2],
        cin: usize,
        cout: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pads: [usize; 4],
    ) -> Option<ConvGeometry> {
        let mut g = ConvGeometry {
            batch,
            in_h: in_hw[0],
            in_w: in_hw[1],
            cin,
            out_h: 0,
            out_w: 0,
            cout,
            kernel,
            stride,
            dilation,
            pads,
        };
        g.out_h = g.implied_out_extent(0)?;
        g.out_w = g.implied_out_extent(1)?;
        Some(g)
    }

    /// Output extent of one spatial axis (0 = H, 1 = W) implied by the window, floor mode;
    /// `None` when the padded input is shorter than the dilated kernel or a factor is zero.
    pub fn implied_out_extent(&self, axis: usize) -> Option<usize> {
        let (input, k, s, d) = (
            [self.in_h, self.in_w][axis],
            self.kernel[axis],
            self.stride[axis],
            self.dilation[axis],
        );
        if k == 0 || s == 0 || d == 0 {
            return None;
        }
        let padded = input.checked_add(self.pads[axis])?.checked_add(self.pads[axis + 2])?;
        let span = d.checked_mul(k - 1)?.checked_add(1)?;
        Some(padded.checked_sub(span)? / s + 1)
    }

    /// Floats in the input tensor.
    pub fn input_len(&self) -> usize {
        product(&[self.batch, self.in_h, self.in_w, self.cin])
    }

    /// Floats in the output (and residual) tensor.
    pub fn output_len(&self) -> usize {
        product(&[self.batch, self.out_h, self.out_w, self.cout])
    }

    /// Weight panels of 16 output channels.
    pub fn panels(&self) -> usize {
        self.cout.div_ceil(PANEL)
    }

    /// Floats in the padded bias.
    pub fn bias_len(&self) -> usize {
        product(&[self.panels(), PANEL])
    }

    /// Output pixels over the whole batch.
    fn pixels(&self) -> usize {
        product(&[self.batch, self.out_h, self.out_w])
    }

    /// What `split::run_tasks` weighs: the pixels, panels, and the weights and input
    /// one pass reads.
    fn split_work(&self) -> crate::split::Work {
        crate::split::Work {
            pixels: self.pixels(),
            panels: self.panels(),
            weights: self.kernel[0] * self.kernel[1] * self.cin * self.panels() * PANEL,
            input: self.pixels() * self.cin,
        }
    }

    /// Floats in one packed weight panel.
    fn panel_stride(&self) -> usize {
        product(&[self.kernel[0], self.kernel[1], self.cin, PANEL])
    }
}

/// Where each pixel of a register tile reads its input: its image's first input row and
/// the (possibly negative) top-left input coordinate of its window. The same for every
/// channel tile of a pixel tile, so the tile loops compute it once per pixel tile. Shared
/// by the FP32 and INT8 kernels.
#[derive(Clone, Copy)]
pub(crate) struct Windows<const MR: usize> {
    pub image_row: [usize; MR],
    pub ih0: [isize; MR],
    pub iw0: [isize; MR],
}

impl ConvGeometry {
    /// The windows of output pixels `q0..q0 + MR` (walks the flattened index instead of
    /// dividing per pixel; pixels past the end get windows past the end, never read).
    #[inline(always)]
    pub(crate) fn windows<const MR: usize>(&self, q0: usize) -> Windows<MR> {
        let plane = self.out_h * self.out_w;
        let (mut n, mut oh, mut ow) = (q0 / plane, q0 / self.out_w % self.out_h, q0 % self.out_w);
        let mut w = Windows {
            image_row: [0; MR],
            ih0: [0; MR],
            iw0: [0; MR],
        };
        for i in 0..MR {
            w.image_row[i] = n * self.in_h;
            w.ih0[i] = (oh * self.stride[0]) as isize - self.pads[0] as isize;
            w.iw0[i] = (ow * self.stride[1]) as isize - self.pads[1] as isize;
            ow += 1;
            if ow == self.out_w {
                ow = 0;
                oh += 1;
                if oh == self.out_h {
                    oh = 0;
                    n += 1;
                }
            }
        }
        w
    }
}

/// Multiplies sizes, panicking with a clear message on overflow (a geometry that large
/// cannot describe real buffers).
fn product(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or_else(|| panic!("conv geometry: size {dims:?} overflows usize"))
}

/// Activation applied after bias and residual.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Epilogue {
    #[default]
    None,
    Relu,
}

/// Size in floats of the packed weights for `g`.
pub fn packed_weight_len(g: &ConvGeometry) -> usize {
    product(&[g.panels(), g.panel_stride()])
}

/// Packs OIHW weights (`w[co][ci][kh][kw]`) into `[ceil(cout/16)][kh][kw][cin][16]`,
/// lanes past `cout` zero.
pub fn pack_weights_oihw(w: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        product(&[cout, cin, kh, kw]),
        "pack_weights_oihw: {} floats for OIHW [{cout}, {cin}, {kh}, {kw}]",
        w.len()
    );
    let panels = cout.div_ceil(PANEL);
    let mut packed = vec![0.0f32; product(&[panels, kh, kw, cin, PANEL])];
    for co in 0..cout {
        for ci in 0..cin {
            for y in 0..kh {
                for x in 0..kw {
                    let dst = ((((co / PANEL) * kh + y) * kw + x) * cin + ci) * PANEL + co % PANEL;
                    packed[dst] = w[((co * cin + ci) * kh + y) * kw + x];
                }
            }
        }
    }
    packed
}

/// The tier `conv2d_nhwc` runs for a request: the request lowered to what this CPU has.
pub fn effective_isa(requested: Isa) -> Isa {
    requested.min(cpu::features().best_isa())
}

static CALLS_PER_TIER: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// How many `conv2d_nhwc` calls each tier has run in this process, indexed like
/// `Isa::ALL` (scalar, avx2, avx512): shows which kernels actually ran.
pub fn calls_per_tier() -> [u64; 3] {
    CALLS_PER_TIER.each_ref().map(|c| c.load(Ordering::Relaxed))
}

/// Everything a task needs, shared read-only between tasks.
struct Job<'a> {
    g: &'a ConvGeometry,
    input: &'a [f32],
    weights: &'a [f32],
    bias: &'a [f32],
    residual: Option<&'a [f32]>,
    relu: bool,
    output: OutputPtr,
    /// `kernel[1] * cin` zeros: the row that out-of-bounds taps read.
    zeros: &'a [f32],
    /// 1x1, stride 1, no padding: output pixel q reads input pixel q (same extents).
    pointwise: bool,
}

/// The output buffer, written through by several tasks at once.
struct OutputPtr {
    ptr: *mut f32,
    len: usize,
}

// safety: `OutputPtr` is only dereferenced inside tasks of one `run_tasks` call, each of which
// writes a region disjoint from every other task's (argued at `run_tasks`); the `&mut [f32]`
// it came from is borrowed for the whole call, so nothing else touches the buffer meanwhile.
unsafe impl Sync for OutputPtr {}

/// NHWC convolution, group 1.
///
/// `input`: `[batch][in_h][in_w][cin]`; `weights`: packed `[ceil(cout/16)][kh][kw][cin][16]`
/// (see `pack_weights_oihw`); `bias`: `[ceil(cout/16)*16]`; `residual` (optional):
/// `[batch][out_h][out_w][cout]`, added before the activation; `output`:
/// `[batch][out_h][out_w][cout]`. Runs the best tier the CPU supports at or below `isa`.
///
/// # Panics
/// When a slice length or the output extent does not match `g` (callers validate first;
/// these checks guard the unsafe kernels).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_nhwc(
    isa: Isa,
    par: &dyn ParallelFor,
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Epilogue,
    output: &mut [f32],
) {
    check_args(g, input, weights, bias, residual, output);
    let isa = effective_isa(isa);
    CALLS_PER_TIER[isa as usize].fetch_add(1, Ordering::Relaxed);
    if g.pixels() == 0 || g.cout == 0 {
        return;
    }
    with_job(g, input, weights, bias, residual, act, output, |job| match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if band::takes(g) => run_tasks(par, job, x86::Avx512Tiles, |px, co| {
            // safety: as below, and `band::takes` holds; the band kernel's tiles are the
            // general kernel's (14 pixels x 32 channels), so the ranges fit it.
            unsafe { band::run(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if pointwise::takes(job) => run_tasks(par, job, x86::Avx512Tiles, |px, co| {
            // safety: as below, and `pointwise::takes` holds; `run_tasks` starts every range
            // at a whole tile and ends it at one or at the last pixel, and a ragged last
            // tile means stride 1 (`takes`: otherwise output rows are whole tiles).
            unsafe { pointwise::run(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => run_tasks(par, job, x86::Avx512Tiles, |px, co| {
            // safety: `effective_isa` returned Avx512, so `features()` reported AVX-512
            // F/BW/VL/DQ usable by this process; `job` passed `check_args`; the ranges come
            // from `run_tasks`, disjoint from every other task's.
            unsafe { x86::run_avx512(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if band::takes_avx2(g) => run_tasks(par, job, x86::Avx2Tiles, |px, co| {
            // safety: as the AVX-512 case, with AVX2+FMA (confirmed by `effective_isa`) and
            // `band::takes_avx2`; the band kernel tiles any pixel range row by row.
            unsafe { band::run_avx2(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if pointwise::takes_avx2(job) => run_tasks(par, job, x86::Avx2Tiles, |px, co| {
            // safety: as the AVX-512 case, with AVX2+FMA (confirmed by `effective_isa`),
            // `pointwise::takes_avx2` and tiles of 6 pixels.
            unsafe { pointwise::run_avx2(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => run_tasks(par, job, x86::Avx2Tiles, |px, co| {
            // safety: as above with AVX2+FMA, which `effective_isa` confirmed.
            unsafe { x86::run_avx2(job, px, co) }
        }),
        _ => run_tasks(par, job, reference::ReferenceTiles, |px, co| {
            debug_assert_eq!(co, 0..1);
            // safety: the pixel ranges of different tasks are disjoint, and each covers
            // whole pixels (all `cout` channels), so these output slices never overlap.
            let out = unsafe { job.output.pixels_mut(g, px.clone()) };
            reference::conv_pixels(job, px, out);
        }),
    });
}

/// Builds the shared `Job` of one call (arguments already checked) and runs `f` on it.
#[allow(clippy::too_many_arguments)]
fn with_job(
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    act: Epilogue,
    output: &mut [f32],
    f: impl FnOnce(&Job),
) {
    let zeros = vec![0.0f32; g.kernel[1] * g.cin];
    f(&Job {
        g,
        input,
        weights,
        bias,
        residual,
        relu: act == Epilogue::Relu,
        output: OutputPtr {
            ptr: output.as_mut_ptr(),
            len: output.len(),
        },
        zeros: &zeros,
        pointwise: g.kernel == [1, 1] && g.stride == [1, 1] && g.pads == [0; 4],
    });
}

impl OutputPtr {
    /// The output floats of output pixels `px` (tile-free view for the reference).
    ///
    /// # Safety
    /// No other live reference may cover these pixels while the slice lives, and it must
    /// not outlive the output buffer.
    unsafe fn pixels_mut<'a>(&self, g: &ConvGeometry, px: Range<usize>) -> &'a mut [f32] {
        let (start, end) = (px.start * g.cout, px.end * g.cout);
        assert!(start <= end && end <= self.len, "output pixel range out of bounds");
        // safety: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

fn check_args(
    g: &ConvGeometry,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    output: &[f32],
) {
    check_geometry(g, input, bias, residual, output);
    let len = packed_weight_len(g);
    assert_eq!(
        weights.len(),
        len,
        "conv2d_nhwc: weights has {} floats, geometry needs {len}",
        weights.len()
    );
}

/// The checks every convolution shares: output extents and the lengths of everything
/// but the weights.
fn check_geometry(g: &ConvGeometry, input: &[f32], bias: &[f32], residual: Option<&[f32]>, output: &[f32]) {
    for axis in 0..2 {
        let (name, out) = (["out_h", "out_w"][axis], [g.out_h, g.out_w][axis]);
        assert_eq!(
            g.implied_out_extent(axis),
            Some(out),
            "conv2d_nhwc: {name} = {out} does not match the window of {g:?}"
        );
    }
    let expect = |what: &str, got: usize, want: usize| {
        assert_eq!(got, want, "conv2d_nhwc: {what} has {got} floats, geometry needs {want}");
    };
    expect("input", input.len(), g.input_len());
    expect("bias", bias.len(), g.bias_len());
    expect("output", output.len(), g.output_len());
    if let Some(r) = residual {
        expect("residual", r.len(), g.output_len());
    }
}

pub(crate) use crate::split::Tiling;

/// Runs `task` over disjoint (pixel range, channel-tile range) pieces of `job`'s output
/// (the split rule and its disjointness argument: `crate::split::run_tasks`).
fn run_tasks<T: Tiling>(
    par: &dyn ParallelFor,
    job: &Job,
    _tiling: T,
    task: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    crate::split::run_tasks::<T>(par, &job.g.split_work(), task)
}
