//! x86-64 instantiations of the generic INT8 tile kernel: vector types and the
//! `#[target_feature]` shims that compile the kernel for each tier.
//!
//! How each type computes `dot` (4 u8 x s8 products per i32 lane):
//! - `Avx2`: weights split into their even bytes (0, 2) and odd bytes (1, 3) of each lane,
//!   sign-extended to 16 bit by shifts; inputs likewise zero-extended; two `vpmaddwd` give
//!   `x0*w0 + x2*w2` and `x1*w1 + x3*w3`. Exact for every u8.
//! - `Avx2Act7`: `vpmaddubsw` (pairs to saturating i16) then `vpmaddwd` by ones. A pair
//!   sum reaches at most 2 * 127 * 128 = 32512 < 32767 when inputs are <= 127; with full
//!   u8 it could saturate, hence that tier's input check.
//! - `Vnni256<D>`: `vpdpbusd` ymm, from AVX512-VNNI+VL (EVEX) or AVX-VNNI (VEX); the two
//!   differ only in that one instruction (`Dpbusd256`).
//! - `Vnni512`: `vpdpbusd` zmm.
//!
//! On i16 activations (`QDot<i16>`) the weights are split into even and odd bytes as for
//! `Avx2` (with the i16 packing, the weights of input channels (0, 1) and (2, 3)); each
//! pixel's 4 inputs are two i32 words broadcast as they are; `vpmaddwd` (`Avx2`) or
//! `vpdpwssd` (`Vnni256`, `Vnni512`) multiplies and sums each pair.
//!
//! Tile shapes (accumulators in registers):
//! - `Vnni512`: 14 pixels x 32 channels = 28 zmm accumulators + 2 weight vectors + the
//!   input broadcast, as the FP32 AVX-512 tile.
//! - `Vnni256`: 6 pixels x 16 channels = 12 ymm + 2 weights + 1 broadcast.
//! - `Avx2`: 4 pixels x 16 channels = 8 ymm + 4 weight halves + 2 input halves.
//! - `Avx2Act7`: 4 pixels x 16 channels = 8 ymm + 2 weights + input + ones + product.
//! - i16 activations: `Vnni512` 12 pixels x 32 channels = 24 zmm + 4 weight halves + 2
//!   broadcasts; `Vnni256` and `Avx2` 4 pixels x 16 channels = 8 ymm + 4 + 2 (AVX-VNNI
//!   has 16 ymm registers).
//!
//! The tier tests run every type the CPU has natively; `emulated_tests` also runs the VNNI
//! tilings with a plain-Rust vector, so their indexing is tested on CPUs without AVX512-
//! VNNI or AVX-VNNI (there only the intrinsic wrappers below go untested).

use std::arch::x86_64::*;
use std::marker::PhantomData;
use std::ops::Range;

use super::tile::{remainder_tile, run_range, QDot, QVector};
use super::{Job, Tiling};
use crate::simd::x86::{avx2_lane_mask, lane_mask16};

