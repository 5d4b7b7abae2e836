//! INT8 NHWC convolution (group 1): u8 or i16 activations with a zero point, s8
//! symmetric per-output-channel weights, exact i32 accumulation, and a fused f32 epilogue.
//!
//! Definition, per output element (pixel `q`, channel `co`), with `u = 1 / out_scale` for
//! u8 output and `u = 1` for f32 output:
//! ```text
//! acc  = Σ_{kh,kw,ci} x[tap][ci] * w[co][ci][kh][kw]      (u8 * s8, i32, exact)
//!        where a tap in the padding reads `x_zero` (the quantized real zero)
//! y    = ((acc + bias_i32[co]) as f32) * (scale[co] * u)  (the i32 sum wraps)
//! y    = y + r * u                                        (optional residual: f32 `r`, or
//!                                                          u8 as (r - r_zero) as f32 * (r_scale * u))
//! y    = max(y, 0)                                        (optional ReLU)
//! out  = y                                                (f32 output), or
//! out  = max(round_half_even(min(y, 255 - z)) + z, 0)     (u8 output, z = out_zero; NaN -> 0)
//! out  = max(round_half_even(min(y, m - z)) + z, 0)       (i16 output on [0, m])
//! ```
//! So `y` is the real value in units of the output's quantization step, and the
//! requantization is a multiply folded into the per-channel scale, not a divide per
//! element (`vdivps` took a third of the epilogue). The products `scale[co] * u` and
//! `r_scale * u` are each one f32 multiply, formed once per channel vector of a tile. The
//! kernel never subtracts `x_zero`: the caller folds it into the bias,
//! `bias_i32[co] = round(bias[co] / scale[co]) - x_zero * Σ w[co]`, and `scale[co] =
//! x_scale * w_scale[co]`. Padding taps read `x_zero`, so that folding is exact at the
//! borders too. Every tier evaluates the epilogue with the same f32 operations in the same
//! order (no fused multiply-add), so all tiers give bit-identical outputs.
//!
//! Weights use one packed layout for every tier,
//! `[ceil(cout/16)][kh][kw][ceil(cin/4)][16][4]` (`pack_weights_s8`): for each output lane
//! the 4 consecutive input channels `vpdpbusd` multiplies, input channels padded to a
//! multiple of 4 and output channels to a multiple of 16 with zero weights.
//!
//! **16-bit activations** (`i16`, `QElement`): u8 activations cost the whole model far
//! more accuracy than s8 weights (docs/PERFORMANCE.md, "INT8 error budget": 0.021 mean
//! |d ssim| against 0.006 with the same weights at 12 bits), so activations may also be
//! i16, on a grid of up to 15 bits. Products are i16 x s8, exact (wrapping i32 as for u8;
//! `max_reduction_i16` gives the bound for a grid). They run as `vpmaddwd` (AVX2) or
//! `vpdpwssd` (AVX512-VNNI, AVX-VNNI): two input channels per i32 lane instead of
//! `vpdpbusd`'s four, so half the u8 rate on VNNI, and on AVX2 the rate of the exact u8
//! path, which widens its bytes to 16 bit anyway. Their weights pair input channels
//! (0, 1) and (2, 3) of a group (`pack_weights_for::<i16>`: bytes 0, 2, 1, 3), so that
//! the even and odd bytes of each lane line up with the two i32 words of 4 consecutive
//! i16 inputs, each broadcast straight from memory.
//!
//! Tiers (`Int8Tier`), all instantiations of one generic register-tile kernel (`tile`):
//! - `Scalar` (`reference`): plain loops, the oracle;
//! - `Avx2`: exact for all u8 inputs; weights sign-extended to 16 bit, `vpmaddwd`;
//! - `Avx2Act7`: `vpmaddubsw` + `vpmaddwd`, only for activations (and `x_zero`) <= 127,
//!   where `vpmaddubsw` cannot saturate; asserted (one pass over the input per call).
//!   Never picked automatically. `benches/qconv.rs` on a Zen 3 EPYC (one thread, host
//!   heavily loaded, so +-20%): ResNet-50 3x3 and large 1x1 layers ran at 35-57 GOP/s
//!   exact and 51-72 GOP/s 7-bit, 1.3-1.6x;
//! - `AvxVnni` (VEX `vpdpbusd` ymm) and `Avx512Vnni256` (EVEX ymm): one 256-bit body;
//! - `Avx512Vnni`: `vpdpbusd` zmm.
//! - `Amx` runs i16 activations on `Avx512Vnni` (AMX multiplies bytes only), `Avx2Act7`
//!   on `Avx2`.
//!
//! Work is split into disjoint (pixel-tile range, channel-tile range) tasks handed to the
//! caller's `ParallelFor`, as in `conv`.

