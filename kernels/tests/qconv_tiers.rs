//! INT8 convolution: the scalar tier against a naive OIHW oracle, every tier this CPU runs
//! against the scalar tier (bit-identical outputs), saturation-prone extremes, packing,
//! tier choice and argument checks.

mod conv_support;
mod qconv_support;

use conv_support::{geometry, Threads};
use proptest::prelude::*;
use qconv_support::{arb_geometry, first_difference, naive_accumulators, supported};
use qp_kernels::cpu::{features, Features, Isa};
use qp_kernels::fpstatus;
use qp_kernels::parallel::{ParallelFor, Serial};
use qp_kernels::qconv::{
    calls_per_tier, effective_tier, int8_tier, int8_tier_capped, pack_weights_s8, packed_weight_len, qconv2d_nhwc,
    qconv2d_nhwc_tier, Int8Tier, QConvGeometry, QOutput, QResidual,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum ResidualKind {
    None,
    F32,
    U8,
}

const RESIDUAL_SCALE: f32 = 0.02;
const RESIDUAL_ZERO: u8 = 131;
const OUT_SCALE: f32 = 0.05;
const OUT_ZERO: u8 = 17;
/// Both output zero points the kernels tell apart: 0 (every ReLU output's, which
/// takes the kernels' shorter requantization) and another.
const OUT_ZEROS: [u8; 2] = [0, OUT_ZERO];

#[derive(Clone, Debug)]
struct Problem {
    g: QConvGeometry,
    input: Vec<u8>,
    x_zero: u8,
    weights_oihw: Vec<i8>,
    bias: Vec<i32>,
    scale: Vec<f32>,
    residual_f32: Vec<f32>,
    residual_u8: Vec<u8>,
    residual: ResidualKind,
    relu: bool,
    u8_output: bool,
    out_zero: u8,
}

impl Problem {
    /// Random values from `seed`; `max_input` bounds the activations and `x_zero`.
    fn new(g: QConvGeometry, seed: u64, max_input: u8) -> Problem {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let byte = |x: u64| (x % (max_input as u64 + 1)) as u8;
        let [kh, kw] = g.kernel;
        Problem {
            input: (0..g.input_len()).map(|_| byte(next())).collect(),
            x_zero: byte(next()),
            weights_oihw: (0..g.cout * g.cin * kh * kw).map(|_| next() as i8).collect(),
            bias: (0..g.cout).map(|_| (next() % 200_001) as i32 - 100_000).collect(),
            scale: (0..g.cout).map(|_| (next() % 1000 + 1) as f32 * 1e-5).collect(),
            residual_f32: (0..g.output_len())
                .map(|_| (next() % 4001) as f32 / 1000.0 - 2.0)
                .collect(),
            residual_u8: (0..g.output_len()).map(|_| next() as u8).collect(),
            residual: ResidualKind::None,
            relu: false,
            u8_output: false,
            out_zero: OUT_ZERO,
            g,
        }
    }

    fn with(mut self, residual: ResidualKind, relu: bool, u8_output: bool) -> Problem {
        self.residual = residual;
        self.relu = relu;
        self.u8_output = u8_output;
        self
    }

    fn with_out_zero(mut self, zero: u8) -> Problem {
        self.out_zero = zero;
        self
    }

    fn residual(&self) -> QResidual<'_> {
        match self.residual {
            ResidualKind::None => QResidual::None,
            ResidualKind::F32 => QResidual::F32(&self.residual_f32),
            ResidualKind::U8 => QResidual::U8 {
                data: &self.residual_u8,
                scale: RESIDUAL_SCALE,
                zero: RESIDUAL_ZERO,
            },
        }
    }

    /// Runs `tier`; the output as bit patterns (f32 bits or bytes).
    fn run(&self, tier: Int8Tier, par: &dyn ParallelFor) -> Vec<u32> {
        let g = &self.g;
        let w = pack_weights_s8(&self.weights_oihw, g.cout, g.cin, g.kernel[0], g.kernel[1]);
        let mut out_f32 = vec![f32::NAN; g.output_len()];
        let mut out_u8 = vec![0xa5u8; g.output_len()];
        let out = if self.u8_output {
            QOutput::U8 {
                data: &mut out_u8,
                scale: OUT_SCALE,
                zero: self.out_zero,
            }
        } else {
            QOutput::F32(&mut out_f32)
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
        if self.u8_output {
            out_u8.iter().map(|&b| b as u32).collect()
        } else {
            out_f32.iter().map(|x| x.to_bits()).collect()
        }
    }

    /// Exact accumulators from OIHW weights in i64, padding taps reading `x_zero`.
    fn naive_accumulators(&self) -> Vec<i64> {
        naive_accumulators(&self.g, &self.input, self.x_zero, &self.weights_oihw)
    }

    /// The module's definition evaluated directly on the naive accumulators.
    fn naive_output(&self) -> Vec<u32> {
        let cout = self.g.cout;
        self.naive_accumulators()
            .iter()
            .enumerate()
            .map(|(i, &acc)| {
                let co = i % cout;
                let acc = i32::try_from(acc).expect("accumulator fits i32");
                // Values in units of the output step: the output scale folded into the
                // others, each product rounded once.
                let u = if self.u8_output { 1.0 / OUT_SCALE } else { 1.0 };
                let mut y = acc.wrapping_add(self.bias[co]) as f32 * (self.scale[co] * u);
                y += match self.residual {
                    ResidualKind::None => 0.0,
                    ResidualKind::F32 => self.residual_f32[i] * u,
                    ResidualKind::U8 => (self.residual_u8[i] as f32 - RESIDUAL_ZERO as f32) * (RESIDUAL_SCALE * u),
                };
                if self.relu {
                    y = y.max(0.0);
                }
                if self.u8_output {
                    let z = self.out_zero as f32;
                    (y.clamp(-z, 255.0 - z).round_ties_even() + z) as u32
                } else {
                    y.to_bits()
                }
            })
            .collect()
    }
}

/// The largest activation a tier is exact for.
fn max_input(tier: Int8Tier) -> u8 {
    if tier == Int8Tier::Avx2Act7 {
        127
    } else {
        255
    }
}

fn residual_kind() -> impl Strategy<Value = ResidualKind> {
    prop_oneof![
        Just(ResidualKind::None),
        Just(ResidualKind::F32),
        Just(ResidualKind::U8)
    ]
}

/// `arb_geometry` with `cin` a multiple of 64 (what the AMX kernel takes) in most cases,
/// and often rows 14 to 40 wide at stride 1 (where it reads a padded input instead of
/// gathering windows).
fn arb_amx_geometry() -> impl Strategy<Value = QConvGeometry> {
    (arb_geometry(), 0usize..=4, prop::option::of(14usize..=40)).prop_map(|(g, k, wide)| {
        let cin = if k == 0 { g.cin } else { 64 * k.min(3) };
        let (in_w, stride) = match wide {
            Some(w) => (w + g.dilation[1] * (g.kernel[1] - 1), [1, 1]),
            None => (g.in_w, g.stride),
        };
        geometry(
            g.batch,
            [g.in_h, in_w],
            cin,
            g.cout,
            g.kernel,
            stride,
            g.dilation,
            g.pads,
        )
    })
}

fn check_tier(tier: Int8Tier, par: &dyn ParallelFor, p: &Problem) -> Result<(), String> {
    // The counters are shared with tests running concurrently: they only grow.
    let before = calls_per_tier();
    assert_eq!(effective_tier(tier), tier, "{} would be lowered", tier.name());
    let got = p.run(tier, par);
    // The AMX kernel takes layers whose `cin` is a multiple of 64, VNNI the others.
    let ran = match tier {
        Int8Tier::Amx if !p.g.cin.is_multiple_of(64) => Int8Tier::Avx512Vnni,
        t => t,
    };
    let index = Int8Tier::ALL.iter().position(|&t| t == ran).unwrap();
    assert!(calls_per_tier()[index] > before[index], "{} did not run", ran.name());
    first_difference(&got, &p.run(Int8Tier::Scalar, &Serial), tier.name()).map_err(|e| format!("{:?}: {e}", p.g))
}

fn resnet_shapes() -> Vec<QConvGeometry> {
    vec![
        geometry(1, [30, 30], 3, 64, [7, 7], [2, 2], [1, 1], [3, 3, 3, 3]),
        geometry(1, [15, 15], 64, 64, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        geometry(1, [9, 9], 128, 128, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
        geometry(2, [9, 9], 64, 256, [1, 1], [1, 1], [1, 1], [0; 4]),
        geometry(1, [7, 7], 1024, 64, [1, 1], [1, 1], [1, 1], [0; 4]),
        geometry(1, [5, 6], 333, 37, [3, 3], [1, 2], [1, 1], [1, 0, 2, 1]),
    ]
}

macro_rules! tier_tests {
    ($($name:ident: $tier:expr, $geometry:expr;)*) => {$(
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(96))]
                #[test]
                fn matches_scalar_on_random_geometry(
                    g in $geometry,
                    residual in residual_kind(),
                    (relu, u8_output, seed) in (any::<bool>(), any::<bool>(), any::<u64>()),
                    out_zero in proptest::sample::select(&OUT_ZEROS[..]),
                ) {
                    if supported($tier) {
                        let p = Problem::new(g, seed, max_input($tier))
                            .with(residual, relu, u8_output)
                            .with_out_zero(out_zero);
                        check_tier($tier, &Serial, &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn threaded_split_matches_scalar(
                    g in $geometry,
                    threads in 2usize..=5,
                    seed in any::<u64>(),
                    out_zero in proptest::sample::select(&OUT_ZEROS[..]),
                ) {
                    if supported($tier) {
                        let p = Problem::new(g, seed, max_input($tier))
                            .with(ResidualKind::U8, true, true)
                            .with_out_zero(out_zero);
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
                    for (residual, u8_output) in [(ResidualKind::F32, false), (ResidualKind::U8, true)] {
                        let p = Problem::new(g, i as u64, max_input($tier))
                            .with(residual, i % 2 == 0, u8_output)
                            .with_out_zero(OUT_ZEROS[i / 2 % 2]);
                        check_tier($tier, &Threads::new(2), &p).unwrap_or_else(|e| panic!("{e}"));
                    }
                }
            }

            #[test]
            fn non_finite_and_huge_values_requantize_as_the_scalar_tier() {
                if !supported($tier) {
                    return;
                }
                // A residual this large swamps the convolution's value: u8 outputs clamp
                // to 255 for +inf and 1e30, to 0 for -inf, -1e30 and (without ReLU) NaN.
                let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30];
                let g = geometry(1, [5, 7], 20, 37, [1, 1], [1, 1], [1, 1], [0; 4]);
                for (relu, out_zero) in [false, true].into_iter().flat_map(|r| OUT_ZEROS.map(|z| (r, z))) {
                    let mut p = Problem::new(g, 11, max_input($tier))
                        .with(ResidualKind::F32, relu, true)
                        .with_out_zero(out_zero);
                    for (i, r) in p.residual_f32.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
                        *r = specials[i / 3 % specials.len()];
                    }
                    check_tier($tier, &Serial, &p).unwrap_or_else(|e| panic!("relu {relu}, zero {out_zero}: {e}"));
                    let got = p.run($tier, &Serial);
                    for (i, &r) in p.residual_f32.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
                        let want = match (r.is_nan(), relu) {
                            (true, true) => out_zero as u32,
                            (true, false) => 0,
                            _ if r > 0.0 => 255,
                            _ if relu => out_zero as u32,
                            _ => 0,
                        };
                        assert_eq!(got[i], want, "relu {relu}, zero {out_zero}, residual {r} at {i}");
                    }
                }
            }

            #[test]
            fn huge_finite_values_raise_no_floating_point_flag() {
                if !supported($tier) {
                    return;
                }
                // The executors refuse a run that raised an overflow or invalid flag, so
                // requantizing a finite value far outside i32 (clamped to 0 or 255) must
                // raise none, on every tier alike.
                let g = geometry(1, [5, 7], 20, 37, [1, 1], [1, 1], [1, 1], [0; 4]);
                for (relu, out_zero) in [false, true].into_iter().flat_map(|r| OUT_ZEROS.map(|z| (r, z))) {
                    let mut p = Problem::new(g, 13, max_input($tier))
                        .with(ResidualKind::F32, relu, true)
                        .with_out_zero(out_zero);
                    for (i, r) in p.residual_f32.iter_mut().enumerate() {
                        *r = if i % 2 == 0 { -1e30 } else { 1e30 };
                    }
                    fpstatus::take();
                    let got = p.run($tier, &Serial);
                    let raised = fpstatus::take();
                    assert!(raised.is_empty(), "relu {relu}, zero {out_zero}: {}", raised.describe());
                    for (i, &q) in got.iter().enumerate() {
                        let want = match (i % 2 == 0, relu) {
                            (false, _) => 255,
                            (true, true) => out_zero as u32,
                            (true, false) => 0,
                        };
                        assert_eq!(q, want, "relu {relu}, zero {out_zero} at {i}");
                    }
                }
            }

            #[test]
            fn extreme_values_do_not_saturate() {
                if !supported($tier) {
                    return;
                }
                let top = max_input($tier);
                for (cin, kernel, pads) in [(64, 3, 1), (13, 7, 3), (256, 1, 0)] {
                    let g = geometry(1, [9, 9], cin, 20, [kernel; 2], [1, 1], [1, 1], [pads; 4]);
                    for w in [-128i8, 127] {
                        let mut p = Problem::new(g, 5, top);
                        p.input.fill(top);
                        p.x_zero = top;
                        p.weights_oihw.fill(w);
                        // Every tap sees the same product, padding included: the bias
                        // cancels the exact sum, so any saturation shows as a non-zero.
                        let total = top as i32 * w as i32 * (cin * kernel * kernel) as i32;
                        p.bias.fill(-total);
                        p.scale.fill(1.0);
                        let zeros = vec![0.0f32.to_bits(); g.output_len()];
                        first_difference(&p.run($tier, &Serial), &zeros, $tier.name())
                            .unwrap_or_else(|e| panic!("{g:?}, weights {w}: {e}"));
                    }
                }
            }
        }
    )*};
}

