//! `qp-engine bench`: latency and throughput of a `.qpw` model per kernel tier, batch and
//! thread count, peak activation memory and first-inference latency; with `--cpu-profile`,
//! also a description of the CPU, its measured FMA peak and a per-layer efficiency table.

pub mod inputs;
pub mod layers;
pub mod stats;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::engine::{Engine, EngineOptions, Isa, Tensor};
use crate::format::{ModelMeta, QpwFile};
use layers::{kind_totals, layer_times, LayerTime};

/// Seed of the random inputs, fixed so that runs are comparable.
pub const INPUT_SEED: u64 = 0x5EED_BE4C;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model file.
    #[arg(long, default_value = "weights/qualitynet.qpw")]
    pub model: PathBuf,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Worker thread counts, comma-separated (default: the engine's, one per available core).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Highest kernel tier: scalar, avx2, avx512 (also QP_MAX_ISA; default: the best this CPU has).
    #[arg(long)]
    pub max_isa: Option<Isa>,
    /// Tiers to measure: `best` (the tier the engine picks), `all` (every tier this CPU
    /// runs, up to --max-isa), `simd` (as `all`, less scalar) or a list like `avx2,scalar`.
    #[arg(long, default_value = "best")]
    pub tiers: TierChoice,
    /// Untimed runs before the timed ones (after the first inference).
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Timed runs per (tier, batch, threads).
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// Timed runs on the scalar tier, which is slow (it gets no warm-up beyond the first run).
    #[arg(long, default_value_t = 2)]
    pub scalar_iterations: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Describe the CPU, measure its FMA peak, run the model on every tier and print a
    /// per-layer table for the best tier.
    #[arg(long)]
    pub cpu_profile: bool,
    /// Milliseconds each FMA peak measurement runs (--cpu-profile).
    #[arg(long, default_value_t = 500)]
    pub peak_ms: u64,
    /// Instead of timing: compare the model's outputs with this reference model's (e.g.
    /// an INT8 or FP16 file against its FP32 original): mean, p99 and max |delta|,
    /// Pearson r, pooled-feature cosine, on pseudo-images and --accuracy-images.
    #[arg(long, value_name = "REFERENCE.qpw")]
    pub accuracy: Option<PathBuf>,
    /// Folder of PNG/JPEG images for --accuracy (preprocessed as the model says).
    #[arg(long, value_name = "DIR", requires = "accuracy")]
    pub accuracy_images: Option<PathBuf>,
    /// Samples of each kind for --accuracy.
    #[arg(long, default_value_t = 32)]
    pub accuracy_samples: usize,
    /// Only the --accuracy-images that `qp-convert --calibrate DIR` holds out from
    /// calibration (every fourth file in name order), for a model calibrated on that
    /// same folder: none of them was calibrated on.
    #[arg(long, requires = "accuracy_images")]
    pub accuracy_held_out: bool,
}

/// Which kernel tiers a bench measures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierChoice {
    Best,
    All,
    Simd,
    List(Vec<Isa>),
}

impl FromStr for TierChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<TierChoice, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "best" => Ok(TierChoice::Best),
            "all" => Ok(TierChoice::All),
            "simd" => Ok(TierChoice::Simd),
            list => {
                let tiers = list
                    .split(',')
                    .filter(|t| !t.trim().is_empty())
                    .map(Isa::from_str)
                    .collect::<Result<Vec<_>, _>>()?;
                if tiers.is_empty() {
                    return Err("no tier given (best, all, simd or a list like avx2,scalar)".into());
                }
                Ok(TierChoice::List(tiers))
            }
        }
    }
}

/// The tiers to measure, best first. `cap` (or `QP_MAX_ISA`) lowers `best`, `all` and
/// `simd`; a tier named explicitly must be one the CPU runs.
pub fn tiers_to_run(choice: &TierChoice, cap: Option<Isa>) -> Result<Vec<Isa>> {
    let top = qp_kernels::cpu::select_isa(cap).map_err(anyhow::Error::msg)?;
    let cpu_best = qp_kernels::cpu::features().best_isa();
    let descending = Isa::ALL.iter().rev().copied().filter(|&t| t <= top);
    let tiers: Vec<Isa> = match choice {
        TierChoice::Best => vec![top],
        TierChoice::All => descending.collect(),
        TierChoice::Simd => {
            let simd: Vec<Isa> = descending.filter(|&t| t != Isa::Scalar).collect();
            if simd.is_empty() {
                bail!("no SIMD tier to measure: this CPU (or the tier cap) allows only scalar");
            }
            simd
        }
        TierChoice::List(list) => {
            let mut tiers = Vec::new();
            for &t in list {
                if t > cpu_best {
                    bail!("this CPU cannot run the {t} tier (its best is {cpu_best})");
                }
                if !tiers.contains(&t) {
                    tiers.push(t);
                }
            }
            tiers
        }
    };
    Ok(tiers)
}

