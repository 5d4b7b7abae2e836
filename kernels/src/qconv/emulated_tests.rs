//! The VNNI tilings (zmm: 14 pixels x two 16-channel panels with a one-panel tail; ymm: 6
//! pixels x one panel; on i16 activations 12 and 4 pixels), ragged pixel tiles and the
//! whole epilogue, run with a portable vector of `vpdpbusd` / `vpdpwssd` semantics, so
//! their indexing is tested on CPUs without AVX512-VNNI or AVX-VNNI. Only the intrinsic
//! wrappers of `x86::Vnni512` and `x86::Vnni256` are left to the tier tests on such
//! hardware.

use proptest::prelude::*;

use super::reference::{max_f32, min_f32, round_to_i32};
use super::tile::{remainder_tile, run_range, QDot, QVector};
use super::*;
use crate::parallel::{Serial, ThreeThreads};

/// N lanes in plain Rust: `dot` multiplies each input by the weight byte its element
/// type's `GROUP_ORDER` puts it at (u8: `vpdpbusd`; i16: the pairs of `vpdpwssd`),
/// wrapping i32; the f32 operations are those of `reference`.
struct Lanes<const N: usize>;

impl<const N: usize, E: QElement> QDot<E> for Lanes<N> {
    type W = [[i8; 4]; N];
    type X = [E; 4];
    unsafe fn load_weights(p: *const i8) -> [[i8; 4]; N] {
        // safety: 4 * N readable bytes (trait contract).
        let w = unsafe { std::slice::from_raw_parts(p, 4 * N) };
        std::array::from_fn(|l| std::array::from_fn(|k| w[4 * l + k]))
    }
    unsafe fn load_quad(p: *const E) -> [E; 4] {
        // safety: 4 readable elements (trait contract).
        unsafe { std::ptr::read_unaligned(p.cast::<[E; 4]>()) }
    }
    unsafe fn dot(acc: [i32; N], x: [E; 4], w: [[i8; 4]; N]) -> [i32; N] {
        std::array::from_fn(|l| {
            (0..4).fold(acc[l], |a, k| {
                a.wrapping_add(x[k].to_i32() * w[l][E::GROUP_ORDER[k]] as i32)
            })
        })
    }
}

impl<const N: usize> QVector for Lanes<N> {
    type I = [i32; N];
    type F = [f32; N];
    const LANES: usize = N;
    unsafe fn zero() -> [i32; N] {
        [0; N]
    }
    unsafe fn load_i32(p: *const i32, n: usize) -> [i32; N] {
        let mut v = [0; N];
        // safety: n readable lanes (trait contract).
        v[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        v
    }
    unsafe fn add_i32(a: [i32; N], b: [i32; N]) -> [i32; N] {
        std::array::from_fn(|l| a[l].wrapping_add(b[l]))
    }
    unsafe fn to_f32(a: [i32; N]) -> [f32; N] {
        a.map(|x| x as f32)
    }
    unsafe fn splat(x: f32) -> [f32; N] {
        [x; N]
    }
    unsafe fn load_f32(p: *const f32, n: usize) -> [f32; N] {
        let mut v = [0.0; N];
        // safety: n readable lanes (trait contract).
        v[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        v
    }
    unsafe fn load_u8(p: *const u8, n: usize) -> [f32; N] {
        let mut v = [0.0; N];
        // safety: n readable lanes (trait contract).
        let bytes = unsafe { std::slice::from_raw_parts(p, n) };
        for (d, &b) in v.iter_mut().zip(bytes) {
            *d = b as f32;
        }
        v
    }
    unsafe fn load_i16(p: *const i16, n: usize) -> [f32; N] {
        let mut v = [0.0; N];
        // safety: n readable lanes (trait contract).
        let words = unsafe { std::slice::from_raw_parts(p, n) };
        for (d, &w) in v.iter_mut().zip(words) {
            *d = w as f32;
        }
        v
    }
    unsafe fn store_i16(p: *mut i16, a: [i32; N], n: usize) {
        // safety: n writable lanes (trait contract).
        let out = unsafe { std::slice::from_raw_parts_mut(p, n) };
        for (d, &x) in out.iter_mut().zip(&a) {
            *d = x as i16;
        }
    }
    unsafe fn add(a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|l| a[l] + b[l])
    }
    unsafe fn sub(a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|l| a[l] - b[l])
    }
    unsafe fn mul(a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|l| a[l] * b[l])
    }
    unsafe fn max(a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|l| max_f32(a[l], b[l]))
    }
    unsafe fn min(a: [f32; N], b: [f32; N]) -> [f32; N] {
        std::array::from_fn(|l| min_f32(a[l], b[l]))
    }
    unsafe fn to_i32_round(a: [f32; N]) -> [i32; N] {
        a.map(round_to_i32)
    }
    unsafe fn splat_i32(x: i32) -> [i32; N] {
        [x; N]
    }
    unsafe fn max_i32(a: [i32; N], b: [i32; N]) -> [i32; N] {
        std::array::from_fn(|l| a[l].max(b[l]))
    }
    unsafe fn store_f32(p: *mut f32, a: [f32; N], n: usize) {
        // safety: n writable lanes (trait contract).
        unsafe { std::slice::from_raw_parts_mut(p, n) }.copy_from_slice(&a[..n]);
    }
    unsafe fn store_u8(p: *mut u8, a: [i32; N], n: usize) {
        // safety: n writable lanes (trait contract).
        let out = unsafe { std::slice::from_raw_parts_mut(p, n) };
        for (d, &x) in out.iter_mut().zip(&a) {
            *d = x as u8;
        }
    }
}