/// The 256-bit i32/f32 epilogue methods, shared by every ymm vector type.
macro_rules! ymm_epilogue {
    () => {
        type I = __m256i;
        type F = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline(always)]
        unsafe fn load_i32(p: *const i32, n: usize) -> __m256i {
            if n == 8 {
                // safety: 8 readable lanes (trait contract).
                return unsafe { _mm256_loadu_si256(p.cast()) };
            }
            // safety: masked-off lanes are neither read nor fault; lanes 0..n are
            // readable (trait contract).
            unsafe { _mm256_maskload_epi32(p, avx2_lane_mask(n)) }
        }
        #[inline(always)]
        unsafe fn add_i32(a: __m256i, b: __m256i) -> __m256i {
            _mm256_add_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn to_f32(a: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(a)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load_f32(p: *const f32, n: usize) -> __m256 {
            if n == 8 {
                // safety: 8 readable lanes (trait contract).
                return unsafe { _mm256_loadu_ps(p) };
            }
            // safety: as `load_i32`.
            unsafe { _mm256_maskload_ps(p, avx2_lane_mask(n)) }
        }
        #[inline(always)]
        unsafe fn load_u8(p: *const u8, n: usize) -> __m256 {
            // AVX2 has no masked byte loads or stores: partial u8 vectors go through a
            // stack copy (ragged channel counts only).
            if n == 8 {
                // safety: 8 readable bytes (trait contract).
                let b = unsafe { _mm_loadl_epi64(p.cast()) };
                return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
            }
            let mut bytes = [0u8; 16];
            // safety: lanes 0..n are readable (trait contract); n <= 8.
            unsafe {
                std::ptr::copy_nonoverlapping(p, bytes.as_mut_ptr(), n);
                let b = _mm_loadl_epi64(bytes.as_ptr().cast());
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
            }
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
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn to_i32_round(a: __m256) -> __m256i {
            // Rounds as MXCSR says: to nearest even, the only mode Rust code runs in.
            // Values below i32's range are raised to its bottom first: the conversion
            // gives i32::MIN for them either way, but raised the invalid-operation flag,
            // which makes the executors refuse the run (the AVX-512 conversion
            // suppresses it). NaN also becomes i32::MIN, as before.
            _mm256_cvtps_epi32(_mm256_max_ps(a, _mm256_set1_ps(-2_147_483_648.0)))
        }
        #[inline(always)]
        unsafe fn splat_i32(x: i32) -> __m256i {
            _mm256_set1_epi32(x)
        }
        #[inline(always)]
        unsafe fn max_i32(a: __m256i, b: __m256i) -> __m256i {
            _mm256_max_epi32(a, b)
        }
        #[inline(always)]
        unsafe fn store_f32(p: *mut f32, a: __m256, n: usize) {
            // Whole vectors unmasked: a masked store costs more, and much more on
            // some AMD cores.
            if n == 8 {
                // safety: 8 writable lanes (trait contract).
                return unsafe { _mm256_storeu_ps(p, a) };
            }
            // safety: masked-off lanes are not written; lanes 0..n are writable (trait
            // contract).
            unsafe { _mm256_maskstore_ps(p, avx2_lane_mask(n), a) }
        }
        #[inline(always)]
        unsafe fn load_i16(p: *const i16, n: usize) -> __m256 {
            if n == 8 {
                // safety: 8 readable elements (trait contract).
                let w = unsafe { _mm_loadu_si128(p.cast()) };
                return _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(w));
            }
            let mut words = [0i16; 8];
            // safety: lanes 0..n are readable (trait contract); n <= 8.
            unsafe {
                std::ptr::copy_nonoverlapping(p, words.as_mut_ptr(), n);
                let w = _mm_loadu_si128(words.as_ptr().cast());
                _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(w))
            }
        }
        #[inline(always)]
        unsafe fn store_i16(p: *mut i16, a: __m256i, n: usize) {
            // Lanes in i16's range: the signed pack saturates nothing.
            let words = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
            if n == 8 {
                // safety: 8 writable elements (trait contract).
                return unsafe { _mm_storeu_si128(p.cast(), words) };
            }
            let mut lanes = [0i16; 8];
            // safety: lanes 0..n are writable (trait contract); n <= 8.
            unsafe {
                _mm_storeu_si128(lanes.as_mut_ptr().cast(), words);
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
            }
        }
        #[inline(always)]
        fn prefetch(p: *const u8) {
            // safety: a prefetch is a hint that never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
        }
        #[inline(always)]
        unsafe fn store_u8(p: *mut u8, a: __m256i, n: usize) {
            // Lanes in 0..=255: the packs saturate nothing.
            let words = _mm_packus_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
            let bytes = _mm_packus_epi16(words, words);
            if n == 8 {
                // safety: 8 writable bytes (trait contract).
                return unsafe { _mm_storel_epi64(p.cast(), bytes) };
            }
            let mut lanes = [0u8; 16];
            // safety: lanes 0..n are writable (trait contract); n <= 8.
            unsafe {
                _mm_storeu_si128(lanes.as_mut_ptr().cast(), bytes);
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
            }
        }
    };
}