tier_tests! {
    avx2: Int8Tier::Avx2, arb_geometry();
    avx2_act7: Int8Tier::Avx2Act7, arb_geometry();
    avx_vnni: Int8Tier::AvxVnni, arb_geometry();
    avx512_vnni_256: Int8Tier::Avx512Vnni256, arb_geometry();
    avx512_vnni: Int8Tier::Avx512Vnni, arb_geometry();
    amx: Int8Tier::Amx, arb_amx_geometry();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn scalar_matches_naive_oihw_definition(
        g in arb_geometry(),
        residual in residual_kind(),
        (relu, u8_output, seed) in (any::<bool>(), any::<bool>(), any::<u64>()),
    ) {
        let p = Problem::new(g, seed, 255).with(residual, relu, u8_output);
        first_difference(&p.run(Int8Tier::Scalar, &Serial), &p.naive_output(), "scalar")
            .map_err(|e| TestCaseError::fail(format!("{g:?}: {e}")))?;
    }

    #[test]
    fn packing_matches_oihw_index(
        (cout, cin, kh, kw) in (1usize..=40, 1usize..=11, 1usize..=4, 1usize..=4),
        seed in any::<u64>(),
    ) {
        let g = geometry(1, [kh, kw], cin, cout, [kh, kw], [1, 1], [1, 1], [0; 4]);
        let w = Problem::new(g, seed, 255).weights_oihw;
        let packed = pack_weights_s8(&w, cout, cin, kh, kw);
        prop_assert_eq!(packed.len(), packed_weight_len(&g));
        let groups = cin.div_ceil(4);
        let mut expected = vec![0i8; packed.len()];
        for co in 0..cout {
            for ci in 0..cin {
                for y in 0..kh {
                    for x in 0..kw {
                        // [panel][kh][kw][group][lane][4]
                        let at = (((((co / 16) * kh + y) * kw + x) * groups + ci / 4) * 16
                            + co % 16) * 4 + ci % 4;
                        expected[at] = w[((co * cin + ci) * kh + y) * kw + x];
                    }
                }
            }
        }
        prop_assert_eq!(packed, expected);
    }
}

