//! qp-engine: run, inspect, benchmark and serve `.qpw` models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use qp::engine::{Engine, EngineOptions, Isa, Tensor};

#[derive(Parser, Debug)]
#[command(name = "qp-engine", version, about = "Run the quality prediction model on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct EngineArgs {
    /// Highest kernel tier to use: scalar, avx2, avx512 (default: the best this CPU has).
    #[arg(long, env = "QP_MAX_ISA")]
    max_isa: Option<Isa>,
    /// Worker threads (default: one per available core).
    #[arg(long, env = "QP_THREADS")]
    threads: Option<usize>,
    /// Use the scalar reference executor (slow; for checking).
    #[arg(long, env = "QP_REFERENCE")]
    reference: bool,
}

impl EngineArgs {
    fn options(&self) -> EngineOptions {
        EngineOptions {
            max_isa: self.max_isa,
            threads: self.threads,
            reference: self.reference,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one batch from .npy inputs and write every output as DIR/<output>.npy.
    Run {
        #[arg(long)]
        model: PathBuf,
        /// NAME=FILE.npy, once per model input.
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print a model file's metadata.
    Info {
        model: PathBuf,
        /// Print the whole metadata document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Predict the SSIM of converting one image with the given parameters.
    Predict {
        /// Model file (default: weights/qualitynet.qpw).
        #[arg(long, default_value = "weights/qualitynet.qpw")]
        model: PathBuf,
        /// PNG or JPEG image (for models with an image input).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Named feature or conversion parameter, NAME=VALUE (repeatable); unnamed
        /// parameters take the model's defaults.
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Serve models over HTTP.
    Serve(qp::serve::ServeArgs),
    /// Measure latency and throughput per tier, batch and thread count (--cpu-profile:
    /// CPU description, FMA peak and a per-layer table).
    Bench(qp::bench::BenchArgs),
    /// GET a health URL (default: this host's /v2/health/ready); exit 0 on a 2xx, 1 otherwise.
    Healthcheck(qp::healthcheck::HealthcheckArgs),
}

fn parse_kv(s: &str) -> Result<(&str, &str)> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| anyhow!("expected NAME=VALUE, got {s:?}"))
}

fn run(model: &Path, inputs: &[String], out: &Path, engine: &EngineArgs) -> Result<()> {
    let mut engine = Engine::load(model, engine.options())?;
    let mut tensors = Vec::new();
    for spec in inputs {
        let (name, file) = parse_kv(spec)?;
        tensors.push((name.to_string(), qp::npy::read(Path::new(file))?));
    }
    let named: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let outputs = engine.run(&named)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, t) in &outputs {
        // Output names may hold '/' or other characters unfit for file names.
        let file = out.join(format!("{}.npy", sanitize(name)));
        qp::npy::write(&file, t)?;
        qp::outln!("{name}: {:?} -> {}", t.shape, file.display());
    }
    // Which kernels ran: a tier cap above what this CPU has is lowered silently, so the
    // test scripts read this line to tell a tier that ran from one that fell back.
    match engine.int8_tier() {
        Some(int8) => qp::outln!("tier: {} (int8: {})", engine.isa(), int8.name()),
        None => qp::outln!("tier: {}", engine.isa()),
    }
    Ok(())
}

/// File-name-safe form of an output name: anything outside [A-Za-z0-9._-] becomes '_'.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn info(model: &Path, json: bool) -> Result<()> {
    let file = qp::format::QpwFile::open(model)?;
    qp::plan::validate::validate(&file.meta).map_err(|e| anyhow!("invalid model: {e}"))?;
    let m = &file.meta;
    if json {
        qp::outln!("{}", serde_json::to_string_pretty(m)?);
        return Ok(());
    }
    qp::outln!("model       {}", m.name);
    if !m.description.is_empty() {
        qp::outln!("description {}", m.description);
    }
    qp::outln!("precision   {}", m.precision);
    qp::outln!(
        "file        {} ({:.1} MB, format v{})",
        model.display(),
        file.file_len() as f64 / 1e6,
        file.header.version
    );
    qp::outln!(
        "source      {} {} opset {} sha256 {}",
        m.source.producer_name,
        m.source.producer_version,
        m.source.opset,
        m.source.sha256
    );
    for i in &m.inputs {
        qp::outln!("input       {} [N, {}]", i.name, dims(&i.shape));
        if let Some(im) = &i.image {
            qp::outln!(
                "            image {}x{} mean {:?} std {:?}",
                im.width,
                im.height,
                im.mean,
                im.std
            );
        }
        for f in i.features.iter().flatten() {
            let d = f.default.map(|d| format!(" default {d}")).unwrap_or_default();
            qp::outln!(
                "            {:<20} [{}, {}]{d}{}",
                f.name,
                f.min,
                f.max,
                if f.normalize { " (normalized)" } else { "" }
            );
        }
    }
    for o in &m.outputs {
        qp::outln!("output      {} [N, {}]", o.name, dims(&o.shape));
    }
    let ops: Vec<String> = m.stats.engine_ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    qp::outln!("ops         {}", ops.join(", "));
    qp::outln!("parameters  {:.3} M", m.stats.parameters as f64 / 1e6);
    qp::outln!("FLOPs       {:.3} G per sample", m.stats.flops_per_sample as f64 / 1e9);
    let plan = qp::plan::Plan::new(m, 1);
    qp::outln!("activations {:.2} MB at batch 1", plan.arena_bytes() as f64 / 1e6);
    for (k, v) in &m.reports {
        if k == "quantization" {
            qp::out!("{}", qp::quant::report_text(v));
        } else if k == "fp16" {
            qp::out!("{}", qp::quant::half::report_text(v));
        } else {
            qp::outln!("report      {k}: {v}");
        }
    }
    Ok(())
}

fn dims(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn predict(model: &Path, image: Option<&Path>, params: &[String], engine: &EngineArgs) -> Result<()> {
    let mut engine = Engine::load(model, engine.options()).with_context(|| {
        format!(
            "loading {} (build the default models with the command in README.md)",
            model.display()
        )
    })?;
    let meta = engine.meta().clone();
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    for p in params {
        let (k, v) = parse_kv(p)?;
        let v: f64 = v.parse().map_err(|_| anyhow!("parameter {k}: {v:?} is not a number"))?;
        values.insert(k.to_string(), v);
    }
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for spec in &meta.inputs {
        if let Some(im) = &spec.image {
            let path = image.ok_or_else(|| anyhow!("this model needs an image (--image FILE)"))?;
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let data = qp::preprocess::image_to_tensor(&bytes, im, 100_000_000)?;
            inputs.push((spec.name.clone(), Tensor::new(vec![1, 3, im.height, im.width], data)));
        } else if let Some(features) = &spec.features {
            let data = qp::preprocess::features_to_vec(&values, features)?;
            inputs.push((spec.name.clone(), Tensor::new(vec![1, features.len()], data)));
        } else {
            bail!(
                "input {:?} has neither image nor feature metadata; use `qp-engine run` with .npy inputs",
                spec.name
            );
        }
    }
    let named: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let start = std::time::Instant::now();
    let outputs = engine.run(&named)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    for (name, t) in &outputs {
        if t.data.len() == 1 {
            qp::outln!("{name} = {:.4}", t.data[0]);
        } else {
            qp::outln!("{name} = {:?}", t.data);
        }
    }
    eprintln!("({ms:.1} ms, {} tier, {} threads)", engine.isa(), engine.threads());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up its own logging; the other commands print warnings (QP_LOG overrides
    // the level) on stderr, apart from their results on stdout.
    if !matches!(cli.command, Command::Serve(_)) {
        qp::cli_log::init("warn");
    }
    let result = match &cli.command {
        Command::Run {
            model,
            inputs,
            out,
            engine,
        } => run(model, inputs, out, engine),
        Command::Info { model, json } => info(model, *json),
        Command::Predict {
            model,
            image,
            params,
            engine,
        } => predict(model, image.as_deref(), params, engine),
        Command::Serve(args) => qp::serve::run(args.clone()),
        Command::Bench(args) => qp::bench::run(args),
        Command::Healthcheck(args) => qp::healthcheck::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qp-engine: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