/// One measured configuration.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub tier: String,
    pub batch: usize,
    pub threads: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub images_per_s: f64,
    pub iterations: usize,
    /// Load + plan + first run in a fresh engine (file pages already in the OS cache).
    pub first_inference_ms: f64,
    /// Peak activation memory (the plan's arena) at this batch.
    pub activation_bytes: usize,
    pub pinned: bool,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    model: String,
    model_path: String,
    gflop_per_sample: f64,
    cpu: String,
    best_tier: String,
    /// /proc/loadavg before and after: other processes on the machine skew timings.
    load_before: Option<String>,
    load_after: Option<String>,
    results: Vec<BenchResult>,
}

/// Entry point of `qp-engine bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.batch.iter().any(|&b| b == 0 || b > crate::engine::MAX_BATCH) {
        bail!("--batch: every batch size must be in 1..={}", crate::engine::MAX_BATCH);
    }
    if args.threads.contains(&0) {
        bail!("--threads: thread counts must be at least 1");
    }
    if args.iterations == 0 || args.scalar_iterations == 0 {
        bail!("--iterations and --scalar-iterations must be at least 1");
    }
    let meta = open_meta(&args.model)?;
    if let Some(reference) = &args.accuracy {
        return accuracy(args, &meta, reference);
    }
    if args.cpu_profile {
        return cpu_profile(args, &meta);
    }
    let tiers = tiers_to_run(&args.tiers, args.max_isa)?;
    let load_before = load_average();
    let mut results = Vec::new();
    if !args.json {
        print_header(args, &meta);
        print_result_header();
    }
    for &tier in &tiers {
        for &batch in &args.batch {
            for threads in thread_choices(args) {
                let r = measure(&args.model, &meta, tier, batch, threads, args)?;
                if !args.json {
                    print_result(&r);
                }
                results.push(r);
            }
        }
    }
    let report = BenchReport {
        model: meta.name.clone(),
        model_path: args.model.display().to_string(),
        gflop_per_sample: meta.stats.flops_per_sample as f64 / 1e9,
        cpu: qp_kernels::cpuinfo::cpu_info().brand,
        best_tier: qp_kernels::cpu::features().best_isa().to_string(),
        load_before,
        load_after: load_average(),
        results,
    };
    if args.json {
        crate::outln!("{}", serde_json::to_string(&report)?);
    } else {
        print_footer(&report);
    }
    Ok(())
}

fn open_meta(path: &Path) -> Result<ModelMeta> {
    let file = QpwFile::open(path).with_context(|| {
        format!(
            "opening model {} (convert one with qp-convert; see README.md, or pass --model)",
            path.display()
        )
    })?;
    crate::plan::validate::validate(&file.meta)
        .map_err(|e| anyhow::anyhow!("invalid model {}: {e}", path.display()))?;
    Ok(file.meta)
}

/// `None` lets the engine choose (QP_THREADS or one per core).
fn thread_choices(args: &BenchArgs) -> Vec<Option<usize>> {
    if args.threads.is_empty() {
        vec![None]
    } else {
        args.threads.iter().map(|&t| Some(t)).collect()
    }
}

fn named(feeds: &[(String, Tensor)]) -> Vec<(&str, Tensor)> {
    feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()
}