#[test]
fn u8_output_rounds_half_to_even_and_clamps() {
    // 1x1, one channel, scale 1, bias -100: the real value is x - 100. Inputs stay <= 127
    // so the 7-bit tier runs too.
    let g = geometry(1, [1, 6], 1, 1, [1, 1], [1, 1], [1, 1], [0; 4]);
    let w = pack_weights_s8(&[1], 1, 1, 1, 1);
    let cases = [
        // (x - 100) / 2 + 100: -50, -49.5 -> -50, -49, -48.5 -> -48, 0, 13.5 -> 14.
        ([0u8, 1, 2, 3, 100, 127], 2.0, 100, [50u8, 50, 51, 52, 100, 114]),
        // (x - 100) / 0.25 clamped to [-200, 55], + 200.
        ([0, 50, 100, 113, 114, 127], 0.25, 200, [0, 0, 200, 252, 255, 255]),
    ];
    for tier in Int8Tier::ALL.into_iter().filter(|t| t.supported(features())) {
        for (input, scale, zero, expected) in cases {
            let mut out = [0u8; 6];
            qconv2d_nhwc_tier(
                tier,
                &Serial,
                &g,
                &input,
                0,
                &w,
                &[-100],
                &[1.0],
                QResidual::None,
                false,
                QOutput::U8 {
                    data: &mut out,
                    scale,
                    zero,
                },
            );
            assert_eq!(out, expected, "{} scale {scale}", tier.name());
        }
    }
}

