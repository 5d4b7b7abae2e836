//! Shared helpers of the conv tests: random problems, a naive NCHW oracle on OIHW
//! weights, a threaded `ParallelFor`, and the tolerance check.

#![allow(dead_code)] // each test binary uses a subset

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use qp_kernels::conv::{pack_weights_oihw, ConvGeometry, Epilogue};
use qp_kernels::parallel::ParallelFor;
use std::ops::RangeInclusive;

/// A convolution problem: geometry, NCHW input, OIHW weights, bias, optional residual
/// (NHWC), activation.
#[derive(Clone, Debug)]
pub struct Problem {
    pub g: ConvGeometry,
    pub input_nchw: Vec<f32>,
    pub weights_oihw: Vec<f32>,
    pub bias: Vec<f32>,
    pub residual: Option<Vec<f32>>,
    pub act: Epilogue,
}

/// Geometry with the output extents implied by the window (floor mode).
#[allow(clippy::too_many_arguments)]
pub fn geometry(
    batch: usize,
    in_hw: [usize; 2],
    cin: usize,
    cout: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
) -> ConvGeometry {
    ConvGeometry::with_implied_output(batch, in_hw, cin, cout, kernel, stride, dilation, pads)
        .expect("window larger than padded input")
}

/// Deterministic values in [-1, 1) from a seed (xorshift), so failures reproduce.
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

pub fn problem(g: ConvGeometry, with_residual: bool, act: Epilogue, seed: u64) -> Problem {
    let [kh, kw] = g.kernel;
    let out_len = g.batch * g.out_h * g.out_w * g.cout;
    Problem {
        g,
        input_nchw: values(g.batch * g.cin * g.in_h * g.in_w, seed),
        weights_oihw: values(g.cout * g.cin * kh * kw, seed + 1),
        bias: values(g.cout, seed + 2),
        residual: with_residual.then(|| values(out_len, seed + 3)),
        act,
    }
}

/// Random geometries over the ranges the kernels must handle: ragged channels, odd and
/// tiny spatial sizes, any window, asymmetric pads. The input grows when the dilated
/// kernel would not fit the padded input.
pub fn arb_problem() -> impl Strategy<Value = Problem> {
    arb_window_problem(1..=5, 1..=20, 1..=70, 1..=7)
}

