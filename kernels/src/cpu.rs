//! CPU feature detection and the ISA tier that picks kernels.
//!
//! Detection happens once: raw-cpuid describes the CPU (vendor, model, caches), and the
//! OS-aware `is_x86_feature_detected!` decides which features may actually be used (an
//! OS that does not save AVX-512 state must not get AVX-512 kernels). `QP_MAX_ISA` caps
//! the tier so every tier can be tested on one machine.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Kernel tiers, ordered: a CPU that runs a tier runs every tier below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust; the reference every other tier is tested against.
    Scalar,
    /// AVX2 + FMA (Haswell and later, Zen).
    Avx2,
    /// AVX-512 F/BW/VL/DQ (Skylake-SP and later, Zen 4).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Isa, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "generic" => Ok(Isa::Scalar),
            "avx2" | "avx2+fma" | "haswell" => Ok(Isa::Avx2),
            "avx512" | "avx-512" | "avx512f" | "skylake-sp" => Ok(Isa::Avx512),
            other => Err(format!(
                "unknown ISA tier {other:?} (expected one of: scalar, avx2, avx512)"
            )),
        }
    }
}

/// The features qp cares about, as the OS lets this process use them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512dq: bool,
    pub avx512vnni: bool,
    pub avx512bf16: bool,
    pub avxvnni: bool,
    pub amx_tile: bool,
    pub amx_int8: bool,
}

impl Features {
    pub fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let amx = amx_int8_usable();
            Features {
                avx2: has!("avx2"),
                fma: has!("fma"),
                f16c: has!("f16c"),
                avx512f: has!("avx512f"),
                avx512bw: has!("avx512bw"),
                avx512vl: has!("avx512vl"),
                avx512dq: has!("avx512dq"),
                avx512vnni: has!("avx512vnni"),
                avx512bf16: has!("avx512bf16"),
                avxvnni: has!("avxvnni"),
                amx_tile: amx,
                amx_int8: amx,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Features::default()
        }
    }

    /// The best tier these features allow.
    pub fn best_isa(&self) -> Isa {
        if self.avx512f && self.avx512bw && self.avx512vl && self.avx512dq && self.avx2 && self.fma {
            Isa::Avx512
        } else if self.avx2 && self.fma {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }
}

/// AMX-TILE and AMX-INT8 (cpuid leaf 7; the std macro's AMX names are unstable), and
/// only once the OS has granted this process the tile data state.
#[cfg(target_arch = "x86_64")]
fn amx_int8_usable() -> bool {
    let cpu_has = raw_cpuid::CpuId::new()
        .get_extended_feature_info()
        .is_some_and(|f| f.has_amx_tile() && f.has_amx_int8());
    cpu_has && request_tile_permission()
}

/// Asks Linux for this process's permission to use the AMX tile data state; without it
/// the first tile instruction faults. Process-wide and idempotent; refused (so AMX goes
/// unused) by kernels without AMX support.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // safety: arch_prctl with these arguments only changes the process's permitted
    // extended-state set; it reads and writes no memory of ours.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Elsewhere AMX goes unused: no Mac has it, and other systems would need their own
/// request.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_permission() -> bool {
    false
}

/// Features detected once per process.
pub fn features() -> &'static Features {
    static F: OnceLock<Features> = OnceLock::new();
    F.get_or_init(Features::detect)
}

/// The cap from `QP_MAX_ISA`, if set. An unparsable value is reported, not ignored.
pub fn env_cap() -> Result<Option<Isa>, String> {
    match std::env::var("QP_MAX_ISA") {
        Ok(v) if !v.trim().is_empty() => v.parse().map(Some).map_err(|e| format!("QP_MAX_ISA: {e}")),
        _ => Ok(None),
    }
}

/// The tier to run: the best this CPU supports, lowered to `cap` (an explicit cap wins over
/// `QP_MAX_ISA`). Asking for more than the CPU has silently gets what it has.
pub fn select_isa(cap: Option<Isa>) -> Result<Isa, String> {
    let cap = match cap {
        Some(c) => Some(c),
        None => env_cap()?,
    };
    let best = features().best_isa();
    Ok(cap.map_or(best, |c| c.min(best)))
}
