//! qp-convert: ONNX model -> `.qpw` engine file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qp::convert::{convert_file, ConvertOptions, Int8Options, Precision};

#[derive(Parser, Debug)]
#[command(
    name = "qp-convert",
    version,
    about = "Convert an ONNX model into a qp engine file (.qpw)"
)]
struct Args {
    /// The ONNX model to convert.
    model: PathBuf,
    /// Output file (default: the model's path with the extension .qpw).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Model name stored in the file (default: the ONNX file's stem).
    #[arg(long)]
    name: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Weight storage: fp32, fp16 (half the file; computed in f32) or int8 (calibrated;
    /// needs --calibrate).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
    /// Store every convolution for the direct kernel. By default an fp32 file stores its
    /// 3x3 stride-1 convolutions (outputs of 8x8 and up) for Winograd F(2x2, 3x3): 2.25x
    /// fewer multiplies, 16/9 the weight bytes of those layers.
    #[arg(long)]
    direct_conv: bool,
    /// Calibration data (int8, and fp16 rounding): a directory of PNG/JPEG images
    /// (preprocessed as the model's metadata says) and/or <input>.npy arrays. Repeatable.
    /// Every fourth image is held out for the accuracy report.
    #[arg(long, value_name = "DIR")]
    calibrate: Vec<PathBuf>,
    /// INT8: aggressive (every convolution INT8, u8 activations), balanced (the stem
    /// FP32, u8), conservative (the stem and the first stage FP32, 12-bit i16
    /// activations, GPTQ weights: within 0.01 of FP32 on the reference model, at half the
    /// VNNI speed of balanced). Default: conservative.
    #[arg(long, value_parser = parse_profile)]
    profile: Option<qp::quant::Profile>,
    /// INT8 activation clipping: mse, minmax, percentile (99.99%) or percentileNN.N.
    /// Default: mse.
    #[arg(long, value_parser = parse_method)]
    calibration_method: Option<qp::quant::range::Method>,
    /// Calibration samples (images spread evenly over what --calibrate holds). Needs
    /// --calibrate. Default: 64.
    #[arg(long)]
    calibration_samples: Option<usize>,
    /// Held-out images for the accuracy report (int8, and fp16 with --calibrate). Needs
    /// --calibrate. Default: 48.
    #[arg(long)]
    holdout_samples: Option<usize>,
    /// Pseudo-images added to the accuracy report. Needs --calibrate. Default: 32.
    #[arg(long)]
    pseudo_samples: Option<usize>,
    /// INT8: also evaluate every profile and clipping method (accuracy, latency).
    #[arg(long)]
    compare: bool,
    /// INT8: also measure how much quantizing each convolution alone moves the outputs.
    #[arg(long)]
    sensitivity: bool,
    /// INT8: convolutions (node names, comma-separated) kept FP32 beyond the profile's.
    /// FP16: convolutions and dense layers kept f32 beyond the default choice.
    #[arg(long, value_delimiter = ',', value_name = "NODES")]
    keep_fp32: Vec<String>,
    /// FP16 with --calibrate: the share of the parameters kept f32, in the layers whose
    /// f16 rounding moves the outputs most per weight (measured on the calibration
    /// samples, about 80 s on the full QualityNet on 2 cores); 0 turns it off. Default: 2.5.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    keep_fp32_share: Option<f64>,
    /// INT8: calibration samples the bias correction measures on (each INT8 convolution's
    /// per-channel output mean is matched to FP32's); 0 turns it off. Default: 32 with
    /// nearest rounding, 0 with gptq.
    #[arg(long)]
    bias_correction_samples: Option<usize>,
    /// Weight rounding: nearest, or gptq (each rounding error compensated by the weights
    /// not yet rounded, against the layer's calibration inputs). Default: int8 gptq for
    /// the conservative profile, nearest for the others; fp16 gptq with --calibrate,
    /// nearest without.
    #[arg(long, value_parser = parse_rounding)]
    weight_rounding: Option<qp::quant::WeightRounding>,
    /// INT8: bits of the activation grids, 8 to 15. 8 stores activations as u8 (the
    /// fastest kernels); more store them as i16, on grids 2^(bits-8) times finer, at half
    /// the VNNI multiply rate (the AVX2 rate is the same). A value read by a layer whose
    /// i32 sums could overflow on that grid gets the widest that keeps them exact.
    /// Default: 12 for the conservative profile, 8 for the others.
    #[arg(long, value_parser = clap::value_parser!(u8).range(8..=15))]
    activation_bits: Option<u8>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PrecisionArg {
    Fp32,
    Fp16,
    Int8,
}

fn parse_profile(s: &str) -> Result<qp::quant::Profile, String> {
    qp::quant::Profile::parse(s).ok_or_else(|| format!("{s:?}: expected aggressive, balanced or conservative"))
}

fn parse_rounding(s: &str) -> Result<qp::quant::WeightRounding, String> {
    qp::quant::WeightRounding::parse(s).ok_or_else(|| format!("{s:?}: expected gptq or nearest"))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?}: expected a percentage from 0 to 100")),
    }
}

