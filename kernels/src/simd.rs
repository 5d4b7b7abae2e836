//! Vector helpers shared by the dense, pooling, elementwise and reorder kernels.
//!
//! Kernels are written once as `#[inline(always)]` bodies generic over [`F32x`], and
//! instantiated inside tiny `#[target_feature]` shims per ISA (the matrixmultiply pattern):
//! the intrinsics inline into the shim and are compiled with its features. The trait's
//! methods are `unsafe` because they execute ISA-specific instructions and, for loads and
//! stores, dereference raw pointers; the shims are only called after [`resolve`] confirmed
//! the CPU has the ISA.

use crate::cpu::{self, Isa};
use crate::parallel::ParallelFor;

/// The tier that actually runs when `requested` is asked for: never above what the CPU
/// (and OS) support, so no kernel executes an instruction the CPU lacks.
pub fn resolve(requested: Isa) -> Isa {
    requested.min(cpu::features().best_isa())
}

/// One SIMD register of f32 lanes and the operations the kernels need.
///
/// # Safety
/// Every method requires the CPU to support the implementing ISA. Pointer methods need
/// `p..p+LANES` (or `p..p+n` for the partial ones) to be valid for the access.
#[cfg(target_arch = "x86_64")]
pub(crate) trait F32x: Copy {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Loads lanes `0..n` (n < LANES), the others are zero; reads nothing past `p + n`.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::V;
    /// Stores lanes `0..n` (n < LANES); writes nothing past `p + n`.
    unsafe fn store_partial(p: *mut f32, n: usize, v: Self::V);
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused.
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise max; a NaN in `a` yields `b` (x86 `max` semantics), so `max(x, 0)` maps
    /// NaN to 0 like `f32::max`.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise min with the same NaN rule as `max`.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    unsafe fn round(a: Self::V) -> Self::V;
    /// `a * 2^n` for integral `n` in [-126, 127].
    unsafe fn mul_pow2(a: Self::V, n: Self::V) -> Self::V;
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::F32x;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx2;

    #[derive(Clone, Copy)]
    pub struct Avx512;

    /// Lane masks for AVX2 partial loads/stores: a window of 8 entries starting at
    /// `8 - n` has its first `n` lanes set.
    static AVX2_TAIL_MASK: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Lanes `0..n` (n <= 8) as an AVX2 mask (sign bit set), computed in registers: the
    /// kernels' tile epilogues use it with `vpmaskmov`. (A copy through a stack buffer
    /// instead made the compiler spill the FP32 tile's accumulators around every
    /// epilogue.)
    ///
    /// # Safety
    /// AVX2 must be enabled (callers are AVX2 vector methods).
    #[inline(always)]
    pub(crate) unsafe fn avx2_lane_mask(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// Lanes `0..n` (n <= 16) as an AVX-512 mask.
    #[inline(always)]
    pub(crate) fn lane_mask16(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    impl F32x for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, n: usize) -> __m256 {
            debug_assert!(n < 8);
            let mask = _mm256_loadu_si256(AVX2_TAIL_MASK.as_ptr().add(8 - n) as *const __m256i);
            _mm256_maskload_ps(p, mask)
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut f32, n: usize, v: __m256) {
            debug_assert!(n < 8);
            let mask = _mm256_loadu_si256(AVX2_TAIL_MASK.as_ptr().add(8 - n) as *const __m256i);
            _mm256_maskstore_ps(p, mask, v)
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
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn round(a: __m256) -> __m256 {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn mul_pow2(a: __m256, n: __m256) -> __m256 {
            // Build 2^n from its exponent bits; n in [-126, 127] keeps it a normal float.
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
            _mm256_mul_ps(a, _mm256_castsi256_ps(bits))
        }
    }

    impl F32x for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, n: usize) -> __m512 {
            debug_assert!(n < 16);
            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p)
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut f32, n: usize, v: __m512) {
            debug_assert!(n < 16);
            _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v)
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
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn round(a: __m512) -> __m512 {
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
        }
        #[inline(always)]
        unsafe fn mul_pow2(a: __m512, n: __m512) -> __m512 {
            _mm512_scalef_ps(a, n)
        }
    }
}

/// Runs `body(task, chunk)` over `data` cut into consecutive chunks of `chunk_len`
/// elements (the last may be shorter), on `par`'s threads. Each task gets exclusive
/// access to its chunk, so kernels that split their output this way need no `unsafe`.
pub(crate) fn for_each_chunk_mut(
    par: &dyn ParallelFor,
    data: &mut [f32],
    chunk_len: usize,
    body: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    assert!(chunk_len > 0, "chunk length must be positive");
    let chunks: Vec<std::sync::Mutex<&mut [f32]>> = data.chunks_mut(chunk_len).map(std::sync::Mutex::new).collect();
    if chunks.len() <= 1 || par.threads() <= 1 {
        for (i, c) in chunks.into_iter().enumerate() {
            body(i, c.into_inner().unwrap_or_else(|e| e.into_inner()));
        }
        return;
    }
    par.run(chunks.len(), &|i| {
        // Each index is run exactly once, so the lock is never contended; it only turns
        // the shared Vec into exclusive access to one chunk.
        let mut guard = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        body(i, &mut guard);
    });
}

/// How many tasks to cut `units` independent units of work into: none beyond one when
/// the whole job is below `min_work` (threading overhead would dominate), else a few per
/// thread for load balance.
pub(crate) fn task_count(par: &dyn ParallelFor, units: usize, work: usize, min_work: usize) -> usize {
    let threads = par.threads().max(1);
    if threads == 1 || work < min_work || units <= 1 {
        return 1;
    }
    units.min(threads * 4)
}
