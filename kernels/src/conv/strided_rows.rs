//! Hand-scheduled accumulation loops of tiles whose pixels read evenly spaced rows: the
//! AVX-512 14-pixel x 32-channel tile and the AVX2 6-pixel x 16-channel one.
//!
//! Why they exist: the general kernel (`tile::accumulate`) takes 14 row pointers, more
//! than fit the registers beside the loop's own, so LLVM reloads some from the stack every
//! step. Where the rows are evenly spaced (the band kernel's copied rows, 1x1 stride-1
//! layers' consecutive pixels) three base registers and a stride address all 14. They are
//! called only from `#[inline(never)]` kernels of their own: inlined beside the general
//! tile it changed LLVM's register allocation there (a 7x7 3x3 layer 1.6 -> 2.9 ms).

use std::arch::x86_64::*;

/// Pixels per tile: the general AVX-512 tile's, so `run_tasks` splits alike.
pub(super) const MR: usize = 14;
/// Pixels per AVX2 tile: the general AVX2 tile's.
pub(super) const AVX2_MR: usize = 6;

/// `acc[i][v] += sum_j base[i * stride + j] * w[v][j]` for j < `len`, v < 2, where `w[0]`
/// is the panel at `w` and `w[1]` the one `panel2` floats after it (rows of 16 floats).
/// The 14 rows are addressed as three bases (rows 0, 5, 10) plus 1-4 strides. Step j
/// also prefetches the line at `prefetch + 16 j` (a prefetch never faults, so any address
/// will do where there is nothing to fetch).
///
/// # Safety
/// AVX-512F must be usable; `len >= 1`; `base + i * stride` (i < 14) has `len` readable
/// floats; `w` and `w + panel2` have `len` rows of 16 readable floats.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn accumulate_14x2(
    acc: &mut [[__m512; 2]; MR],
    base: *const f32,
    stride: isize,
    w: *const f32,
    panel2: usize,
    len: usize,
    prefetch: *const f32,
) {
    let s = stride * 4;
    // safety: reads only the rows and panels of the contract, `len` steps each; writes
    // only registers.
    unsafe {
        std::arch::asm!(
            "2:",
            "vmovups zmm28, zmmword ptr [{w}]",
            "vmovups zmm29, zmmword ptr [{w} + {ws}]",
            "vbroadcastss zmm30, dword ptr [{p}]",
            "vfmadd231ps zmm0, zmm30, zmm28",
            "vfmadd231ps zmm1, zmm30, zmm29",
            "vbroadcastss zmm31, dword ptr [{p} + {s}]",
            "vfmadd231ps zmm2, zmm31, zmm28",
            "vfmadd231ps zmm3, zmm31, zmm29",
            "vbroadcastss zmm30, dword ptr [{p} + {s} * 2]",
            "vfmadd231ps zmm4, zmm30, zmm28",
            "vfmadd231ps zmm5, zmm30, zmm29",
            "vbroadcastss zmm31, dword ptr [{p} + {s3}]",
            "vfmadd231ps zmm6, zmm31, zmm28",
            "vfmadd231ps zmm7, zmm31, zmm29",
            "vbroadcastss zmm30, dword ptr [{p} + {s} * 4]",
            "vfmadd231ps zmm8, zmm30, zmm28",
            "vfmadd231ps zmm9, zmm30, zmm29",
            "vbroadcastss zmm31, dword ptr [{r}]",
            "vfmadd231ps zmm10, zmm31, zmm28",
            "vfmadd231ps zmm11, zmm31, zmm29",
            "vbroadcastss zmm30, dword ptr [{r} + {s}]",
            "vfmadd231ps zmm12, zmm30, zmm28",
            "vfmadd231ps zmm13, zmm30, zmm29",
            "vbroadcastss zmm31, dword ptr [{r} + {s} * 2]",
            "vfmadd231ps zmm14, zmm31, zmm28",
            "vfmadd231ps zmm15, zmm31, zmm29",
            "vbroadcastss zmm30, dword ptr [{r} + {s3}]",
            "vfmadd231ps zmm16, zmm30, zmm28",
            "vfmadd231ps zmm17, zmm30, zmm29",
            "vbroadcastss zmm31, dword ptr [{r} + {s} * 4]",
            "vfmadd231ps zmm18, zmm31, zmm28",
            "vfmadd231ps zmm19, zmm31, zmm29",
            "vbroadcastss zmm30, dword ptr [{t}]",
            "vfmadd231ps zmm20, zmm30, zmm28",
            "vfmadd231ps zmm21, zmm30, zmm29",
            "vbroadcastss zmm31, dword ptr [{t} + {s}]",
            "vfmadd231ps zmm22, zmm31, zmm28",
            "vfmadd231ps zmm23, zmm31, zmm29",
            "vbroadcastss zmm30, dword ptr [{t} + {s} * 2]",
            "vfmadd231ps zmm24, zmm30, zmm28",
            "vfmadd231ps zmm25, zmm30, zmm29",
            "vbroadcastss zmm31, dword ptr [{t} + {s3}]",
            "vfmadd231ps zmm26, zmm31, zmm28",
            "vfmadd231ps zmm27, zmm31, zmm29",
            "prefetcht0 byte ptr [{pf}]",
            "add {pf}, 64",
            "add {p}, 4",
            "add {r}, 4",
            "add {t}, 4",
            "add {w}, 64",
            "dec {n}",
            "jnz 2b",
            p = inout(reg) base => _,
            r = inout(reg) base.wrapping_offset(5 * stride) => _,
            t = inout(reg) base.wrapping_offset(10 * stride) => _,
            w = inout(reg) w => _,
            n = inout(reg) len => _,
            pf = inout(reg) prefetch => _,
            s = in(reg) s,
            s3 = in(reg) 3 * s,
            ws = in(reg) panel2 * 4,
            inout("zmm0") acc[0][0],
            inout("zmm1") acc[0][1],
            inout("zmm2") acc[1][0],
            inout("zmm3") acc[1][1],
            inout("zmm4") acc[2][0],
            inout("zmm5") acc[2][1],
            inout("zmm6") acc[3][0],
            inout("zmm7") acc[3][1],
            inout("zmm8") acc[4][0],
            inout("zmm9") acc[4][1],
            inout("zmm10") acc[5][0],
            inout("zmm11") acc[5][1],
            inout("zmm12") acc[6][0],
            inout("zmm13") acc[6][1],
            inout("zmm14") acc[7][0],
            inout("zmm15") acc[7][1],
            inout("zmm16") acc[8][0],
            inout("zmm17") acc[8][1],
            inout("zmm18") acc[9][0],
            inout("zmm19") acc[9][1],
            inout("zmm20") acc[10][0],
            inout("zmm21") acc[10][1],
            inout("zmm22") acc[11][0],
            inout("zmm23") acc[11][1],
            inout("zmm24") acc[12][0],
            inout("zmm25") acc[12][1],
            inout("zmm26") acc[13][0],
            inout("zmm27") acc[13][1],
            out("zmm28") _,
            out("zmm29") _,
            out("zmm30") _,
            out("zmm31") _,
            options(nostack, readonly),
        );
    }
}

