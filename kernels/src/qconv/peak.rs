//! Single-thread INT8 throughput of each tier's multiply-accumulate: the peak that
//! `qp-engine bench --cpu-profile` measures INT8 layers against, as `crate::peak` is for
//! FP32. The vector tiers run their kernels' own `dot` (4 u8 x s8 products per i32 lane)
//! on independent accumulators; AMX runs `tdpbusd` on four C tiles. Operands stay in
//! registers, so this is the instruction's rate, not a memory-bound one. Ops count 2 per
//! multiply-add.
//!
//! The AVX2 tiers' `dot` is several instructions whose products do not depend on the
//! accumulator, so with fixed operands the compiler computes them once, outside the
//! loop (a first version measured the exact AVX2 tier above AVX512-VNNI). Their loop
//! broadcasts a new input quad per pixel and round, as the kernel does per step: 6 pixels
//! by 2 weight vectors.

use std::hint::black_box;

#[cfg(target_arch = "x86_64")]
use super::tile::QDot;
#[cfg(target_arch = "x86_64")]
use super::{
    amx,
    x86::{Avx2, Avx2Act7, Evex, Vex, Vnni256, Vnni512},
};
use super::{effective_tier, Int8Tier};

/// Iterations of the unrolled loop between clock reads.
const INNER_ITERS: u64 = 1 << 14;
/// Independent accumulators: more than `vpdpbusd` latency x ports on current cores (5 x 2).
const CHAINS: usize = 12;

/// Measured INT8 GOP/s of one thread on `tier` (or the tier this CPU runs in its place,
/// `effective_tier`), for about `duration_ms` (at least one round).
pub fn int8_peak_gops(tier: Int8Tier, duration_ms: u64) -> f64 {
    let tier = effective_tier(tier);
    crate::peak::billions_per_second(duration_ms, 4, |rounds| round(tier, rounds))
}

/// Runs `rounds` timed blocks on a supported `tier`; returns the ops executed.
fn round(tier: Int8Tier, rounds: u64) -> u64 {
    let iters = INNER_ITERS * rounds;
    match tier {
        // safety (every arm): `effective_tier` returned a tier this CPU supports, and each
        // shim enables exactly that tier's features.
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Amx => unsafe { amx::tdpbusd_loop(iters / 8) },
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx512Vnni => unsafe { vnni512(iters) },
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx512Vnni256 => unsafe { vnni256_evex(iters) },
        #[cfg(target_arch = "x86_64")]
        Int8Tier::AvxVnni => unsafe { vnni256_vex(iters) },
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx2 => unsafe { avx2(iters) },
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx2Act7 => unsafe { avx2_act7(iters) },
        _ => scalar_loop(iters),
    }
}

/// What the scalar tier's kernel does per product: widen, multiply, add.
fn scalar_loop(iters: u64) -> u64 {
    let mut acc = [0i32; CHAINS];
    let (mut x, w) = (black_box(200u8), black_box(-3i8));
    for _ in 0..iters {
        // A new input each round and pixel, or the products would be computed once.
        for (k, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(i32::from(x.wrapping_add(k as u8)) * i32::from(w));
        }
        x = x.wrapping_add(1);
        // Kept from vectorizing: this is the scalar tier's rate.
        acc = black_box(acc);
    }
    black_box(acc);
    iters * CHAINS as u64 * 2
}

/// `iters` rounds of `V::dot` on `CHAINS` accumulators, with the same operands: for
/// `dot`s that accumulate in one instruction (`vpdpbusd`), which nothing can hoist.
///
/// # Safety
/// The ISA of `V` must be enabled.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fused_dot_loop<V: QDot<u8>>(iters: u64) -> u64 {
    let weights = black_box([3i8; 64]);
    // safety (this block): the ISA is enabled (contract); `weights` holds 64 >= 4 * LANES
    // bytes.
    unsafe {
        let w = V::load_weights(weights.as_ptr());
        let x = V::load_quad(black_box(0x0102_0304u32.to_le_bytes()).as_ptr());
        let mut acc = [V::zero(); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = V::dot(*a, x, w);
            }
        }
        black_box(&acc);
    }
    iters * (CHAINS * V::LANES * 4 * 2) as u64
}

/// `iters` rounds of a 6-pixel by 2-vector tile step: 6 input quads broadcast (new ones
/// each round), 12 `V::dot`s.
///
/// # Safety
/// The ISA of `V` must be enabled.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_step_loop<V: QDot<u8>>(iters: u64) -> u64 {
    const PIXELS: usize = CHAINS / 2;
    let weights = black_box([3i8; 128]);
    // safety (this block): the ISA is enabled (contract); `weights` holds 128 >= 2 * 4 *
    // LANES bytes.
    unsafe {
        let w = [
            V::load_weights(weights.as_ptr()),
            V::load_weights(weights.as_ptr().add(64)),
        ];
        let mut quad = black_box(0x0102_0304u32);
        let mut acc = [[V::zero(); 2]; PIXELS];
        for _ in 0..iters {
            for (i, a) in acc.iter_mut().enumerate() {
                let x = V::load_quad(quad.wrapping_add(i as u32).to_le_bytes().as_ptr());
                a[0] = V::dot(a[0], x, w[0]);
                a[1] = V::dot(a[1], x, w[1]);
            }
            quad = quad.rotate_left(1);
        }
        black_box(&acc);
    }
    iters * (CHAINS * V::LANES * 4 * 2) as u64
}

/// # Safety
/// AVX512-VNNI with F/BW/VL usable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
unsafe fn vnni512(iters: u64) -> u64 {
    // safety: the features are enabled here.
    unsafe { fused_dot_loop::<Vnni512>(iters) }
}

/// # Safety
/// As `vnni512`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
unsafe fn vnni256_evex(iters: u64) -> u64 {
    // safety: the features are enabled here.
    unsafe { fused_dot_loop::<Vnni256<Evex>>(iters) }
}

/// # Safety
/// AVX-VNNI and AVX2 usable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avxvnni,avx2")]
unsafe fn vnni256_vex(iters: u64) -> u64 {
    // safety: the features are enabled here.
    unsafe { fused_dot_loop::<Vnni256<Vex>>(iters) }
}

/// # Safety
/// AVX2 usable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(iters: u64) -> u64 {
    // safety: the features are enabled here.
    unsafe { tile_step_loop::<Avx2>(iters) }
}

/// # Safety
/// AVX2 usable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_act7(iters: u64) -> u64 {
    // safety: the features are enabled here.
    unsafe { tile_step_loop::<Avx2Act7>(iters) }
}
