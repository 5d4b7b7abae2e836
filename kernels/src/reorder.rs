//! Layout reorders between NCHW (ONNX's layout) and NHWC (the engine's).
//!
//! Both directions are a per-sample matrix transpose: NCHW -> NHWC transposes
//! `[c][h*w]` to `[h*w][c]`, and back. The SIMD tiers transpose 8x8 tiles in registers
//! (256-bit shuffles; the AVX-512 tier compiles the same tile code with AVX-512 enabled,
//! which suits a memory-bound copy) and do the ragged borders with scalar code.

use crate::cpu::Isa;
use crate::simd::resolve;

/// `[batch][c][h][w]` -> `[batch][h][w][c]`.
pub fn nchw_to_nhwc(isa: Isa, batch: usize, c: usize, h: usize, w: usize, src: &[f32], dst: &mut [f32]) {
    check_lengths("nchw_to_nhwc", batch, c, h, w, src, dst);
    transpose_batched(isa, batch, c, h * w, src, dst);
}

/// `[batch][h][w][c]` -> `[batch][c][h][w]`.
pub fn nhwc_to_nchw(isa: Isa, batch: usize, c: usize, h: usize, w: usize, src: &[f32], dst: &mut [f32]) {
    check_lengths("nhwc_to_nchw", batch, c, h, w, src, dst);
    transpose_batched(isa, batch, h * w, c, src, dst);
}

/// Scalar reference for [`nchw_to_nhwc`].
pub fn nchw_to_nhwc_scalar(batch: usize, c: usize, h: usize, w: usize, src: &[f32], dst: &mut [f32]) {
    check_lengths("nchw_to_nhwc_scalar", batch, c, h, w, src, dst);
    let hw = h * w;
    for n in 0..batch {
        for ch in 0..c {
            for p in 0..hw {
                dst[(n * hw + p) * c + ch] = src[(n * c + ch) * hw + p];
            }
        }
    }
}

/// Scalar reference for [`nhwc_to_nchw`].
pub fn nhwc_to_nchw_scalar(batch: usize, c: usize, h: usize, w: usize, src: &[f32], dst: &mut [f32]) {
    check_lengths("nhwc_to_nchw_scalar", batch, c, h, w, src, dst);
    let hw = h * w;
    for n in 0..batch {
        for ch in 0..c {
            for p in 0..hw {
                dst[(n * c + ch) * hw + p] = src[(n * hw + p) * c + ch];
            }
        }
    }
}

fn check_lengths(what: &str, batch: usize, c: usize, h: usize, w: usize, src: &[f32], dst: &mut [f32]) {
    let len = batch
        .checked_mul(c)
        .and_then(|x| x.checked_mul(h))
        .and_then(|x| x.checked_mul(w))
        .unwrap_or_else(|| panic!("{what}: shape {batch}x{c}x{h}x{w} overflows usize"));
    assert!(
        src.len() == len && dst.len() == len,
        "{what}: shape {batch}x{c}x{h}x{w} needs {len} elements, got src {} and dst {}",
        src.len(),
        dst.len()
    );
}

/// Transposes each of `batch` row-major `rows x cols` matrices.
fn transpose_batched(isa: Isa, batch: usize, rows: usize, cols: usize, src: &[f32], dst: &mut [f32]) {
    let per = rows * cols;
    if per == 0 {
        return;
    }
    for (s, d) in src.chunks_exact(per).zip(dst.chunks_exact_mut(per)) {
        match resolve(isa) {
            #[cfg(target_arch = "x86_64")]
            // safety: AVX-512 (which implies AVX) confirmed; s and d hold rows*cols elements.
            Isa::Avx512 => unsafe { transpose_avx512(s.as_ptr(), d.as_mut_ptr(), rows, cols) },
            #[cfg(target_arch = "x86_64")]
            // safety: AVX2 confirmed; s and d hold rows*cols elements.
            Isa::Avx2 => unsafe { transpose_avx2(s.as_ptr(), d.as_mut_ptr(), rows, cols) },
            _ => transpose_scalar(s, d, rows, cols),
        }
    }
    debug_assert_eq!(src.len(), batch * per);
}

fn transpose_scalar(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    // Tiles keep both the reads and the writes within a few cache lines.
    const T: usize = 16;
    for i0 in (0..rows).step_by(T) {
        for j0 in (0..cols).step_by(T) {
            for i in i0..(i0 + T).min(rows) {
                for j in j0..(j0 + T).min(cols) {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
        }
    }
}

/// Transposes the `src` matrix (`rows x cols`, row-major) into `dst` (`cols x rows`).
///
/// # Safety
/// AVX must be available; `src` and `dst` must hold `rows * cols` elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_body(src: *const f32, dst: *mut f32, rows: usize, cols: usize) {
    use std::arch::x86_64::*;
    let full_rows = rows / 8 * 8;
    let full_cols = cols / 8 * 8;
    for i in (0..full_rows).step_by(8) {
        for j in (0..full_cols).step_by(8) {
            let row = |k: usize| src.add((i + k) * cols + j);
            let r = [
                _mm256_loadu_ps(row(0)),
                _mm256_loadu_ps(row(1)),
                _mm256_loadu_ps(row(2)),
                _mm256_loadu_ps(row(3)),
                _mm256_loadu_ps(row(4)),
                _mm256_loadu_ps(row(5)),
                _mm256_loadu_ps(row(6)),
                _mm256_loadu_ps(row(7)),
            ];
            // Standard 8x8 transpose: interleave pairs, then quads, then 128-bit halves.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let o = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (k, v) in o.iter().enumerate() {
                _mm256_storeu_ps(dst.add((j + k) * rows + i), *v);
            }
        }
        // Columns past the last full tile of this 8-row band.
        for k in 0..8 {
            for j in full_cols..cols {
                *dst.add(j * rows + i + k) = *src.add((i + k) * cols + j);
            }
        }
    }
    // Rows past the last full band (all columns). With few rows (e.g. 3 image channels)
    // this is the whole matrix: walk columns outermost so writes are sequential.
    for j in 0..cols {
        for i in full_rows..rows {
            *dst.add(j * rows + i) = *src.add(i * cols + j);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_avx2(src: *const f32, dst: *mut f32, rows: usize, cols: usize) {
    transpose_body(src, dst, rows, cols)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn transpose_avx512(src: *const f32, dst: *mut f32, rows: usize, cols: usize) {
    transpose_body(src, dst, rows, cols)
}
