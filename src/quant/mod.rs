//! INT8 post-training quantization, run by `qp-convert --precision int8`: calibrate
//! activation ranges on real samples, quantize the convolutions a profile selects, and
//! measure what that costs against the FP32 model on held-out samples. The figures go
//! into the file's metadata (`reports.quantization`), shown by `qp-engine info` and the
//! server's `/model`.

pub mod accuracy;
pub mod calibrate;
pub mod correct;
pub mod dataset;
pub mod gptq;
pub mod half;
pub mod range;
pub mod rewrite;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use self::accuracy::{compare, compare_sets, run_model, run_sets, Accuracy, Outputs};
use self::dataset::Sample;
use self::range::{Histogram, Method, QuantParams};
use self::rewrite::RoundedWeights;
use crate::convert::Converted;
use crate::engine::{Engine, EngineOptions};
use crate::format::{ModelMeta, QpwFile};
use crate::graph::op::Op;

/// Which convolutions stay FP32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Every convolution INT8, the stem too.
    Aggressive,
    /// The stem (convolutions reading a model input: 3 channels, little work, the
    /// largest rounding error relative to its signal) stays FP32.
    Balanced,
    /// The stem and the first stage (the convolutions reading the largest maps after
    /// the stem: ResNet-50's layer1 and layer2.0's conv1, conv2 and projection shortcut;
    /// layer1's s8 weights cost the most accuracy) stay FP32, and activations are stored on
    /// 12-bit grids (i16; 11 bits where a reader's sums need it) with GPTQ-rounded
    /// weights: the profile that keeps the INT8
    /// model within 0.01 of FP32 on the reference model (docs/PERFORMANCE.md, "INT8
    /// error budget"), at half the VNNI multiply rate.
    Conservative,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Aggressive, Profile::Balanced, Profile::Conservative];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Aggressive => "aggressive",
            Profile::Balanced => "balanced",
            Profile::Conservative => "conservative",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Activation grid bits when none are asked for: u8 for aggressive and balanced,
    /// 12 bits (i16) for conservative. The inputs of ResNet-50's 3 x 3 x 512 layers get 11
    /// (`widest_exact_bits`: their 4608 products could overflow i32 on 12). On the
    /// reference model 12 bits measured 0.0048 / 0.0104 mean |d ssim| on held-out icons /
    /// pseudo-images, 11 bits everywhere 0.0054 / 0.0108 (GPTQ in patch order; in energy
    /// order, the default since, 12 bits give 0.0047 / 0.0098: docs/PERFORMANCE.md).
    pub fn default_activation_bits(self) -> u8 {
        match self {
            Profile::Aggressive | Profile::Balanced => QuantParams::U8_BITS,
            Profile::Conservative => 12,
        }
    }

    /// Weight rounding when none is asked for: nearest (with bias correction) where
    /// u8 activations dominate the error, GPTQ for conservative, whose finer activations
    /// leave the weights' rounding as the larger part (docs/PERFORMANCE.md).
    pub fn default_weight_rounding(self) -> WeightRounding {
        match self {
            Profile::Aggressive | Profile::Balanced => WeightRounding::Nearest,
            Profile::Conservative => WeightRounding::Gptq,
        }
    }
}

/// How conv weights are rounded to their per-channel grids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightRounding {
    /// Each weight to its nearest grid step.
    Nearest,
    /// Error-compensating rounding against the layer's calibration inputs (`gptq`).
    Gptq,
}

impl WeightRounding {
    pub const ALL: [WeightRounding; 2] = [WeightRounding::Nearest, WeightRounding::Gptq];