#[test]
fn int8_tier_follows_the_fp32_cap_and_features() {
    let all = Features {
        avx2: true,
        fma: true,
        avx512f: true,
        avx512bw: true,
        avx512vl: true,
        avx512dq: true,
        avx512vnni: true,
        avxvnni: true,
        ..Features::default()
    };
    assert_eq!(int8_tier(Isa::Avx512, &all), Int8Tier::Avx512Vnni);
    let sapphire_rapids = Features {
        amx_tile: true,
        amx_int8: true,
        ..all
    };
    assert_eq!(int8_tier(Isa::Avx512, &sapphire_rapids), Int8Tier::Amx);
    assert_eq!(
        int8_tier_capped(Isa::Avx512, &sapphire_rapids, Int8Tier::Avx512Vnni),
        Int8Tier::Avx512Vnni
    );
    assert_eq!(
        int8_tier_capped(Isa::Avx512, &sapphire_rapids, Int8Tier::Avx2),
        Int8Tier::Avx2
    );
    assert_eq!("AMX".parse::<Int8Tier>(), Ok(Int8Tier::Amx));
    assert!("vnni".parse::<Int8Tier>().unwrap_err().contains("avx512-vnni"));
    assert_eq!(int8_tier(Isa::Avx2, &sapphire_rapids), Int8Tier::AvxVnni);
    assert_eq!(int8_tier(Isa::Avx2, &all), Int8Tier::AvxVnni);
    assert_eq!(int8_tier(Isa::Scalar, &all), Int8Tier::Scalar);
    let zen4 = Features { avxvnni: false, ..all };
    assert_eq!(int8_tier(Isa::Avx2, &zen4), Int8Tier::Avx2);
    let zen3 = Features {
        avx2: true,
        fma: true,
        ..Features::default()
    };
    assert_eq!(int8_tier(Isa::Avx512, &zen3), Int8Tier::Avx2);
    assert_eq!(int8_tier(Isa::Avx2, &Features::default()), Int8Tier::Scalar);
    // Requests never run a tier the CPU lacks.
    for t in Int8Tier::ALL {
        assert!(effective_tier(t).supported(features()));
    }
}

