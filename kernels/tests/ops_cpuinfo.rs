//! CPU description and the FMA peak micro-benchmark.

use qp_kernels::cpu::{self, Features, Isa};
use qp_kernels::cpuinfo::*;
use qp_kernels::peak::fma_peak_gflops;
use qp_kernels::qconv::{int8_peak_gops, Int8Tier};

#[test]
fn cpu_info_is_consistent_with_detection() {
    let info = cpu_info();
    assert_eq!(info.features, *cpu::features());
    assert!(info.logical_cores >= 1 && info.physical_cores >= 1);
    assert!(info.physical_cores <= info.logical_cores);
    assert_eq!(info.generation_class, generation_class(&info.features, &info.raw_flags));
    // The OS can only withhold features cpuid reports, never add them.
    assert!(!info.features.avx512f || info.raw_flags.avx512f);
    assert!(!info.features.avx2 || info.raw_flags.avx2);
    let text = info.to_string();
    for key in [
        "CPU:",
        "caches:",
        "usable features:",
        "cpuid flags:",
        "generation class:",
    ] {
        assert!(text.contains(key), "report lacks {key:?}:\n{text}");
    }
    println!("{text}");
}

#[test]
fn generation_classes_by_features() {
    let haswell = Features {
        avx2: true,
        fma: true,
        f16c: true,
        ..Features::default()
    };
    let skylake_sp = Features {
        avx512f: true,
        avx512bw: true,
        avx512vl: true,
        avx512dq: true,
        ..haswell
    };
    let cascade = Features {
        avx512vnni: true,
        ..skylake_sp
    };
    let alder = Features {
        avxvnni: true,
        ..haswell
    };
    let none = CpuidFlags::default();
    let amx = CpuidFlags {
        amx_tile: true,
        amx_int8: true,
        ..none
    };
    assert_eq!(generation_class(&Features::default(), &none), "pre-Haswell (SSE only)");
    assert_eq!(generation_class(&haswell, &none), "Haswell (AVX2+FMA)");
    assert_eq!(generation_class(&alder, &none), "Alder Lake (AVX-VNNI, no AVX-512)");
    assert_eq!(generation_class(&skylake_sp, &none), "Skylake-SP (AVX-512)");
    assert_eq!(
        generation_class(&cascade, &none),
        "Ice Lake/Cascade Lake (AVX-512 VNNI)"
    );
    assert_eq!(generation_class(&cascade, &amx), "Sapphire Rapids (AMX)");
    // AMX flags without usable AVX-512 do not make a Sapphire Rapids class.
    assert_eq!(generation_class(&haswell, &amx), "Haswell (AVX2+FMA)");
    // AVX-512 without FMA/AVX2 usable is not a usable AVX-512 tier.
    let broken = Features {
        avx2: false,
        ..skylake_sp
    };
    assert_eq!(generation_class(&broken, &none), "pre-Haswell (SSE only)");
}

#[test]
fn fma_peak_measures_something_on_every_tier() {
    for isa in Isa::ALL {
        let g = fma_peak_gflops(isa, 20);
        assert!(g.is_finite() && g > 0.0, "{isa}: {g}");
    }
}

#[test]
fn int8_peak_measures_something_on_every_tier() {
    // Tiers this CPU lacks measure the tier it runs in their place.
    for tier in Int8Tier::ALL {
        let g = int8_peak_gops(tier, 5);
        assert!(g.is_finite() && g > 0.0, "{}: {g}", tier.name());
    }
}

/// Prints the measured single-thread peak per tier (`--ignored --nocapture`).
#[test]
#[ignore]
fn report_fma_peak() {
    for isa in Isa::ALL {
        println!("{isa}: {:.1} GFLOP/s", fma_peak_gflops(isa, 1000));
    }
    for tier in Int8Tier::ALL {
        println!("{}: {:.1} GOP/s", tier.name(), int8_peak_gops(tier, 1000));
    }
}
