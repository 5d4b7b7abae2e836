//! Elementwise kernels: residual add (with fused ReLU), ReLU and sigmoid.

use crate::cpu::Isa;
use crate::simd::resolve;
#[cfg(target_arch = "x86_64")]
use crate::simd::{
    x86::{Avx2, Avx512},
    F32x,
};

/// `out = act(a + b)`, act = ReLU when `relu`.
pub fn add(isa: Isa, a: &[f32], b: &[f32], relu: bool, out: &mut [f32]) {
    assert!(
        a.len() == b.len() && a.len() == out.len(),
        "add: operand lengths differ (a {}, b {}, out {})",
        a.len(),
        b.len(),
        out.len()
    );
    match resolve(isa) {
        #[cfg(target_arch = "x86_64")]
        // safety: resolve() confirmed AVX-512; the three slices have equal lengths.
        Isa::Avx512 => unsafe { add_avx512(a.as_ptr(), b.as_ptr(), out.as_mut_ptr(), a.len(), relu) },
        #[cfg(target_arch = "x86_64")]
        // safety: resolve() confirmed AVX2+FMA; the three slices have equal lengths.
        Isa::Avx2 => unsafe { add_avx2(a.as_ptr(), b.as_ptr(), out.as_mut_ptr(), a.len(), relu) },
        _ => add_scalar(a, b, relu, out),
    }
}

/// `acc = act(acc + b)`.
pub fn add_inplace(isa: Isa, acc: &mut [f32], b: &[f32], relu: bool) {
    assert!(
        acc.len() == b.len(),
        "add_inplace: operand lengths differ (acc {}, b {})",
        acc.len(),
        b.len()
    );
    let n = acc.len();
    let p = acc.as_mut_ptr();
    match resolve(isa) {
        #[cfg(target_arch = "x86_64")]
        // safety: AVX-512 confirmed; each lane block of acc is read before the same block
        // is written, so passing acc as both input and output is sound.
        Isa::Avx512 => unsafe { add_avx512(p, b.as_ptr(), p, n, relu) },
        #[cfg(target_arch = "x86_64")]
        // safety: as above, for AVX2+FMA.
        Isa::Avx2 => unsafe { add_avx2(p, b.as_ptr(), p, n, relu) },
        _ => {
            for (x, &y) in acc.iter_mut().zip(b) {
                let s = *x + y;
                *x = if relu { s.max(0.0) } else { s };
            }
        }
    }
}

/// `x = max(x, 0)`; NaN becomes 0, as with `f32::max`.
pub fn relu_inplace(isa: Isa, x: &mut [f32]) {
    let n = x.len();
    match resolve(isa) {
        #[cfg(target_arch = "x86_64")]
        // safety: AVX-512 confirmed; the pointer covers n elements.
        Isa::Avx512 => unsafe { relu_avx512(x.as_mut_ptr(), n) },
        #[cfg(target_arch = "x86_64")]
        // safety: AVX2+FMA confirmed; the pointer covers n elements.
        Isa::Avx2 => unsafe { relu_avx2(x.as_mut_ptr(), n) },
        _ => relu_scalar(x),
    }
}

/// `x = 1 / (1 + exp(-x))`. Saturates to 0 / 1 for large |x|; NaN stays NaN.
pub fn sigmoid_inplace(isa: Isa, x: &mut [f32]) {
    let n = x.len();
    match resolve(isa) {
        #[cfg(target_arch = "x86_64")]
        // safety: AVX-512 confirmed; the pointer covers n elements.
        Isa::Avx512 => unsafe { sigmoid_avx512(x.as_mut_ptr(), n) },
        #[cfg(target_arch = "x86_64")]
        // safety: AVX2+FMA confirmed; the pointer covers n elements.
        Isa::Avx2 => unsafe { sigmoid_avx2(x.as_mut_ptr(), n) },
        _ => sigmoid_scalar(x),
    }
}

/// Scalar reference for [`add`].
pub fn add_scalar(a: &[f32], b: &[f32], relu: bool, out: &mut [f32]) {
    assert!(
        a.len() == b.len() && a.len() == out.len(),
        "add_scalar: operand lengths differ"
    );
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let s = x + y;
        *o = if relu { s.max(0.0) } else { s };
    }
}

