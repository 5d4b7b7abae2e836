//! Layout reorders between NCHW (ONNX's layout) and NHWC (the engine's).
//!
//! Both directions are a per-sample matrix transpose: NCHW -> NHWC transposes
//! `[c][h*w]` to `[h*w][c]`, and back. The SIMD tiers transpose 8x8 tiles in registers
//! (256-bit shuffles; the AVX-512 tier compiles the same tile code with AVX-512 enabled,
//! which suits a memory-bound copy) and do the ragged borders with scalar code.
//!
//! Model inputs go through `nchw_to_nhwc_finite`, which also tells whether every value is
//! finite, so the engine's input check is not a second pass over the image. Three
//! channels (RGB images) have their own interleave: the transpose above leaves a
//! 3-row matrix wholly to its scalar border code (about 85 µs for a 224x224 image, plus
//! 45-100 µs for a separate finiteness scan).

use crate::cpu::Isa;
use crate::simd::resolve;

/// `[batch][c][h][w]` -> `[batch][h][w][c]`.
pub fn nchw_to_nhwc(isa: Isa, batch: usize, c: usize, h: usize, w: usize, src: &[f32], dst: &mut [f32]) {
    check_lengths("nchw_to_nhwc", batch, c, h, w, src, dst);
    transpose_batched(isa, batch, c, h * w, src, dst);
}

/// `nchw_to_nhwc`, returning whether every value of `src` is finite (no NaN or infinity).
pub fn nchw_to_nhwc_finite(isa: Isa, batch: usize, c: usize, h: usize, w: usize, src: &[f32], dst: &mut [f32]) -> bool {
    check_lengths("nchw_to_nhwc_finite", batch, c, h, w, src, dst);
    let hw = h * w;
    if c != 3 || hw == 0 {
        transpose_batched(isa, batch, c, hw, src, dst);
        return src.iter().all(|v| v.is_finite());
    }
    let mut finite = true;
    for (s, d) in src.chunks_exact(3 * hw).zip(dst.chunks_exact_mut(3 * hw)) {
        let (r, rest) = s.split_at(hw);
        let (g, b) = rest.split_at(hw);
        finite &= match resolve(isa) {
            #[cfg(target_arch = "x86_64")]
            // safety: AVX-512 F confirmed; the planes and `d` have the lengths checked there.
            Isa::Avx512 => unsafe { interleave3_avx512(r, g, b, d) },
            #[cfg(target_arch = "x86_64")]
            // safety: AVX2 and FMA confirmed; as above.
            Isa::Avx2 => unsafe { interleave3_avx2(r, g, b, d) },
            _ => interleave3_scalar(r, g, b, d, 0),
        };
    }
    finite
}

/// Pixels `from..` of three planes into `dst` (`3 * len` values, RGBRGB...); whether they
/// are all finite.
fn interleave3_scalar(r: &[f32], g: &[f32], b: &[f32], dst: &mut [f32], from: usize) -> bool {
    assert!(g.len() == r.len() && b.len() == r.len() && dst.len() == 3 * r.len());
    let mut finite = true;
    for p in from..r.len() {
        dst[3 * p..3 * p + 3].copy_from_slice(&[r[p], g[p], b[p]]);
        finite &= r[p].is_finite() & g[p].is_finite() & b[p].is_finite();
    }
    finite
}