/// `acc[i][v] += sum_j base[i * stride + j] * w[j * 16 + 8 v .. + 8]` for j < `len`,
/// v < 2: the AVX2 tile of 6 pixels by one 16-channel panel (rows of 16 floats at `w`).
/// The 6 rows are addressed as two bases (rows 0 and 3) plus 1-2 strides. Step j also
/// prefetches the line holding `prefetch + 6 j`: `len` steps cover the next 6 rows of
/// `len` floats. (A line per step, as `accumulate_14x2`, ran 2.7x ahead and evicted the
/// tile's weights from a 32 KiB L1: 1x1 7x7 512 -> 2048 at 33 -> 21 GFLOP/s.)
///
/// # Safety
/// AVX2 and FMA must be usable; `len >= 1`; `base + i * stride` (i < 6) has `len`
/// readable floats; `w` has `len` rows of 16 readable floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn accumulate_6x2(
    acc: &mut [[__m256; 2]; AVX2_MR],
    base: *const f32,
    stride: isize,
    w: *const f32,
    len: usize,
    prefetch: *const f32,
) {
    // safety: reads only the rows and the panel of the contract, `len` steps each; writes
    // only registers.
    unsafe {
        std::arch::asm!(
            "2:",
            "vmovups ymm12, ymmword ptr [{w}]",
            "vmovups ymm13, ymmword ptr [{w} + 32]",
            "vbroadcastss ymm14, dword ptr [{p}]",
            "vfmadd231ps ymm0, ymm14, ymm12",
            "vfmadd231ps ymm1, ymm14, ymm13",
            "vbroadcastss ymm15, dword ptr [{p} + {s}]",
            "vfmadd231ps ymm2, ymm15, ymm12",
            "vfmadd231ps ymm3, ymm15, ymm13",
            "vbroadcastss ymm14, dword ptr [{p} + {s} * 2]",
            "vfmadd231ps ymm4, ymm14, ymm12",
            "vfmadd231ps ymm5, ymm14, ymm13",
            "vbroadcastss ymm15, dword ptr [{r}]",
            "vfmadd231ps ymm6, ymm15, ymm12",
            "vfmadd231ps ymm7, ymm15, ymm13",
            "vbroadcastss ymm14, dword ptr [{r} + {s}]",
            "vfmadd231ps ymm8, ymm14, ymm12",
            "vfmadd231ps ymm9, ymm14, ymm13",
            "vbroadcastss ymm15, dword ptr [{r} + {s} * 2]",
            "vfmadd231ps ymm10, ymm15, ymm12",
            "vfmadd231ps ymm11, ymm15, ymm13",
            "prefetcht0 byte ptr [{pf}]",
            "add {pf}, 24",
            "add {p}, 4",
            "add {r}, 4",
            "add {w}, 64",
            "dec {n}",
            "jnz 2b",
            p = inout(reg) base => _,
            r = inout(reg) base.wrapping_offset(3 * stride) => _,
            w = inout(reg) w => _,
            n = inout(reg) len => _,
            pf = inout(reg) prefetch => _,
            s = in(reg) stride * 4,
            inout("ymm0") acc[0][0],
            inout("ymm1") acc[0][1],
            inout("ymm2") acc[1][0],
            inout("ymm3") acc[1][1],
            inout("ymm4") acc[2][0],
            inout("ymm5") acc[2][1],
            inout("ymm6") acc[3][0],
            inout("ymm7") acc[3][1],
            inout("ymm8") acc[4][0],
            inout("ymm9") acc[4][1],
            inout("ymm10") acc[5][0],
            inout("ymm11") acc[5][1],
            out("ymm12") _,
            out("ymm13") _,
            out("ymm14") _,
            out("ymm15") _,
            options(nostack, readonly),
        );
    }
}