/// Exact AVX2 dot products through 16-bit halves and `vpmaddwd`.
pub(super) struct Avx2;

impl QVector for Avx2 {
    ymm_epilogue!();
}

/// Each lane's 4 weight bytes at `p` as two i16 pairs: (bytes 0, 2) and (bytes 1, 3).
///
/// # Safety
/// AVX2 is enabled; 32 readable bytes at `p`.
#[inline(always)]
unsafe fn weight_halves_256(p: *const i8) -> (__m256i, __m256i) {
    // safety: 32 readable bytes (contract).
    let w = unsafe { _mm256_loadu_si256(p.cast()) };
    let even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(w));
    let odd = _mm256_srai_epi16::<8>(w);
    (even, odd)
}

/// i16 inputs 0, 1 and 2, 3 at `p`, each pair broadcast as one i32 word.
///
/// # Safety
/// AVX is enabled; 4 readable elements at `p`.
#[inline(always)]
unsafe fn input_pairs_256(p: *const i16) -> (__m256i, __m256i) {
    // safety: 4 readable elements (contract).
    let (lo, hi) = unsafe {
        (
            p.cast::<i32>().read_unaligned(),
            p.add(2).cast::<i32>().read_unaligned(),
        )
    };
    (_mm256_set1_epi32(lo), _mm256_set1_epi32(hi))
}

impl QDot<u8> for Avx2 {
    /// (even bytes, odd bytes) of each lane's 4 weights, as i16 pairs.
    type W = (__m256i, __m256i);
    /// (input bytes 0 and 2, bytes 1 and 3), as i16 pairs.
    type X = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn load_weights(p: *const i8) -> (__m256i, __m256i) {
        // safety: forwarded (trait contract).
        unsafe { weight_halves_256(p) }
    }
    #[inline(always)]
    unsafe fn load_quad(p: *const u8) -> (__m256i, __m256i) {
        // safety: 4 readable bytes (trait contract).
        let x = _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() });
        let even = _mm256_and_si256(x, _mm256_set1_epi32(0x00ff_00ff));
        let odd = _mm256_srli_epi16::<8>(x);
        (even, odd)
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: (__m256i, __m256i), w: (__m256i, __m256i)) -> __m256i {
        let even = _mm256_madd_epi16(x.0, w.0);
        let odd = _mm256_madd_epi16(x.1, w.1);
        _mm256_add_epi32(acc, _mm256_add_epi32(even, odd))
    }
}