#[cfg(target_arch = "x86_64")]
mod amx;
mod peak;
mod reference;
mod tile;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(all(test, target_arch = "x86_64"))]
mod emulated_tests;

pub use peak::int8_peak_gops;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::conv::ConvGeometry;
use crate::cpu::{self, Features, Isa};
use crate::parallel::ParallelFor;

/// Output channels per packed weight panel.
pub const PANEL: usize = 16;
/// Input channels per packed weight group (the 4 bytes one `vpdpbusd` lane multiplies).
pub const GROUP: usize = 4;

/// Shape of one quantized convolution: the same description as the FP32 one.
pub type QConvGeometry = ConvGeometry;

/// The longest reduction (`kh * kw * cin` rounded up to a multiple of 4) whose i32
/// accumulator cannot overflow: every product lies in [255 * -128, 255 * 127].
pub const MAX_REDUCTION: usize = (i32::MAX / (255 * 128)) as usize;

/// The longest reduction whose i32 accumulator cannot overflow for i16 activations on
/// `[0, max_input]` (and a zero point there): every product lies in
/// `[max_input * -128, max_input * 127]`. 8196 for 11-bit grids (`max_input` 2047), which
/// covers every ResNet-50 layer (at most 3 x 3 x 512 = 4608).
pub fn max_reduction_i16(max_input: u16) -> usize {
    (i32::MAX as u32 / (max_input.max(1) as u32 * 128)) as usize
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for i16 {}
}

/// An activation element the INT8 kernels read: `u8` or `i16` (module docs).
pub trait QElement: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static + sealed::Sealed {
    /// Where input channel `k` of a group of 4 sits in each lane's 4 packed weight bytes.
    const GROUP_ORDER: [usize; GROUP];
    fn to_i32(self) -> i32;
    /// The tier that runs this element type for a tier the CPU supports: the same, or
    /// the one below it that has a kernel for this type.
    fn kernel_tier(tier: Int8Tier) -> Int8Tier;
    /// Runs `job` on `tier`, which `effective_tier` returned for this element type.
    #[doc(hidden)]
    fn run_tier(tier: Int8Tier, par: &dyn ParallelFor, job: &Job<Self>);
}

impl QElement for u8 {
    const GROUP_ORDER: [usize; GROUP] = [0, 1, 2, 3];
    fn to_i32(self) -> i32 {
        self as i32
    }
    fn kernel_tier(tier: Int8Tier) -> Int8Tier {
        tier
    }
    fn run_tier(tier: Int8Tier, par: &dyn ParallelFor, job: &Job<u8>) {
        run_tier_u8(tier, par, job)
    }
}

impl QElement for i16 {
    const GROUP_ORDER: [usize; GROUP] = [0, 2, 1, 3];
    fn to_i32(self) -> i32 {
        self as i32
    }
    /// AMX multiplies bytes only; the 7-bit tier exists for u8 inputs.
    fn kernel_tier(tier: Int8Tier) -> Int8Tier {
        match tier {
            Int8Tier::Amx => Int8Tier::Avx512Vnni,
            Int8Tier::Avx2Act7 => Int8Tier::Avx2,
            t => t,
        }
    }
    fn run_tier(tier: Int8Tier, par: &dyn ParallelFor, job: &Job<i16>) {
        run_tier_i16(tier, par, job)
    }
}