#[test]
fn isa_entry_point_runs_the_chosen_tier() {
    let g = geometry(1, [6, 6], 5, 9, [3, 3], [1, 1], [1, 1], [1; 4]);
    let p = Problem::new(g, 2, 255);
    let w = pack_weights_s8(&p.weights_oihw, g.cout, g.cin, 3, 3);
    let mut out = vec![0.0f32; g.output_len()];
    qconv2d_nhwc(
        Isa::Avx512,
        &Serial,
        &g,
        &p.input,
        p.x_zero,
        &w,
        &p.bias,
        &p.scale,
        QResidual::None,
        false,
        QOutput::F32(&mut out),
    );
    let bits: Vec<u32> = out.iter().map(|x| x.to_bits()).collect();
    first_difference(&bits, &p.run(Int8Tier::Scalar, &Serial), "qconv2d_nhwc").unwrap();
}

#[test]
fn threads_get_several_tasks() {
    let g = geometry(1, [7, 7], 64, 256, [1, 1], [1, 1], [1, 1], [0; 4]);
    let p = Problem::new(g, 3, 255);
    let par = Threads::new(2);
    let tier = effective_tier(Int8Tier::Avx512Vnni);
    let out = p.run(tier, &par);
    assert!(par.tasks_seen.into_inner() >= 4, "split into too few tasks");
    assert_eq!(out, p.run(tier, &Serial), "split changed the result");
}