impl QDot<i16> for Avx2 {
    /// The weights of input channels (0, 1) and (2, 3) of each lane (the i16 packing).
    type W = (__m256i, __m256i);
    /// Inputs (0, 1) and (2, 3).
    type X = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn load_weights(p: *const i8) -> (__m256i, __m256i) {
        // safety: forwarded (trait contract).
        unsafe { weight_halves_256(p) }
    }
    #[inline(always)]
    unsafe fn load_quad(p: *const i16) -> (__m256i, __m256i) {
        // safety: forwarded (trait contract).
        unsafe { input_pairs_256(p) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: (__m256i, __m256i), w: (__m256i, __m256i)) -> __m256i {
        let low = _mm256_madd_epi16(x.0, w.0);
        let high = _mm256_madd_epi16(x.1, w.1);
        _mm256_add_epi32(acc, _mm256_add_epi32(low, high))
    }
}

/// AVX2 `vpmaddubsw` dot products, exact only for inputs <= 127.
pub(super) struct Avx2Act7;

impl QVector for Avx2Act7 {
    ymm_epilogue!();
}

impl QDot<u8> for Avx2Act7 {
    type W = __m256i;
    type X = __m256i;
    #[inline(always)]
    unsafe fn load_weights(p: *const i8) -> __m256i {
        // safety: 32 readable bytes (trait contract).
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_quad(p: *const u8) -> __m256i {
        // safety: 4 readable bytes (trait contract).
        _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(x, w);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

/// The two instructions in which the two 256-bit VNNI encodings differ.
pub(super) trait Vnni256Encoding {
    /// `acc + Σ4 u8(x) * s8(w)` per i32 lane.
    ///
    /// # Safety
    /// The instruction's features must be enabled.
    unsafe fn dpbusd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i;
    /// `acc + Σ2 i16(x) * i16(w)` per i32 lane.
    ///
    /// # Safety
    /// The instruction's features must be enabled.
    unsafe fn dpwssd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i;
}

/// EVEX `vpdpbusd` / `vpdpwssd` ymm (AVX512-VNNI + AVX512-VL).
pub(super) struct Evex;

impl Vnni256Encoding for Evex {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, x, w)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, x, w)
    }
}

/// VEX `vpdpbusd` / `vpdpwssd` ymm (AVX-VNNI).
pub(super) struct Vex;

impl Vnni256Encoding for Vex {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, x, w)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, x, w)
    }
}

/// `vpdpbusd` / `vpdpwssd` on ymm, 8 lanes, with either encoding.
pub(super) struct Vnni256<D>(PhantomData<D>);

impl<D: Vnni256Encoding> QVector for Vnni256<D> {
    ymm_epilogue!();
}

