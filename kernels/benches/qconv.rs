//! ResNet-50 convolution layers in INT8 (batch 1, one thread) per tier this CPU runs.
//! Throughput is reported in integer operations (2 per multiply-add), so criterion's
//! "elem/s" reads as OP/s. Inputs are <= 127 so the 7-bit AVX2 tier runs on the same data
//! and the exact and 7-bit AVX2 kernels can be compared directly. The 64 -> 256 layer adds a
//! u8 residual, as every ResNet-50 block's last layer does. `<tier>-i16` runs the same
//! layer on i16 activations of an 11-bit grid (i16 residual and output) on each tier that
//! has its own i16 kernel.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qp_kernels::cpu::features;
use qp_kernels::parallel::Serial;
use qp_kernels::qconv::{
    effective_tier_for, packed_weight_len, qconv2d_nhwc_tier, Int8Tier, QConvGeometry, QOutput, QResidual,
};
use std::time::Duration;

/// (name, input extent, cin, cout, kernel, stride, pad)
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 7] = [
    ("stem7x7s2_224x3-64", 224, 3, 64, 7, 2, 3),
    ("3x3s1_56x64-64", 56, 64, 64, 3, 1, 1),
    ("3x3s1_28x128-128", 28, 128, 128, 3, 1, 1),
    ("3x3s1_7x512-512", 7, 512, 512, 3, 1, 1),
    ("1x1_56x64-256+residual", 56, 64, 256, 1, 1, 0),
    ("1x1_14x1024-256", 14, 1024, 256, 1, 1, 0),
    ("1x1_7x2048-512", 7, 2048, 512, 1, 1, 0),
];

fn bench_qconv(c: &mut Criterion) {
    let tiers: Vec<Int8Tier> = Int8Tier::ALL
        .into_iter()
        .filter(|&t| t != Int8Tier::Scalar && t.supported(features()))
        .collect();
    for &(name, hw, cin, cout, k, s, pad) in &LAYERS {
        let out = (hw + 2 * pad - k) / s + 1;
        let g = QConvGeometry {
            batch: 1,
            in_h: hw,
            in_w: hw,
            cin,
            out_h: out,
            out_w: out,
            cout,
            kernel: [k; 2],
            stride: [s; 2],
            dilation: [1, 1],
            pads: [pad; 4],
        };
        let ops = 2 * g.output_len() * k * k * cin;
        let x: Vec<u8> = (0..g.input_len()).map(|i| (i * 7919 % 128) as u8).collect();
        let w: Vec<i8> = (0..packed_weight_len(&g)).map(|i| (i * 104_729 % 255) as i8).collect();
        let bias = vec![-1000i32; cout];
        let scale = vec![1e-4f32; cout];
        let mut y = vec![0u8; g.output_len()];
        let residual: Vec<u8> = (0..g.output_len()).map(|i| (i * 31 % 256) as u8).collect();
        let with_residual = name.ends_with("+residual");
        let mut group = c.benchmark_group(format!("qconv/{name}"));
        group.throughput(Throughput::Elements(ops as u64));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        for &tier in &tiers {
            group.bench_function(BenchmarkId::from_parameter(tier.name()), |bench| {
                bench.iter(|| {
                    qconv2d_nhwc_tier(
                        tier,
                        &Serial,
                        &g,
                        &x,
                        64,
                        &w,
                        &bias,
                        &scale,
                        if with_residual {
                            QResidual::U8 {
                                data: &residual,
                                scale: 0.03,
                                zero: 128,
                            }
                        } else {
                            QResidual::None
                        },
                        true,
                        QOutput::U8 {
                            data: &mut y,
                            scale: 0.05,
                            zero: 0,
                        },
                    )
                })
            });
        }
        let x16: Vec<i16> = (0..g.input_len()).map(|i| (i * 7919 % 2048) as i16).collect();
        let residual16: Vec<i16> = (0..g.output_len()).map(|i| (i * 31 % 2048) as i16).collect();
        let mut y16 = vec![0i16; g.output_len()];
        for &tier in tiers.iter().filter(|&&t| effective_tier_for::<i16>(t) == t) {
            group.bench_function(BenchmarkId::from_parameter(format!("{}-i16", tier.name())), |bench| {
                bench.iter(|| {
                    qconv2d_nhwc_tier(
                        tier,
                        &Serial,
                        &g,
                        &x16,
                        0,
                        &w,
                        &bias,
                        &scale,
                        if with_residual {
                            QResidual::I16 {
                                data: &residual16,
                                scale: 0.003,
                                zero: 0,
                            }
                        } else {
                            QResidual::None
                        },
                        true,
                        QOutput::I16 {
                            data: &mut y16,
                            scale: 0.005,
                            zero: 0,
                            max: 2047,
                        },
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_qconv);
criterion_main!(benches);