/// Which tiling to emulate.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `run_avx512_vnni`: zmm, 14 pixels x 32 channels, one-panel tail (12 pixels on
    /// i16).
    Zmm,
    /// `run_avx512_vnni_256` and `run_avx_vnni`: ymm, 6 pixels x 16 channels (4 on i16).
    Ymm,
}

#[derive(Clone, Copy, Debug)]
enum ResidualKind {
    None,
    F32,
    U8,
    I16,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum OutputKind {
    F32,
    U8,
    I16,
}

/// An activation type whose tilings are emulated here.
trait Element: QElement {
    /// A random activation from random bits.
    fn from_bits(bits: u64) -> Self;
    /// Runs the emulated tiling `shape` on `job`.
    fn run_shape(shape: Shape, par: &dyn ParallelFor, job: &Job<Self>);
}

impl Element for u8 {
    fn from_bits(bits: u64) -> u8 {
        bits as u8
    }
    fn run_shape(shape: Shape, par: &dyn ParallelFor, job: &Job<u8>) {
        match shape {
            Shape::Zmm => run_tasks(par, job, x86::Vnni512Tiles, |px, co| {
                let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| {
                    remainder_tile!(Lanes<16>, 2, 1, job, q0, mr, first_panel, one_panel,
                        [1 2 3 4 5 6 7 8 9 10 11 12 13])
                };
                // safety: `Lanes` needs no CPU feature; `job` passed `check_args`; the
                // ranges come from `run_tasks`.
                unsafe { run_range::<Lanes<16>, u8, { x86::VNNI512_MR }, 2, 1>(job, px, co, remainder) }
            }),
            Shape::Ymm => run_tasks(par, job, x86::Vnni256Tiles, |px, co| {
                let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| {
                    remainder_tile!(Lanes<8>, 2, 2, job, q0, mr, first_panel, one_panel,
                        [1 2 3 4 5])
                };
                // safety: as above.
                unsafe { run_range::<Lanes<8>, u8, { x86::VNNI256_MR }, 2, 2>(job, px, co, remainder) }
            }),
        }
    }
}

impl Element for i16 {
    /// Mostly on an 11-bit grid, as the converter's, sometimes anywhere in i16.
    fn from_bits(bits: u64) -> i16 {
        if bits.is_multiple_of(8) {
            (bits >> 8) as i16
        } else {
            ((bits >> 8) % 2048) as i16
        }
    }
    fn run_shape(shape: Shape, par: &dyn ParallelFor, job: &Job<i16>) {
        match shape {
            Shape::Zmm => run_tasks(par, job, x86::Vnni512I16Tiles, |px, co| {
                let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| {
                    remainder_tile!(Lanes<16>, 2, 1, job, q0, mr, first_panel, one_panel,
                        [1 2 3 4 5 6 7 8 9 10 11])
                };
                // safety: as for u8.
                unsafe { run_range::<Lanes<16>, i16, { x86::VNNI512_I16_MR }, 2, 1>(job, px, co, remainder) }
            }),
            Shape::Ymm => run_tasks(par, job, x86::Vnni256I16Tiles, |px, co| {
                let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Lanes<8>, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3]);
                // safety: as for u8.
                unsafe { run_range::<Lanes<8>, i16, { x86::VNNI256_I16_MR }, 2, 2>(job, px, co, remainder) }
            }),
        }
    }
}