impl<D: Vnni256Encoding> QDot<u8> for Vnni256<D> {
    type W = __m256i;
    type X = __m256i;
    #[inline(always)]
    unsafe fn load_weights(p: *const i8) -> __m256i {
        // safety: 32 readable bytes (trait contract).
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_quad(p: *const u8) -> __m256i {
        // safety: 4 readable bytes (trait contract).
        _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        // safety: the encoding's features are enabled (trait contract).
        unsafe { D::dpbusd(acc, x, w) }
    }
}

impl<D: Vnni256Encoding> QDot<i16> for Vnni256<D> {
    /// The weights of input channels (0, 1) and (2, 3) of each lane (the i16 packing).
    type W = (__m256i, __m256i);
    /// Inputs (0, 1) and (2, 3).
    type X = (__m256i, __m256i);
    #[inline(always)]
    unsafe fn load_weights(p: *const i8) -> (__m256i, __m256i) {
        // safety: forwarded (trait contract).
        unsafe { weight_halves_256(p) }
    }
    #[inline(always)]
    unsafe fn load_quad(p: *const i16) -> (__m256i, __m256i) {
        // safety: forwarded (trait contract).
        unsafe { input_pairs_256(p) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: (__m256i, __m256i), w: (__m256i, __m256i)) -> __m256i {
        // safety: the encoding's features are enabled (trait contract).
        unsafe { D::dpwssd(D::dpwssd(acc, x.0, w.0), x.1, w.1) }
    }
}

/// `vpdpbusd` on zmm, 16 lanes.
pub(super) struct Vnni512;

impl QDot<u8> for Vnni512 {
    type W = __m512i;
    type X = __m512i;
    #[inline(always)]
    unsafe fn load_weights(p: *const i8) -> __m512i {
        // safety: 64 readable bytes (trait contract).
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_quad(p: *const u8) -> __m512i {
        // safety: 4 readable bytes (trait contract).
        _mm512_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, x: __m512i, w: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, x, w)
    }
}

impl QDot<i16> for Vnni512 {
    /// The weights of input channels (0, 1) and (2, 3) of each lane (the i16 packing).
    type W = (__m512i, __m512i);
    /// Inputs (0, 1) and (2, 3).
    type X = (__m512i, __m512i);
    #[inline(always)]
    unsafe fn load_weights(p: *const i8) -> (__m512i, __m512i) {
        // safety: 64 readable bytes (trait contract).
        let w = unsafe { _mm512_loadu_si512(p.cast()) };
        (
            _mm512_srai_epi16::<8>(_mm512_slli_epi16::<8>(w)),
            _mm512_srai_epi16::<8>(w),
        )
    }
    #[inline(always)]
    unsafe fn load_quad(p: *const i16) -> (__m512i, __m512i) {
        // safety: 4 readable elements (trait contract).
        let (lo, hi) = unsafe {
            (
                p.cast::<i32>().read_unaligned(),
                p.add(2).cast::<i32>().read_unaligned(),
            )
        };
        (_mm512_set1_epi32(lo), _mm512_set1_epi32(hi))
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, x: (__m512i, __m512i), w: (__m512i, __m512i)) -> __m512i {
        _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(acc, x.0, w.0), x.1, w.1)
    }
}

impl QVector for Vnni512 {
    type I = __m512i;
    type F = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn load_i32(p: *const i32, n: usize) -> __m512i {
        // safety: masked-off lanes are neither read nor fault; lanes 0..n are readable.
        unsafe { _mm512_maskz_loadu_epi32(lane_mask16(n), p) }
    }
    #[inline(always)]
    unsafe fn add_i32(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn to_f32(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn load_f32(p: *const f32, n: usize) -> __m512 {
        // safety: masked-off lanes are neither read nor fault; lanes 0..n are readable.
        unsafe { _mm512_maskz_loadu_ps(lane_mask16(n), p) }
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8, n: usize) -> __m512 {
        let b = if n == 16 {
            // A whole vector's bytes: a plain load, which the widening folds in.
            // safety: 16 readable bytes.
            unsafe { _mm_loadu_si128(p.cast()) }
        } else {
            // safety: masked-off bytes are neither read nor fault; bytes 0..n are readable.
            unsafe { _mm_maskz_loadu_epi8(lane_mask16(n), p.cast()) }
        };
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))
    }
    #[inline(always)]
    unsafe fn load_i16(p: *const i16, n: usize) -> __m512 {
        let w = if n == 16 {
            // safety: 16 readable elements.
            unsafe { _mm256_loadu_si256(p.cast()) }
        } else {
            // safety: masked-off elements are neither read nor fault; 0..n are readable.
            unsafe { _mm256_maskz_loadu_epi16(lane_mask16(n), p) }
        };
        _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(w))
    }
    #[inline(always)]
    unsafe fn store_i16(p: *mut i16, a: __m512i, n: usize) {
        // Lanes in i16's range: the signed saturating narrowing changes nothing.
        if n == 16 {
            // safety: 16 writable elements.
            return unsafe { _mm256_storeu_si256(p.cast(), _mm512_cvtsepi32_epi16(a)) };
        }
        // safety: masked-off elements are not written; 0..n are writable.
        unsafe { _mm512_mask_cvtsepi32_storeu_epi16(p.cast(), lane_mask16(n), a) }
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
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        _mm512_max_ps(a, b)
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        _mm512_min_ps(a, b)
    }
    #[inline(always)]
    unsafe fn to_i32_round(a: __m512) -> __m512i {
        _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
    }
    #[inline(always)]
    unsafe fn splat_i32(x: i32) -> __m512i {
        _mm512_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn max_i32(a: __m512i, b: __m512i) -> __m512i {
        _mm512_max_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn store_f32(p: *mut f32, a: __m512, n: usize) {
        // safety: masked-off lanes are not written; lanes 0..n are writable.
        unsafe { _mm512_mask_storeu_ps(p, lane_mask16(n), a) }
    }
    #[inline(always)]
    fn prefetch(p: *const u8) {
        // safety: a prefetch is a hint that never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store_u8(p: *mut u8, a: __m512i, n: usize) {
        // Both forms saturate unsigned (lanes above 255, or negative as i32, give 255).
        if n == 16 {
            // A whole vector narrowed in a register and stored plainly: the masked
            // narrowing store costs more (1x1 64 -> 256 layer, AMX, one thread: 215 ->
            // 201 µs).
            // safety: 16 writable bytes.
            return unsafe { _mm_storeu_si128(p.cast(), _mm512_cvtusepi32_epi8(a)) };
        }
        // safety: masked-off bytes are not written; bytes 0..n are writable.
        unsafe { _mm512_mask_cvtusepi32_storeu_epi8(p.cast(), lane_mask16(n), a) }
    }
    #[inline(always)]
    unsafe fn store_nonnegative_u8(p: *mut u8, a: __m512, n: usize) {
        // No clamp to 255 first: a lane too large for i32 converts to 0x8000_0000, which
        // `store_u8`'s unsigned saturating narrowing takes to 255 like every value above
        // 255. One to three vector operations fewer per 16 outputs than the generic
        // requantization.
        // safety: forwarded.
        unsafe { Self::store_u8(p, Self::to_i32_round(a), n) }
    }
}

pub(super) const VNNI512_MR: usize = 14;
pub(super) const VNNI256_MR: usize = 6;
const AVX2_MR: usize = 4;
const AVX2_ACT7_MR: usize = 4;

pub(super) const VNNI512_I16_MR: usize = 12;
pub(super) const VNNI256_I16_MR: usize = 4;

pub(super) struct Vnni512I16Tiles;
impl Tiling for Vnni512I16Tiles {
    const PIXELS: usize = VNNI512_I16_MR;
    const PANELS: usize = 2;
}

pub(super) struct Vnni256I16Tiles;
impl Tiling for Vnni256I16Tiles {
    const PIXELS: usize = VNNI256_I16_MR;
    const PANELS: usize = 1;
}

pub(super) struct Vnni512Tiles;
impl Tiling for Vnni512Tiles {
    const PIXELS: usize = VNNI512_MR;
    const PANELS: usize = 2;
}

pub(super) struct Vnni256Tiles;
impl Tiling for Vnni256Tiles {
    const PIXELS: usize = VNNI256_MR;
    const PANELS: usize = 1;
}

pub(super) struct Avx2Tiles;
impl Tiling for Avx2Tiles {
    const PIXELS: usize = AVX2_MR;
    const PANELS: usize = 1;
}

pub(super) struct Avx2Act7Tiles;
impl Tiling for Avx2Act7Tiles {
    const PIXELS: usize = AVX2_ACT7_MR;
    const PANELS: usize = 1;
}

/// AVX512-VNNI zmm tiles over pixels `px` and 32-channel tiles `co`.
///
/// # Safety
/// AVX-512 F/BW/VL and AVX512-VNNI must be usable; `job` passed `check_args`; no other
/// thread writes the output elements of (`px` x channels of `co`) meanwhile; `px.start` is
/// a multiple of `Vnni512Tiles::PIXELS`.
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
pub(super) unsafe fn run_avx512_vnni(job: &Job<u8>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| {
        remainder_tile!(Vnni512, 2, 1, job, q0, mr, first_panel, one_panel,
            [1 2 3 4 5 6 7 8 9 10 11 12 13])
    };
    // safety: this function's contract is `run_range`'s, with the features enabled here.
    unsafe { run_range::<Vnni512, u8, VNNI512_MR, 2, 1>(job, px, co, remainder) }
}

/// AVX512-VNNI ymm tiles over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// As `run_avx512_vnni`, with `Vnni256Tiles`.
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
pub(super) unsafe fn run_avx512_vnni_256(job: &Job<u8>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Vnni256<Evex>, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3 4 5]);
    // safety: this function's contract is `run_range`'s, with the features enabled here.
    unsafe { run_range::<Vnni256<Evex>, u8, VNNI256_MR, 2, 2>(job, px, co, remainder) }
}

