//! SIMD conv tiers against the scalar reference on random geometries, ResNet-50 shapes,
//! threaded splits, and argument checks.

mod conv_support;

use conv_support::*;
use proptest::prelude::*;
use qp_kernels::conv::{conv2d_nhwc, ConvGeometry, Epilogue};
use qp_kernels::cpu::{features, Isa};
use qp_kernels::parallel::{ParallelFor, Serial};

fn run(isa: Isa, par: &dyn ParallelFor, p: &Problem) -> Vec<f32> {
    let mut out = vec![f32::NAN; p.g.output_len()];
    conv2d_nhwc(
        isa,
        par,
        &p.g,
        &p.input_nhwc(),
        &p.packed_weights(),
        &p.padded_bias(),
        p.residual.as_deref(),
        p.act,
        &mut out,
    );
    out
}

/// The tier against the scalar tier, with magnitudes from the naive oracle.
fn check_tier(isa: Isa, par: &dyn ParallelFor, p: &Problem) -> Result<(), String> {
    let (_, mag) = p.naive_nhwc();
    let want = run(Isa::Scalar, &Serial, p);
    assert_close(&run(isa, par, p), &want, &mag, isa.name())
}

fn supported(isa: Isa) -> bool {
    if features().best_isa() < isa {
        eprintln!("skipped: this CPU lacks {isa}");
        return false;
    }
    true
}