/// Loads a fresh engine, times its first inference, warms up and times `iterations` runs.
fn measure(
    path: &Path,
    meta: &ModelMeta,
    tier: Isa,
    batch: usize,
    threads: Option<usize>,
    args: &BenchArgs,
) -> Result<BenchResult> {
    let feeds = inputs::random_inputs(meta, batch, INPUT_SEED);
    let feeds = named(&feeds);
    let (warmup, iterations) = if tier == Isa::Scalar {
        (0, args.scalar_iterations)
    } else {
        (args.warmup, args.iterations)
    };
    let start = Instant::now();
    let mut engine = load_engine(path, tier, threads)?;
    engine.run(&feeds)?;
    let first_inference_ms = start.elapsed().as_secs_f64() * 1e3;
    for _ in 0..warmup {
        engine.run(&feeds)?;
    }
    let mut ms = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        engine.run(&feeds)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median_ms = stats::median(&ms);
    Ok(BenchResult {
        tier: engine.isa().to_string(),
        batch,
        threads: engine.threads(),
        median_ms,
        p90_ms: stats::quantile(&ms, 0.9),
        images_per_s: batch as f64 / (median_ms / 1e3),
        iterations,
        first_inference_ms,
        activation_bytes: engine.activation_bytes(batch),
        pinned: engine.pinned(),
    })
}

fn load_engine(path: &Path, tier: Isa, threads: Option<usize>) -> Result<Engine> {
    let options = EngineOptions {
        max_isa: Some(tier),
        threads,
        reference: false,
    };
    Engine::load(path, options).with_context(|| format!("loading {}", path.display()))
}

fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn print_header(args: &BenchArgs, meta: &ModelMeta) {
    let cpu = qp_kernels::cpuinfo::cpu_info();
    crate::outln!(
        "model  {} ({}), {:.2} GFLOP per sample",
        meta.name,
        args.model.display(),
        meta.stats.flops_per_sample as f64 / 1e9
    );
    crate::outln!(
        "cpu    {} ({} logical cores, best tier {})",
        cpu.brand,
        cpu.logical_cores,
        cpu.features.best_isa()
    );
    if let Some(load) = load_average() {
        crate::outln!("load   {load} (1/5/15 min; other processes skew timings)");
    }
    crate::outln!();
}

fn print_result_header() {
    crate::outln!(
        "{:<7} {:>5} {:>7} {:>10} {:>10} {:>9} {:>5} {:>10} {:>6} {:>10}",
        "tier",
        "batch",
        "threads",
        "median ms",
        "p90 ms",
        "images/s",
        "iters",
        "first ms",
        "first/",
        "act. MB"
    );
    crate::outln!(
        "{:<7} {:>5} {:>7} {:>10} {:>10} {:>9} {:>5} {:>10} {:>6} {:>10}",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "steady",
        ""
    );
}

fn print_result(r: &BenchResult) {
    crate::outln!(
        "{:<7} {:>5} {:>7} {:>10.2} {:>10.2} {:>9.1} {:>5} {:>10.1} {:>5.2}x {:>10.2}",
        r.tier,
        r.batch,
        format!("{}{}", r.threads, if r.pinned { "p" } else { "" }),
        r.median_ms,
        r.p90_ms,
        r.images_per_s,
        r.iterations,
        r.first_inference_ms,
        r.first_inference_ms / r.median_ms,
        r.activation_bytes as f64 / 1e6
    );
}

fn print_footer(report: &BenchReport) {
    crate::outln!();
    crate::outln!("threads: 'p' = workers pinned to cores. first ms = load + plan + first run in a fresh");
    crate::outln!("engine (file already in the OS page cache); first/steady = first ms / median ms.");
    if let Some(load) = &report.load_after {
        crate::outln!("load after: {load}");
    }
}

/// FP32 GFLOP/s of one core and of `threads` cores at once on `tier`.
#[derive(Clone, Copy, Debug)]
struct Peak {
    tier: Isa,
    single: f64,
    all_threads: f64,
}

fn measure_peak(tier: Isa, threads: usize, ms: u64) -> Peak {
    let (single, all_threads) = alone_and_together(threads, || qp_kernels::peak::fma_peak_gflops(tier, ms));
    Peak {
        tier,
        single,
        all_threads,
    }
}

/// A rate measured by one thread, then the sum of `threads` threads measuring at once.
fn alone_and_together(threads: usize, rate: impl Fn() -> f64 + Sync) -> (f64, f64) {
    let single = rate();
    let rate = &rate;
    let all_threads = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(rate)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    (single, all_threads)
}