/// AVX-VNNI ymm tiles over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// AVX-VNNI and AVX2 must be usable; otherwise as `run_avx512_vnni_256`.
#[target_feature(enable = "avxvnni,avx2")]
pub(super) unsafe fn run_avx_vnni(job: &Job<u8>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Vnni256<Vex>, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3 4 5]);
    // safety: this function's contract is `run_range`'s, with the features enabled here.
    unsafe { run_range::<Vnni256<Vex>, u8, VNNI256_MR, 2, 2>(job, px, co, remainder) }
}

/// Exact AVX2 tiles over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// AVX2 must be usable; otherwise as `run_avx512_vnni` with `Avx2Tiles`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn run_avx2(job: &Job<u8>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Avx2, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3]);
    // safety: this function's contract is `run_range`'s, with AVX2 enabled here.
    unsafe { run_range::<Avx2, u8, AVX2_MR, 2, 2>(job, px, co, remainder) }
}

/// AVX2 `vpmaddubsw` tiles over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// As `run_avx2` with `Avx2Act7Tiles`, and every input byte and `x_zero` <= 127.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn run_avx2_act7(job: &Job<u8>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Avx2Act7, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3]);
    // safety: this function's contract is `run_range`'s, with AVX2 enabled here.
    unsafe { run_range::<Avx2Act7, u8, AVX2_ACT7_MR, 2, 2>(job, px, co, remainder) }
}