fn parse_method(s: &str) -> Result<qp::quant::range::Method, String> {
    qp::quant::range::Method::parse(s)
        .ok_or_else(|| format!("{s:?}: expected mse, minmax, percentile or percentileNN.N (50 <= NN < 100)"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Progress of the long steps (INT8 calibration and bias correction) on stderr;
    // QP_LOG=warn silences it.
    qp::cli_log::init("info");
    let output = args.output.clone().unwrap_or_else(|| args.model.with_extension("qpw"));
    let defaults = Int8Options::default();
    let options = ConvertOptions {
        name: args.name.clone(),
        precision: match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Fp16 => Precision::Fp16,
            PrecisionArg::Int8 => Precision::Int8,
        },
        direct_conv: args.direct_conv,
        int8: Int8Options {
            profile: args.profile.unwrap_or(qp::quant::DEFAULT_PROFILE),
            method: args.calibration_method.unwrap_or(qp::quant::DEFAULT_METHOD),
            calibrate: args.calibrate.clone(),
            calibration_samples: args.calibration_samples.unwrap_or(defaults.calibration_samples),
            holdout_samples: args.holdout_samples.unwrap_or(defaults.holdout_samples),
            pseudo_samples: args.pseudo_samples.unwrap_or(defaults.pseudo_samples),
            compare: args.compare,
            sensitivity: args.sensitivity,
            keep_fp32: args.keep_fp32.clone(),
            keep_fp32_share: args.keep_fp32_share.map_or(defaults.keep_fp32_share, |p| p / 100.0),
            bias_correction_samples: args.bias_correction_samples,
            weight_rounding: args.weight_rounding,
            activation_bits: args.activation_bits,
        },
    };
    // A flag the precision does not use is refused rather than silently ignored.
    let int8_only = [
        (args.profile.is_some(), "--profile"),
        (args.calibration_method.is_some(), "--calibration-method"),
        (args.compare, "--compare"),
        (args.sensitivity, "--sensitivity"),
        (args.bias_correction_samples.is_some(), "--bias-correction-samples"),
        (args.activation_bits.is_some(), "--activation-bits"),
    ];
    // What int8 and fp16 read, calibrated or not.
    let reduced_precision = [(!args.keep_fp32.is_empty(), "--keep-fp32")];
    let fp16_only = [(args.keep_fp32_share.is_some(), "--keep-fp32-share")];
    // What only a calibrated conversion reads (int8 always is; fp16 is with --calibrate).
    let sample_counts = [
        (args.keep_fp32_share.is_some(), "--keep-fp32-share"),
        (args.calibration_samples.is_some(), "--calibration-samples"),
        (args.holdout_samples.is_some(), "--holdout-samples"),
        (args.pseudo_samples.is_some(), "--pseudo-samples"),
    ];
    let calibrated = [
        (!args.calibrate.is_empty(), "--calibrate"),
        (args.weight_rounding.is_some(), "--weight-rounding"),
    ];
    let first = |flags: &[(bool, &'static str)]| flags.iter().find(|(set, _)| *set).map(|&(_, flag)| flag);
    let unused = match args.precision {
        PrecisionArg::Int8 => first(&fp16_only).map(|f| (f, "fp16")),
        PrecisionArg::Fp16 => first(&int8_only).map(|f| (f, "int8")),
        PrecisionArg::Fp32 => first(&fp16_only)
            .map(|f| (f, "fp16"))
            .or_else(|| {
                first(&calibrated)
                    .or_else(|| first(&sample_counts))
                    .or_else(|| first(&reduced_precision))
                    .map(|f| (f, "int8 and fp16"))
            })
            .or_else(|| first(&int8_only).map(|f| (f, "int8"))),
    };
    if let Some((flag, precisions)) = unused {
        eprintln!("qp-convert: error: {flag} applies to --precision {precisions} only");
        return ExitCode::FAILURE;
    }
    if let (true, Some(flag)) = (args.calibrate.is_empty(), first(&sample_counts)) {
        eprintln!("qp-convert: error: {flag} needs --calibrate DIR (it works on calibration data)");
        return ExitCode::FAILURE;
    }
    let start = std::time::Instant::now();
    match convert_file(&args.model, &output, &options) {
        Ok((converted, size)) => {
            let meta = &converted.meta;
            let secs = start.elapsed().as_secs_f64();
            if args.json {
                let summary = serde_json::json!({
                    "output": output.display().to_string(),
                    "name": meta.name,
                    "onnx_ops": meta.stats.onnx_ops,
                    "engine_ops": meta.stats.engine_ops,
                    "parameters": meta.stats.parameters,
                    "flops_per_sample": meta.stats.flops_per_sample,
                    "file_bytes": size,
                    "precision": meta.precision,
                    "reports": meta.reports,
                    "seconds": secs,
                });
                qp::outln!("{summary}");
            } else {
                qp::outln!(
                    "wrote {} ({:.1} MB) in {secs:.2} s",
                    output.display(),
                    size as f64 / 1e6
                );
                qp::outln!(
                    "model      {} (opset {}, from {})",
                    meta.name,
                    meta.source.opset,
                    meta.source.producer_name
                );
                let ops: Vec<String> = meta.stats.onnx_ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                qp::outln!("onnx ops   {}", ops.join(", "));
                let ops: Vec<String> = meta.stats.engine_ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                qp::outln!("engine ops {}", ops.join(", "));
                qp::outln!("parameters {:.3} M", meta.stats.parameters as f64 / 1e6);
                qp::outln!(
                    "FLOPs      {:.3} G per sample",
                    meta.stats.flops_per_sample as f64 / 1e9
                );
                if let Some(report) = meta.reports.get("quantization") {
                    qp::out!("{}", qp::quant::report_text(report));
                }
                if let Some(report) = meta.reports.get("fp16") {
                    qp::out!("{}", qp::quant::half::report_text(report));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qp-convert: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
