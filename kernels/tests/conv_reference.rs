//! The scalar conv tier (the oracle of the SIMD tiers) against a naive NCHW convolution
//! on OIHW weights, so `pack_weights_oihw` and the NHWC indexing are checked too.

mod conv_support;

use conv_support::*;
use proptest::prelude::*;
use qp_kernels::conv::{conv2d_nhwc, pack_weights_oihw, packed_weight_len, Epilogue};
use qp_kernels::cpu::Isa;
use qp_kernels::parallel::Serial;

fn scalar(p: &Problem) -> Vec<f32> {
    let mut out = vec![f32::NAN; p.g.output_len()];
    conv2d_nhwc(
        Isa::Scalar,
        &Serial,
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn scalar_matches_naive_nchw(p in arb_problem()) {
        let (want, mag) = p.naive_nhwc();
        assert_close(&scalar(&p), &want, &mag, "scalar").map_err(TestCaseError::fail)?;
    }
}

#[test]
fn packing_places_each_weight() {
    let (cout, cin, kh, kw) = (19, 3, 2, 3);
    let w: Vec<f32> = (0..cout * cin * kh * kw).map(|i| i as f32 + 1.0).collect();
    let packed = pack_weights_oihw(&w, cout, cin, kh, kw);
    let g = geometry(1, [4, 4], cin, cout, [kh, kw], [1, 1], [1, 1], [0; 4]);
    assert_eq!(packed.len(), packed_weight_len(&g));
    assert_eq!(packed.len(), 2 * kh * kw * cin * 16);
    // co 17 = panel 1, lane 1; ci 2, ky 1, kx 2.
    let src = ((17 * cin + 2) * kh + 1) * kw + 2;
    let dst = (((kh + 1) * kw + 2) * cin + 2) * 16 + 1;
    assert_eq!(packed[dst], w[src]);
    // Lanes past cout are zero, and every source weight appears exactly once.
    let nonzero = packed.iter().filter(|&&v| v != 0.0).count();
    assert_eq!(nonzero, w.len());
    let lane = |i: usize| i % 16;
    assert!(packed
        .iter()
        .enumerate()
        .skip(kh * kw * cin * 16)
        .all(|(i, &v)| lane(i) < cout - 16 || v == 0.0));
}

#[test]
fn one_by_one_output_with_all_padding_taps() {
    // 3x3 input, 5x5 kernel, pads 1 all round: a single output pixel whose window hangs
    // over every edge.
    let g = geometry(2, [3, 3], 5, 17, [5, 5], [1, 1], [1, 1], [1, 1, 1, 1]);
    assert_eq!((g.out_h, g.out_w), (1, 1));
    let p = problem(g, true, Epilogue::Relu, 7);
    let (want, mag) = p.naive_nhwc();
    assert_close(&scalar(&p), &want, &mag, "scalar").unwrap();
}