/// AVX512-VNNI zmm tiles on i16 activations over pixels `px` and 32-channel tiles `co`.
///
/// # Safety
/// As `run_avx512_vnni`, with `Vnni512I16Tiles`.
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
pub(super) unsafe fn run_avx512_vnni_i16(job: &Job<i16>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| {
        remainder_tile!(Vnni512, 2, 1, job, q0, mr, first_panel, one_panel,
            [1 2 3 4 5 6 7 8 9 10 11])
    };
    // safety: this function's contract is `run_range`'s, with the features enabled here.
    unsafe { run_range::<Vnni512, i16, VNNI512_I16_MR, 2, 1>(job, px, co, remainder) }
}

/// AVX512-VNNI ymm tiles on i16 activations over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// As `run_avx512_vnni`, with `Vnni256I16Tiles`.
#[target_feature(enable = "avx512vnni,avx512bw,avx512vl,avx512f,avx2")]
pub(super) unsafe fn run_avx512_vnni_256_i16(job: &Job<i16>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Vnni256<Evex>, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3]);
    // safety: this function's contract is `run_range`'s, with the features enabled here.
    unsafe { run_range::<Vnni256<Evex>, i16, VNNI256_I16_MR, 2, 2>(job, px, co, remainder) }
}

/// AVX-VNNI ymm tiles on i16 activations over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// AVX-VNNI and AVX2 must be usable; otherwise as `run_avx512_vnni_256_i16`.
#[target_feature(enable = "avxvnni,avx2")]
pub(super) unsafe fn run_avx_vnni_i16(job: &Job<i16>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Vnni256<Vex>, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3]);
    // safety: this function's contract is `run_range`'s, with the features enabled here.
    unsafe { run_range::<Vnni256<Vex>, i16, VNNI256_I16_MR, 2, 2>(job, px, co, remainder) }
}

/// AVX2 tiles on i16 activations over pixels `px` and 16-channel tiles `co`.
///
/// # Safety
/// AVX2 must be usable; otherwise as `run_avx512_vnni` with `Avx2Tiles`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn run_avx2_i16(job: &Job<i16>, px: Range<usize>, co: Range<usize>) {
    let remainder = |q0: usize, mr: usize, first_panel: usize, one_panel: bool| remainder_tile!(Avx2, 2, 2, job, q0, mr, first_panel, one_panel, [1 2 3]);
    // safety: this function's contract is `run_range`'s, with AVX2 enabled here.
    unsafe { run_range::<Avx2, i16, AVX2_MR, 2, 2>(job, px, co, remainder) }
}