/// `arb_problem` over the given batch, spatial, input-channel and kernel-width ranges.
fn arb_window_problem(
    batch: RangeInclusive<usize>,
    hw: RangeInclusive<usize>,
    cin: RangeInclusive<usize>,
    kw: RangeInclusive<usize>,
) -> impl Strategy<Value = Problem> {
    (
        (batch, hw.clone(), hw, cin, 1usize..=70),
        (1usize..=7, kw, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        (any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((batch, h, w, cin, cout), (kh, kw, sh, sw, dh, dw), pads, (res, relu, seed))| {
                let span = |k: usize, d: usize| d * (k - 1) + 1;
                let h = h.max(span(kh, dh).saturating_sub(pads[0] + pads[2]));
                let w = w.max(span(kw, dw).saturating_sub(pads[1] + pads[3]));
                let g = geometry(batch, [h, w], cin, cout, [kh, kw], [sh, sw], [dh, dw], pads);
                let act = if relu { Epilogue::Relu } else { Epilogue::None };
                problem(g, res, act, seed)
            },
        )
}

/// Random 1x1, stride-1, unpadded convolutions: the kernels' pointwise path, which the
/// general strategy above draws too rarely to cover. Ragged pixel counts and channels,
/// and enough input channels (up to 1100) to split into input-channel blocks.
pub fn arb_pointwise_problem() -> impl Strategy<Value = Problem> {
    (
        (1usize..=4, 1usize..=12, 1usize..=12),
        prop_oneof![1usize..=80, 1000usize..=1100],
        1usize..=70,
        (any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(|((batch, h, w), cin, cout, (res, relu, seed))| {
            let g = geometry(batch, [h, w], cin, cout, [1, 1], [1, 1], [1, 1], [0; 4]);
            let act = if relu { Epilogue::Relu } else { Epilogue::None };
            problem(g, res, act, seed)
        })
}

/// Random convolutions with few input channels under a window wider than one column:
/// the kernels' packed-window path (the stem: 7x7 over 3 channels), with padding,
/// strides, dilation and ragged tiles.
pub fn arb_packed_window_problem() -> impl Strategy<Value = Problem> {
    arb_window_problem(1..=3, 1..=24, 1..=8, 2..=7)
}

/// Random convolutions with few input channels and whole 16-channel tiles: the band
/// kernels' layers (the stem). Output rows of whole 14-pixel tiles and 32-channel tiles
/// (AVX-512) or of any width (AVX2: ragged 6-pixel tiles at row ends), with padding on
/// any side, strides, batches and both epilogues.
pub fn arb_band_problem() -> impl Strategy<Value = Problem> {
    (
        (
            1usize..=3,
            1usize..=12,
            prop_oneof![(1usize..=3).prop_map(|tiles| 14 * tiles), 1usize..=30],
            1usize..=8,
            prop_oneof![Just(16usize), Just(32), Just(48), Just(64)],
        ),
        (1usize..=7, 2usize..=7, 1usize..=2, 1usize..=2),
        [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        (0usize..=1, any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((batch, h, out_w, cin, cout), (kh, kw, sh, sw), pads, (extra, res, relu, seed))| {
                // Few enough channels for the band (kw * cin < 32).
                let cin = cin.min(31 / kw).max(1);
                // The input width whose output (floor mode) is exactly out_w, or the
                // narrowest the window allows.
                let w = ((out_w - 1) * sw + kw + extra.min(sw - 1))
                    .saturating_sub(pads[1] + pads[3])
                    .max(1);
                let h = h.max(kh.saturating_sub(pads[0] + pads[2]));
                let g = geometry(batch, [h, w], cin, cout, [kh, kw], [sh, sw], [1, 1], pads);
                let act = if relu { Epilogue::Relu } else { Epilogue::None };
                problem(g, res, act, seed)
            },
        )
}

/// 1x1 unpadded layers with whole channel tiles (the pointwise kernels': 32 channels on
/// AVX-512, 16 on AVX2): stride 1 with any pixel count (a ragged last tile), or strides up
/// to 2 with output rows of whole tiles (14 pixels on AVX-512, 6 on AVX2); few input
/// channels or more than one input-channel block (above 512 on AVX-512, 1024 on AVX2).
pub fn arb_pointwise_whole_tiles_problem() -> impl Strategy<Value = Problem> {
    (
        (1usize..=3, 1usize..=9, 1usize..=17),
        prop_oneof![3 => 1usize..=40, 1 => 513usize..=540, 1 => 1025usize..=1040],
        prop_oneof![Just(16usize), Just(32), Just(48), Just(64), Just(96)],
        (1usize..=2, 1usize..=2, 1usize..=2, 0usize..=1),
        (
            prop_oneof![Just(14usize), Just(6)],
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((batch, h, w), cin, cout, (sh, sw, tiles, extra), (tile_pixels, res, relu, seed))| {
                // Strided: the input width whose output is exactly `tiles` whole tiles.
                let w = if [sh, sw] == [1, 1] {
                    w
                } else {
                    (tile_pixels * tiles - 1) * sw + 1 + extra.min(sw - 1)
                };
                let g = geometry(batch, [h, w], cin, cout, [1, 1], [sh, sw], [1, 1], [0; 4]);
                let act = if relu { Epilogue::Relu } else { Epilogue::None };
                problem(g, res, act, seed)
            },
        )
}

impl Problem {
    pub fn input_nhwc(&self) -> Vec<f32> {
        let g = &self.g;
        let mut out = vec![0.0; self.input_nchw.len()];
        for n in 0..g.batch {
            for c in 0..g.cin {
                for y in 0..g.in_h {
                    for x in 0..g.in_w {
                        out[((n * g.in_h + y) * g.in_w + x) * g.cin + c] =
                            self.input_nchw[((n * g.cin + c) * g.in_h + y) * g.in_w + x];
                    }
                }
            }
        }
        out
    }

    pub fn packed_weights(&self) -> Vec<f32> {
        let g = &self.g;
        pack_weights_oihw(&self.weights_oihw, g.cout, g.cin, g.kernel[0], g.kernel[1])
    }

    pub fn padded_bias(&self) -> Vec<f32> {
        let mut b = self.bias.clone();
        b.resize(self.g.cout.div_ceil(16) * 16, 0.0);
        b
    }

    /// Naive NCHW convolution on the OIHW weights, written from the definition, returned
    /// NHWC with, per output, the sum of |terms| that bounds its rounding error.
    pub fn naive_nhwc(&self) -> (Vec<f32>, Vec<f32>) {
        let g = &self.g;
        let [kh_n, kw_n] = g.kernel;
        let len = g.batch * g.out_h * g.out_w * g.cout;
        let (mut out, mut mag) = (vec![0.0f32; len], vec![0.0f32; len]);
        for n in 0..g.batch {
            for co in 0..g.cout {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let (mut acc, mut abs) = (0.0f64, 0.0f64);
                        for ci in 0..g.cin {
                            for ky in 0..kh_n {
                                for kx in 0..kw_n {
                                    let y = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pads[0] as isize;
                                    let x = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pads[1] as isize;
                                    if y < 0 || x < 0 || y >= g.in_h as isize || x >= g.in_w as isize {
                                        continue;
                                    }
                                    let a =
                                        self.input_nchw[((n * g.cin + ci) * g.in_h + y as usize) * g.in_w + x as usize];
                                    let b = self.weights_oihw[((co * g.cin + ci) * kh_n + ky) * kw_n + kx];
                                    acc += a as f64 * b as f64;
                                    abs += (a as f64 * b as f64).abs();
                                }
                            }
                        }
                        let o = ((n * g.out_h + oy) * g.out_w + ox) * g.cout + co;
                        acc += self.bias[co] as f64;
                        abs += (self.bias[co] as f64).abs();
                        if let Some(r) = &self.residual {
                            acc += r[o] as f64;
                            abs += (r[o] as f64).abs();
                        }
                        if self.act == Epilogue::Relu {
                            acc = acc.max(0.0);
                        }
                        out[o] = acc as f32;
                        mag[o] = abs as f32;
                    }
                }
            }
        }
        (out, mag)
    }
}

/// Checks `got` against `want` within 1e-5 of each output's magnitude sum (accumulation
/// orders differ between tiers), reporting the first mismatch.
pub fn assert_close(got: &[f32], want: &[f32], mag: &[f32], what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} outputs, expected {}", got.len(), want.len()));
    }
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = 1e-5 * m + 1e-6;
        let within = (g - w).abs() <= tol; // false for NaN too
        if !within {
            return Err(format!("{what}: output {i}: got {g}, expected {w} (tolerance {tol})"));
        }
    }
    Ok(())
}

/// A `ParallelFor` on scoped threads that records how many tasks it was given.
pub struct Threads {
    pub threads: usize,
    pub tasks_seen: AtomicUsize,
}

impl Threads {
    pub fn new(threads: usize) -> Threads {
        Threads {
            threads,
            tasks_seen: AtomicUsize::new(0),
        }
    }
}

impl ParallelFor for Threads {
    fn threads(&self) -> usize {
        self.threads
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.tasks_seen.fetch_add(tasks, Ordering::Relaxed);
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.threads {
                s.spawn(|| loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= tasks {
                        break;
                    }
                    f(t);
                });
            }
        });
    }
}
