//! A description of the CPU for `qp-engine bench --cpu-profile`: identity, core counts,
//! caches, the features kernels may use, the raw cpuid flags (AMX included) and which Intel
//! generation the instruction set corresponds to.
//!
//! Every cpuid leaf is optional (VMs hide some); missing data shows as 0 / "unknown".

use crate::cpu::{self, Features};
use std::fmt;

/// Feature flags as cpuid reports them, regardless of OS support.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidFlags {
    pub sse4_2: bool,
    pub avx: bool,
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512dq: bool,
    pub avx512vnni: bool,
    pub avx512bf16: bool,
    pub avx512fp16: bool,
    pub avxvnni: bool,
    pub amx_tile: bool,
    pub amx_int8: bool,
    pub amx_bf16: bool,
    pub hypervisor: bool,
}

impl CpuidFlags {
    /// Names of the flags that are set, in declaration order.
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.sse4_2, "sse4.2"),
            (self.avx, "avx"),
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.f16c, "f16c"),
            (self.avx512f, "avx512f"),
            (self.avx512bw, "avx512bw"),
            (self.avx512vl, "avx512vl"),
            (self.avx512dq, "avx512dq"),
            (self.avx512vnni, "avx512vnni"),
            (self.avx512bf16, "avx512bf16"),
            (self.avx512fp16, "avx512fp16"),
            (self.avxvnni, "avxvnni"),
            (self.amx_tile, "amx-tile"),
            (self.amx_int8, "amx-int8"),
            (self.amx_bf16, "amx-bf16"),
            (self.hypervisor, "hypervisor"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    pub vendor: String,
    pub brand: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    /// Threads this process may run on.
    pub logical_cores: usize,
    /// Best effort: logical cores divided by SMT threads per core (from cpuid topology).
    pub physical_cores: usize,
    pub l1d_kib: u32,
    pub l2_kib: u32,
    pub l3_kib: u32,
    /// What the OS lets kernels use (decides the ISA tier).
    pub features: Features,
    /// What cpuid reports.
    pub raw_flags: CpuidFlags,
    /// The Intel generation whose instruction set the usable features match.
    pub generation_class: &'static str,
}

/// The Intel generation class of a feature set, by features, not model numbers (a Zen 4
/// with AVX-512 VNNI is in the Cascade Lake class). AMX counts when cpuid reports it.
pub fn generation_class(f: &Features, raw: &CpuidFlags) -> &'static str {
    let avx2 = f.avx2 && f.fma;
    let avx512 = avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
    if avx512 && raw.amx_tile && raw.amx_int8 {
        "Sapphire Rapids (AMX)"
    } else if avx512 && f.avx512vnni {
        "Ice Lake/Cascade Lake (AVX-512 VNNI)"
    } else if avx512 {
        "Skylake-SP (AVX-512)"
    } else if avx2 && f.avxvnni {
        "Alder Lake (AVX-VNNI, no AVX-512)"
    } else if avx2 {
        "Haswell (AVX2+FMA)"
    } else {
        "pre-Haswell (SSE only)"
    }
}

