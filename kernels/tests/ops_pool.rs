//! Pooling kernels: every ISA tier against the scalar reference, and the reference against
//! the ONNX definition (explicitly padded input) and onnxruntime's outputs.

mod ops_common;

use ops_common::{first_mismatch, values, ScopedThreads};
use proptest::prelude::*;
use qp_kernels::cpu::Isa;
use qp_kernels::parallel::Serial;
use qp_kernels::pool::*;

#[derive(Clone, Debug)]
struct Case {
    g: PoolGeometry,
    ceil_mode: bool,
    seed: u64,
}

/// Random geometries with pads below the kernel (as ONNX requires), ragged channels and
/// odd spatial sizes; cases whose windows do not fit are discarded.
fn pool_case() -> impl Strategy<Value = Case> {
    (
        (1usize..=5, 1usize..=70, 1usize..=13, 1usize..=13),
        (
            [1usize..=4, 1usize..=4],
            [1usize..=3, 1usize..=3],
            [1usize..=2, 1usize..=2],
        ),
        (
            [0usize..4, 0usize..4, 0usize..4, 0usize..4],
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_filter_map(
            "window does not fit the input",
            |((batch, channels, in_h, in_w), (kernel, stride, dilation), (pads, ceil_mode, seed))| {
                if (0..4).any(|i| pads[i] >= kernel[i % 2]) {
                    return None;
                }
                let out_h = pool_out_extent(in_h, kernel[0], stride[0], dilation[0], pads[0], pads[2], ceil_mode)?;
                let out_w = pool_out_extent(in_w, kernel[1], stride[1], dilation[1], pads[1], pads[3], ceil_mode)?;
                let g = PoolGeometry {
                    batch,
                    in_h,
                    in_w,
                    channels,
                    out_h,
                    out_w,
                    kernel,
                    stride,
                    dilation,
                    pads,
                };
                g.check().ok()?;
                Some(Case { g, ceil_mode, seed })
            },
        )
}

fn check_tier(isa: Isa, case: &Case) -> Result<(), TestCaseError> {
    let g = &case.g;
    let x = values(case.seed, g.input_len());
    let mut expected = vec![f32::NAN; g.output_len()];
    let mut got = vec![f32::NAN; g.output_len()];
    let mut got_threaded = vec![f32::NAN; g.output_len()];

    max_pool_nhwc_scalar(g, &x, &mut expected);
    max_pool_nhwc(isa, &Serial, g, &x, &mut got);
    max_pool_nhwc(isa, &ScopedThreads(3), g, &x, &mut got_threaded);
    prop_assert_eq!(first_mismatch(&got, &expected, 0.0, 0.0), None, "max pool {:?}", isa);
    prop_assert_eq!(
        first_mismatch(&got_threaded, &expected, 0.0, 0.0),
        None,
        "threaded max pool {:?}",
        isa
    );

    for include_pad in [false, true] {
        avg_pool_nhwc_scalar(g, include_pad, &x, &mut expected);
        avg_pool_nhwc(isa, &Serial, g, include_pad, &x, &mut got);
        avg_pool_nhwc(isa, &ScopedThreads(3), g, include_pad, &x, &mut got_threaded);
        prop_assert_eq!(
            first_mismatch(&got, &expected, 1e-6, 1e-5),
            None,
            "avg pool {:?} include_pad {}",
            isa,
            include_pad
        );
        prop_assert_eq!(
            first_mismatch(&got_threaded, &expected, 1e-6, 1e-5),
            None,
            "threaded avg pool {:?}",
            isa
        );
    }
    Ok(())
}

fn check_global(isa: Isa, batch: usize, hw: usize, channels: usize, seed: u64) -> Result<(), TestCaseError> {
    let x = values(seed, batch * hw * channels);
    let mut expected = vec![f32::NAN; batch * channels];
    let mut got = vec![f32::NAN; batch * channels];
    global_avg_pool_scalar(batch, hw, channels, &x, &mut expected);
    global_avg_pool_nhwc(isa, batch, hw, channels, &x, &mut got);
    prop_assert_eq!(first_mismatch(&got, &expected, 1e-6, 1e-5), None);
    Ok(())
}

macro_rules! tier_tests {
    ($name:ident, $isa:expr) => {
        mod $name {
            use super::*;
            proptest! {
                #[test]
                fn pools_match_reference(case in pool_case()) {
                    check_tier($isa, &case)?;
                }

                #[test]
                fn global_avg_pool_matches_reference(batch in 1usize..=5, hw in 1usize..=60, channels in 1usize..=140, seed in any::<u64>()) {
                    check_global($isa, batch, hw, channels, seed)?;
                }
            }
        }
    };
}

// Tiers above what the CPU has run the best supported kernels (the dispatcher lowers
// them), so these also show that asking for too much never executes a missing ISA.
tier_tests!(scalar, Isa::Scalar);
tier_tests!(avx2, Isa::Avx2);
tier_tests!(avx512, Isa::Avx512);

/// ONNX output extent, written from the spec's formula: floor or ceil of
/// `(in + pads - dilated_kernel) / stride + 1`, and in ceil mode a last window starting
/// past `in + pad_begin` is dropped.
fn spec_extent(input: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize, ceil_mode: bool) -> usize {
    let dk = ((k - 1) * d + 1) as f64;
    let q = ((input + pb + pe) as f64 - dk) / s as f64 + 1.0;
    let mut out = if ceil_mode { q.ceil() } else { q.floor() } as usize;
    if ceil_mode && (out - 1) * s >= input + pb {
        out -= 1;
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Input(f64),
    Pad,
    Beyond,
}

/// One output of one (n, c) plane from an explicitly padded copy of the plane. Cells past
/// the padded input (ceil-mode overhang) are `Beyond` and never count.
fn spec_pool_plane(plane: &[f32], g: &PoolGeometry, avg: Option<bool>) -> Vec<f64> {
    let ph = g.in_h + g.pads[0] + g.pads[2] + g.kernel[0] * g.dilation[0] + g.stride[0] * g.out_h;
    let pw = g.in_w + g.pads[1] + g.pads[3] + g.kernel[1] * g.dilation[1] + g.stride[1] * g.out_w;
    let mut grid = vec![Cell::Beyond; ph * pw];
    for y in 0..g.in_h + g.pads[0] + g.pads[2] {
        for x in 0..g.in_w + g.pads[1] + g.pads[3] {
            let inside = y >= g.pads[0] && y < g.pads[0] + g.in_h && x >= g.pads[1] && x < g.pads[1] + g.in_w;
            grid[y * pw + x] = if inside {
                Cell::Input(plane[(y - g.pads[0]) * g.in_w + (x - g.pads[1])] as f64)
            } else {
                Cell::Pad
            };
        }
    }
    let mut out = Vec::new();
    for oh in 0..g.out_h {
        for ow in 0..g.out_w {
            let (mut max, mut sum, mut inputs, mut padded) = (f64::NEG_INFINITY, 0.0, 0, 0);
            for ky in 0..g.kernel[0] {
                for kx in 0..g.kernel[1] {
                    match grid[(oh * g.stride[0] + ky * g.dilation[0]) * pw + ow * g.stride[1] + kx * g.dilation[1]] {
                        Cell::Input(v) => {
                            max = max.max(v);
                            sum += v;
                            inputs += 1;
                            padded += 1;
                        }
                        Cell::Pad => padded += 1,
                        Cell::Beyond => {}
                    }
                }
            }
            out.push(match avg {
                None => max,
                Some(true) => sum / padded as f64,
                Some(false) => sum / inputs as f64,
            });
        }
    }
    out
}

/// The spec's result for the whole NHWC tensor, plane by plane.
fn spec_pool(g: &PoolGeometry, avg: Option<bool>, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; g.output_len()];
    for n in 0..g.batch {
        for c in 0..g.channels {
            let plane: Vec<f32> = (0..g.in_h * g.in_w)
                .map(|p| x[(n * g.in_h * g.in_w + p) * g.channels + c])
                .collect();
            for (p, v) in spec_pool_plane(&plane, g, avg).into_iter().enumerate() {
                y[(n * g.out_h * g.out_w + p) * g.channels + c] = v as f32;
            }
        }
    }
    y
}

proptest! {
    #[test]
    fn out_extent_matches_spec_formula(input in 1usize..40, (k, pb, pe) in (1usize..6).prop_flat_map(|k| (Just(k), 0..k, 0..k)), s in 1usize..5, d in 1usize..4, ceil_mode in any::<bool>()) {
        // Pads shorter than the window, as the spec requires, drawn so: rejecting them
        // instead threw away 70% of the cases.
        prop_assume!(input + pb + pe > (k - 1) * d);
        prop_assert_eq!(pool_out_extent(input, k, s, d, pb, pe, ceil_mode), Some(spec_extent(input, k, s, d, pb, pe, ceil_mode)));
    }

    #[test]
    fn scalar_reference_matches_spec(case in pool_case()) {
        let g = &case.g;
        prop_assert_eq!(g.out_h, spec_extent(g.in_h, g.kernel[0], g.stride[0], g.dilation[0], g.pads[0], g.pads[2], case.ceil_mode));
        let x = values(case.seed, g.input_len());
        let mut got = vec![f32::NAN; g.output_len()];
        max_pool_nhwc_scalar(g, &x, &mut got);
        prop_assert_eq!(first_mismatch(&got, &spec_pool(g, None, &x), 0.0, 0.0), None, "max");
        for include_pad in [false, true] {
            avg_pool_nhwc_scalar(g, include_pad, &x, &mut got);
            prop_assert_eq!(first_mismatch(&got, &spec_pool(g, Some(include_pad), &x), 1e-6, 1e-5), None, "avg include_pad {}", include_pad);
        }
    }
}

#[test]
fn global_avg_pool_reference_is_the_mean() {
    let (batch, hw, channels) = (3, 49, 37);
    let x = values(7, batch * hw * channels);
    let mut y = vec![0.0; batch * channels];
    global_avg_pool_scalar(batch, hw, channels, &x, &mut y);
    for n in 0..batch {
        for c in 0..channels {
            let mean: f64 = (0..hw).map(|p| x[(n * hw + p) * channels + c] as f64).sum::<f64>() / hw as f64;
            assert!((y[n * channels + c] as f64 - mean).abs() < 1e-6, "n {n} c {c}");
        }
    }
}

/// Inputs of the onnxruntime cases: `x[i] = i % 7 - 3 + 0.01 i`, one plane (N = C = 1).
fn ort_input(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i % 7) as f32 - 3.0) + (i as f32 * 0.01)).collect()
}

