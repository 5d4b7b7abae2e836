//! INT8 convolution on i16 activations: the scalar tier against a naive OIHW oracle, every
//! tier this CPU runs against the scalar tier (bit-identical outputs, i16, u8 and f32
//! outputs and residuals), wrapping sums alike on every tier, the paired weight packing,
//! the i16 requantization and which tier runs.

mod conv_support;
mod qconv_support;

use conv_support::{geometry, Threads};
use proptest::prelude::*;
use qconv_support::{arb_geometry, first_difference, naive_accumulators, supported};
use qp_kernels::cpu::features;
use qp_kernels::parallel::{ParallelFor, Serial};
use qp_kernels::qconv::{
    calls_per_tier, effective_tier_for, max_reduction_i16, pack_weights_for, packed_weight_len, qconv2d_nhwc_tier,
    Int8Tier, QConvGeometry, QOutput, QResidual,
};

#[derive(Clone, Copy, Debug, PartialEq)]
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

const RESIDUAL_SCALE: f32 = 0.002;
const RESIDUAL_ZERO: i16 = 700;
const OUT_SCALE: f32 = 0.004;
/// The 11-bit grid the converter uses.
const OUT_MAX: i16 = 2047;

#[derive(Clone, Debug)]
struct Problem {
    g: QConvGeometry,
    input: Vec<i16>,
    x_zero: i16,
    weights_oihw: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    residual_f32: Vec<f32>,
    residual_u8: Vec<u8>,
    residual_i16: Vec<i16>,
    residual: ResidualKind,
    relu: bool,
    output: OutputKind,
    out_zero: i16,
}

impl Problem {
    /// Random values from `seed`, activations and `x_zero` in `0..=max_input`.
    fn new(g: QConvGeometry, seed: u64, max_input: i16) -> Problem {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let element = |x: u64| (x % (max_input as u64 + 1)) as i16;
        let [kh, kw] = g.kernel;
        Problem {
            input: (0..g.input_len()).map(|_| element(next())).collect(),
            x_zero: element(next()),
            weights_oihw: (0..g.cout * g.cin * kh * kw).map(|_| next() as i8).collect(),
            bias: (0..g.cout).map(|_| (next() % 2_000_001) as i32 - 1_000_000).collect(),
            scale: (0..g.cout).map(|_| (next() % 1000 + 1) as f32 * 1e-7).collect(),
            residual_f32: (0..g.output_len())
                .map(|_| (next() % 4001) as f32 / 1000.0 - 2.0)
                .collect(),
            residual_u8: (0..g.output_len()).map(|_| next() as u8).collect(),
            residual_i16: (0..g.output_len()).map(|_| (next() % 2048) as i16).collect(),
            residual: ResidualKind::None,
            relu: false,
            output: OutputKind::F32,
            out_zero: 0,
            g,
        }
    }