/// Describes this CPU. Never panics; unknown parts are left empty or zero.
pub fn cpu_info() -> CpuInfo {
    let logical_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let features = *cpu::features();
    #[cfg(target_arch = "x86_64")]
    {
        x86_info(logical_cores, features)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        CpuInfo {
            vendor: "unknown".into(),
            brand: std::env::consts::ARCH.into(),
            family: 0,
            model: 0,
            stepping: 0,
            logical_cores,
            physical_cores: logical_cores,
            l1d_kib: 0,
            l2_kib: 0,
            l3_kib: 0,
            features,
            raw_flags: CpuidFlags::default(),
            generation_class: "not x86-64 (scalar kernels only)",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn x86_info(logical_cores: usize, features: Features) -> CpuInfo {
    use raw_cpuid::{CacheType, CpuId, TopologyType};

    let id = CpuId::new();
    let vendor = id
        .get_vendor_info()
        .map_or_else(|| "unknown".to_string(), |v| v.as_str().to_string());
    let brand = id
        .get_processor_brand_string()
        .map(|b| b.as_str().trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let fi = id.get_feature_info();
    let (family, model, stepping) = fi.as_ref().map_or((0, 0, 0), |f| {
        (f.family_id() as u32, f.model_id() as u32, f.stepping_id() as u32)
    });

    let mut raw = CpuidFlags::default();
    if let Some(f) = &fi {
        raw.sse4_2 = f.has_sse42();
        raw.avx = f.has_avx();
        raw.fma = f.has_fma();
        raw.f16c = f.has_f16c();
        raw.hypervisor = f.has_hypervisor();
    }
    if let Some(e) = id.get_extended_feature_info() {
        raw.avx2 = e.has_avx2();
        raw.avx512f = e.has_avx512f();
        raw.avx512bw = e.has_avx512bw();
        raw.avx512vl = e.has_avx512vl();
        raw.avx512dq = e.has_avx512dq();
        raw.avx512vnni = e.has_avx512vnni();
        raw.avx512bf16 = e.has_avx512_bf16();
        raw.avx512fp16 = e.has_avx512_fp16();
        raw.avxvnni = e.has_avx_vnni();
        raw.amx_tile = e.has_amx_tile();
        raw.amx_int8 = e.has_amx_int8();
        raw.amx_bf16 = e.has_amx_bf16();
    }

    // Caches: the deterministic cache leaf (Intel leaf 4, AMD 0x8000_001D), else AMD's
    // legacy extended leaves.
    let (mut l1d_kib, mut l2_kib, mut l3_kib) = (0u32, 0u32, 0u32);
    if let Some(caches) = id.get_cache_parameters() {
        for c in caches {
            let bytes = c.associativity() * c.physical_line_partitions() * c.coherency_line_size() * c.sets();
            let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
            match (c.level(), c.cache_type()) {
                (1, CacheType::Data) | (1, CacheType::Unified) => l1d_kib = kib,
                (2, _) if c.cache_type() != CacheType::Instruction => l2_kib = kib,
                (3, _) if c.cache_type() != CacheType::Instruction => l3_kib = kib,
                _ => {}
            }
        }
    }
    if l1d_kib == 0 {
        if let Some(l1) = id.get_l1_cache_and_tlb_info() {
            l1d_kib = l1.dcache_size() as u32;
        }
    }
    if l2_kib == 0 || l3_kib == 0 {
        if let Some(l23) = id.get_l2_l3_cache_and_tlb_info() {
            if l2_kib == 0 {
                l2_kib = l23.l2cache_size() as u32;
            }
            if l3_kib == 0 {
                l3_kib = l23.l3cache_size() as u32 * 512;
            }
        }
    }

    // SMT width from the extended topology leaf; without it assume no SMT.
    let threads_per_core = id
        .get_extended_topology_info()
        .and_then(|mut levels| levels.find(|l| l.level_type() == TopologyType::SMT))
        .map_or(1, |l| (l.processors() as usize).max(1));
    let physical_cores = (logical_cores / threads_per_core).max(1);

    let generation_class = generation_class(&features, &raw);
    CpuInfo {
        vendor,
        brand,
        family,
        model,
        stepping,
        logical_cores,
        physical_cores,
        l1d_kib,
        l2_kib,
        l3_kib,
        features,
        raw_flags: raw,
        generation_class,
    }
}

fn kib(v: u32) -> String {
    match v {
        0 => "unknown".to_string(),
        v if v >= 1024 && v % 1024 == 0 => format!("{} MiB", v / 1024),
        v => format!("{v} KiB"),
    }
}

impl fmt::Display for CpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let feat = &self.features;
        let usable = [
            (feat.avx2, "avx2"),
            (feat.fma, "fma"),
            (feat.f16c, "f16c"),
            (feat.avx512f, "avx512f"),
            (feat.avx512bw, "avx512bw"),
            (feat.avx512vl, "avx512vl"),
            (feat.avx512dq, "avx512dq"),
            (feat.avx512vnni, "avx512vnni"),
            (feat.avx512bf16, "avx512bf16"),
            (feat.avxvnni, "avxvnni"),
        ];
        let usable: Vec<&str> = usable.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        let raw = self.raw_flags.names();
        writeln!(f, "CPU:              {} ({})", self.brand, self.vendor)?;
        writeln!(
            f,
            "family/model:     {} / {} stepping {}",
            self.family, self.model, self.stepping
        )?;
        writeln!(
            f,
            "cores:            {} logical, {} physical (best effort)",
            self.logical_cores, self.physical_cores
        )?;
        writeln!(
            f,
            "caches:           L1d {}, L2 {}, L3 {}",
            kib(self.l1d_kib),
            kib(self.l2_kib),
            kib(self.l3_kib)
        )?;
        writeln!(
            f,
            "usable features:  {}",
            if usable.is_empty() {
                "none beyond SSE".to_string()
            } else {
                usable.join(" ")
            }
        )?;
        writeln!(
            f,
            "cpuid flags:      {}",
            if raw.is_empty() {
                "none".to_string()
            } else {
                raw.join(" ")
            }
        )?;
        writeln!(f, "best kernel tier: {}", feat.best_isa())?;
        write!(f, "generation class: {}", self.generation_class)
    }
}