    pub fn name(self) -> &'static str {
        match self {
            WeightRounding::Nearest => "nearest",
            WeightRounding::Gptq => "gptq",
        }
    }

    pub fn parse(s: &str) -> Option<WeightRounding> {
        WeightRounding::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// The default clipping method: on the reference model, MSE-optimal clipping moved the
/// predicted SSIM least (docs/PERFORMANCE.md, "INT8 accuracy").
pub const DEFAULT_METHOD: Method = Method::Mse;
/// The profile that meets the accuracy bar (mean |d| <= 0.01, p99 <= 0.04, Pearson >=
/// 0.99 against FP32) on the reference model; `balanced` is the fast one
/// (docs/PERFORMANCE.md, "INT8 profiles").
pub const DEFAULT_PROFILE: Profile = Profile::Conservative;
/// Bias correction samples when the weights are rounded to nearest: on the reference
/// model 32 samples took the mean |delta ssim| from 0.067 to 0.027 (docs/PERFORMANCE.md;
/// fewer samples measured worse, 64 no better), at about one full-model pass over those
/// samples per INT8 convolution at conversion time. After GPTQ rounding the layers'
/// output means are already close and the correction measured no better (0.030 -> 0.033,
/// within the noise), so it is off by default there.
pub fn default_bias_correction_samples(rounding: WeightRounding) -> usize {
    match rounding {
        WeightRounding::Nearest => 32,
        WeightRounding::Gptq => 0,
    }
}

pub struct QuantizeOptions {
    pub profile: Profile,
    pub method: Method,
    /// Samples the activation ranges are measured on.
    pub calibration: Vec<Sample>,
    /// Named held-out sets the accuracy report is measured on (never calibrated on).
    pub holdout: Vec<(String, Vec<Sample>)>,
    /// Also measure every profile x method, with batch-1 latency, for the report.
    pub compare: bool,
    /// Also measure how much quantizing each convolution alone moves the outputs.
    pub sensitivity: bool,
    /// Convolutions (node names) kept FP32 beyond what the profile keeps, e.g. the most
    /// sensitive ones from a sensitivity report.
    pub keep_fp32: Vec<String>,
    /// Calibration samples the bias correction measures on (spread over `calibration`);
    /// 0 turns it off.
    pub bias_correction_samples: usize,
    pub weight_rounding: WeightRounding,
    /// Bits of the activation grids: 8 (u8, the fastest kernels) or 9 to 15 (i16,
    /// `vpdpwssd`: half the VNNI rate, 2^(bits-8) times finer); `None`: each profile's
    /// default (`Profile::default_activation_bits`).
    pub activation_bits: Option<u8>,
}

/// One profile x method evaluated on all held-out samples.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidate {
    pub profile: Profile,
    /// Files written before wider grids existed used 8.
    #[serde(default = "u8_activation_bits")]
    pub activation_bits: u8,
    pub method: String,
    pub int8_convolutions: usize,
    pub accuracy: Accuracy,
    /// Median batch-1 latency at conversion time, and the FP32 model's beside it.
    pub latency_ms: f64,
    pub fp32_latency_ms: f64,
}

/// What quantizing one convolution alone (everything else FP32) does to each output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sensitivity {
    pub node: String,
    /// Mean |delta| per model output, in output order.
    pub mean_abs_delta: Vec<f64>,
}

/// The `reports.quantization` entry of an INT8 file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuantizationReport {
    pub profile: Profile,
    pub method: String,
    pub calibration_samples: usize,
    pub int8_convolutions: usize,
    pub fp32_convolutions: Vec<String>,
    /// Samples the biases were corrected on (0: not corrected).
    #[serde(default)]
    pub bias_correction_samples: usize,
    /// Files written before the option existed rounded to nearest.
    #[serde(default = "rounded_to_nearest")]
    pub weight_rounding: WeightRounding,
    /// Files written before wider grids existed used 8.
    #[serde(default = "u8_activation_bits")]
    pub activation_bits: u8,
    /// Against the FP32 model, per held-out set and over all of them (`all`).
    pub accuracy: Vec<Accuracy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitivity: Vec<Sensitivity>,
}

fn u8_activation_bits() -> u8 {
    QuantParams::U8_BITS
}

fn rounded_to_nearest() -> WeightRounding {
    WeightRounding::Nearest
}

/// Convolution node indices of `meta`.
fn convolutions(meta: &ModelMeta) -> Vec<usize> {
    (0..meta.nodes.len())
        .filter(|&i| matches!(meta.nodes[i].op, Op::Conv { .. }))
        .collect()
}

/// The first stage: the convolutions other than the stem that read the largest maps any
/// of them reads (ResNet-50: layer1, and layer2.0's conv1, conv2 and projection shortcut,
/// which read maps of layer1's size; conv2 strides).
fn first_stage(meta: &ModelMeta) -> BTreeSet<usize> {
    let stem = stem(meta);
    let rest: Vec<usize> = convolutions(meta).into_iter().filter(|n| !stem.contains(n)).collect();
    let extent = |n: usize| -> usize { meta.values[meta.nodes[n].inputs[0]].shape.iter().skip(1).product() };
    let largest = rest.iter().map(|&n| extent(n)).max().unwrap_or(0);
    rest.into_iter().filter(|&n| extent(n) == largest).collect()
}

/// Convolutions reading a model input directly.
fn stem(meta: &ModelMeta) -> BTreeSet<usize> {
    let inputs: Vec<usize> = meta.inputs.iter().map(|i| i.value).collect();
    convolutions(meta)
        .into_iter()
        .filter(|&i| meta.nodes[i].inputs.iter().any(|v| inputs.contains(v)))
        .collect()
}

