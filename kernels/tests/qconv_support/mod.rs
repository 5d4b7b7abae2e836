//! Shared helpers of the INT8 convolution tests (u8 in `qconv_tiers`, i16 in
//! `qconv_i16`): the naive oracle, random geometry, output comparison.

use proptest::prelude::*;
use qp_kernels::cpu::features;
use qp_kernels::qconv::{Int8Tier, QConvGeometry};

use crate::conv_support::geometry;

/// Exact accumulators of `input` (NHWC, element type `E`) with OIHW weights in i64,
/// padding taps reading `x_zero`, NHWC `[batch][out_h][out_w][cout]`.
pub fn naive_accumulators<E: Copy + Into<i64>>(
    g: &QConvGeometry,
    input: &[E],
    x_zero: E,
    weights_oihw: &[i8],
) -> Vec<i64> {
    let [kh_n, kw_n] = g.kernel;
    let mut acc = vec![0i64; g.output_len()];
    for n in 0..g.batch {
        for oh in 0..g.out_h {
            for ow in 0..g.out_w {
                for co in 0..g.cout {
                    let mut sum = 0i64;
                    for ci in 0..g.cin {
                        for kh in 0..kh_n {
                            for kw in 0..kw_n {
                                let ih = (oh * g.stride[0] + kh * g.dilation[0]) as isize - g.pads[0] as isize;
                                let iw = (ow * g.stride[1] + kw * g.dilation[1]) as isize - g.pads[1] as isize;
                                let inside = ih >= 0 && iw >= 0 && (ih as usize) < g.in_h && (iw as usize) < g.in_w;
                                let x = if inside {
                                    let (ih, iw) = (ih as usize, iw as usize);
                                    input[((n * g.in_h + ih) * g.in_w + iw) * g.cin + ci]
                                } else {
                                    x_zero
                                };
                                let w = weights_oihw[((co * g.cin + ci) * kh_n + kh) * kw_n + kw];
                                sum += x.into() * w as i64;
                            }
                        }
                    }
                    acc[((n * g.out_h + oh) * g.out_w + ow) * g.cout + co] = sum;
                }
            }
        }
    }
    acc
}

pub fn first_difference(got: &[u32], want: &[u32], what: &str) -> Result<(), String> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None if got.len() == want.len() => Ok(()),
        None => Err(format!("{what}: {} outputs, expected {}", got.len(), want.len())),
        Some(i) => Err(format!(
            "{what}: output {i}: got {:#x}, expected {:#x}",
            got[i], want[i]
        )),
    }
}

pub fn supported(tier: Int8Tier) -> bool {
    if !tier.supported(features()) {
        eprintln!("skipped: this CPU lacks {}", tier.name());
        return false;
    }
    true
}

/// Random geometry: ragged channel counts, kernels 1..7, strides 1..3, dilations 1..2,
/// asymmetric padding, batch 1..4, odd spatial sizes.
pub fn arb_geometry() -> impl Strategy<Value = QConvGeometry> {
    (
        (1usize..=4, 1usize..=13, 1usize..=13, 1usize..=70, 1usize..=70),
        (1usize..=7, 1usize..=7, 1usize..=3, 1usize..=3, 1usize..=2, 1usize..=2),
        [0usize..=3, 0usize..=3, 0usize..=3, 0usize..=3],
    )
        .prop_map(|((batch, h, w, cin, cout), (kh, kw, sh, sw, dh, dw), pads)| {
            let h = h.max((dh * (kh - 1) + 1).saturating_sub(pads[0] + pads[2]));
            let w = w.max((dw * (kw - 1) + 1).saturating_sub(pads[1] + pads[3]));
            geometry(batch, [h, w], cin, cout, [kh, kw], [sh, sw], [dh, dw], pads)
        })
}