/// `--accuracy`: the model against a reference model on the same samples.
fn accuracy(args: &BenchArgs, meta: &ModelMeta, reference: &Path) -> Result<()> {
    use crate::quant::{accuracy, dataset};
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (model, reference_bytes) = (read(&args.model)?, read(reference)?);
    let mut sets = vec![(
        "pseudo-images".to_string(),
        dataset::pseudo_images(meta, args.accuracy_samples, INPUT_SEED)?,
    )];
    if let Some(dir) = &args.accuracy_images {
        let mut files = dataset::image_files(dir)?;
        let mut set = "images";
        if args.accuracy_held_out {
            files = dataset::held_out_files(&files);
            set = "held-out images";
        }
        let files = dataset::spread(&files, args.accuracy_samples);
        if files.is_empty() {
            let held_out = if args.accuracy_held_out {
                " held out (every fourth; give at least four)"
            } else {
                ""
            };
            bail!("--accuracy-images {}: no PNG or JPEG files{held_out}", dir.display());
        }
        sets.push((set.to_string(), dataset::from_images(meta, &files, INPUT_SEED)?));
    }
    let (want, got) = (
        accuracy::run_sets(&reference_bytes, &sets)?,
        accuracy::run_sets(&model, &sets)?,
    );
    if want[0].names != got[0].names {
        bail!(
            "the models have different outputs: {:?} vs {:?}",
            got[0].names,
            want[0].names
        );
    }
    let results = accuracy::compare_each(&sets, &want, &got);
    if args.json {
        crate::outln!("{}", serde_json::to_string(&results)?);
        return Ok(());
    }
    crate::outln!(
        "{} ({}) against {}:",
        args.model.display(),
        meta.precision,
        reference.display()
    );
    for a in &results {
        for o in &a.outputs {
            crate::out!(
                "  {:<14} ({:>3}) {:<10} mean |d| {:.5} (bias {:+.5})  p99 {:.5}  max {:.5}  r {:.5}",
                a.set,
                a.samples,
                o.output,
                o.mean_abs_delta,
                o.mean_delta,
                o.p99_abs_delta,
                o.max_abs_delta,
                o.pearson_r
            );
            if let Some(f) = &a.pooled_features {
                crate::out!("  features cos {:.5} (min {:.5})", f.mean, f.min);
            }
            crate::outln!();
        }
    }
    Ok(())
}

/// `--cpu-profile`.
fn cpu_profile(args: &BenchArgs, meta: &ModelMeta) -> Result<()> {
    let info = qp_kernels::cpuinfo::cpu_info();
    crate::outln!("== CPU");
    crate::outln!("{info}");
    let chosen = qp_kernels::cpu::select_isa(args.max_isa).map_err(anyhow::Error::msg)?;
    let threads = args.threads.first().copied();
    let batch = args.batch[0];
    // A probe engine reports the thread count and pinning the engine really gets.
    let probe = load_engine(&args.model, chosen, threads)?;
    let thread_count = probe.threads();
    crate::outln!(
        "engine: tier {chosen}{}, {thread_count} threads, workers {}",
        match args.max_isa {
            Some(cap) => format!(" (capped at {cap})"),
            None => String::new(),
        },
        if probe.pinned() {
            "pinned to cores"
        } else {
            "not pinned"
        }
    );
    let int8_tier = probe.int8_tier();
    if let Some(tier) = int8_tier {
        let note = if tier == qp_kernels::qconv::Int8Tier::Amx {
            " (AVX512-VNNI for layers whose input channels are not a multiple of 64)"
        } else {
            ""
        };
        crate::outln!("INT8 convolutions: tier {}{note}", tier.name());
    }
    drop(probe);

    crate::outln!();
    crate::outln!("== FMA peak, FP32 GFLOP/s ({} ms per measurement)", args.peak_ms);
    crate::outln!(
        "{:<7} {:>10} {:>16} {:>16}",
        "tier",
        "1 core",
        format!("{thread_count} threads"),
        format!("{thread_count} x 1 core")
    );
    let all_tiers = tiers_to_run(&TierChoice::All, None)?;
    let mut peaks = Vec::new();
    for &tier in &all_tiers {
        let p = measure_peak(tier, thread_count, args.peak_ms);
        crate::outln!(
            "{:<7} {:>10.1} {:>16.1} {:>16.1}",
            tier.name(),
            p.single,
            p.all_threads,
            p.single * thread_count as f64
        );
        peaks.push(p);
    }

    crate::outln!();
    crate::outln!(
        "== Model {} on every tier, batch {}",
        meta.name,
        args.batch.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",")
    );
    print_result_header();
    for &tier in &tiers_to_run(&TierChoice::All, args.max_isa)? {
        for &b in &args.batch {
            print_result(&measure(&args.model, meta, tier, b, threads, args)?);
        }
    }

    // An INT8 model's integer layers are measured against their own tier's rate.
    let int8_peak = int8_tier.map(|tier| {
        crate::outln!();
        crate::outln!("== INT8 peak, GOP/s ({} ms per measurement)", args.peak_ms);
        crate::outln!(
            "{:<16} {:>10} {:>16} {:>16}",
            "tier",
            "1 core",
            format!("{thread_count} threads"),
            format!("{thread_count} x 1 core")
        );
        let (single, all_threads) =
            alone_and_together(thread_count, || qp_kernels::qconv::int8_peak_gops(tier, args.peak_ms));
        crate::outln!(
            "{:<16} {:>10.1} {:>16.1} {:>16.1}",
            tier.name(),
            single,
            all_threads,
            single * thread_count as f64
        );
        (tier, single * thread_count as f64)
    });

    let fma_peak = peaks
        .iter()
        .find(|p| p.tier == chosen)
        .map_or(0.0, |p| p.single * thread_count as f64);
    let peak = PeakRates {
        fma: fma_peak,
        int8: int8_peak.map_or(0.0, |(_, p)| p),
    };
    let (layers, end_to_end) = profile_layers(&args.model, meta, chosen, batch, threads, args)?;
    crate::outln!();
    let int8_note = match int8_peak {
        Some((tier, p)) => format!(
            "; qconv rows count integer ops, against {thread_count} x 1-core {} peak ({p:.1} GOP/s)",
            tier.name()
        ),
        None => String::new(),
    };
    crate::outln!(
        "== Per layer: tier {chosen}, batch {batch}, {thread_count} threads, median of {} runs; % of peak = of {thread_count} x 1-core FMA peak ({fma_peak:.1} GFLOP/s){int8_note}",
        args.iterations
    );
    print_layers(&layers, peak);
    crate::outln!();
    crate::outln!("== By op kind");
    print_kind_totals(&layers, peak, end_to_end);
    Ok(())
}

