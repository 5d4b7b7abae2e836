//! Single-thread FP32 FMA throughput, the "peak" that per-layer efficiency is measured
//! against.

use crate::cpu::Isa;
use crate::simd::resolve;
#[cfg(target_arch = "x86_64")]
use crate::simd::{
    x86::{Avx2, Avx512},
    F32x,
};
use std::time::{Duration, Instant};

/// Iterations of the unrolled loop between clock reads.
const INNER_ITERS: u64 = 1 << 14;

/// Measured FP32 GFLOP/s (an FMA counts as 2 flops) of one thread on tier `isa` (lowered
/// to what the CPU supports), running for about `duration_ms` (at least one round).
/// The scalar tier times separate multiply and add, which is what scalar kernels run.
pub fn fma_peak_gflops(isa: Isa, duration_ms: u64) -> f64 {
    let isa = resolve(isa);
    billions_per_second(duration_ms, 16, |rounds| round(isa, rounds))
}

/// Runs `round(warmup)`, then `round(1)` until `duration_ms` have passed (at least once);
/// the operations the timed rounds returned, in billions per second. The warm-up lets the
/// core reach its vector-unit clock before timing starts.
pub(crate) fn billions_per_second(duration_ms: u64, warmup: u64, mut round: impl FnMut(u64) -> u64) -> f64 {
    let budget = Duration::from_millis(duration_ms);
    round(warmup);
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        ops += round(1);
        if start.elapsed() >= budget {
            break;
        }
    }
    ops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Runs `rounds` timed blocks; returns the flops executed.
fn round(isa: Isa, rounds: u64) -> u64 {
    let iters = INNER_ITERS * rounds;
    match isa {
        #[cfg(target_arch = "x86_64")]
        // safety: resolve() confirmed AVX-512.
        Isa::Avx512 => unsafe { fma_loop_avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        // safety: resolve() confirmed AVX2+FMA.
        Isa::Avx2 => unsafe { fma_loop_avx2(iters) },
        _ => scalar_loop(iters),
    }
}

/// Independent chains: more than FMA latency x FMA ports on current cores (4 x 2).
const CHAINS: usize = 12;

fn scalar_loop(iters: u64) -> u64 {
    let mut acc = [0.0f32; CHAINS];
    for (k, a) in acc.iter_mut().enumerate() {
        *a = k as f32;
    }
    let (b, c) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-6f32));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = *a * b + c;
        }
    }
    std::hint::black_box(acc);
    iters * CHAINS as u64 * 2
}

/// # Safety
/// The ISA of `S` must be available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fma_loop_body<S: F32x>(iters: u64) -> u64 {
    let mut acc = [S::zero(); CHAINS];
    for (k, a) in acc.iter_mut().enumerate() {
        *a = S::splat(k as f32);
    }
    // acc = acc * b + c converges to c / (1 - b): no overflow, no denormals.
    let b = S::splat(std::hint::black_box(0.999_999f32));
    let c = S::splat(std::hint::black_box(1e-6f32));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = S::fmadd(*a, b, c);
        }
    }
    std::hint::black_box(&acc);
    iters * CHAINS as u64 * S::LANES as u64 * 2
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> u64 {
    fma_loop_body::<Avx2>(iters)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn fma_loop_avx512(iters: u64) -> u64 {
    fma_loop_body::<Avx512>(iters)
}