#[derive(Debug)]
struct Problem<E> {
    g: QConvGeometry,
    input: Vec<E>,
    x_zero: E,
    weights: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    residual_f32: Vec<f32>,
    residual_u8: Vec<u8>,
    residual_i16: Vec<i16>,
    residual: ResidualKind,
    relu: bool,
    output: OutputKind,
}

impl<E: Element> Problem<E> {
    fn new(g: QConvGeometry, residual: ResidualKind, relu: bool, output: OutputKind, seed: u64) -> Self {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let [kh, kw] = g.kernel;
        let oihw: Vec<i8> = (0..g.cout * g.cin * kh * kw).map(|_| next() as i8).collect();
        Problem {
            input: (0..g.input_len()).map(|_| E::from_bits(next())).collect(),
            x_zero: E::from_bits(next()),
            weights: pack_weights_for::<E>(&oihw, g.cout, g.cin, kh, kw),
            bias: (0..g.cout).map(|_| (next() % 20001) as i32 - 10000).collect(),
            scale: (0..g.cout).map(|_| (next() % 1000 + 1) as f32 * 1e-6).collect(),
            residual_f32: (0..g.output_len())
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect(),
            residual_u8: (0..g.output_len()).map(|_| next() as u8).collect(),
            residual_i16: (0..g.output_len()).map(|_| (next() % 2048) as i16).collect(),
            g,
            residual,
            relu,
            output,
        }
    }

    fn residual(&self) -> QResidual<'_> {
        match self.residual {
            ResidualKind::None => QResidual::None,
            ResidualKind::F32 => QResidual::F32(&self.residual_f32),
            ResidualKind::U8 => QResidual::U8 {
                data: &self.residual_u8,
                scale: 0.02,
                zero: 131,
            },
            ResidualKind::I16 => QResidual::I16 {
                data: &self.residual_i16,
                scale: 0.002,
                zero: 700,
            },
        }
    }

    /// Runs `f` on the job of this problem; returns the output as bit patterns.
    fn run(&self, f: impl FnOnce(&Job<E>)) -> Vec<u32> {
        let mut out_f32 = vec![f32::NAN; self.g.output_len()];
        let mut out_u8 = vec![0xa5u8; self.g.output_len()];
        let mut out_i16 = vec![-0x5a5a_i16; self.g.output_len()];
        let mut out = match self.output {
            OutputKind::F32 => QOutput::F32(&mut out_f32),
            OutputKind::U8 => QOutput::U8 {
                data: &mut out_u8,
                scale: 0.05,
                zero: 17,
            },
            OutputKind::I16 => QOutput::I16 {
                data: &mut out_i16,
                scale: 0.005,
                zero: 170,
                max: 2047,
            },
        };
        let g = &self.g;
        check_args(
            g,
            &self.input,
            &self.weights,
            &self.bias,
            &self.scale,
            self.residual(),
            &out,
        );
        with_job(
            g,
            &self.input,
            self.x_zero,
            &self.weights,
            &self.bias,
            &self.scale,
            self.residual(),
            self.relu,
            &mut out,
            f,
        );
        match self.output {
            OutputKind::F32 => out_f32.iter().map(|x| x.to_bits()).collect(),
            OutputKind::U8 => out_u8.iter().map(|&b| b as u32).collect(),
            OutputKind::I16 => out_i16.iter().map(|&w| w as u16 as u32).collect(),
        }
    }

    fn check(&self, shape: Shape, par: &dyn ParallelFor) -> Result<(), String> {
        let want = self.run(|job| {
            run_tasks(par, job, reference::ReferenceTiles, |px, _| {
                reference::conv_pixels(job, px)
            })
        });
        let got = self.run(|job| E::run_shape(shape, par, job));
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(i) => Err(format!(
                "{shape:?} {:?}: output {i}: got {:#x}, expected {:#x}",
                self.g, got[i], want[i]
            )),
        }
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
) -> QConvGeometry {
    QConvGeometry::with_implied_output(batch, hw, cin, cout, kernel, stride, dilation, pads).unwrap()
}