/// Outputs computed with onnxruntime 1.x (opset 19, CPU provider) for the same attributes.
#[test]
fn matches_onnxruntime_cases() {
    struct OrtCase {
        avg: Option<bool>,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pads: [usize; 4],
        ceil_mode: bool,
        expected: &'static [f32],
    }
    let cases = [
        OrtCase {
            avg: None,
            input: [5, 5],
            kernel: [3, 3],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
            ceil_mode: true,
            expected: &[3.06, 3.06, 1.04, 3.06, 3.13, 3.13, 3.2, 1.18, 2.19],
        },
        // ONNX pads are [top, left, bottom, right] = [x1_begin, x2_begin, x1_end, x2_end].
        OrtCase {
            avg: None,
            input: [6, 7],
            kernel: [2, 3],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [0, 1, 1, 0],
            ceil_mode: true,
            expected: &[-1.92, 0.1, 2.12, 3.13, -1.78, 0.24, 2.26, 3.27, -1.64, 0.38, 2.4, 3.41],
        },
        OrtCase {
            avg: Some(true),
            input: [6, 6],
            kernel: [3, 3],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
            ceil_mode: true,
            expected: &[
                -0.54, -0.966667, 0.38, 0.526667, 0.972222, -0.526667, -0.84, 0.085, 0.496667, 1.482222, -0.386667,
                -0.855, -0.065, 0.66, 0.503333, -0.6625,
            ],
        },
        OrtCase {
            avg: Some(false),
            input: [6, 6],
            kernel: [3, 3],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
            ceil_mode: true,
            expected: &[
                -1.215, -1.45, 0.57, 1.58, 1.458333, -0.526667, -0.84, 0.17, 0.745, 1.482222, -0.386667, -1.71, -0.195,
                1.32, 1.006667, -2.65,
            ],
        },
        OrtCase {
            avg: Some(true),
            input: [5, 6],
            kernel: [2, 3],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [0, 1, 0, 0],
            ceil_mode: true,
            expected: &[-0.81, -1.45, 0.57, 1.436667, 0.17, -1.31, 0.496667, 2.26, -0.386667],
        },
        OrtCase {
            avg: Some(true),
            input: [7, 7],
            kernel: [2, 2],
            stride: [2, 2],
            dilation: [2, 2],
            pads: [1, 1, 1, 1],
            ceil_mode: false,
            expected: &[
                -0.48, -0.455, 0.555, 0.53, -0.925, -0.84, 1.18, 1.095, -0.855, -0.7, 1.32, 1.165, -0.41, -0.315,
                0.695, 0.6,
            ],
        },
        OrtCase {
            avg: None,
            input: [7, 7],
            kernel: [2, 2],
            stride: [2, 1],
            dilation: [2, 3],
            pads: [1, 1, 1, 1],
            ceil_mode: true,
            expected: &[
                -0.91, 0.1, 1.11, 2.12, 3.13, 1.11, -0.77, 0.24, 1.25, 2.26, 3.27, 1.25, -0.63, 0.38, 1.39, 2.4, 3.41,
                1.39, -0.63, 0.38, 1.39, 2.4, 3.41, 1.39,
            ],
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let ext = |a: usize| {
            pool_out_extent(
                c.input[a],
                c.kernel[a],
                c.stride[a],
                c.dilation[a],
                c.pads[a],
                c.pads[a + 2],
                c.ceil_mode,
            )
            .unwrap()
        };
        let g = PoolGeometry {
            batch: 1,
            in_h: c.input[0],
            in_w: c.input[1],
            channels: 1,
            out_h: ext(0),
            out_w: ext(1),
            kernel: c.kernel,
            stride: c.stride,
            dilation: c.dilation,
            pads: c.pads,
        };
        assert_eq!(
            g.output_len(),
            c.expected.len(),
            "case {i}: output extent differs from onnxruntime"
        );
        let x = ort_input(g.input_len());
        for isa in Isa::ALL {
            let mut y = vec![f32::NAN; g.output_len()];
            match c.avg {
                None => max_pool_nhwc(isa, &Serial, &g, &x, &mut y),
                Some(include_pad) => avg_pool_nhwc(isa, &Serial, &g, include_pad, &x, &mut y),
            }
            assert_eq!(
                first_mismatch(&y, c.expected, 2e-6, 2e-6),
                None,
                "case {i} on {isa}: {y:?}"
            );
        }
    }
}

#[test]
fn check_rejects_windows_entirely_in_padding() {
    // 3 inputs, kernel 2, stride 2, pads 1/1 in ceil mode: ceil gives 3 windows, the third
    // would start in the end padding only.
    let g = PoolGeometry {
        batch: 1,
        in_h: 3,
        in_w: 3,
        channels: 1,
        out_h: 3,
        out_w: 2,
        kernel: [2, 2],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [1, 1, 1, 1],
    };
    assert_eq!(pool_out_extent(3, 2, 2, 1, 1, 1, true), Some(2));
    assert!(g.check().unwrap_err().contains("no tap in the input"));
    let zero_stride = PoolGeometry {
        stride: [0, 1],
        out_h: 2,
        ..g
    };
    assert!(zero_stride.check().is_err());
    assert!(PoolGeometry { out_h: 2, ..g }.check().is_ok());
}

#[test]
#[should_panic(expected = "max_pool_nhwc: geometry needs input")]
fn wrong_input_length_panics_clearly() {
    let g = PoolGeometry {
        batch: 1,
        in_h: 4,
        in_w: 4,
        channels: 3,
        out_h: 2,
        out_w: 2,
        kernel: [2, 2],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [0; 4],
    };
    let mut y = vec![0.0; g.output_len()];
    max_pool_nhwc(Isa::Avx512, &Serial, &g, &vec![0.0; g.input_len() - 1], &mut y);
}