/// The INT8 kernel tiers, from the portable reference to AVX-512 VNNI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Int8Tier {
    /// Portable Rust loops; the oracle.
    Scalar,
    /// AVX2, exact for all u8 activations (16-bit products summed by `vpmaddwd`).
    Avx2,
    /// AVX2 `vpmaddubsw`, for activations <= 127 only (asserted).
    Avx2Act7,
    /// AVX-VNNI (VEX-encoded `vpdpbusd` on ymm, Alder Lake and later).
    AvxVnni,
    /// AVX512-VNNI on ymm (EVEX `vpdpbusd`), the 256-bit body of `AvxVnni`.
    Avx512Vnni256,
    /// AVX512-VNNI on zmm.
    Avx512Vnni,
    /// AMX tiles (`tdpbusd`) for layers whose `cin` is a multiple of 64, AVX512-VNNI
    /// zmm for the rest (`amx`).
    Amx,
}

impl Int8Tier {
    pub const ALL: [Int8Tier; 7] = [
        Int8Tier::Scalar,
        Int8Tier::Avx2,
        Int8Tier::Avx2Act7,
        Int8Tier::AvxVnni,
        Int8Tier::Avx512Vnni256,
        Int8Tier::Avx512Vnni,
        Int8Tier::Amx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Int8Tier::Scalar => "scalar",
            Int8Tier::Avx2 => "avx2",
            Int8Tier::Avx2Act7 => "avx2-act7",
            Int8Tier::AvxVnni => "avx-vnni",
            Int8Tier::Avx512Vnni256 => "avx512-vnni-256",
            Int8Tier::Avx512Vnni => "avx512-vnni",
            Int8Tier::Amx => "amx",
        }
    }

    /// Whether a CPU with features `f` can run this tier.
    pub fn supported(self, f: &Features) -> bool {
        let avx512_vnni = f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.avx2;
        match self {
            Int8Tier::Scalar => true,
            Int8Tier::Avx2 | Int8Tier::Avx2Act7 => f.avx2,
            Int8Tier::AvxVnni => f.avxvnni && f.avx2,
            Int8Tier::Avx512Vnni256 | Int8Tier::Avx512Vnni => avx512_vnni,
            Int8Tier::Amx => avx512_vnni && f.amx_tile && f.amx_int8,
        }
    }

    /// Whether this tier is at or below `cap` in the automatic order scalar < avx2 <
    /// avx-vnni < avx512-vnni-256 < avx512-vnni < amx (`avx2-act7` counts as `avx2`).
    fn within(self, cap: Int8Tier) -> bool {
        let rank = |t: Int8Tier| match t {
            Int8Tier::Scalar => 0,
            Int8Tier::Avx2 | Int8Tier::Avx2Act7 => 1,
            Int8Tier::AvxVnni => 2,
            Int8Tier::Avx512Vnni256 => 3,
            Int8Tier::Avx512Vnni => 4,
            Int8Tier::Amx => 5,
        };
        rank(self) <= rank(cap)
    }

    /// The next tier to try when this one is not supported.
    fn fallback(self) -> Int8Tier {
        match self {
            Int8Tier::Amx => Int8Tier::Avx512Vnni,
            Int8Tier::Avx512Vnni => Int8Tier::Avx512Vnni256,
            Int8Tier::Avx512Vnni256 => Int8Tier::AvxVnni,
            Int8Tier::AvxVnni => Int8Tier::Avx2,
            Int8Tier::Avx2 | Int8Tier::Avx2Act7 | Int8Tier::Scalar => Int8Tier::Scalar,
        }
    }
}

impl std::str::FromStr for Int8Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Int8Tier, String> {
        let s = s.trim().to_ascii_lowercase();
        Int8Tier::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Int8Tier::ALL.iter().map(|t| t.name()).collect();
            format!("unknown INT8 tier {s:?} (expected one of: {})", names.join(", "))
        })
    }
}

/// The cap from `QP_MAX_INT8` (an INT8 tier name), read once per process. It lowers the
/// INT8 tier below what `QP_MAX_ISA` allows, e.g. `avx512-vnni` keeps a CPU with AMX on
/// its VNNI kernels, so both run on one machine. An unknown name is an error.
pub fn env_int8_cap() -> Result<Option<Int8Tier>, String> {
    static CAP: std::sync::OnceLock<Result<Option<Int8Tier>, String>> = std::sync::OnceLock::new();
    CAP.get_or_init(|| match std::env::var("QP_MAX_INT8") {
        Ok(v) if !v.trim().is_empty() => v.parse().map(Some).map_err(|e| format!("QP_MAX_INT8: {e}")),
        _ => Ok(None),
    })
    .clone()
}