/// `interleave3_scalar` 16 pixels at a time: each output vector takes its lanes from two
/// planes with one two-source permute and from the third with a masked permute. The
/// finiteness check rides along: `x * 0` is zero for finite `x` and NaN otherwise, and
/// sums of those stay zero only if every value was finite.
///
/// # Safety
/// AVX-512 F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn interleave3_avx512(r: &[f32], g: &[f32], b: &[f32], dst: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    let n = r.len();
    assert!(g.len() == n && b.len() == n && dst.len() == 3 * n);
    // Output lane l of vector k holds channel (16k + l) % 3 of pixel (16k + l) / 3: from r
    // (index p) or g (index 16 + p) in the first step, from b in the second.
    let lane = |k: usize, l: usize| ((16 * k + l) / 3, (16 * k + l) % 3);
    let rg_index = |k: usize| {
        std::array::from_fn::<i32, 16, _>(|l| match lane(k, l) {
            (p, 1) => 16 + p as i32,
            (p, _) => p as i32,
        })
    };
    let b_index = |k: usize| std::array::from_fn::<i32, 16, _>(|l| lane(k, l).0 as i32);
    let b_mask = |k: usize| (0..16).filter(|&l| lane(k, l).1 == 2).fold(0u16, |m, l| m | 1 << l);
    let (rg, bi, bm) = (
        [rg_index(0), rg_index(1), rg_index(2)],
        [b_index(0), b_index(1), b_index(2)],
        [b_mask(0), b_mask(1), b_mask(2)],
    );
    let zero = _mm512_setzero_ps();
    let mut check = zero;
    let (rp, gp, bp, dp) = (r.as_ptr(), g.as_ptr(), b.as_ptr(), dst.as_mut_ptr());
    let full = n / 16 * 16;
    for p in (0..full).step_by(16) {
        // safety (this block): p + 16 <= n, so 16 values of each plane from p and 48 of
        // dst from 3p are in bounds.
        unsafe {
            let (x, y, z) = (
                _mm512_loadu_ps(rp.add(p)),
                _mm512_loadu_ps(gp.add(p)),
                _mm512_loadu_ps(bp.add(p)),
            );
            check = _mm512_fmadd_ps(x, zero, check);
            check = _mm512_fmadd_ps(y, zero, check);
            check = _mm512_fmadd_ps(z, zero, check);
            for k in 0..3 {
                let v = _mm512_permutex2var_ps(x, _mm512_loadu_si512(rg[k].as_ptr().cast()), y);
                let v = _mm512_mask_permutexvar_ps(v, bm[k], _mm512_loadu_si512(bi[k].as_ptr().cast()), z);
                _mm512_storeu_ps(dp.add(3 * p + 16 * k), v);
            }
        }
    }
    let finite = _mm512_cmpneq_ps_mask(check, zero) == 0;
    finite & interleave3_scalar(r, g, b, dst, full)
}

/// The AVX2 form of `interleave3_avx512`, 8 pixels at a time: each output vector is three
/// one-source permutes blended.
///
/// # Safety
/// AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn interleave3_avx2(r: &[f32], g: &[f32], b: &[f32], dst: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    let n = r.len();
    assert!(g.len() == n && b.len() == n && dst.len() == 3 * n);
    let lane = |k: usize, l: usize| ((8 * k + l) / 3, (8 * k + l) % 3);
    let index = |k: usize| std::array::from_fn::<i32, 8, _>(|l| lane(k, l).0 as i32);
    // All-ones lanes where the channel is `ch`.
    let select = |k: usize, ch: usize| std::array::from_fn::<i32, 8, _>(|l| -((lane(k, l).1 == ch) as i32));
    let idx = [index(0), index(1), index(2)];
    let (g_sel, b_sel) = (
        [select(0, 1), select(1, 1), select(2, 1)],
        [select(0, 2), select(1, 2), select(2, 2)],
    );
    let zero = _mm256_setzero_ps();
    let mut check = zero;
    let (rp, gp, bp, dp) = (r.as_ptr(), g.as_ptr(), b.as_ptr(), dst.as_mut_ptr());
    let full = n / 8 * 8;
    for p in (0..full).step_by(8) {
        // safety (this block): p + 8 <= n, so 8 values of each plane from p and 24 of dst
        // from 3p are in bounds.
        unsafe {
            let (x, y, z) = (
                _mm256_loadu_ps(rp.add(p)),
                _mm256_loadu_ps(gp.add(p)),
                _mm256_loadu_ps(bp.add(p)),
            );
            check = _mm256_fmadd_ps(x, zero, check);
            check = _mm256_fmadd_ps(y, zero, check);
            check = _mm256_fmadd_ps(z, zero, check);
            for k in 0..3 {
                let i = _mm256_loadu_si256(idx[k].as_ptr().cast());
                let v = _mm256_permutevar8x32_ps(x, i);
                let v = _mm256_blendv_ps(
                    v,
                    _mm256_permutevar8x32_ps(y, i),
                    _mm256_castsi256_ps(_mm256_loadu_si256(g_sel[k].as_ptr().cast())),
                );
                let v = _mm256_blendv_ps(
                    v,
                    _mm256_permutevar8x32_ps(z, i),
                    _mm256_castsi256_ps(_mm256_loadu_si256(b_sel[k].as_ptr().cast())),
                );
                _mm256_storeu_ps(dp.add(3 * p + 8 * k), v);
            }
        }
    }
    let finite = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(check, zero)) == 0;
    finite & interleave3_scalar(r, g, b, dst, full)
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
