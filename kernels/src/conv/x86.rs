//! x86-64 instantiations of the generic tile kernel: vector types for AVX2+FMA and
//! AVX-512, and the `#[target_feature]` shims that compile the kernel for each.
//!
//! Tile shapes (accumulators must stay in registers):
//! - AVX-512: 14 pixels x 32 channels (two panels) = 28 zmm accumulators + 2 weight
//!   vectors, input broadcast folded into the FMA. 14 divides ResNet-50's output widths
//!   (112, 56, 28, 14) and, with tiles flattened over rows, 7x7 maps (49 = 3*14 + 7).
//! - AVX2: 6 pixels x 16 channels (one panel, two ymm) = 12 ymm accumulators + 2 weight
//!   vectors + 1 broadcast = 15 of 16 registers.

use std::arch::x86_64::*;
use std::ops::Range;

use super::tile::{remainder_tile, run_range, Block, Vector};
use super::winograd::{run_phase, Phase, WinogradJob};
use super::{Job, Tiling};
use crate::simd::x86::{avx2_lane_mask, lane_mask16};

pub(super) struct Avx512;

impl Vector for Avx512 {
    type R = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        // safety: the caller's pointer is readable (trait contract).
        _mm512_set1_ps(unsafe { *p })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // safety: 16 readable floats (trait contract).
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
        // safety: masked-off lanes are neither read nor fault; lanes 0..n are readable.
        unsafe { _mm512_maskz_loadu_ps(lane_mask16(n), p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn relu(a: __m512) -> __m512 {
        _mm512_max_ps(a, _mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, a: __m512) {
        // safety: 16 writable floats (trait contract).
        unsafe { _mm512_storeu_ps(p, a) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, a: __m512, n: usize) {
        // safety: masked-off lanes are not written; lanes 0..n are writable.
        unsafe { _mm512_mask_storeu_ps(p, lane_mask16(n), a) }
    }
    #[inline(always)]
    fn prefetch(p: *const f32) {
        // safety: a prefetch is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    /// `prefetchw`: the line arrives owned, so the tile's stores to it need no second
    /// request for ownership. The stem writes 3.2 MB that is in no cache at batch 1:
    /// 1.34 -> 1.11 ms, the whole model 32.6 -> 31.8 ms summed over its layers (2
    /// threads). Every AVX-512 CPU has the instruction; from asm because the `prfchw`
    /// target feature is unstable.
    #[inline(always)]
    fn prefetch_write(p: *const f32) {
        // safety: a prefetch is a hint that never faults, whatever the address; it reads
        // and writes no register or memory the compiler tracks.
        unsafe { std::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, readonly, preserves_flags)) }
    }
}

pub(super) struct Avx2;

impl Vector for Avx2 {
    type R = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        // safety: the caller's pointer is readable (trait contract).
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // safety: 8 readable floats (trait contract).
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
        // safety: masked-off lanes are neither read nor fault; lanes 0..n are readable.
        unsafe { _mm256_maskload_ps(p, avx2_lane_mask(n)) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn relu(a: __m256) -> __m256 {
        _mm256_max_ps(a, _mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, a: __m256) {
        // safety: 8 writable floats (trait contract).
        unsafe { _mm256_storeu_ps(p, a) }
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, a: __m256, n: usize) {
        // safety: masked-off lanes are not written; lanes 0..n are writable.
        unsafe { _mm256_maskstore_ps(p, avx2_lane_mask(n), a) }
    }
    #[inline(always)]
    fn prefetch(p: *const f32) {
        // safety: a prefetch is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
}

pub(super) const AVX512_MR: usize = 14;
pub(super) const AVX2_MR: usize = super::strided_rows::AVX2_MR;

pub(super) struct Avx512Tiles;
impl Tiling for Avx512Tiles {
    const PIXELS: usize = AVX512_MR;
    const PANELS: usize = 2;
}

pub(super) struct Avx2Tiles;
impl Tiling for Avx2Tiles {
    const PIXELS: usize = AVX2_MR;
    const PANELS: usize = 1;
}

/// AVX-512 tiles over pixels `px` and 32-channel tiles `co`.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ must be usable; `job` passed `check_args`; no other thread writes
/// the output elements of (`px` x channels of `co`) meanwhile; `px.start` is a multiple of
/// `Avx512Tiles::PIXELS`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(super) unsafe fn run_avx512(job: &Job, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, block: Block, one_panel: bool| {
        remainder_tile!(Avx512, 2, 1, job, q0, mr, block, one_panel,
            [1 2 3 4 5 6 7 8 9 10 11 12 13])
    };
    // safety: this function's contract is `run_range`'s, with AVX-512 enabled here.
    unsafe { run_range::<Avx512, AVX512_MR, 2, 1>(job, px, co, remainder) }
}

/// AVX2+FMA tiles over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// AVX2 and FMA must be usable; otherwise as `run_avx512` with `Avx2Tiles`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_avx2(job: &Job, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, block: Block, one_panel: bool| remainder_tile!(Avx2, 2, 2, job, q0, mr, block, one_panel, [1 2 3 4 5]);
    // safety: this function's contract is `run_range`'s, with AVX2+FMA enabled here.
    unsafe { run_range::<Avx2, AVX2_MR, 2, 2>(job, px, co, remainder) }
}

/// One Winograd task (`winograd::run_phase`) on AVX-512: 14 tiles x 32 channels.
///
/// # Safety
/// AVX-512 F/BW/VL/DQ must be usable; otherwise `run_phase`'s contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
pub(super) unsafe fn winograd_avx512(job: &WinogradJob, phase: Phase, r: Range<usize>, co: Range<usize>) {
    // safety: forwarded, with AVX-512 enabled here.
    unsafe { run_phase::<Avx512, AVX512_MR, 2, 1>(job, phase, r, co) }
}

/// One Winograd task on AVX2+FMA: 6 tiles x 16 channels.
///
/// # Safety
/// AVX2 and FMA must be usable; otherwise `run_phase`'s contract.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn winograd_avx2(job: &WinogradJob, phase: Phase, r: Range<usize>, co: Range<usize>) {
    // safety: forwarded, with AVX2+FMA enabled here.
    unsafe { run_phase::<Avx2, AVX2_MR, 2, 2>(job, phase, r, co) }
}