/// Scalar reference for [`relu_inplace`].
pub fn relu_scalar(x: &mut [f32]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// Scalar reference for [`sigmoid_inplace`] (libm `exp`, of a non-positive argument
/// only: `exp(-x)` overflows below x = -88.7 and would raise the overflow flag the
/// executors count, for a result that is just 0).
pub fn sigmoid_scalar(x: &mut [f32]) {
    for v in x {
        let e = (-v.abs()).exp();
        *v = if *v >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn act<S: F32x>(v: S::V, relu: bool) -> S::V {
    if relu {
        S::max(v, S::zero())
    } else {
        v
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_body<S: F32x>(a: *const f32, b: *const f32, out: *mut f32, n: usize, relu: bool) {
    let mut i = 0;
    while i + 2 * S::LANES <= n {
        let v0 = S::add(S::load(a.add(i)), S::load(b.add(i)));
        let v1 = S::add(S::load(a.add(i + S::LANES)), S::load(b.add(i + S::LANES)));
        S::store(out.add(i), act::<S>(v0, relu));
        S::store(out.add(i + S::LANES), act::<S>(v1, relu));
        i += 2 * S::LANES;
    }
    while i + S::LANES <= n {
        S::store(out.add(i), act::<S>(S::add(S::load(a.add(i)), S::load(b.add(i))), relu));
        i += S::LANES;
    }
    if i < n {
        let r = n - i;
        let v = S::add(S::load_partial(a.add(i), r), S::load_partial(b.add(i), r));
        S::store_partial(out.add(i), r, act::<S>(v, relu));
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn relu_body<S: F32x>(x: *mut f32, n: usize) {
    let zero = S::zero();
    let mut i = 0;
    while i + S::LANES <= n {
        S::store(x.add(i), S::max(S::load(x.add(i)), zero));
        i += S::LANES;
    }
    if i < n {
        let r = n - i;
        S::store_partial(x.add(i), r, S::max(S::load_partial(x.add(i), r), zero));
    }
}

/// exp(v) for v already clamped to [-87, 88] (or NaN): Cody-Waite reduction by ln 2 and
/// the Cephes degree-5 polynomial, about 1 ulp.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp_clamped<S: F32x>(v: S::V) -> S::V {
    let n = S::round(S::mul(v, S::splat(std::f32::consts::LOG2_E)));
    // ln 2 split in a part exact in few bits and a correction, so r = v - n ln2 is exact.
    let r = S::fmadd(n, S::splat(-0.693_359_4), v);
    let r = S::fmadd(n, S::splat(2.121_944_4e-4), r);
    let mut p = S::splat(1.987_569_1e-4);
    p = S::fmadd(p, r, S::splat(1.398_199_9e-3));
    p = S::fmadd(p, r, S::splat(8.333_452e-3));
    p = S::fmadd(p, r, S::splat(4.166_579_6e-2));
    p = S::fmadd(p, r, S::splat(1.666_666_5e-1));
    p = S::fmadd(p, r, S::splat(0.5));
    let r2 = S::mul(r, r);
    let e = S::add(S::fmadd(p, r2, r), S::splat(1.0));
    S::mul_pow2(e, n)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sigmoid_vec<S: F32x>(x: S::V) -> S::V {
    // Clamp -x to [-87, 88]: exp stays finite and normal, sigmoid is then within 1e-38 of
    // its limit. Operand order keeps NaN: x86 max/min return the second operand on NaN.
    let neg = S::sub(S::zero(), x);
    let clamped = S::min(S::splat(88.0), S::max(S::splat(-87.0), neg));
    let one = S::splat(1.0);
    S::div(one, S::add(one, exp_clamped::<S>(clamped)))
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sigmoid_body<S: F32x>(x: *mut f32, n: usize) {
    let mut i = 0;
    while i + S::LANES <= n {
        S::store(x.add(i), sigmoid_vec::<S>(S::load(x.add(i))));
        i += S::LANES;
    }
    if i < n {
        let r = n - i;
        S::store_partial(x.add(i), r, sigmoid_vec::<S>(S::load_partial(x.add(i), r)));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_avx2(a: *const f32, b: *const f32, out: *mut f32, n: usize, relu: bool) {
    add_body::<Avx2>(a, b, out, n, relu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn add_avx512(a: *const f32, b: *const f32, out: *mut f32, n: usize, relu: bool) {
    add_body::<Avx512>(a, b, out, n, relu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn relu_avx2(x: *mut f32, n: usize) {
    relu_body::<Avx2>(x, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn relu_avx512(x: *mut f32, n: usize) {
    relu_body::<Avx512>(x, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid_avx2(x: *mut f32, n: usize) {
    sigmoid_body::<Avx2>(x, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn sigmoid_avx512(x: *mut f32, n: usize) {
    sigmoid_body::<Avx512>(x, n)
}
