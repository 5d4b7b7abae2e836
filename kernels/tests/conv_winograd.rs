//! Winograd F(2x2, 3x3) on every tier against the naive definition (on the untransformed
//! weights), and the SIMD tiers against the scalar tier, on random 3x3 stride-1
//! geometries: ragged channels, odd and tiny spatial sizes, asymmetric pads, several
//! chunks, threaded splits.

mod conv_support;

use conv_support::*;
use proptest::prelude::*;
use qp_kernels::conv::{
    conv2d_winograd_nhwc, pack_weights_oihw, pack_winograd_weights, pack_winograd_weights_from_direct,
    supports_winograd, winograd_scratch_len, ConvGeometry, Epilogue,
};
use qp_kernels::cpu::{features, Isa};
use qp_kernels::parallel::{ParallelFor, Serial};

fn run(isa: Isa, par: &dyn ParallelFor, p: &Problem) -> Vec<f32> {
    let g = &p.g;
    let mut out = vec![f32::NAN; g.output_len()];
    let mut scratch = vec![f32::NAN; winograd_scratch_len(g)];
    conv2d_winograd_nhwc(
        isa,
        par,
        g,
        &p.input_nhwc(),
        &pack_winograd_weights(&p.weights_oihw, g.cout, g.cin),
        &p.padded_bias(),
        p.residual.as_deref(),
        p.act,
        &mut out,
        &mut scratch,
    );
    out
}

/// The transforms add and subtract up to 16 terms around the products, so rounding error
/// can exceed the direct kernel's; measured within its 1e-5 of the magnitude sum on every
/// case here, checked at 2e-5.
fn check(got: &[f32], want: &[f32], mag: &[f32], what: &str) -> Result<(), String> {
    let mag: Vec<f32> = mag.iter().map(|m| m * 2.0).collect();
    assert_close(got, want, &mag, what)
}

fn check_tier(isa: Isa, par: &dyn ParallelFor, p: &Problem) -> Result<(), String> {
    let (naive, mag) = p.naive_nhwc();
    let got = run(isa, par, p);
    check(&got, &naive, &mag, &format!("{} vs naive", isa.name()))?;
    if isa != Isa::Scalar {
        let scalar = run(Isa::Scalar, &Serial, p);
        check(&got, &scalar, &mag, &format!("{} vs scalar", isa.name()))?;
    }
    Ok(())
}

fn supported(isa: Isa) -> bool {
    if features().best_isa() < isa {
        eprintln!("skipped: this CPU lacks {isa}");
        return false;
    }
    true
}

fn arb_winograd_problem() -> impl Strategy<Value = Problem> {
    (
        (1usize..=3, 1usize..=17, 1usize..=17, 1usize..=70, 1usize..=70),
        [0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2],
        (any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(|((batch, h, w, cin, cout), pads, (res, relu, seed))| {
            let h = h.max(3usize.saturating_sub(pads[0] + pads[2]));
            let w = w.max(3usize.saturating_sub(pads[1] + pads[3]));
            let g = geometry(batch, [h, w], cin, cout, [3, 3], [1, 1], [1, 1], pads);
            let act = if relu { Epilogue::Relu } else { Epilogue::None };
            problem(g, res, act, seed)
        })
}

fn layer_shapes() -> Vec<ConvGeometry> {
    vec![
        // ResNet-50's stride-1 3x3 layers at reduced spatial size.
        geometry(2, [15, 15], 64, 64, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        geometry(1, [14, 14], 128, 128, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        geometry(1, [7, 7], 256, 256, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        // 80 tiles of 512 channels: more than one chunk.
        geometry(5, [7, 7], 512, 20, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        // Ragged everything, no padding, one-tile outputs.
        geometry(3, [4, 3], 37, 49, [3, 3], [1, 1], [1, 1], [0, 0, 0, 1]),
    ]
}

macro_rules! tier_tests {
    ($($name:ident: $isa:expr;)*) => {$(
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(64))]
                #[test]
                fn matches_naive_on_random_geometry(p in arb_winograd_problem()) {
                    if supported($isa) {
                        check_tier($isa, &Serial, &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn threaded_split_matches(p in arb_winograd_problem(), threads in 2usize..=5) {
                    if supported($isa) {
                        check_tier($isa, &Threads::new(threads), &p).map_err(TestCaseError::fail)?;
                    }
                }
            }

            #[test]
            fn layer_shapes_match() {
                if !supported($isa) {
                    return;
                }
                for (i, g) in layer_shapes().into_iter().enumerate() {
                    let p = problem(g, i % 2 == 0, Epilogue::Relu, 40 + i as u64);
                    check_tier($isa, &Threads::new(2), &p).unwrap_or_else(|e| panic!("{g:?}: {e}"));
                }
            }
        }
    )*};
}

tier_tests! {
    scalar: Isa::Scalar;
    avx2: Isa::Avx2;
    avx512: Isa::Avx512;
}

proptest! {
    /// Weights stored for the direct kernel transform to exactly the Winograd weights of
    /// the OIHW original, ragged panels included.
    #[test]
    fn direct_packed_weights_transform_as_the_oihw_ones(p in arb_winograd_problem()) {
        let (cout, cin) = (p.g.cout, p.g.cin);
        let direct = pack_weights_oihw(&p.weights_oihw, cout, cin, 3, 3);
        let want = pack_winograd_weights(&p.weights_oihw, cout, cin);
        // NaN where the destination held garbage: every float must be written.
        let mut got = vec![f32::NAN; want.len()];
        pack_winograd_weights_from_direct(&direct, cout, cin, &mut got);
        prop_assert!(
            got.iter().map(|v| v.to_bits()).eq(want.iter().map(|v| v.to_bits())),
            "cout {} cin {}", cout, cin
        );
    }
}

#[test]
fn only_3x3_stride_1_layers_are_supported() {
    let g = |k: [usize; 2], s: [usize; 2], d: [usize; 2]| geometry(1, [9, 9], 4, 4, k, s, d, [1; 4]);
    assert!(supports_winograd(&g([3, 3], [1, 1], [1, 1])));
    assert!(!supports_winograd(&g([3, 3], [2, 2], [1, 1])));
    assert!(!supports_winograd(&g([3, 3], [1, 1], [2, 2])));
    assert!(!supports_winograd(&g([1, 1], [1, 1], [1, 1])));
    assert!(!supports_winograd(&g([3, 1], [1, 1], [1, 1])));
}

#[test]
#[should_panic(expected = "not a 3x3 stride-1 layer")]
fn other_layers_are_refused() {
    let g = geometry(1, [9, 9], 4, 4, [3, 3], [2, 2], [1, 1], [1; 4]);
    let p = problem(g, false, Epilogue::None, 1);
    run(Isa::Scalar, &Serial, &p);
}

#[test]
#[should_panic(expected = "scratch has")]
fn short_scratch_is_refused() {
    let g = geometry(1, [9, 9], 4, 4, [3, 3], [1, 1], [1, 1], [1; 4]);
    let p = problem(g, false, Epilogue::None, 1);
    let mut out = vec![0.0; g.output_len()];
    conv2d_winograd_nhwc(
        Isa::Scalar,
        &Serial,
        &g,
        &p.input_nhwc(),
        &pack_winograd_weights(&p.weights_oihw, g.cout, g.cin),
        &p.padded_bias(),
        None,
        Epilogue::None,
        &mut out,
        &mut vec![0.0; winograd_scratch_len(&g) - 1],
    );
}