fn residual_kind() -> impl Strategy<Value = ResidualKind> {
    prop_oneof![
        Just(ResidualKind::None),
        Just(ResidualKind::F32),
        Just(ResidualKind::U8),
        Just(ResidualKind::I16)
    ]
}

fn output_kind() -> impl Strategy<Value = OutputKind> {
    prop_oneof![Just(OutputKind::F32), Just(OutputKind::U8), Just(OutputKind::I16)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn vnni_tilings_match_reference(
        (batch, h, w, cin, cout) in (1usize..=4, 1usize..=13, 1usize..=13, 1usize..=70, 1usize..=70),
        (kh, kw, sh, sw, dh, dw) in (1usize..=7, 1usize..=7, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        pads in [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
        (residual, output) in (residual_kind(), output_kind()),
        (relu, i16_input, threaded, zmm, seed) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        let h = h.max((dh * (kh - 1) + 1).saturating_sub(pads[0] + pads[2]));
        let w = w.max((dw * (kw - 1) + 1).saturating_sub(pads[1] + pads[3]));
        let g = geometry(batch, [h, w], cin, cout, [kh, kw], [sh, sw], [dh, dw], pads);
        let par: &dyn ParallelFor = if threaded { &ThreeThreads } else { &Serial };
        let shape = if zmm { Shape::Zmm } else { Shape::Ymm };
        let checked = if i16_input {
            Problem::<i16>::new(g, residual, relu, output, seed).check(shape, par)
        } else {
            Problem::<u8>::new(g, residual, relu, output, seed).check(shape, par)
        };
        checked.map_err(TestCaseError::fail)?;
    }
}

#[test]
fn vnni_tilings_on_row_ends_and_resnet_shapes() {
    let mut shapes = vec![
        geometry(2, [30, 30], 3, 64, [7, 7], [2, 2], [1, 1], [3; 4]),
        geometry(1, [7, 7], 96, 48, [3, 3], [1, 1], [1, 1], [1; 4]),
        geometry(2, [9, 9], 64, 80, [1, 1], [2, 2], [1, 1], [0; 4]),
        geometry(1, [5, 6], 333, 37, [3, 3], [1, 2], [1, 1], [1, 0, 2, 1]),
    ];
    for (w, pads) in [(31, [0, 0, 0, 2]), (30, [0, 2, 0, 0]), (29, [2, 0, 0, 1])] {
        for kw in 1..=4 {
            shapes.push(geometry(1, [3, w], 8, 17, [2, kw], [1, 1], [1, 1], pads));
        }
    }
    for (i, g) in shapes.into_iter().enumerate() {
        for shape in [Shape::Zmm, Shape::Ymm] {
            let output = if i % 2 == 0 { OutputKind::U8 } else { OutputKind::F32 };
            Problem::<u8>::new(g, ResidualKind::U8, true, output, i as u64)
                .check(shape, &Serial)
                .unwrap();
            let output = if i % 2 == 0 { OutputKind::I16 } else { OutputKind::F32 };
            Problem::<i16>::new(g, ResidualKind::I16, true, output, i as u64)
                .check(shape, &Serial)
                .unwrap();
        }
    }
}
