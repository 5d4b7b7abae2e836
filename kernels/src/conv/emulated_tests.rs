//! The AVX-512 tiling (14 pixels x two 16-channel panels, one-panel tail, ragged pixel
//! tiles) run with a portable 16-lane vector, so its indexing is tested on CPUs without
//! AVX-512 too, for the direct, pointwise, band and Winograd kernels. Only the intrinsic
//! wrappers of `x86::Avx512` and the asm step loop of `strided_rows` are left to the
//! tier tests.

use proptest::prelude::*;

use super::tile::{remainder_tile, run_range, Block, Vector};
use super::*;
use crate::parallel::{Serial, ThreeThreads};
use std::ops::Range;

/// 16 lanes in plain Rust, with the same fused multiply-add as the hardware.
struct Lanes16;

impl Vector for Lanes16 {
    type R = [f32; 16];
    const LANES: usize = 16;
    unsafe fn zero() -> [f32; 16] {
        [0.0; 16]
    }
    unsafe fn splat(p: *const f32) -> [f32; 16] {
        // safety: readable (trait contract).
        [unsafe { *p }; 16]
    }
    unsafe fn load(p: *const f32) -> [f32; 16] {
        // safety: 16 readable floats (trait contract).
        unsafe { Self::load_partial(p, 16) }
    }
    unsafe fn load_partial(p: *const f32, n: usize) -> [f32; 16] {
        let mut v = [0.0; 16];
        // safety: n readable floats (trait contract).
        v[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        v
    }
    unsafe fn fma(a: [f32; 16], b: [f32; 16], c: [f32; 16]) -> [f32; 16] {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
    unsafe fn add(a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    unsafe fn sub(a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        std::array::from_fn(|i| a[i] - b[i])
    }
    unsafe fn relu(a: [f32; 16]) -> [f32; 16] {
        a.map(|x| x.max(0.0))
    }
    unsafe fn store(p: *mut f32, a: [f32; 16]) {
        // safety: 16 writable floats (trait contract).
        unsafe { Self::store_partial(p, a, 16) }
    }
    unsafe fn store_partial(p: *mut f32, a: [f32; 16], n: usize) {
        // safety: n writable floats (trait contract).
        unsafe { std::slice::from_raw_parts_mut(p, n) }.copy_from_slice(&a[..n]);
    }
}

/// One task of a convolution: output pixels by channel tiles.
type TaskKernel = dyn Fn(&Job, Range<usize>, Range<usize>) + Sync;

/// `conv2d_nhwc` on the AVX-512 tiling's tasks, each run by `kernel` (one of the AVX-512
/// loops on `Lanes16`).
fn conv_on_tasks(p: &Problem, par: &dyn ParallelFor, kernel: &TaskKernel) -> Vec<f32> {
    let mut out = vec![f32::NAN; p.g.output_len()];
    check_args(&p.g, &p.input, &p.weights, &p.bias, p.residual.as_deref(), &out);
    with_job(
        &p.g,
        &p.input,
        &p.weights,
        &p.bias,
        p.residual.as_deref(),
        p.act,
        &mut out,
        |job| run_tasks(par, job, x86::Avx512Tiles, |px, co| kernel(job, px, co)),
    );
    out
}

/// `conv2d_nhwc` with the AVX-512 tiling of the general kernel on `Lanes16`.
fn conv_emulated(p: &Problem, par: &dyn ParallelFor) -> Vec<f32> {
    conv_on_tasks(p, par, &|job, px, co| {
        let remainder = |q0: usize, mr: usize, block: Block, one_panel: bool| {
            remainder_tile!(Lanes16, 2, 1, job, q0, mr, block, one_panel,
            [1 2 3 4 5 6 7 8 9 10 11 12 13])
        };
        // safety: `Lanes16` needs no CPU feature; `job` passed `check_args`; the ranges
        // come from `run_tasks`.
        unsafe { run_range::<Lanes16, 14, 2, 1>(job, px, co, remainder) }
    })
}

/// A portable stand-in for `strided_rows::accumulate_14x2`: `acc[i][v] += sum_j
/// base[i * stride + j] * w[v * panel2 + 16 j ..]` for j < `len`.
fn accumulate_14x2_portable(
    acc: &mut [[[f32; 16]; 2]; 14],
    base: *const f32,
    stride: isize,
    w: *const f32,
    panel2: usize,
    len: usize,
) {
    for j in 0..len {
        for (i, row) in acc.iter_mut().enumerate() {
            // safety: the rows and panels the calling kernel passes (its contract for
            // `accumulate`).
            let x = unsafe { *base.offset(i as isize * stride).add(j) };
            for (v, a) in row.iter_mut().enumerate() {
                for (l, lane) in a.iter_mut().enumerate() {
                    // safety: as above.
                    *lane = x.mul_add(unsafe { *w.add(v * panel2 + j * PANEL + l) }, *lane);
                }
            }
        }
    }
}

/// The pointwise kernel's tile loop (`pointwise::run_tiles`, 14 pixels x 32 channels) on
/// the AVX-512 schedule, or with `FEWEST_BLOCKS` on the AVX2 one's blocks and weight
/// prefetching.
fn conv_pointwise_emulated<const FEWEST_BLOCKS: bool>(p: &Problem, par: &dyn ParallelFor) -> Vec<f32> {
    let schedule = if FEWEST_BLOCKS {
        pointwise::Schedule {
            fewest_blocks: true,
            weight_prefetch_step: Some(16),
        }
    } else {
        pointwise::Schedule::AVX512
    };
    conv_on_tasks(p, par, &move |job, px, co| {
        assert!(pointwise::takes(job));
        // safety: `Lanes16` needs no CPU feature; `job` passed `check_args` and `takes`;
        // the ranges come from `run_tasks` (whole tiles but a ragged last one, which
        // `takes` allows only at stride 1).
        unsafe {
            pointwise::run_tiles::<Lanes16, 14, 2>(job, px, co, schedule, |acc, base, stride, w, panel2, len, _| {
                accumulate_14x2_portable(acc, base, stride, w, panel2, len)
            })
        }
    })
}

/// The band kernel's loop (`band::run_rows`, 14 pixels x 32 channels).
fn conv_band_emulated(p: &Problem, par: &dyn ParallelFor) -> Vec<f32> {
    conv_on_tasks(p, par, &|job, px, co| {
        assert!(band::takes(job.g));
        // safety: `Lanes16` needs no CPU feature; `job` passed `check_args` and
        // `band::takes`; the ranges come from `run_tasks`.
        unsafe { band::run_rows::<Lanes16, 14, 2>(job, px, co, accumulate_14x2_portable) }
    })
}

#[derive(Debug)]
struct Problem {
    g: ConvGeometry,
    input: Vec<f32>,
    weights: Vec<f32>,
    bias: Vec<f32>,
    residual: Option<Vec<f32>>,
    act: Epilogue,
}

impl Problem {
    fn new(g: ConvGeometry, residual: bool, act: Epilogue, seed: u64) -> Problem {
        let mut s = seed | 1;
        let mut values = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect()
        };
        let mut weights = values(packed_weight_len(&g));
        let mut bias = values(g.bias_len());
        // Lanes past cout are zero in real packed weights; keep that invariant.
        for (i, w) in weights.iter_mut().enumerate() {
            let panel = i / g.panel_stride();
            if panel * PANEL + i % PANEL >= g.cout {
                *w = 0.0;
            }
        }
        bias[g.cout..].fill(0.0);
        Problem {
            input: values(g.input_len()),
            weights,
            bias,
            residual: residual.then(|| values(g.output_len())),
            g,
            act,
        }
    }

    /// The reference result and, per output, the sum of |terms| (the reference run on
    /// absolute values), which bounds the rounding difference between orders.
    fn reference(&self) -> (Vec<f32>, Vec<f32>) {
        let run = |p: &Problem| {
            let mut out = vec![0.0; p.g.output_len()];
            conv2d_nhwc(
                Isa::Scalar,
                &Serial,
                &p.g,
                &p.input,
                &p.weights,
                &p.bias,
                p.residual.as_deref(),
                p.act,
                &mut out,
            );
            out
        };
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let magnitudes = Problem {
            g: self.g,
            input: abs(&self.input),
            weights: abs(&self.weights),
            bias: abs(&self.bias),
            residual: self.residual.as_deref().map(abs),
            act: Epilogue::None,
        };
        (run(self), run(&magnitudes))
    }

    fn check(&self, par: &dyn ParallelFor) -> Result<(), String> {
        self.check_with(par, conv_emulated)
    }

    fn check_with(
        &self,
        par: &dyn ParallelFor,
        conv: fn(&Problem, &dyn ParallelFor) -> Vec<f32>,
    ) -> Result<(), String> {
        let (want, mag) = self.reference();
        let got = conv(self, par);
        for (i, ((&g, &w), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
            let tol = 1e-5 * m + 1e-6;
            let within = (g - w).abs() <= tol; // false for NaN too
            if !within {
                return Err(format!("{:?}: output {i}: got {g}, expected {w}", self.g));
            }
        }
        Ok(())
    }
}

/// Geometry with the output extents the window implies.
#[allow(clippy::too_many_arguments)]
fn geometry(
    batch: usize,
    hw: [usize; 2],
    cin: usize,
    cout: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
) -> ConvGeometry {
    ConvGeometry::with_implied_output(batch, hw, cin, cout, kernel, stride, dilation, pads).unwrap()
}

/// Random problem flags (residual, ReLU, three threads, seed) on geometry `g`, through
/// `check` (a kernel against its reference).
fn check_case(
    g: ConvGeometry,
    (residual, relu, threaded, seed): (bool, bool, bool, u64),
    check: impl Fn(&Problem, &dyn ParallelFor) -> Result<(), String>,
) -> Result<(), TestCaseError> {
    let act = if relu { Epilogue::Relu } else { Epilogue::None };
    let par: &dyn ParallelFor = if threaded { &ThreeThreads } else { &Serial };
    check(&Problem::new(g, residual, act, seed), par).map_err(TestCaseError::fail)
}

/// One random convolution (window `kh x kw`, strides, dilation, pads) through the
/// emulated AVX-512 tiling against the reference; the input grows when the dilated
/// kernel would not fit the padded input.
fn check_random_window(
    (batch, h, w, cin, cout): (usize, usize, usize, usize, usize),
    (kh, kw, sh, sw, dh, dw): (usize, usize, usize, usize, usize, usize),
    pads: [usize; 4],
    flags: (bool, bool, bool, u64),
) -> Result<(), TestCaseError> {
    let h = h.max((dh * (kh - 1) + 1).saturating_sub(pads[0] + pads[2]));
    let w = w.max((dw * (kw - 1) + 1).saturating_sub(pads[1] + pads[3]));
    let g = geometry(batch, [h, w], cin, cout, [kh, kw], [sh, sw], [dh, dw], pads);
    check_case(g, flags, |p, par| p.check(par))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn avx512_tiling_matches_reference(
        sizes in (1usize..=5, 1usize..=20, 1usize..=20, 1usize..=70, 1usize..=70),
        window in (1usize..=7, 1usize..=7, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        pads in [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        flags in (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        check_random_window(sizes, window, pads, flags)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// 1x1, stride 1, unpadded: the pointwise path, with input-channel blocks at 1000+.
    #[test]
    fn avx512_tiling_matches_reference_pointwise(
        (batch, h, w, cout) in (1usize..=4, 1usize..=12, 1usize..=12, 1usize..=70),
        cin in prop_oneof![1usize..=80, 1000usize..=1100],
        flags in (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        let g = geometry(batch, [h, w], cin, cout, [1, 1], [1, 1], [1, 1], [0; 4]);
        check_case(g, flags, |p, par| p.check(par))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The AVX-512 pointwise kernel's tiling: 1x1 unpadded layers of whole 32-channel
    /// tiles, at stride 1 with any pixel count (a ragged last tile) or at stride 2 with
    /// output rows of whole 14-pixel tiles; input-channel blocks above 512 channels, as
    /// the AVX-512 schedule cuts them or as the AVX2 one does (the fewest blocks, and
    /// weight prefetching).
    #[test]
    fn avx512_pointwise_tiling_matches_reference(
        (batch, h, w, tiles) in (1usize..=3, 1usize..=9, 1usize..=20, 1usize..=2),
        cin in prop_oneof![3 => 1usize..=40, 1 => 513usize..=540],
        cout in prop_oneof![Just(32usize), Just(64), Just(96)],
        strided in any::<bool>(),
        fewest_blocks in any::<bool>(),
        flags in (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        let conv = if fewest_blocks { conv_pointwise_emulated::<true> } else { conv_pointwise_emulated::<false> };
        let g = if strided {
            geometry(batch, [h, 28 * tiles - 1], cin, cout, [1, 1], [2, 2], [1, 1], [0; 4])
        } else {
            geometry(batch, [h, w], cin, cout, [1, 1], [1, 1], [1, 1], [0; 4])
        };
        check_case(g, flags, |p, par| p.check_with(par, conv))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The AVX-512 band kernel's loop: few input channels, output rows of whole 14-pixel
    /// tiles, whole 32-channel tiles, padding, strides and batches.
    #[test]
    fn avx512_band_tiling_matches_reference(
        (batch, h, tiles, cin, cout) in (1usize..=3, 1usize..=10, 1usize..=2, 1usize..=8, prop_oneof![Just(32usize), Just(64)]),
        (kh, kw, sh, sw) in (1usize..=7, 2usize..=7, 1usize..=2, 1usize..=2),
        pads in [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        flags in (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        let cin = cin.min(31 / kw).max(1);
        let w = ((14 * tiles - 1) * sw + kw).saturating_sub(pads[1] + pads[3]).max(1);
        let h = h.max(kh.saturating_sub(pads[0] + pads[2]));
        let g = geometry(batch, [h, w], cin, cout, [kh, kw], [sh, sw], [1, 1], pads);
        prop_assume!(band::takes(&g));
        check_case(g, flags, |p, par| p.check_with(par, conv_band_emulated))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Few input channels under a window wider than 1x1: the packed-window path (the stem),
    /// with padding, strides, dilation and ragged pixel tiles.
    #[test]
    fn avx512_tiling_matches_reference_packed_windows(
        sizes in (1usize..=3, 1usize..=24, 1usize..=24, 1usize..=8, 1usize..=70),
        window in (1usize..=7, 2usize..=7, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        pads in [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        flags in (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        check_random_window(sizes, window, pads, flags)?;
    }
}

#[test]
fn avx512_tiling_on_row_ends_and_resnet_shapes() {
    let mut shapes = vec![
        geometry(2, [30, 30], 3, 64, [7, 7], [2, 2], [1, 1], [3; 4]),
        geometry(1, [7, 7], 96, 48, [3, 3], [1, 1], [1, 1], [1; 4]),
        geometry(2, [9, 9], 64, 80, [1, 1], [2, 2], [1, 1], [0; 4]),
        // Input-channel blocks, partial sums through the output, ragged cout.
        geometry(2, [5, 6], 333, 37, [3, 3], [1, 2], [1, 1], [1, 0, 2, 1]),
        geometry(1, [3, 3], 2100, 20, [1, 1], [1, 1], [1, 1], [0; 4]),
    ];
    for (w, pads) in [(31, [0, 0, 0, 2]), (30, [0, 2, 0, 0]), (29, [2, 0, 0, 1])] {
        for kw in 1..=4 {
            shapes.push(geometry(1, [3, w], 5, 17, [2, kw], [1, 1], [1, 1], pads));
        }
    }
    for (i, g) in shapes.into_iter().enumerate() {
        Problem::new(g, true, Epilogue::Relu, i as u64).check(&Serial).unwrap();
    }
}

/// The Winograd kernel with the AVX-512 tiling on `Lanes16` against its scalar tier
/// (itself tested against the definition in `tests/conv_winograd.rs`).
fn check_winograd_emulated(p: &Problem, par: &dyn ParallelFor) -> Result<(), String> {
    let g = &p.g;
    let weights = winograd::pack_winograd_weights(&p.reference_weights_oihw(), g.cout, g.cin);
    let mut scratch = vec![f32::NAN; winograd::winograd_scratch_len(g)];
    let mut want = vec![f32::NAN; g.output_len()];
    let residual = p.residual.as_deref();
    winograd::conv2d_winograd_nhwc(
        Isa::Scalar,
        &Serial,
        g,
        &p.input,
        &weights,
        &p.bias,
        residual,
        p.act,
        &mut want,
        &mut scratch,
    );
    let mut got = vec![f32::NAN; g.output_len()];
    check_geometry(g, &p.input, &p.bias, residual, &got);
    let relu = p.act == Epilogue::Relu;
    winograd::for_each_chunk(
        g,
        &p.input,
        &weights,
        &p.bias,
        residual,
        relu,
        &mut got,
        &mut scratch,
        |job| {
            winograd::run_chunk::<x86::Avx512Tiles>(par, job, |phase, r, co| {
                // safety: `Lanes16` needs no CPU feature; the slices were checked above; the
                // ranges come from `run_chunk`.
                unsafe { winograd::run_phase::<Lanes16, 14, 2, 1>(job, phase, r, co) }
            })
        },
    );
    let (_, mag) = p.reference();
    for (i, ((&g, &w), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
        let tol = 2e-5 * m + 1e-6;
        let within = (g - w).abs() <= tol; // false for NaN too
        if !within {
            return Err(format!("{:?}: output {i}: got {g}, scalar Winograd {w}", p.g));
        }
    }
    Ok(())
}

impl Problem {
    /// The packed weights back in OIHW order (what the Winograd packer reads).
    fn reference_weights_oihw(&self) -> Vec<f32> {
        let g = &self.g;
        let [kh, kw] = g.kernel;
        let mut w = vec![0.0; g.cout * g.cin * kh * kw];
        for co in 0..g.cout {
            for ci in 0..g.cin {
                for y in 0..kh {
                    for x in 0..kw {
                        w[((co * g.cin + ci) * kh + y) * kw + x] =
                            self.weights[((((co / PANEL) * kh + y) * kw + x) * g.cin + ci) * PANEL + co % PANEL];
                    }
                }
            }
        }
        w
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn avx512_winograd_tiling_matches_scalar(
        (batch, h, w, cin, cout) in (1usize..=3, 1usize..=17, 1usize..=17, 1usize..=70, 1usize..=70),
        pads in [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        flags in (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        let h = h.max(3usize.saturating_sub(pads[0] + pads[2]));
        let w = w.max(3usize.saturating_sub(pads[1] + pads[3]));
        let g = geometry(batch, [h, w], cin, cout, [3, 3], [1, 1], [1, 1], pads);
        check_case(g, flags, check_winograd_emulated)?;
    }
}

#[test]
fn avx512_winograd_tiling_on_several_chunks_and_channel_groups() {
    // 80 tiles of 512 channels (two chunks); 300 output channels (ten two-panel tiles in
    // groups of three, the last tile one panel).
    for (i, g) in [
        geometry(5, [7, 7], 512, 20, [3, 3], [1, 1], [1, 1], [1; 4]),
        geometry(1, [9, 8], 40, 300, [3, 3], [1, 1], [1, 1], [1; 4]),
    ]
    .into_iter()
    .enumerate()
    {
        check_winograd_emulated(&Problem::new(g, true, Epilogue::Relu, i as u64), &ThreeThreads).unwrap();
    }
}