/// Per-node medians over `iterations` profiled runs (after the warm-up), and the median
/// end-to-end seconds of those runs.
fn profile_layers(
    path: &Path,
    meta: &ModelMeta,
    tier: Isa,
    batch: usize,
    threads: Option<usize>,
    args: &BenchArgs,
) -> Result<(Vec<LayerTime>, f64)> {
    let feeds = inputs::random_inputs(meta, batch, INPUT_SEED);
    let feeds = named(&feeds);
    let mut engine = load_engine(path, tier, threads)?;
    for _ in 0..args.warmup.max(1) {
        engine.run(&feeds)?;
    }
    let iterations = if tier == Isa::Scalar {
        args.scalar_iterations
    } else {
        args.iterations
    };
    let mut runs = Vec::with_capacity(iterations);
    let mut totals = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let (_, times) = engine.run_profiled(&feeds)?;
        totals.push(t.elapsed().as_secs_f64());
        runs.push(times);
    }
    Ok((layer_times(meta, batch, &runs), stats::median(&totals)))
}

/// The rates per-layer throughput is a share of: FP32 FMA GFLOP/s and, for INT8
/// convolutions, INT8 GOP/s (0 when not measured).
#[derive(Clone, Copy, Debug)]
struct PeakRates {
    fma: f64,
    int8: f64,
}

impl PeakRates {
    /// The peak for nodes of `kind`.
    fn of(&self, kind: &str) -> f64 {
        if kind == "qconv" {
            self.int8
        } else {
            self.fma
        }
    }
}

fn percent_of(value: Option<f64>, peak: f64) -> String {
    match value {
        Some(v) if peak > 0.0 => format!("{:.0}%", 100.0 * v / peak),
        _ => "-".into(),
    }
}

