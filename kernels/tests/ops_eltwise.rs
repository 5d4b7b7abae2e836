//! Elementwise kernels and layout reorders: every ISA tier against the scalar references,
//! the references against their definitions, and the sigmoid's accuracy against f64.

mod ops_common;

use ops_common::values;
use proptest::prelude::*;
use qp_kernels::cpu::{self, Isa};
use qp_kernels::eltwise::*;
use qp_kernels::reorder::*;
use qp_kernels::simd::resolve;

fn sigmoid_f64(x: f32) -> f64 {
    1.0 / (1.0 + (-(x as f64)).exp())
}

fn check_sigmoid(isa: Isa, xs: &[f32]) -> Result<(), TestCaseError> {
    let mut y = xs.to_vec();
    sigmoid_inplace(isa, &mut y);
    for (&x, &s) in xs.iter().zip(&y) {
        if x.is_nan() {
            prop_assert!(s.is_nan(), "sigmoid(NaN) = {} on {}", s, isa);
        } else {
            let err = (s as f64 - sigmoid_f64(x)).abs();
            prop_assert!(err < 1e-6, "sigmoid({}) = {} on {}, error {:e}", x, s, isa, err);
            prop_assert!((0.0..=1.0).contains(&s), "sigmoid({}) = {} out of [0, 1]", x, s);
        }
    }
    Ok(())
}

fn check_elementwise(isa: Isa, len: usize, relu: bool, seed: u64) -> Result<(), TestCaseError> {
    let a = values(seed, len);
    let b = values(seed ^ 5, len);
    let mut expected = vec![0.0; len];
    add_scalar(&a, &b, relu, &mut expected);
    let mut got = vec![f32::NAN; len];
    add(isa, &a, &b, relu, &mut got);
    prop_assert_eq!(&got, &expected);
    let mut acc = a.clone();
    add_inplace(isa, &mut acc, &b, relu);
    prop_assert_eq!(&acc, &expected);

    let mut r = a.clone();
    relu_inplace(isa, &mut r);
    let mut r_ref = a.clone();
    relu_scalar(&mut r_ref);
    prop_assert_eq!(&r, &r_ref);

    let xs: Vec<f32> = values(seed ^ 9, len).iter().map(|v| v * 40.0).collect();
    check_sigmoid(isa, &xs)
}

fn check_reorder(isa: Isa, batch: usize, c: usize, h: usize, w: usize, seed: u64) -> Result<(), TestCaseError> {
    let x = values(seed, batch * c * h * w);
    let mut nhwc_ref = vec![0.0; x.len()];
    let mut nhwc = vec![f32::NAN; x.len()];
    nchw_to_nhwc_scalar(batch, c, h, w, &x, &mut nhwc_ref);
    nchw_to_nhwc(isa, batch, c, h, w, &x, &mut nhwc);
    prop_assert_eq!(&nhwc, &nhwc_ref);
    let mut checked = vec![f32::NAN; x.len()];
    prop_assert!(nchw_to_nhwc_finite(isa, batch, c, h, w, &x, &mut checked));
    prop_assert_eq!(&checked, &nhwc_ref);
    let mut back_ref = vec![0.0; x.len()];
    let mut back = vec![f32::NAN; x.len()];
    nhwc_to_nchw_scalar(batch, c, h, w, &nhwc, &mut back_ref);
    nhwc_to_nchw(isa, batch, c, h, w, &nhwc, &mut back);
    prop_assert_eq!(&back, &back_ref);
    prop_assert_eq!(&back, &x);
    Ok(())
}