/// The convolutions `profile` quantizes, less those named in `keep_fp32`.
pub fn int8_convolutions(meta: &ModelMeta, profile: Profile, keep_fp32: &[String]) -> BTreeSet<usize> {
    let keep: BTreeSet<usize> = match profile {
        Profile::Aggressive => BTreeSet::new(),
        Profile::Balanced => stem(meta),
        Profile::Conservative => stem(meta).into_iter().chain(first_stage(meta)).collect(),
    };
    convolutions(meta)
        .into_iter()
        .filter(|&n| !keep.contains(&n) && !keep_fp32.contains(&meta.nodes[n].name))
        .collect()
}

/// The widest grid (at most `QuantParams::MAX_BITS`) on which every convolution reading
/// value `v` as its input keeps its sums exact in i32 (`qconv::max_reduction_i16`).
fn widest_exact_bits(meta: &ModelMeta, v: usize) -> u8 {
    let reductions = meta.nodes.iter().filter_map(|n| match n.op {
        Op::Conv { cin, window, .. } if n.inputs.first() == Some(&v) => {
            let group = crate::graph::op::QPACK_GROUP;
            Some(window.kernel[0] * window.kernel[1] * cin.div_ceil(group) * group)
        }
        _ => None,
    });
    let longest = reductions.max().unwrap_or(0);
    (QuantParams::U8_BITS + 1..=QuantParams::MAX_BITS)
        .rev()
        .find(|&bits| longest <= qp_kernels::qconv::max_reduction_i16(((1u32 << bits) - 1) as u16))
        .unwrap_or(QuantParams::U8_BITS)
}

/// Calibrated grids, for one method.
struct Grids<'a> {
    meta: &'a ModelMeta,
    hists: &'a std::collections::BTreeMap<usize, Histogram>,
    method: Method,
    /// The widest grid asked for; a value whose readers' sums could overflow on it gets
    /// the widest that keeps them exact.
    bits: u8,
}

impl Grids<'_> {
    fn grid(&self, v: usize) -> QuantParams {
        let bits = if self.bits > QuantParams::U8_BITS {
            self.bits.min(widest_exact_bits(self.meta, v))
        } else {
            self.bits
        };
        let (lo, hi) = self.hists[&v].clip(self.method, bits);
        QuantParams::from_interval(lo, hi, bits)
    }
}