/// The INT8 tier this process runs for the FP32 tier `isa`: `int8_tier` on this CPU,
/// lowered to `QP_MAX_INT8` (an invalid value leaves it unlowered; engines refuse to load
/// with one, see `env_int8_cap`).
pub fn select_int8_tier(isa: Isa) -> Int8Tier {
    let f = cpu::features();
    match env_int8_cap() {
        Ok(Some(cap)) => int8_tier_capped(isa, f, cap),
        _ => int8_tier(isa, f),
    }
}

/// The best exact INT8 tier for an FP32 tier cap `isa` on a CPU with features `f`:
/// AMX and AVX512-VNNI need `Isa::Avx512`, AVX-VNNI and AVX2 need `Isa::Avx2`.
pub fn int8_tier(isa: Isa, f: &Features) -> Int8Tier {
    int8_tier_capped(isa, f, Int8Tier::Amx)
}

/// `int8_tier`, at most `cap`.
pub fn int8_tier_capped(isa: Isa, f: &Features, cap: Int8Tier) -> Int8Tier {
    let candidates: &[Int8Tier] = match isa {
        Isa::Avx512 => &[Int8Tier::Amx, Int8Tier::Avx512Vnni, Int8Tier::AvxVnni, Int8Tier::Avx2],
        Isa::Avx2 => &[Int8Tier::AvxVnni, Int8Tier::Avx2],
        Isa::Scalar => &[],
    };
    candidates
        .iter()
        .copied()
        .find(|t| t.supported(f) && t.within(cap))
        .unwrap_or(Int8Tier::Scalar)
}

/// The tier `qconv2d_nhwc_tier` runs for a request on u8 activations: the request, or
/// the first tier down its fallback chain this CPU supports.
pub fn effective_tier(requested: Int8Tier) -> Int8Tier {
    let f = cpu::features();
    let mut t = requested;
    while !t.supported(f) {
        t = t.fallback();
    }
    t
}

/// `effective_tier` for activations of type `E`: i16 activations run AMX requests on
/// AVX512-VNNI and `avx2-act7` requests on AVX2.
pub fn effective_tier_for<E: QElement>(requested: Int8Tier) -> Int8Tier {
    E::kernel_tier(effective_tier(requested))
}

static CALLS_PER_TIER: [AtomicU64; 7] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

/// How many convolutions each tier has run in this process, indexed like
/// `Int8Tier::ALL`: shows which kernels actually ran.
pub fn calls_per_tier() -> [u64; 7] {
    CALLS_PER_TIER.each_ref().map(|c| c.load(Ordering::Relaxed))
}

/// Optional tensor added to the real-valued result before the activation, NHWC
/// `[batch][out_h][out_w][cout]`.
#[derive(Clone, Copy, Debug, Default)]
pub enum QResidual<'a> {
    #[default]
    None,
    F32(&'a [f32]),
    /// Quantized: real value `(data - zero) as f32 * scale`.
    U8 {
        data: &'a [u8],
        scale: f32,
        zero: u8,
    },
    /// Quantized on a 16-bit grid: real value `(data - zero) as f32 * scale`.
    I16 {
        data: &'a [i16],
        scale: f32,
        zero: i16,
    },
}

/// Where and how results go, NHWC `[batch][out_h][out_w][cout]`.
#[derive(Debug)]
pub enum QOutput<'a> {
    F32(&'a mut [f32]),
    /// Requantized: `round_half_even(clamp(real / scale, -zero, 255 - zero)) + zero`, up to
    /// the rounding of the folded scales (module docs).
    U8 {
        data: &'a mut [u8],
        scale: f32,
        zero: u8,
    },
    /// Requantized onto `[0, max]`: `round_half_even(clamp(real / scale, -zero, max -
    /// zero)) + zero`, with `0 <= zero <= max`.
    I16 {
        data: &'a mut [i16],
        scale: f32,
        zero: i16,
        max: i16,
    },
}