macro_rules! tier_tests {
    ($name:ident, $isa:expr) => {
        mod $name {
            use super::*;
            proptest! {
                #[test]
                fn elementwise_matches_reference(len in 0usize..300, relu in any::<bool>(), seed in any::<u64>()) {
                    check_elementwise($isa, len, relu, seed)?;
                }

                /// One non-finite value anywhere (each SIMD body's lanes, the scalar tail,
                /// any batch sample) is reported, and the copy is still made.
                #[test]
                fn reorder_reports_non_finite_values(
                    batch in 1usize..=3, c in prop_oneof![Just(3usize), 1usize..=9], hw in 1usize..=70,
                    at in any::<prop::sample::Index>(), special in 0usize..3, seed in any::<u64>(),
                ) {
                    let mut x = values(seed, batch * c * hw);
                    let i = at.index(x.len());
                    x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][special];
                    let mut reference = vec![0.0; x.len()];
                    nchw_to_nhwc_scalar(batch, c, hw, 1, &x, &mut reference);
                    let mut got = vec![0.0; x.len()];
                    prop_assert!(!nchw_to_nhwc_finite($isa, batch, c, hw, 1, &x, &mut got), "value {} at {}", x[i], i);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    prop_assert_eq!(bits(&got), bits(&reference));
                }

                #[test]
                fn reorder_matches_reference(batch in 1usize..=3, c in 1usize..=40, h in 1usize..=19, w in 1usize..=19, seed in any::<u64>()) {
                    check_reorder($isa, batch, c, h, w, seed)?;
                }
            }

            #[test]
            fn sigmoid_sweep_and_special_values() {
                // Dense sweep over the range where the output is not saturated.
                let sweep: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 * 1e-3).collect();
                check_sigmoid($isa, &sweep).unwrap();
                let special = [0.0, -0.0, 1e-30, -1e-30, 87.0, 88.0, 88.8, 89.0, 100.0, 1e30, -87.0, -88.0, -88.8, -89.0, -104.0, -1e30,
                    f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN_POSITIVE];
                check_sigmoid($isa, &special).unwrap();
                let mut y = [f32::INFINITY, f32::NEG_INFINITY, 200.0, -200.0];
                sigmoid_inplace($isa, &mut y);
                assert_eq!(y[0], 1.0);
                assert_eq!(y[2], 1.0);
                assert!(y[1] >= 0.0 && y[1] < 1e-37 && y[3] >= 0.0 && y[3] < 1e-37, "{y:?}");
            }

            /// The transposes' full 8x8 tiles and ragged borders, at the model's input shape.
            #[test]
            fn reorder_image_and_wide_shapes() {
                check_reorder($isa, 1, 3, 224, 224, 1).unwrap();
                check_reorder($isa, 2, 64, 9, 7, 2).unwrap();
                check_reorder($isa, 1, 17, 8, 3, 3).unwrap();
            }
        }
    };
}

tier_tests!(scalar, Isa::Scalar);
tier_tests!(avx2, Isa::Avx2);
tier_tests!(avx512, Isa::Avx512);

#[test]
fn reorder_reference_indexing() {
    // NCHW element (n, c, y, x) has value n*1000 + c*100 + y*10 + x.
    let (b, c, h, w) = (2, 3, 4, 5);
    let src: Vec<f32> = (0..b * c * h * w)
        .map(|i| {
            let (n, r) = (i / (c * h * w), i % (c * h * w));
            (n * 1000 + (r / (h * w)) * 100 + (r % (h * w) / w) * 10 + r % w) as f32
        })
        .collect();
    let mut dst = vec![0.0; src.len()];
    nchw_to_nhwc_scalar(b, c, h, w, &src, &mut dst);
    for n in 0..b {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    assert_eq!(
                        dst[((n * h + y) * w + x) * c + ch],
                        (n * 1000 + ch * 100 + y * 10 + x) as f32
                    );
                }
            }
        }
    }
}

#[test]
fn eltwise_references_follow_definitions() {
    let a = [1.0, -2.0, 0.5, f32::NAN];
    let b = [0.5, 1.0, -1.0, 1.0];
    let mut out = [0.0; 4];
    add_scalar(&a, &b, false, &mut out);
    assert_eq!(&out[..3], &[1.5, -1.0, -0.5]);
    assert!(out[3].is_nan());
    add_scalar(&a, &b, true, &mut out);
    assert_eq!(out, [1.5, 0.0, 0.0, 0.0]);
    let mut s = [0.0f32, 2.0];
    sigmoid_scalar(&mut s);
    assert_eq!(s[0], 0.5);
    assert!((s[1] as f64 - sigmoid_f64(2.0)).abs() < 1e-7);
}

#[test]
fn dispatch_never_exceeds_the_cpu() {
    let best = cpu::features().best_isa();
    for isa in Isa::ALL {
        assert_eq!(resolve(isa), isa.min(best));
    }
}

#[test]
#[should_panic(expected = "add: operand lengths differ")]
fn add_length_mismatch_panics_clearly() {
    add(Isa::Avx512, &[1.0; 9], &[1.0; 8], false, &mut [0.0; 9]);
}