/// The INT8 model of `fp32` under `options`, with its report in the metadata.
pub fn quantize(fp32: &Converted, options: &QuantizeOptions) -> Result<Converted> {
    if fp32.meta.precision != "fp32" {
        bail!("INT8 quantization starts from an FP32 model");
    }
    if let Some(n) = fp32.meta.nodes.iter().find(|n| matches!(n.op, Op::ConvWinograd { .. })) {
        bail!(
            "INT8 quantization starts from direct convolutions; node {:?} holds Winograd weights \
             (convert with direct_conv)",
            n.name
        );
    }
    let meta = &fp32.meta;
    let convs = convolutions(meta);
    if convs.is_empty() {
        bail!("the model has no convolutions to quantize");
    }
    for name in &options.keep_fp32 {
        if !convs.iter().any(|&n| &meta.nodes[n].name == name) {
            let names: Vec<&str> = convs.iter().map(|&n| meta.nodes[n].name.as_str()).collect();
            bail!(
                "--keep-fp32 {name:?}: no convolution has that name; the convolutions are: {}",
                names.join(", ")
            );
        }
    }
    let fp32_bytes = fp32.to_bytes()?;
    // Every value a convolution reads or writes: the grids any profile may need.
    let wanted: Vec<usize> = convs
        .iter()
        .flat_map(|&n| [meta.nodes[n].inputs[0], meta.nodes[n].outputs[0]])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    tracing::info!(
        "calibrating {} values on {} samples",
        wanted.len(),
        options.calibration.len()
    );
    let hists = calibrate::histograms(&fp32_bytes, &options.calibration, &wanted)?;
    let correction_samples = dataset::spread(&options.calibration, options.bias_correction_samples);
    let correction_reference = if correction_samples.is_empty() {
        None
    } else {
        Some(correct::reference_stats(&fp32_bytes, &correction_samples)?)
    };

    // Weight rounding does not depend on the activation grids: once per convolution that
    // any model built below may quantize.
    let roundable: Vec<usize> = if options.compare || options.sensitivity {
        convs.clone()
    } else {
        int8_convolutions(meta, options.profile, &options.keep_fp32)
            .into_iter()
            .collect()
    };
    let rounded = round_weights(fp32, &fp32_bytes, &roundable, options)?;

    let build = |profile: Profile, method: Method, only: Option<usize>| -> Result<Converted> {
        let grids = Grids {
            meta,
            hists: &hists,
            method,
            bits: options.activation_bits.unwrap_or(profile.default_activation_bits()),
        };
        let set = match only {
            Some(n) => BTreeSet::from([n]),
            None => int8_convolutions(meta, profile, &options.keep_fp32),
        };
        let mut model = rewrite::quantize_model(fp32, &set, &|v| grids.grid(v), &rounded)?;
        crate::plan::validate::validate(&model.meta).map_err(|e| anyhow::anyhow!("quantized model: {e}"))?;
        if let Some(reference) = &correction_reference {
            correct::correct_biases(&mut model, reference, &correction_samples)?;
        }
        Ok(model)
    };

    let all: Vec<Sample> = options.holdout.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    if all.is_empty() {
        bail!("the accuracy report needs held-out samples");
    }
    tracing::info!("FP32 outputs of {} held-out samples", all.len());
    let reference_sets = run_sets(&fp32_bytes, &options.holdout)?;
    let reference_all = Outputs::concat(&reference_sets);

    let mut model = build(options.profile, options.method, None)?;
    let bytes = model.to_bytes()?;
    let report_accuracy = compare_sets(&options.holdout, &reference_sets, &run_sets(&bytes, &options.holdout)?);

    let mut candidates = Vec::new();
    if options.compare {
        tracing::info!("comparing every profile x clipping method");
        let fp32_latency_ms = latency_ms(&fp32_bytes, &all[0])?;
        for profile in Profile::ALL {
            for method in [Method::MinMax, Method::Percentile(1e-4), Method::Mse] {
                let m = build(profile, method, None)?.to_bytes()?;
                candidates.push(Candidate {
                    profile,
                    activation_bits: options.activation_bits.unwrap_or(profile.default_activation_bits()),
                    method: method.name(),
                    int8_convolutions: int8_convolutions(meta, profile, &options.keep_fp32).len(),
                    accuracy: compare("all", &reference_all, &run_model(&m, &all)?),
                    latency_ms: latency_ms(&m, &all[0])?,
                    fp32_latency_ms,
                });
            }
        }
    }

    let mut sensitivity = Vec::new();
    if options.sensitivity {
        tracing::info!("measuring each convolution's sensitivity");
        let subset: Vec<Sample> = dataset::spread(&all, 16);
        let reference = run_model(&fp32_bytes, &subset)?;
        for &n in &convs {
            let m = build(options.profile, options.method, Some(n))?.to_bytes()?;
            let acc = compare("sensitivity", &reference, &run_model(&m, &subset)?);
            sensitivity.push(Sensitivity {
                node: meta.nodes[n].name.clone(),
                mean_abs_delta: acc.outputs.iter().map(|o| o.mean_abs_delta).collect(),
            });
        }
    }

    let int8 = int8_convolutions(meta, options.profile, &options.keep_fp32);
    let report = QuantizationReport {
        profile: options.profile,
        method: options.method.name(),
        calibration_samples: options.calibration.len(),
        int8_convolutions: int8.len(),
        bias_correction_samples: correction_samples.len(),
        weight_rounding: options.weight_rounding,
        activation_bits: options
            .activation_bits
            .unwrap_or(options.profile.default_activation_bits()),
        fp32_convolutions: convs
            .iter()
            .filter(|n| !int8.contains(n))
            .map(|&n| meta.nodes[n].name.clone())
            .collect(),
        accuracy: report_accuracy,
        candidates,
        sensitivity,
    };
    model
        .meta
        .reports
        .insert("quantization".into(), serde_json::to_value(&report)?);
    Ok(model)
}

