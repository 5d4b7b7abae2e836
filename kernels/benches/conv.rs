//! ResNet-50 convolution layers (batch 1, one thread) per tier, and the 3x3 stride-1 ones
//! also by Winograd F(2x2, 3x3) (`<tier>-winograd`). Throughput is reported in the direct
//! algorithm's floating-point operations (2 per multiply-add), so criterion's "elem/s"
//! reads as FLOP/s, effective FLOP/s for Winograd.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qp_kernels::conv::{
    conv2d_nhwc, conv2d_winograd_nhwc, packed_weight_len, supports_winograd, winograd_scratch_len, winograd_weight_len,
    ConvGeometry, Epilogue,
};
use qp_kernels::cpu::{features, Isa};
use qp_kernels::parallel::Serial;
use qp_kernels::peak::fma_peak_gflops;
use std::time::Duration;

struct Layer {
    name: &'static str,
    in_hw: usize,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
}

const LAYERS: [Layer; 15] = [
    Layer {
        name: "stem7x7s2_224x3-64",
        in_hw: 224,
        cin: 3,
        cout: 64,
        kernel: 7,
        stride: 2,
        pad: 3,
    },
    Layer {
        name: "3x3s1_56x64-64",
        in_hw: 56,
        cin: 64,
        cout: 64,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Layer {
        name: "3x3s1_28x128-128",
        in_hw: 28,
        cin: 128,
        cout: 128,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Layer {
        name: "3x3s1_14x256-256",
        in_hw: 14,
        cin: 256,
        cout: 256,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Layer {
        name: "3x3s1_7x512-512",
        in_hw: 7,
        cin: 512,
        cout: 512,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Layer {
        name: "3x3s2_56x128-128",
        in_hw: 56,
        cin: 128,
        cout: 128,
        kernel: 3,
        stride: 2,
        pad: 1,
    },
    Layer {
        name: "1x1_56x64-256",
        in_hw: 56,
        cin: 64,
        cout: 256,
        kernel: 1,
        stride: 1,
        pad: 0,
    },
    Layer {
        name: "1x1_56x256-64",
        in_hw: 56,
        cin: 256,
        cout: 64,
        kernel: 1,
        stride: 1,
        pad: 0,
    },
    Layer {
        name: "1x1_14x1024-256",
        in_hw: 14,
        cin: 1024,
        cout: 256,
        kernel: 1,
        stride: 1,
        pad: 0,
    },
    Layer {
        name: "1x1_14x256-1024",
        in_hw: 14,
        cin: 256,
        cout: 1024,
        kernel: 1,
        stride: 1,
        pad: 0,
    },
    Layer {
        name: "1x1_7x512-2048",
        in_hw: 7,
        cin: 512,
        cout: 2048,
        kernel: 1,
        stride: 1,
        pad: 0,
    },
    Layer {
        name: "1x1_7x2048-512",
        in_hw: 7,
        cin: 2048,
        cout: 512,
        kernel: 1,
        stride: 1,
        pad: 0,
    },
    Layer {
        name: "1x1s2_56x256-512",
        in_hw: 56,
        cin: 256,
        cout: 512,
        kernel: 1,
        stride: 2,
        pad: 0,
    },
    // The two weight-heavy entries into layer4: 9.4 and 8.4 MB of weights for 49
    // output pixels.
    Layer {
        name: "3x3s2_14x512-512",
        in_hw: 14,
        cin: 512,
        cout: 512,
        kernel: 3,
        stride: 2,
        pad: 1,
    },
    Layer {
        name: "1x1s2_14x1024-2048",
        in_hw: 14,
        cin: 1024,
        cout: 2048,
        kernel: 1,
        stride: 2,
        pad: 0,
    },
];

fn geometry(l: &Layer) -> ConvGeometry {
    let out = (l.in_hw + 2 * l.pad - l.kernel) / l.stride + 1;
    ConvGeometry {
        batch: 1,
        in_h: l.in_hw,
        in_w: l.in_hw,
        cin: l.cin,
        out_h: out,
        out_w: out,
        cout: l.cout,
        kernel: [l.kernel; 2],
        stride: [l.stride; 2],
        dilation: [1, 1],
        pads: [l.pad; 4],
    }
}

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn bench_conv(c: &mut Criterion) {
    let tiers: Vec<Isa> = Isa::ALL.into_iter().filter(|&t| t <= features().best_isa()).collect();
    for &isa in &tiers {
        // The reference for "% of peak": one thread's FMA throughput on this tier.
        eprintln!("{isa} FMA peak: {:.1} GFLOP/s (1 thread)", fma_peak_gflops(isa, 300));
    }
    for l in &LAYERS {
        let g = geometry(l);
        let flops = 2 * g.output_len() * g.kernel[0] * g.kernel[1] * g.cin;
        let (x, w, b) = (
            values(g.input_len()),
            values(packed_weight_len(&g)),
            values(g.bias_len()),
        );
        let mut y = vec![0.0f32; g.output_len()];
        let mut group = c.benchmark_group(format!("conv/{}", l.name));
        group.throughput(Throughput::Elements(flops as u64));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2));
        for &isa in &tiers {
            group.bench_function(BenchmarkId::from_parameter(isa), |bench| {
                bench.iter(|| conv2d_nhwc(isa, &Serial, &g, &x, &w, &b, None, Epilogue::Relu, &mut y))
            });
        }
        if supports_winograd(&g) {
            let u = values(winograd_weight_len(g.cin, g.cout));
            let mut scratch = vec![0.0f32; winograd_scratch_len(&g)];
            for &isa in &tiers {
                group.bench_function(BenchmarkId::from_parameter(format!("{isa}-winograd")), |bench| {
                    bench.iter(|| {
                        conv2d_winograd_nhwc(isa, &Serial, &g, &x, &u, &b, None, Epilogue::Relu, &mut y, &mut scratch)
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