    fn with(mut self, residual: ResidualKind, relu: bool, output: OutputKind, out_zero: i16) -> Problem {
        self.residual = residual;
        self.relu = relu;
        self.output = output;
        self.out_zero = out_zero;
        self
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
                scale: RESIDUAL_SCALE,
                zero: RESIDUAL_ZERO,
            },
        }
    }

    /// Runs `tier`; the output as bit patterns (f32 bits, bytes or u16 words).
    fn run(&self, tier: Int8Tier, par: &dyn ParallelFor) -> Vec<u32> {
        let g = &self.g;
        let w = pack_weights_for::<i16>(&self.weights_oihw, g.cout, g.cin, g.kernel[0], g.kernel[1]);
        let mut out_f32 = vec![f32::NAN; g.output_len()];
        let mut out_u8 = vec![0xa5u8; g.output_len()];
        let mut out_i16 = vec![-0x5a5a_i16; g.output_len()];
        let out = match self.output {
            OutputKind::F32 => QOutput::F32(&mut out_f32),
            OutputKind::U8 => QOutput::U8 {
                data: &mut out_u8,
                scale: OUT_SCALE * 8.0,
                zero: self.out_zero.min(255) as u8,
            },
            OutputKind::I16 => QOutput::I16 {
                data: &mut out_i16,
                scale: OUT_SCALE,
                zero: self.out_zero,
                max: OUT_MAX,
            },
        };
        qconv2d_nhwc_tier(
            tier,
            par,
            g,
            &self.input,
            self.x_zero,
            &w,
            &self.bias,
            &self.scale,
            self.residual(),
            self.relu,
            out,
        );
        match self.output {
            OutputKind::F32 => out_f32.iter().map(|x| x.to_bits()).collect(),
            OutputKind::U8 => out_u8.iter().map(|&b| b as u32).collect(),
            OutputKind::I16 => out_i16.iter().map(|&w| w as u16 as u32).collect(),
        }
    }

    /// Exact accumulators from OIHW weights in i64, padding taps reading `x_zero`.
    fn naive_accumulators(&self) -> Vec<i64> {
        naive_accumulators(&self.g, &self.input, self.x_zero, &self.weights_oihw)
    }

    /// The module's definition evaluated directly on the naive accumulators (f32 and i16
    /// outputs).
    fn naive_output(&self) -> Vec<u32> {
        let cout = self.g.cout;
        self.naive_accumulators()
            .iter()
            .enumerate()
            .map(|(i, &acc)| {
                let co = i % cout;
                let acc = i32::try_from(acc).expect("accumulator fits i32");
                let u = if self.output == OutputKind::I16 {
                    1.0 / OUT_SCALE
                } else {
                    1.0
                };
                let mut y = acc.wrapping_add(self.bias[co]) as f32 * (self.scale[co] * u);
                y += match self.residual {
                    ResidualKind::None => 0.0,
                    ResidualKind::F32 => self.residual_f32[i] * u,
                    ResidualKind::U8 => (self.residual_u8[i] as f32 - 131.0) * (0.02 * u),
                    ResidualKind::I16 => (self.residual_i16[i] as f32 - RESIDUAL_ZERO as f32) * (RESIDUAL_SCALE * u),
                };
                if self.relu {
                    y = y.max(0.0);
                }
                match self.output {
                    OutputKind::I16 => {
                        let z = self.out_zero as f32;
                        (y.clamp(-z, OUT_MAX as f32 - z).round_ties_even() + z) as u32
                    }
                    _ => y.to_bits(),
                }
            })
            .collect()
    }
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

fn check_tier(tier: Int8Tier, par: &dyn ParallelFor, p: &Problem) -> Result<(), String> {
    // The counters are shared with tests running concurrently: they only grow.
    let before = calls_per_tier();
    let ran = effective_tier_for::<i16>(tier);
    let got = p.run(tier, par);
    let index = Int8Tier::ALL.iter().position(|&t| t == ran).unwrap();
    assert!(calls_per_tier()[index] > before[index], "{} did not run", ran.name());
    first_difference(&got, &p.run(Int8Tier::Scalar, &Serial), tier.name()).map_err(|e| format!("{:?}: {e}", p.g))
}