fn resnet_shapes() -> Vec<ConvGeometry> {
    // ResNet-50 layer kinds at reduced spatial size (batch 2) to keep the scalar oracle
    // fast; the channel counts and windows are the real ones.
    vec![
        geometry(2, [30, 30], 3, 64, [7, 7], [2, 2], [1, 1], [3, 3, 3, 3]),
        geometry(2, [15, 15], 64, 64, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        geometry(2, [15, 15], 128, 128, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
        geometry(2, [9, 9], 64, 256, [1, 1], [1, 1], [1, 1], [0; 4]),
        geometry(2, [9, 9], 256, 512, [1, 1], [2, 2], [1, 1], [0; 4]),
        geometry(1, [7, 7], 2048, 512, [1, 1], [1, 1], [1, 1], [0; 4]),
        geometry(1, [7, 7], 512, 512, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
        // Split into input-channel blocks (partial sums through the output), ragged cout.
        geometry(2, [5, 6], 333, 37, [3, 3], [1, 2], [1, 1], [1, 0, 2, 1]),
        geometry(1, [3, 3], 2100, 20, [1, 1], [1, 1], [1, 1], [0; 4]),
    ]
}

macro_rules! tier_tests {
    ($($name:ident: $isa:expr;)*) => {$(
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(96))]
                #[test]
                fn matches_scalar_on_random_geometry(p in arb_problem()) {
                    if supported($isa) {
                        check_tier($isa, &Serial, &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn matches_scalar_on_random_pointwise(p in arb_pointwise_problem(), threads in 1usize..=3) {
                    if supported($isa) {
                        check_tier($isa, &Threads::new(threads), &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn matches_scalar_on_random_packed_windows(p in arb_packed_window_problem(), threads in 1usize..=3) {
                    if supported($isa) {
                        check_tier($isa, &Threads::new(threads), &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn matches_scalar_on_random_band_rows(p in arb_band_problem(), threads in 1usize..=3) {
                    if supported($isa) {
                        check_tier($isa, &Threads::new(threads), &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn matches_scalar_on_random_pointwise_whole_tiles(p in arb_pointwise_whole_tiles_problem(), threads in 1usize..=3) {
                    if supported($isa) {
                        check_tier($isa, &Threads::new(threads), &p).map_err(TestCaseError::fail)?;
                    }
                }

                #[test]
                fn threaded_split_matches_scalar(p in arb_problem(), threads in 2usize..=5) {
                    if supported($isa) {
                        check_tier($isa, &Threads::new(threads), &p).map_err(TestCaseError::fail)?;
                    }
                }
            }

            #[test]
            fn one_sided_padding_at_row_ends() {
                // Wide rows so whole tiles sit inside one row and reach the right edge
                // exactly, with padding on one side only, horizontally then vertically.
                if !supported($isa) {
                    return;
                }
                for (w, pads) in [(31, [0, 0, 0, 2]), (30, [0, 2, 0, 0]), (29, [2, 0, 0, 1])] {
                    for kw in 1..=4 {
                        let g = geometry(1, [3, w], 5, 17, [2, kw], [1, 1], [1, 1], pads);
                        let p = problem(g, true, Epilogue::None, w as u64);
                        check_tier($isa, &Serial, &p).unwrap_or_else(|e| panic!("{g:?}: {e}"));
                    }
                }
            }

            #[test]
            fn several_channel_groups_in_one_task() {
                // One task (serial) whose channel tiles' weights exceed the L2 group
                // budget several times over, with a ragged last group and channel tile:
                // AVX2 groups of 4 of 10 tiles (1x1) and of 4 of 7 (3x3); AVX-512 groups
                // of 4 of 10 two-panel tiles, the last one panel.
                if !supported($isa) {
                    return;
                }
                let shapes = [
                    geometry(1, [5, 7], 1000, 150, [1, 1], [1, 1], [1, 1], [0; 4]),
                    geometry(2, [6, 5], 100, 100, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
                    geometry(1, [6, 5], 50, 300, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
                ];
                for (i, g) in shapes.into_iter().enumerate() {
                    let p = problem(g, true, Epilogue::Relu, 100 + i as u64);
                    check_tier($isa, &Serial, &p).unwrap_or_else(|e| panic!("{g:?}: {e}"));
                }
            }

            #[test]
            fn resnet50_layer_shapes() {
                if !supported($isa) {
                    return;
                }
                for (i, g) in resnet_shapes().into_iter().enumerate() {
                    let p = problem(g, i % 2 == 0, Epilogue::Relu, i as u64);
                    check_tier($isa, &Threads::new(2), &p).unwrap_or_else(|e| panic!("{g:?}: {e}"));
                }
            }
        }
    )*};
}

tier_tests! {
    avx2: Isa::Avx2;
    avx512: Isa::Avx512;
}

#[test]
fn threads_get_several_tasks_on_small_and_large_maps() {
    for g in [
        geometry(1, [7, 7], 64, 2048, [1, 1], [1, 1], [1, 1], [0; 4]),
        geometry(1, [40, 40], 16, 16, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
    ] {
        let p = problem(g, false, Epilogue::None, 3);
        let par = Threads::new(2);
        let out = run(Isa::Avx512, &par, &p);
        assert!(par.tasks_seen.into_inner() >= 4, "{g:?} split into too few tasks");
        assert_eq!(out, run(Isa::Avx512, &Serial, &p), "split changed the result");
    }
}

fn args(g: &ConvGeometry) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let p = problem(*g, false, Epilogue::None, 1);
    (
        p.input_nhwc(),
        p.packed_weights(),
        p.padded_bias(),
        vec![0.0; g.output_len()],
    )
}

#[test]
#[should_panic(expected = "weights has")]
fn short_weights_panic() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    let (x, w, b, mut y) = args(&g);
    conv2d_nhwc(Isa::Avx512, &Serial, &g, &x, &w[1..], &b, None, Epilogue::None, &mut y);
}

#[test]
#[should_panic(expected = "residual has")]
fn short_residual_panics() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    let (x, w, b, mut y) = args(&g);
    let r = vec![0.0; y.len() - 1];
    conv2d_nhwc(Isa::Avx2, &Serial, &g, &x, &w, &b, Some(&r), Epilogue::None, &mut y);
}

#[test]
#[should_panic(expected = "out_w = 6 does not match")]
fn inconsistent_output_extent_panics() {
    let g = geometry(1, [5, 5], 3, 20, [3, 3], [1, 1], [1, 1], [1; 4]);
    let (x, w, b, _) = args(&g);
    let bad = ConvGeometry { out_w: 6, ..g };
    let mut y = vec![0.0; bad.output_len()];
    conv2d_nhwc(Isa::Avx512, &Serial, &bad, &x, &w, &b, None, Epilogue::None, &mut y);
}
