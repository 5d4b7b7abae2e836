//! qp-convert: ONNX model -> `.qpw` engine file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qp::convert::{convert_file, ConvertOptions, Precision};

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
    /// Weight storage: fp32, or fp16 (half the file; computed in f32).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: PrecisionArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PrecisionArg {
    Fp32,
    Fp16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let output = args.output.clone().unwrap_or_else(|| args.model.with_extension("qpw"));
    let options = ConvertOptions {
        name: args.name.clone(),
        precision: match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Fp16 => Precision::Fp16,
        },
    };
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
                    "seconds": secs,
                });
                println!("{summary}");
            } else {
                println!(
                    "wrote {} ({:.1} MB) in {secs:.2} s",
                    output.display(),
                    size as f64 / 1e6
                );
                println!(
                    "model      {} (opset {}, from {})",
                    meta.name, meta.source.opset, meta.source.producer_name
                );
                let ops: Vec<String> = meta.stats.onnx_ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                println!("onnx ops   {}", ops.join(", "));
                let ops: Vec<String> = meta.stats.engine_ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                println!("engine ops {}", ops.join(", "));
                println!("parameters {:.3} M", meta.stats.parameters as f64 / 1e6);
                println!(
                    "FLOPs      {:.3} G per sample",
                    meta.stats.flops_per_sample as f64 / 1e9
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("qp-convert: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
