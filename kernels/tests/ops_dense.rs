//! Dense layer: weight packing, the scalar reference against `y = W x + b` in f64, and every
//! ISA tier against the reference.

mod ops_common;

use ops_common::{values, ScopedThreads};
use proptest::prelude::*;
use qp_kernels::cpu::Isa;
use qp_kernels::dense::*;
use qp_kernels::parallel::{ParallelFor, Serial};

struct Layer {
    w: Vec<f32>,
    packed: Vec<f32>,
    bias: Vec<f32>,
    x: Vec<f32>,
}

fn layer(batch: usize, input: usize, out: usize, seed: u64) -> Layer {
    let w = values(seed, out * input);
    let packed = pack_dense_weights(&w, out, input);
    let mut bias = values(seed ^ 1, out);
    bias.resize(out.div_ceil(16) * 16, 0.0);
    Layer {
        w,
        packed,
        bias,
        x: values(seed ^ 2, batch * input),
    }
}

/// `act(W x + b)` in f64 with the bound on its rounding error: summation error grows with
/// the sum of |terms|.
fn direct(l: &Layer, batch: usize, input: usize, out: usize, relu: bool) -> Vec<(f64, f64)> {
    let mut y = Vec::new();
    for n in 0..batch {
        for o in 0..out {
            let terms = (0..input).map(|i| l.x[n * input + i] as f64 * l.w[o * input + i] as f64);
            let (sum, mag) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
            let v = sum + l.bias[o] as f64;
            y.push((if relu { v.max(0.0) } else { v }, mag + (l.bias[o] as f64).abs()));
        }
    }
    y
}

fn assert_close(got: &[f32], expected: &[(f64, f64)], what: &str) -> Result<(), TestCaseError> {
    for (i, (&g, &(e, mag))) in got.iter().zip(expected).enumerate() {
        let tol = 1e-6 * mag.max(1.0) * 4.0;
        prop_assert!(
            (g as f64 - e).abs() <= tol,
            "{}: y[{}] = {} but expected {} (tol {})",
            what,
            i,
            g,
            e,
            tol
        );
    }
    Ok(())
}

fn check_tier(isa: Isa, batch: usize, input: usize, out: usize, relu: bool, seed: u64) -> Result<(), TestCaseError> {
    let l = layer(batch, input, out, seed);
    let expected = direct(&l, batch, input, out, relu);
    let pars: [&dyn ParallelFor; 2] = [&Serial, &ScopedThreads(3)];
    for par in pars {
        let mut y = vec![f32::NAN; batch * out];
        dense(isa, par, batch, input, out, &l.x, &l.packed, &l.bias, relu, &mut y);
        assert_close(&y, &expected, &format!("{isa} with {} threads", par.threads()))?;
    }
    Ok(())
}

macro_rules! tier_tests {
    ($name:ident, $isa:expr) => {
        mod $name {
            use super::*;
            proptest! {
                #[test]
                fn dense_matches_formula(batch in 1usize..=9, input in 1usize..=300, out in 1usize..=300, relu in any::<bool>(), seed in any::<u64>()) {
                    check_tier($isa, batch, input, out, relu, seed)?;
                }
            }

            /// The model's first head layer, big enough to be split over threads.
            #[test]
            fn head_layer_shape() {
                for batch in [1, 3, 8] {
                    check_tier($isa, batch, 2056, 512, true, 11).unwrap();
                }
            }
        }
    };
}

tier_tests!(scalar, Isa::Scalar);
tier_tests!(avx2, Isa::Avx2);
tier_tests!(avx512, Isa::Avx512);

proptest! {
    #[test]
    fn scalar_reference_matches_formula(batch in 1usize..=9, input in 1usize..=300, out in 1usize..=300, relu in any::<bool>(), seed in any::<u64>()) {
        let l = layer(batch, input, out, seed);
        let mut y = vec![f32::NAN; batch * out];
        dense_scalar(batch, input, out, &l.x, &l.packed, &l.bias, relu, &mut y);
        assert_close(&y, &direct(&l, batch, input, out, relu), "scalar reference")?;
    }
}

#[test]
fn packing_layout() {
    let (out, input) = (19, 3);
    let w: Vec<f32> = (0..out * input).map(|i| i as f32 + 1.0).collect();
    let p = pack_dense_weights(&w, out, input);
    assert_eq!(p.len(), packed_dense_len(out, input));
    assert_eq!(p.len(), 2 * input * 16);
    for block in 0..2 {
        for i in 0..input {
            for lane in 0..16 {
                let o = block * 16 + lane;
                let expected = if o < out { w[o * input + i] } else { 0.0 };
                assert_eq!(
                    p[(block * input + i) * 16 + lane],
                    expected,
                    "block {block} i {i} lane {lane}"
                );
            }
        }
    }
}

#[test]
#[should_panic(expected = "dense: batch 2, 4 -> 3 needs")]
fn unpadded_bias_panics_clearly() {
    let w = pack_dense_weights(&[0.0; 12], 3, 4);
    let mut y = vec![0.0; 6];
    dense(Isa::Avx2, &Serial, 2, 4, 3, &[0.0; 8], &w, &[0.0; 3], false, &mut y);
}