fn run_with(g: &QConvGeometry, tier: Int8Tier, edit: impl FnOnce(&mut Vec<i8>, &mut Vec<i32>, &mut Vec<u8>)) {
    let p = Problem::new(*g, 1, 255);
    let mut w = pack_weights_s8(&p.weights_oihw, g.cout, g.cin, g.kernel[0], g.kernel[1]);
    let (mut bias, mut input) = (p.bias.clone(), p.input.clone());
    edit(&mut w, &mut bias, &mut input);
    let mut out = vec![0.0f32; g.output_len()];
    qconv2d_nhwc_tier(
        tier,
        &Serial,
        g,
        &input,
        0,
        &w,
        &bias,
        &p.scale,
        QResidual::None,
        false,
        QOutput::F32(&mut out),
    );
}

#[test]
#[should_panic(expected = "weights has")]
fn short_weights_panic() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    run_with(&g, Int8Tier::Avx512Vnni, |w, _, _| {
        w.pop();
    });
}

#[test]
#[should_panic(expected = "bias_i32 has")]
fn short_bias_panics() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    run_with(&g, Int8Tier::Avx2, |_, b, _| {
        b.pop();
    });
}

#[test]
#[should_panic(expected = "residual has")]
fn short_residual_panics() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    let p = Problem::new(g, 1, 255);
    let w = pack_weights_s8(&p.weights_oihw, g.cout, g.cin, 3, 3);
    let mut out = vec![0u8; g.output_len()];
    qconv2d_nhwc_tier(
        Int8Tier::Avx2,
        &Serial,
        &g,
        &p.input,
        0,
        &w,
        &p.bias,
        &p.scale,
        QResidual::U8 {
            data: &p.residual_u8[1..],
            scale: 1.0,
            zero: 0,
        },
        false,
        QOutput::U8 {
            data: &mut out,
            scale: 1.0,
            zero: 0,
        },
    );
}

#[test]
#[should_panic(expected = "out_w = 6 does not match")]
fn inconsistent_output_extent_panics() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    run_with(&QConvGeometry { out_w: 6, ..g }, Int8Tier::Scalar, |_, _, _| {});
}

#[test]
#[should_panic(expected = "may overflow i32")]
fn too_long_reduction_panics() {
    let g = geometry(1, [1, 1], 8192, 1, [3, 3], [1, 1], [1, 1], [1; 4]);
    run_with(&g, Int8Tier::Scalar, |_, _, _| {});
}

#[test]
#[should_panic(expected = "needs activations and x_zero <= 127")]
fn act7_tier_refuses_wide_activations() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    run_with(&g, Int8Tier::Avx2Act7, |_, _, x| x[7] = 128);
}