/// The rounded weights of the convolutions `convs`.
fn round_weights(
    fp32: &Converted,
    fp32_bytes: &[u8],
    convs: &[usize],
    options: &QuantizeOptions,
) -> Result<BTreeMap<usize, RoundedWeights>> {
    let meta = &fp32.meta;
    let started = Instant::now();
    let mut moments = match options.weight_rounding {
        WeightRounding::Nearest => BTreeMap::new(),
        WeightRounding::Gptq => {
            tracing::info!(
                "measuring the inputs of {} convolutions on {} samples for GPTQ rounding",
                convs.len(),
                options.calibration.len()
            );
            gptq::input_moments(fp32_bytes, &options.calibration, convs)?
        }
    };
    let work: Vec<(usize, Option<gptq::InputMoment>)> = convs.iter().map(|&n| (n, moments.remove(&n))).collect();
    let rounded = work
        .into_par_iter()
        .map(|(n, moment)| {
            let node = &meta.nodes[n];
            let Op::Conv { cin, cout, window, .. } = node.op else {
                bail!("node {:?} is not a convolution", node.name);
            };
            let [kh, kw] = window.kernel;
            let packed = fp32.tensors[node.params[0]].as_f32().expect("fp32 model: f32 weights");
            let rows = rewrite::weight_rows(packed, cout, cin, kh, kw);
            let step = rewrite::weight_steps(&rows, cout).map_err(|e| anyhow!("node {:?}: {e}", node.name))?;
            let q = match moment {
                Some(m) => gptq::round(&rows, cout, &step, rewrite::WEIGHT_QMAX, &m)
                    .with_context(|| format!("rounding the weights of {:?}", node.name))?,
                None => gptq::nearest(&rows, cout, kh * kw * cin, &step, rewrite::WEIGHT_QMAX),
            };
            Ok((n, RoundedWeights { q, step }))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    if options.weight_rounding == WeightRounding::Gptq {
        tracing::info!("GPTQ rounding took {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(rounded)
}

/// Median batch-1 latency over 15 runs after 3 warm-ups, in milliseconds.
fn latency_ms(model: &[u8], sample: &Sample) -> Result<f64> {
    let file = QpwFile::from_bytes(model)?;
    let meta = file.meta.clone();
    let mut engine = Engine::from_file(file, EngineOptions::default())?;
    let inputs = dataset::batch(&meta, std::slice::from_ref(sample));
    for _ in 0..3 {
        engine.run(&inputs)?;
    }
    let mut times: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            engine.run(&inputs).map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The quantization report as text, for `qp-convert` and `qp-engine info`.
/// One line per model output of an accuracy figure, as the reports print them, the
/// deltas with `digits` decimals.
pub fn accuracy_line(label: &str, a: &Accuracy, digits: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for o in &a.outputs {
        let _ = write!(
            s,
            "{label:<28} {:<10} mean |d| {:.digits$} (bias {:+.digits$})  p99 {:.digits$}  max {:.digits$}  r {:.4}",
            o.output, o.mean_abs_delta, o.mean_delta, o.p99_abs_delta, o.max_abs_delta, o.pearson_r
        );
        if let Some(f) = &a.pooled_features {
            let _ = write!(s, "  features cos {:.4} (min {:.4})", f.mean, f.min);
        }
        s.push('\n');
    }
    s
}

pub fn report_text(value: &serde_json::Value) -> String {
    use std::fmt::Write;
    let Ok(r) = serde_json::from_value::<QuantizationReport>(value.clone()) else {
        return format!("quantization {value}\n");
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "int8        profile {}, {}-bit activations ({}), clipping {}, {} weight rounding, {} calibration samples, {}; {} convolutions INT8, FP32: {}",
        r.profile.name(),
        r.activation_bits,
        if r.activation_bits > QuantParams::U8_BITS { "i16" } else { "u8" },
        r.method,
        r.weight_rounding.name(),
        r.calibration_samples,
        match r.bias_correction_samples {
            0 => "biases not corrected".to_string(),
            n => format!("biases corrected on {n}"),
        },
        r.int8_convolutions,
        if r.fp32_convolutions.is_empty() {
            "none".to_string()
        } else {
            r.fp32_convolutions.join(", ")
        }
    );
    let line = |s: &mut String, label: &str, a: &Accuracy| s.push_str(&accuracy_line(label, a, 4));
    let _ = writeln!(s, "accuracy vs FP32 (held out):");
    for a in &r.accuracy {
        line(&mut s, &format!("  {} ({})", a.set, a.samples), a);
    }
    if !r.candidates.is_empty() {
        let _ = writeln!(
            s,
            "profiles x clipping (all held-out samples; batch-1 ms at conversion):"
        );
        for c in &r.candidates {
            line(
                &mut s,
                &format!(
                    "  {} {}-bit {} {:.1}/{:.1} ms",
                    c.profile.name(),
                    c.activation_bits,
                    c.method,
                    c.latency_ms,
                    c.fp32_latency_ms
                ),
                &c.accuracy,
            );
        }
    }
    if !r.sensitivity.is_empty() {
        let mut sens = r.sensitivity.clone();
        sens.sort_by(|a, b| b.mean_abs_delta[0].total_cmp(&a.mean_abs_delta[0]));
        let _ = writeln!(
            s,
            "sensitivity (one convolution INT8, mean |d| of the first output), most first:"
        );
        for x in &sens {
            let _ = writeln!(s, "  {:<24} {:.5}", x.node, x.mean_abs_delta[0]);
        }
    }
    s
}