fn print_layers(layers: &[LayerTime], peak: PeakRates) {
    let name_w = layers.iter().map(|l| l.name.len()).max().unwrap_or(4).max(4);
    let label_w = layers.iter().map(|l| l.label.len()).max().unwrap_or(2).max(2);
    let shape_w = layers.iter().map(|l| l.shape.len()).max().unwrap_or(5).max(5);
    crate::outln!(
        "{:<name_w$} {:<label_w$} {:<shape_w$} {:>8} {:>8} {:>6}",
        "node",
        "op",
        "shape",
        "ms",
        "GFLOP/s",
        "%peak"
    );
    for l in layers {
        let gf = l.gflops_per_s();
        crate::outln!(
            "{:<name_w$} {:<label_w$} {:<shape_w$} {:>8.3} {:>8} {:>6}",
            l.name,
            l.label,
            l.shape,
            l.seconds * 1e3,
            gf.map_or("-".into(), |g| format!("{g:.1}")),
            percent_of(gf, peak.of(l.kind))
        );
    }
}

fn print_kind_totals(layers: &[LayerTime], peak: PeakRates, end_to_end: f64) {
    let totals = kind_totals(layers);
    let sum: f64 = layers.iter().map(|l| l.seconds).sum();
    crate::outln!(
        "{:<20} {:>5} {:>9} {:>6} {:>8} {:>8} {:>6}",
        "op kind",
        "nodes",
        "ms",
        "%time",
        "GFLOP",
        "GFLOP/s",
        "%peak"
    );
    let mut rows: Vec<_> = totals.iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    for (kind, t) in rows {
        let gf = (t.flops > 0 && t.flop_seconds > 0.0).then(|| t.flops as f64 / t.flop_seconds / 1e9);
        crate::outln!(
            "{:<20} {:>5} {:>9.3} {:>5.1}% {:>8} {:>8} {:>6}",
            kind,
            t.count,
            t.seconds * 1e3,
            100.0 * t.seconds / sum.max(f64::MIN_POSITIVE),
            if t.flops > 0 {
                format!("{:.3}", t.flops as f64 / 1e9)
            } else {
                "-".into()
            },
            gf.map_or("-".into(), |g| format!("{g:.1}")),
            percent_of(gf, peak.of(kind))
        );
    }
    let int8 = totals.contains_key("qconv");
    let flops: u64 = totals.values().map(|t| t.flops).sum();
    let gf = (sum > 0.0).then(|| flops as f64 / sum / 1e9);
    crate::outln!(
        "{:<20} {:>5} {:>9.3} {:>5.1}% {:>8.3} {:>8} {:>6}",
        "total",
        layers.len(),
        sum * 1e3,
        100.0,
        flops as f64 / 1e9,
        gf.map_or("-".into(), |g| format!("{g:.1}")),
        percent_of(gf.filter(|_| !int8), peak.fma)
    );
    crate::outln!(
        "(sum of node times {:.3} ms; end-to-end median of the profiled runs {:.3} ms)",
        sum * 1e3,
        end_to_end * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_choice_parses_keywords_and_lists() {
        assert_eq!("best".parse(), Ok(TierChoice::Best));
        assert_eq!("ALL".parse(), Ok(TierChoice::All));
        assert_eq!("simd".parse(), Ok(TierChoice::Simd));
        assert_eq!(
            "avx2,scalar".parse(),
            Ok(TierChoice::List(vec![Isa::Avx2, Isa::Scalar]))
        );
        assert!("avx3".parse::<TierChoice>().is_err());
        assert!(",".parse::<TierChoice>().is_err());
    }

    #[test]
    fn tier_lists_follow_the_cpu() {
        let best = qp_kernels::cpu::features().best_isa();
        let all = tiers_to_run(&TierChoice::All, Some(best)).unwrap();
        assert_eq!(all.first(), Some(&best));
        assert_eq!(all.last(), Some(&Isa::Scalar));
        assert!(all.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(
            tiers_to_run(&TierChoice::Best, Some(Isa::Scalar)).unwrap(),
            vec![Isa::Scalar]
        );
        assert_eq!(
            tiers_to_run(&TierChoice::All, Some(Isa::Scalar)).unwrap(),
            vec![Isa::Scalar]
        );
        assert!(tiers_to_run(&TierChoice::Simd, Some(Isa::Scalar)).is_err());
        let dup = TierChoice::List(vec![Isa::Scalar, Isa::Scalar]);
        assert_eq!(tiers_to_run(&dup, None).unwrap(), vec![Isa::Scalar]);
        if best < Isa::Avx512 {
            assert!(tiers_to_run(&TierChoice::List(vec![Isa::Avx512]), None).is_err());
        }
    }
}