fn resnet_shapes() -> Vec<QConvGeometry> {
    vec![
        geometry(1, [15, 15], 64, 64, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        geometry(1, [9, 9], 128, 128, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
        geometry(2, [9, 9], 64, 256, [1, 1], [1, 1], [1, 1], [0; 4]),
        geometry(1, [7, 7], 1024, 64, [1, 1], [1, 1], [1, 1], [0; 4]),
        geometry(1, [4, 4], 512, 40, [3, 3], [1, 1], [1, 1], [1; 4]),
        geometry(1, [5, 6], 333, 37, [3, 3], [1, 2], [1, 1], [1, 0, 2, 1]),
    ]
}

macro_rules! tier_tests {
    ($($name:ident: $tier:expr;)*) => {$(
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(96))]
                #[test]
                fn matches_scalar_on_random_geometry(
                    g in arb_geometry(),
                    (residual, output) in (residual_kind(), output_kind()),
                    (relu, seed, max_input) in (any::<bool>(), any::<u64>(), prop_oneof![Just(2047i16), Just(i16::MAX)]),
                    out_zero in prop_oneof![Just(0i16), Just(170)],
                ) {
                    if supported($tier) {
                        let p = Problem::new(g, seed, max_input).with(residual, relu, output, out_zero);
                        check_tier($tier, &Serial, &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn threaded_split_matches_scalar(
                    g in arb_geometry(),
                    threads in 2usize..=5,
                    seed in any::<u64>(),
                ) {
                    if supported($tier) {
                        let p = Problem::new(g, seed, 2047).with(ResidualKind::I16, true, OutputKind::I16, 0);
                        check_tier($tier, &Threads::new(threads), &p).map_err(TestCaseError::fail)?;
                    }
                }
            }

            #[test]
            fn resnet50_layer_shapes() {
                if !supported($tier) {
                    return;
                }
                for (i, g) in resnet_shapes().into_iter().enumerate() {
                    for (residual, output) in [
                        (ResidualKind::I16, OutputKind::I16),
                        (ResidualKind::None, OutputKind::I16),
                        (ResidualKind::F32, OutputKind::F32),
                    ] {
                        let p = Problem::new(g, i as u64, 2047).with(residual, i % 2 == 0, output, 0);
                        check_tier($tier, &Threads::new(2), &p).unwrap_or_else(|e| panic!("{e}"));
                    }
                }
            }

            #[test]
            fn full_range_products_wrap_as_the_scalar_tier() {
                if !supported($tier) {
                    return;
                }
                // -32768 * -128 on every tap, 3 x 3 x 600 taps: the exact sum passes i32,
                // and every tier wraps it the same way.
                let g = geometry(1, [5, 5], 600, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
                let mut p = Problem::new(g, 3, i16::MAX).with(ResidualKind::None, false, OutputKind::F32, 0);
                p.input.fill(i16::MIN);
                p.x_zero = i16::MIN;
                p.weights_oihw.fill(-128);
                check_tier($tier, &Serial, &p).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    )*};
}

tier_tests! {
    avx2: Int8Tier::Avx2;
    avx_vnni: Int8Tier::AvxVnni;
    avx512_vnni_256: Int8Tier::Avx512Vnni256;
    avx512_vnni: Int8Tier::Avx512Vnni;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn scalar_matches_naive_oihw_definition(
        g in arb_geometry(),
        residual in residual_kind(),
        (relu, i16_output, seed) in (any::<bool>(), any::<bool>(), any::<u64>()),
        out_zero in prop_oneof![Just(0i16), Just(170)],
    ) {
        let residual = if residual == ResidualKind::U8 { ResidualKind::I16 } else { residual };
        let output = if i16_output { OutputKind::I16 } else { OutputKind::F32 };
        let p = Problem::new(g, seed, 2047).with(residual, relu, output, out_zero);
        first_difference(&p.run(Int8Tier::Scalar, &Serial), &p.naive_output(), "scalar")
            .map_err(|e| TestCaseError::fail(format!("{g:?}: {e}")))?;
    }

    #[test]
    fn packing_pairs_input_channels_0_1_and_2_3(
        (cout, cin, kh, kw) in (1usize..=40, 1usize..=11, 1usize..=4, 1usize..=4),
        seed in any::<u64>(),
    ) {
        let g = geometry(1, [kh, kw], cin, cout, [kh, kw], [1, 1], [1, 1], [0; 4]);
        let w = Problem::new(g, seed, 2047).weights_oihw;
        let packed = pack_weights_for::<i16>(&w, cout, cin, kh, kw);
        prop_assert_eq!(packed.len(), packed_weight_len(&g));
        let groups = cin.div_ceil(4);
        let mut expected = vec![0i8; packed.len()];
        for co in 0..cout {
            for ci in 0..cin {
                for y in 0..kh {
                    for x in 0..kw {
                        // [panel][kh][kw][group][lane][4], channel k of a group at byte
                        // [0, 2, 1, 3][k].
                        let at = (((((co / 16) * kh + y) * kw + x) * groups + ci / 4) * 16
                            + co % 16) * 4 + [0, 2, 1, 3][ci % 4];
                        expected[at] = w[((co * cin + ci) * kh + y) * kw + x];
                    }
                }
            }
        }
        prop_assert_eq!(packed, expected);
    }
}

#[test]
fn the_longest_11_bit_reduction_is_exact() {
    // 2047 * 127 on every tap of the longest reduction an 11-bit grid allows: the sum
    // just fits i32, and every tier gets it exactly (the bias cancels it).
    let reduction = max_reduction_i16(2047);
    assert_eq!(reduction, 8196);
    let cin = reduction / 9 / 4 * 4;
    let g = geometry(1, [3, 3], cin, 3, [3, 3], [1, 1], [1, 1], [1; 4]);
    for tier in Int8Tier::ALL.into_iter().filter(|t| t.supported(features())) {
        for w in [-128i8, 127] {
            let mut p = Problem::new(g, 5, 2047).with(ResidualKind::None, false, OutputKind::F32, 0);
            p.input.fill(2047);
            p.x_zero = 2047;
            p.weights_oihw.fill(w);
            let total = 2047 * w as i32 * (cin * 9) as i32;
            p.bias.fill(-total);
            p.scale.fill(1.0);
            let zeros = vec![0.0f32.to_bits(); g.output_len()];
            first_difference(&p.run(tier, &Serial), &zeros, tier.name()).unwrap_or_else(|e| panic!("weights {w}: {e}"));
        }
    }
}

#[test]
fn i16_output_rounds_half_to_even_and_clamps_to_its_grid() {
    // 1x1, one channel, scale 1, bias -1000: the real value is x - 1000.
    let g = geometry(1, [1, 6], 1, 1, [1, 1], [1, 1], [1, 1], [0; 4]);
    let w = pack_weights_for::<i16>(&[1], 1, 1, 1, 1);
    let cases = [
        // (x - 1000) / 2 + 1000, on [0, 2047]: -500, -499.5 -> -500, 0, 0.5 -> 0, 1.5 -> 2.
        (
            [0i16, 1, 1000, 1001, 1003, 4000],
            2.0,
            1000,
            [500i16, 500, 1000, 1000, 1002, 2047],
        ),
        // (x - 1000) / 0.25 clamped to [-200, 1847], + 200.
        ([0, 949, 950, 1000, 1461, 1462], 0.25, 200, [0, 0, 0, 200, 2044, 2047]),
    ];
    for tier in Int8Tier::ALL.into_iter().filter(|t| t.supported(features())) {
        for (input, scale, zero, expected) in cases {
            let mut out = [0i16; 6];
            qconv2d_nhwc_tier(
                tier,
                &Serial,
                &g,
                &input,
                0,
                &w,
                &[-1000],
                &[1.0],
                QResidual::None,
                false,
                QOutput::I16 {
                    data: &mut out,
                    scale,
                    zero,
                    max: OUT_MAX,
                },
            );
            assert_eq!(out, expected, "{} scale {scale}", tier.name());
        }
    }
}

#[test]
fn i16_activations_never_run_on_amx_or_the_7_bit_tier() {
    for t in Int8Tier::ALL {
        let ran = effective_tier_for::<i16>(t);
        assert!(ran.supported(features()), "{} -> {}", t.name(), ran.name());
        assert!(
            ran != Int8Tier::Amx && ran != Int8Tier::Avx2Act7,
            "{} -> {}",
            t.name(),
            ran.name()
        );
    }
    assert_eq!(effective_tier_for::<u8>(Int8Tier::Scalar), Int8Tier::Scalar);
}

#[test]
#[should_panic(expected = "zero point 3000 outside [0, 2047]")]
fn an_i16_zero_point_off_its_grid_is_refused() {
    let g = geometry(1, [1, 1], 1, 1, [1, 1], [1, 1], [1, 1], [0; 4]);
    let w = pack_weights_for::<i16>(&[1], 1, 1, 1, 1);
    let mut out = [0i16; 1];
    qconv2d_nhwc_tier(
        Int8Tier::Scalar,
        &Serial,
        &g,
        &[5i16],
        0,
        &w,
        &[0],
        &[1.0],
        QResidual::None,
        false,
        QOutput::I16 {
            data: &mut out,
            scale: 1.0,
            zero: 3000,
            max: OUT_MAX,
        },
    );
}