impl QOutput<'_> {
    fn len(&self) -> usize {
        match self {
            QOutput::F32(d) => d.len(),
            QOutput::U8 { data, .. } => data.len(),
            QOutput::I16 { data, .. } => data.len(),
        }
    }
}

/// Bytes of packed weights for `g`.
pub fn packed_weight_len(g: &QConvGeometry) -> usize {
    product(&[
        g.cout.div_ceil(PANEL),
        g.kernel[0],
        g.kernel[1],
        g.cin.div_ceil(GROUP),
        PANEL,
        GROUP,
    ])
}

/// Packs OIHW weights (`w[co][ci][kh][kw]`) into
/// `[ceil(cout/16)][kh][kw][ceil(cin/4)][16][4]` for u8 activations; channels past `cin`
/// or `cout` get zero.
pub fn pack_weights_s8(w_oihw: &[i8], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<i8> {
    pack_weights_for::<u8>(w_oihw, cout, cin, kh, kw)
}

/// Packs OIHW weights for activations of type `E`: as `pack_weights_s8`, with input
/// channel `k` of each group of 4 at byte `E::GROUP_ORDER[k]` of its lane.
pub fn pack_weights_for<E: QElement>(w_oihw: &[i8], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<i8> {
    assert_eq!(
        w_oihw.len(),
        product(&[cout, cin, kh, kw]),
        "pack_weights_s8: {} weights for OIHW [{cout}, {cin}, {kh}, {kw}]",
        w_oihw.len()
    );
    let groups = cin.div_ceil(GROUP);
    let mut packed = vec![0i8; product(&[cout.div_ceil(PANEL), kh, kw, groups, PANEL, GROUP])];
    for co in 0..cout {
        for ci in 0..cin {
            for y in 0..kh {
                for x in 0..kw {
                    let row = (((co / PANEL) * kh + y) * kw + x) * groups + ci / GROUP;
                    let dst = (row * PANEL + co % PANEL) * GROUP + E::GROUP_ORDER[ci % GROUP];
                    packed[dst] = w_oihw[((co * cin + ci) * kh + y) * kw + x];
                }
            }
        }
    }
    packed
}

/// Multiplies sizes, panicking with a clear message on overflow.
fn product(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or_else(|| panic!("qconv geometry: size {dims:?} overflows usize"))
}

/// Output pixels over the whole batch.
fn pixels(g: &QConvGeometry) -> usize {
    product(&[g.batch, g.out_h, g.out_w])
}

/// Where results go, as raw pointers shared by the tasks of one call.
#[derive(Clone, Copy)]
enum OutPtr {
    F32(*mut f32),
    U8 { ptr: *mut u8, zero: u8 },
    I16 { ptr: *mut i16, zero: i16, max: i16 },
}

/// Everything a task needs, shared read-only between tasks.
#[doc(hidden)]
pub struct Job<'a, E> {
    g: &'a QConvGeometry,
    input: &'a [E],
    x_zero: E,
    weights: &'a [i8],
    bias: &'a [i32],
    scale: &'a [f32],
    /// `u` (module docs): `scale[co] * u` is the per-channel factor, formed where it is
    /// used (a multiply per channel vector and tile) rather than in a buffer per call.
    unit: f32,
    residual: QResidual<'a>,
    /// What the residual is multiplied by: `u` for f32, `r_scale * u` for u8.
    residual_scale: f32,
    /// 1x1, stride 1, unpadded: output pixel q reads input pixel q.
    pointwise: bool,
    relu: bool,
    out: OutPtr,
    /// `kernel[1] * cin` elements of `x_zero`: the row that out-of-bounds taps read.
    pad_row: &'a [E],
}

// safety: the output pointer is only dereferenced inside tasks of one `run_tasks` call,
// each of which writes a region disjoint from every other task's (argued at `run_tasks`);
// the `&mut` slice it came from is borrowed for the whole call, so nothing else touches
// the buffer meanwhile. Everything else in `Job` is shared references.
unsafe impl<E: Sync> Sync for Job<'_, E> {}

/// Quantized NHWC convolution, group 1, on the best exact tier the CPU has at or below
/// the FP32 tier `isa` and `QP_MAX_INT8` (`select_int8_tier`). Arguments as
/// `qconv2d_nhwc_tier`.
#[allow(clippy::too_many_arguments)]
pub fn qconv2d_nhwc<E: QElement>(
    isa: Isa,
    par: &dyn ParallelFor,
    g: &QConvGeometry,
    input: &[E],
    x_zero: E,
    weights: &[i8],
    bias_i32: &[i32],
    scale: &[f32],
    residual: QResidual<'_>,
    relu: bool,
    out: QOutput<'_>,
) {
    let tier = select_int8_tier(isa);
    qconv2d_nhwc_tier(
        tier, par, g, input, x_zero, weights, bias_i32, scale, residual, relu, out,
    );
}

/// Quantized NHWC convolution, group 1, on `tier` or the first tier down its fallback
/// chain this CPU supports for `E` (`effective_tier_for`).
///
/// `input`: u8 or i16 `[batch][in_h][in_w][cin]` with zero point `x_zero`; `weights`:
/// packed by `pack_weights_for::<E>`; `bias_i32`, `scale`: `[cout]` (see the module docs
/// for what they fold); `residual`, `out`: `[batch][out_h][out_w][cout]`.
///
/// # Panics
/// When a slice length or the output extent does not match `g`, when an i16 output's
/// zero point is outside `[0, max]`, when a u8 reduction is longer than `MAX_REDUCTION`
/// (i16 sums wrap past `max_reduction_i16`, alike on every tier), or, for `Avx2Act7` on
/// u8, when an activation or `x_zero` exceeds 127 (callers validate first; these checks
/// guard the unsafe kernels).
#[allow(clippy::too_many_arguments)]
pub fn qconv2d_nhwc_tier<E: QElement>(
    tier: Int8Tier,
    par: &dyn ParallelFor,
    g: &QConvGeometry,
    input: &[E],
    x_zero: E,
    weights: &[i8],
    bias_i32: &[i32],
    scale: &[f32],
    residual: QResidual<'_>,
    relu: bool,
    mut out: QOutput<'_>,
) {
    check_args(g, input, weights, bias_i32, scale, residual, &out);
    // Checked on the request, so the contract does not depend on the CPU.
    if tier == Int8Tier::Avx2Act7 && std::mem::size_of::<E>() == 1 {
        assert!(
            x_zero.to_i32() <= 127 && input.iter().all(|&x| x.to_i32() <= 127),
            "qconv2d_nhwc: the avx2-act7 tier needs activations and x_zero <= 127"
        );
    }
    let mut tier = effective_tier_for::<E>(tier);
    #[cfg(target_arch = "x86_64")]
    if tier == Int8Tier::Amx && !amx::takes(g) {
        tier = Int8Tier::Avx512Vnni;
    }
    let tier_index = Int8Tier::ALL.iter().position(|&t| t == tier).unwrap_or(0);
    CALLS_PER_TIER[tier_index].fetch_add(1, Ordering::Relaxed);
    if pixels(g) == 0 || g.cout == 0 {
        return;
    }
    with_job(
        g,
        input,
        x_zero,
        weights,
        bias_i32,
        scale,
        residual,
        relu,
        &mut out,
        |job| E::run_tier(tier, par, job),
    );
}

/// Builds the shared `Job` of one call (arguments already checked) and runs `f` on it.
#[allow(clippy::too_many_arguments)]
fn with_job<E: QElement>(
    g: &QConvGeometry,
    input: &[E],
    x_zero: E,
    weights: &[i8],
    bias: &[i32],
    scale: &[f32],
    residual: QResidual<'_>,
    relu: bool,
    out: &mut QOutput<'_>,
    f: impl FnOnce(&Job<E>),
) {
    let pad_row = vec![x_zero; g.kernel[1] * g.cin];
    let (out, u) = match out {
        QOutput::F32(d) => (OutPtr::F32(d.as_mut_ptr()), 1.0),
        QOutput::U8 { data, scale, zero } => (
            OutPtr::U8 {
                ptr: data.as_mut_ptr(),
                zero: *zero,
            },
            1.0 / *scale,
        ),
        QOutput::I16 { data, scale, zero, max } => (
            OutPtr::I16 {
                ptr: data.as_mut_ptr(),
                zero: *zero,
                max: *max,
            },
            1.0 / *scale,
        ),
    };
    let residual_scale = match residual {
        QResidual::None | QResidual::F32(_) => u,
        QResidual::U8 { scale, .. } | QResidual::I16 { scale, .. } => scale * u,
    };
    f(&Job {
        g,
        input,
        x_zero,
        weights,
        bias,
        scale,
        unit: u,
        residual,
        residual_scale,
        pointwise: g.kernel == [1, 1] && g.stride == [1, 1] && g.pads == [0; 4],
        relu,
        out,
        pad_row: &pad_row,
    });
}

/// Runs `job` on `tier`, which `effective_tier_for::<i16>` returned (so the CPU
/// supports it).
fn run_tier_i16(tier: Int8Tier, par: &dyn ParallelFor, job: &Job<i16>) {
    match tier {
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx512Vnni => run_tasks(par, job, x86::Vnni512I16Tiles, |px, co| {
            // safety (every arm below): `effective_tier_for` returned this tier, so
            // `features()` reported the features its shim enables; `job` passed
            // `check_args`; the ranges come from `run_tasks`, disjoint from every other
            // task's.
            unsafe { x86::run_avx512_vnni_i16(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx512Vnni256 => run_tasks(par, job, x86::Vnni256I16Tiles, |px, co| {
            // safety: as above.
            unsafe { x86::run_avx512_vnni_256_i16(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Int8Tier::AvxVnni => run_tasks(par, job, x86::Vnni256I16Tiles, |px, co| {
            // safety: as above.
            unsafe { x86::run_avx_vnni_i16(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx2 => run_tasks(par, job, x86::Avx2Tiles, |px, co| {
            // safety: as above.
            unsafe { x86::run_avx2_i16(job, px, co) }
        }),
        _ => run_tasks(par, job, reference::ReferenceTiles, |px, co| {
            debug_assert_eq!(co, 0..1);
            reference::conv_pixels(job, px);
        }),
    }
}

/// Runs `job` on `tier`, which `effective_tier` returned (so the CPU supports it).
fn run_tier_u8(tier: Int8Tier, par: &dyn ParallelFor, job: &Job<u8>) {
    match tier {
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx512Vnni => run_tasks(par, job, x86::Vnni512Tiles, |px, co| {
            // safety (every arm below): `effective_tier` returned this tier, so `features()`
            // reported the features its shim enables; `job` passed `check_args`; the
            // ranges come from `run_tasks`, disjoint from every other task's.
            unsafe { x86::run_avx512_vnni(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Amx => {
            let padded = (!job.pointwise && amx::reads_padded(job.g)).then(|| amx::PaddedInput::new(job, par));
            let gathers = !job.pointwise && padded.is_none();
            run_amx_tasks(par, job, gathers, |px, co| {
                // safety: as above; the caller checked `amx::takes`; `padded` is made
                // from `job` exactly when `run_amx` needs it.
                unsafe { amx::run_amx(job, padded.as_ref(), px, co) }
            });
            if let Some(p) = padded {
                p.recycle();
            }
        }
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx512Vnni256 => run_tasks(par, job, x86::Vnni256Tiles, |px, co| {
            // safety: as above.
            unsafe { x86::run_avx512_vnni_256(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Int8Tier::AvxVnni => run_tasks(par, job, x86::Vnni256Tiles, |px, co| {
            // safety: as above.
            unsafe { x86::run_avx_vnni(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx2 => run_tasks(par, job, x86::Avx2Tiles, |px, co| {
            // safety: as above.
            unsafe { x86::run_avx2(job, px, co) }
        }),
        #[cfg(target_arch = "x86_64")]
        Int8Tier::Avx2Act7 => run_tasks(par, job, x86::Avx2Act7Tiles, |px, co| {
            // safety: as above; the inputs were checked to be <= 127.
            unsafe { x86::run_avx2_act7(job, px, co) }
        }),
        _ => run_tasks(par, job, reference::ReferenceTiles, |px, co| {
            debug_assert_eq!(co, 0..1);
            reference::conv_pixels(job, px);
        }),
    }
}

fn check_args<E: QElement>(
    g: &QConvGeometry,
    input: &[E],
    weights: &[i8],
    bias: &[i32],
    scale: &[f32],
    residual: QResidual<'_>,
    out: &QOutput<'_>,
) {
    for axis in 0..2 {
        let (name, extent) = (["out_h", "out_w"][axis], [g.out_h, g.out_w][axis]);
        assert_eq!(
            g.implied_out_extent(axis),
            Some(extent),
            "qconv2d_nhwc: {name} = {extent} does not match the window of {g:?}"
        );
    }
    let reduction = product(&[g.kernel[0], g.kernel[1], g.cin.div_ceil(GROUP), GROUP]);
    assert!(
        std::mem::size_of::<E>() != 1 || reduction <= MAX_REDUCTION,
        "qconv2d_nhwc: reduction of {reduction} products may overflow i32 (at most {MAX_REDUCTION})"
    );
    let expect = |what: &str, got: usize, want: usize| {
        assert_eq!(
            got, want,
            "qconv2d_nhwc: {what} has {got} elements, geometry needs {want}"
        );
    };
    expect("input", input.len(), g.input_len());
    expect("weights", weights.len(), packed_weight_len(g));
    expect("bias_i32", bias.len(), g.cout);
    expect("scale", scale.len(), g.cout);
    expect("output", out.len(), g.output_len());
    match residual {
        QResidual::None => {}
        QResidual::F32(r) => expect("residual", r.len(), g.output_len()),
        QResidual::U8 { data, .. } => expect("residual", data.len(), g.output_len()),
        QResidual::I16 { data, .. } => expect("residual", data.len(), g.output_len()),
    }
    if let QOutput::I16 { zero, max, .. } = *out {
        assert!(
            0 <= zero && zero <= max,
            "qconv2d_nhwc: i16 output zero point {zero} outside [0, {max}]"
        );
    }
}

pub(crate) use crate::split::Tiling;

/// Runs `task` over disjoint (pixel range, channel-tile range) pieces of `job`'s output
/// (the split rule and its disjointness argument: `crate::split::run_tasks`).
fn run_tasks<T: Tiling, E>(
    par: &dyn ParallelFor,
    job: &Job<E>,
    _tiling: T,
    task: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let input = pixels(job.g) * job.g.cin * std::mem::size_of::<E>();
    crate::split::run_tasks::<T>(par, &work(job, input), task)
}

/// The sizes that decide `job`'s split, with `input` the bytes one pass over all pixels
/// reads.
fn work<E>(job: &Job<E>, input: usize) -> crate::split::Work {
    let g = job.g;
    let panels = g.cout.div_ceil(PANEL);
    crate::split::Work {
        pixels: pixels(g),
        panels,
        weights: g.kernel[0] * g.kernel[1] * g.cin * panels * PANEL,
        input,
    }
}

/// `run_tasks` for the AMX kernel. A layer it `gathers` windows for is split by pixels
/// unless its weights exceed 3x the gathered windows: every task of a channel split
/// gathers all the windows again, which on one thread took a quarter of a 14x14
/// 256-channel 3x3 layer's time. With T threads a pixel split streams the weights T
/// times and gathers once, a channel split the reverse; gathering (a read and a write)
/// costs about twice streaming, hence the factor for 2 threads. Those layers in the
/// model, batch 1, 2 threads: 0.107-0.113 -> 0.102 ms.
#[cfg(target_arch = "x86_64")]
fn run_amx_tasks(
    par: &dyn ParallelFor,
    job: &Job<u8>,
    gathers: bool,
    task: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let g = job.g;
    let input = if gathers {
        3 * pixels(g) * g.kernel[0] * g.kernel[1] * g.cin
    } else {
        pixels(g) * g.cin
    };
    crate::split::run_tasks::<amx::AmxTiles>(par, &work(job, input), task)
}
