//! `qp-convert`: ONNX -> graph passes -> packed weights -> `.qpw`.

pub mod pack;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::format::meta::{
    DType, Feature, ImagePreprocess, IoSpec, ModelMeta, ModelStats, NodeSpec, SourceInfo, TensorSpec, ValueSpec,
};
use crate::format::writer::{self, TensorBytes};
use crate::graph::ir::{Dim, Graph, IrOp, ValueId};
use crate::graph::op::Op;
use crate::graph::passes;
use crate::onnx;
use crate::quant;

#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Model name stored in the file; default: the ONNX graph name or the file stem.
    pub name: Option<String>,
    pub precision: Precision,
    /// Store every convolution for the direct kernel, including the 3x3 stride-1 ones an
    /// FP32 file otherwise stores for Winograd F(2x2, 3x3) (`winograd_pays`).
    pub direct_conv: bool,
    /// Used with `Precision::Int8`.
    pub int8: Int8Options,
}

/// How `Precision::Int8` calibrates and what it reports.
#[derive(Clone, Debug)]
pub struct Int8Options {
    pub profile: quant::Profile,
    pub method: quant::range::Method,
    /// Directories of PNG/JPEG images and/or `<input>.npy` arrays.
    pub calibrate: Vec<std::path::PathBuf>,
    pub calibration_samples: usize,
    /// Held-out images (or rows) for the accuracy report.
    pub holdout_samples: usize,
    /// Pseudo-images added to the held-out samples.
    pub pseudo_samples: usize,
    /// Evaluate every profile x clipping method (accuracy and latency) for the report.
    pub compare: bool,
    /// Measure each convolution's effect alone.
    pub sensitivity: bool,
    /// Convolutions kept FP32 beyond the profile's choice (INT8), or conv and dense
    /// layers kept f32 (FP16).
    pub keep_fp32: Vec<String>,
    /// FP16 with calibration data: the share of the parameters kept f32 in the layers
    /// most sensitive to f16 rounding (`quant::half::most_sensitive`); 0 turns it off.
    pub keep_fp32_share: f64,
    /// Calibration samples the bias correction measures on; 0 turns it off; `None`: the
    /// weight rounding's default (`quant::default_bias_correction_samples`).
    pub bias_correction_samples: Option<usize>,
    /// `None`: the precision's default (INT8: the profile's,
    /// `quant::Profile::default_weight_rounding`; FP16: GPTQ with calibration data,
    /// nearest without).
    pub weight_rounding: Option<quant::WeightRounding>,
    /// Bits of the activation grids; `None`: the profile's
    /// (`quant::Profile::default_activation_bits`).
    pub activation_bits: Option<u8>,
}

impl Int8Options {
    /// The calibration samples and the named held-out sets (`quant::dataset::load_sets`).
    fn load_sets(&self, meta: &ModelMeta) -> Result<(Vec<quant::dataset::Sample>, Vec<quant::dataset::NamedSet>)> {
        quant::dataset::load_sets(
            meta,
            &self.calibrate,
            self.calibration_samples,
            self.holdout_samples,
            self.pseudo_samples,
            0x5eed,
        )
    }
}

impl Default for Int8Options {
    fn default() -> Self {
        Int8Options {
            profile: quant::DEFAULT_PROFILE,
            method: quant::DEFAULT_METHOD,
            calibrate: Vec::new(),
            calibration_samples: 64,
            holdout_samples: 48,
            pseudo_samples: 32,
            compare: false,
            sensitivity: false,
            keep_fp32: Vec::new(),
            keep_fp32_share: quant::half::DEFAULT_KEEP_FP32_SHARE,
            bias_correction_samples: None,
            weight_rounding: None,
            activation_bits: None,
        }
    }
}

/// How weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    Fp32,
    /// Conv and dense weights as IEEE half (half the file); the engine widens them to f32
    /// once at load and computes in f32. Biases stay f32.
    Fp16,
    /// Convolutions in INT8 (u8 activations, s8 per-channel weights) as the profile in
    /// `Int8Options` selects, calibrated on real samples; the rest FP32.
    Int8,
}

/// The values of one tensor as the converter holds them. An f16 tensor is held as f32
/// (its spec says F16) and rounded when written.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I8(Vec<i8>),
    I32(Vec<i32>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            TensorData::F32(v) => Some(v),
            _ => None,
        }
    }
}

/// A converted model ready to write.
#[derive(Clone)]
pub struct Converted {
    pub meta: ModelMeta,
    pub tensors: Vec<TensorData>,
}

impl Converted {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        writer::to_bytes(&self.meta, &self.tensor_bytes())
    }

    fn tensor_bytes(&self) -> Vec<TensorBytes<'_>> {
        self.tensors
            .iter()
            .zip(&self.meta.tensors)
            .map(|(t, spec)| TensorBytes {
                bytes: match (spec.dtype, t) {
                    (DType::F16, TensorData::F32(t)) => {
                        let bits: Vec<u16> = t.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
                        std::borrow::Cow::Owned(bytemuck::cast_slice(&bits).to_vec())
                    }
                    (_, TensorData::F32(t)) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(t)),
                    (_, TensorData::I8(t)) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(t)),
                    (_, TensorData::I32(t)) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(t)),
                },
            })
            .collect()
    }

    pub fn write(&self, path: &Path) -> Result<u64> {
        writer::write_file(path, &self.meta, &self.tensor_bytes())
    }
}

/// Converts an ONNX model held in memory.
pub fn convert_bytes(onnx_bytes: &[u8], default_name: &str, options: &ConvertOptions) -> Result<Converted> {
    let model = onnx::decode_model(onnx_bytes)?;
    let imported = onnx::import_model(&model)?;
    let mut graph = imported.graph.clone();
    // Before the passes, to name the tensors as the ONNX file does; after them for what
    // folding computed.
    check_parameters_finite(&graph)?;
    passes::run_all(&mut graph)?;
    check_parameters_finite(&graph)?;

    let name = options.name.clone().unwrap_or_else(|| {
        if default_name.is_empty() {
            imported.graph_name.clone()
        } else {
            default_name.to_string()
        }
    });
    let source = SourceInfo {
        producer_name: imported.producer_name.clone(),
        producer_version: imported.producer_version.clone(),
        opset: imported.opset,
        ir_version: imported.ir_version,
        sha256: hex(&Sha256::digest(onnx_bytes)),
    };
    let description = imported.metadata.get("qp.description").cloned().unwrap_or_default();
    // FP32 files store Winograd layers' weights transformed. INT8 quantizes the direct
    // weights. FP16 files store them direct (rounding transformed weights to f16 would
    // add to the transform's own error, in 16/9 the bytes) and mark the layers Winograd
    // at the end (`winograd_at_load`): the engine transforms them at load.
    let winograd = options.precision == Precision::Fp32 && !options.direct_conv;
    let mut converted = lower_to_file(&graph, &imported.metadata, name, description, source, winograd)?;
    converted.meta.stats.onnx_ops = imported.onnx_ops.clone();
    match options.precision {
        Precision::Fp32 => {}
        Precision::Fp16 => halve_weights(&mut converted, &options.int8, !options.direct_conv)?,
        Precision::Int8 => {
            let o = &options.int8;
            let (calibration, holdout) = o.load_sets(&converted.meta)?;
            let rounding = o.weight_rounding.unwrap_or(o.profile.default_weight_rounding());
            converted = quant::quantize(
                &converted,
                &quant::QuantizeOptions {
                    profile: o.profile,
                    method: o.method,
                    calibration,
                    holdout,
                    compare: o.compare,
                    sensitivity: o.sensitivity,
                    keep_fp32: o.keep_fp32.clone(),
                    bias_correction_samples: o
                        .bias_correction_samples
                        .unwrap_or_else(|| quant::default_bias_correction_samples(rounding)),
                    weight_rounding: rounding,
                    activation_bits: o.activation_bits,
                },
            )?;
        }
    }
    // The engine validates every file it loads; refusing here means a model the engine
    // cannot run is never written in the first place.
    crate::plan::validate::validate(&converted.meta)
        .map_err(|e| anyhow!("the converted model is not runnable: {e}"))?;
    Ok(converted)
}

/// Refuses a model with a NaN or infinite parameter, naming the node and the tensor.
/// Such a weight does not fail at run time, it gives wrong answers: a ReLU's max turns a
/// NaN into 0, so one NaN weight in the stem moved a prediction without a trace. Checked
/// before lowering, which mixes weights (Winograd turns an infinity into NaNs).
fn check_parameters_finite(g: &Graph) -> Result<()> {
    for node in &g.nodes {
        for &v in node.inputs.iter().flatten() {
            let Some(data) = g.constant(v).and_then(|c| c.as_f32()) else {
                continue;
            };
            if let Some(x) = data.iter().find(|x| !x.is_finite()) {
                bail!(
                    "node {:?}: parameter {:?} holds a non-finite value ({x}); the model's weights are damaged",
                    node.name,
                    g.values[v].name
                );
            }
        }
    }
    Ok(())
}

/// Reads `input`, converts it and writes `output`.
pub fn convert_file(input: &Path, output: &Path, options: &ConvertOptions) -> Result<(Converted, u64)> {
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let converted = convert_bytes(&bytes, stem, options).with_context(|| format!("converting {}", input.display()))?;
    let size = converted
        .write(output)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok((converted, size))
}

/// `--precision fp16`: f16 weights, rounded with GPTQ where there is calibration data
/// (unless `o.weight_rounding` says nearest). With calibration data the layers most
/// sensitive to f16 rounding stay f32 (`o.keep_fp32_share` of the parameters), and the
/// file carries an accuracy report on the held-out data. With `winograd`, the layers an
/// FP32 file would store for Winograd are marked so once the weights are final.
fn halve_weights(converted: &mut Converted, o: &Int8Options, winograd: bool) -> Result<()> {
    let rounding = o.weight_rounding.unwrap_or(if o.calibrate.is_empty() {
        quant::WeightRounding::Nearest
    } else {
        quant::WeightRounding::Gptq
    });
    let mut layers = f16_layers(converted, &o.keep_fp32)?;
    if o.calibrate.is_empty() {
        if rounding == quant::WeightRounding::Gptq {
            bail!("GPTQ rounding to f16 needs calibration data: --calibrate DIR");
        }
        store_weights_as_f16(converted, &layers, None)?;
        if winograd {
            winograd_at_load(converted);
        }
        return Ok(());
    }
    let (calibration, holdout) = o.load_sets(&converted.meta)?;
    let fp32 = converted.to_bytes()?;
    let samples = quant::half::rounding_samples(converted, &calibration, 0x5eed ^ 3)?;
    let budget = (o.keep_fp32_share * converted.meta.stats.parameters as f64) as usize;
    let sensitive = quant::half::most_sensitive(converted, &fp32, &layers, &samples, budget)?;
    layers.retain(|n| !sensitive.contains(n));
    let gptq = (rounding == quant::WeightRounding::Gptq).then_some((samples.as_slice(), fp32.as_slice()));
    store_weights_as_f16(converted, &layers, gptq)?;
    if winograd {
        winograd_at_load(converted);
    }
    let calibrated = gptq.map_or(0, |(s, _)| s.len());
    let mut kept: Vec<String> = sensitive
        .iter()
        .map(|&n| converted.meta.nodes[n].name.clone())
        .collect();
    kept.extend(o.keep_fp32.iter().cloned());
    let report = quant::half::report(converted, &fp32, &holdout, rounding, calibrated, kept)?;
    converted
        .meta
        .reports
        .insert("fp16".into(), serde_json::to_value(&report)?);
    Ok(())
}

/// Turns the direct convolutions an FP32 file would store for Winograd
/// (`pack::winograd_pays`) into Winograd layers that keep their direct weights, f16 or
/// f32: the engine transforms those at load (`exec::params`), so an f16 file runs as
/// fast as an FP32 one at half its size.
fn winograd_at_load(c: &mut Converted) {
    for n in 0..c.meta.nodes.len() {
        let node = &c.meta.nodes[n];
        if let Op::Conv {
            cin,
            cout,
            window,
            activation,
        } = node.op
        {
            let out = &c.meta.values[node.outputs[0]].shape;
            if pack::winograd_pays(&window, [out[1], out[2]]) {
                c.meta.nodes[n].op = Op::ConvWinograd {
                    cin,
                    cout,
                    window,
                    activation,
                };
                let ops = &mut c.meta.stats.engine_ops;
                if let Some(convs) = ops.get_mut("conv") {
                    *convs -= 1;
                    if *convs == 0 {
                        ops.remove("conv");
                    }
                }
                *ops.entry("conv_winograd".into()).or_default() += 1;
            }
        }
    }
}

/// The conv and dense layers whose weights an f16 file stores as f16, before any
/// measured choice: all but those where rounding costs most and saves least, the layers
/// reading a model input directly (the 3-channel stem) and the small head layers (dense
/// layers under 1% of the weights); on the full QualityNet that keeps 0.3 MB f32. Layers
/// named in `keep_fp32` stay f32 too. A weight outside the f16 range (it would become
/// infinite) is refused here, naming the tensor, before anything runs the model.
fn f16_layers(c: &Converted, keep_fp32: &[String]) -> Result<Vec<usize>> {
    let total: usize = c.tensors.iter().map(|t| t.len()).sum();
    let model_inputs: Vec<usize> = c.meta.inputs.iter().map(|i| i.value).collect();
    let weighted: Vec<usize> = (0..c.meta.nodes.len())
        .filter(|&n| matches!(c.meta.nodes[n].op, Op::Conv { .. } | Op::Dense { .. }))
        .collect();
    for name in keep_fp32 {
        if !weighted.iter().any(|&n| &c.meta.nodes[n].name == name) {
            let names: Vec<&str> = weighted.iter().map(|&n| c.meta.nodes[n].name.as_str()).collect();
            bail!(
                "--keep-fp32 {name:?}: no convolution or dense layer has that name; they are: {}",
                names.join(", ")
            );
        }
    }
    let layers: Vec<usize> = weighted
        .into_iter()
        .filter(|&n| {
            let node = &c.meta.nodes[n];
            let reads_input = node.inputs.iter().any(|v| model_inputs.contains(v));
            let small_head = matches!(node.op, Op::Dense { .. }) && c.tensors[node.params[0]].len() * 100 < total;
            !reads_input && !small_head && !keep_fp32.contains(&node.name)
        })
        .collect();
    for &n in &layers {
        let id = c.meta.nodes[n].params[0];
        let values = c.tensors[id].as_f32().unwrap_or_default();
        if let Some(v) = values.iter().find(|v| v.abs() > half::f16::MAX.to_f32()) {
            bail!(
                "weight {} holds {v}, outside the f16 range; convert with fp32",
                c.meta.tensors[id].name
            );
        }
    }
    Ok(layers)
}

/// Marks the weight tensors of `layers` (from `f16_layers`) f16; the file is then about
/// half the f32 one. With `gptq` (calibration samples, and the FP32 model's bytes) the weights are rounded
/// with GPTQ against their inputs on those samples instead of to nearest.
fn store_weights_as_f16(
    c: &mut Converted,
    layers: &[usize],
    gptq: Option<(&[quant::dataset::Sample], &[u8])>,
) -> Result<()> {
    if let Some((samples, fp32)) = gptq {
        quant::half::round_weights(c, fp32, layers, samples)?;
    }
    for &n in layers {
        let id = c.meta.nodes[n].params[0];
        c.meta.tensors[id].dtype = DType::F16;
    }
    c.meta.precision = "fp16".into();
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn per_sample(g: &Graph, v: ValueId) -> Result<Vec<usize>> {
    let s = g
        .shape(v)
        .ok_or_else(|| anyhow!("shape of {:?} unknown", g.values[v].name))?;
    if s.first() != Some(&Dim::Batch) {
        bail!("tensor {:?} has no leading batch axis", g.values[v].name);
    }
    s[1..]
        .iter()
        .map(|d| match d {
            Dim::Known(k) => Ok(*k),
            Dim::Batch => Err(anyhow!(
                "tensor {:?} has the batch on a non-leading axis",
                g.values[v].name
            )),
        })
        .collect()
}

fn parse_json_prop<T: serde::de::DeserializeOwned>(props: &BTreeMap<String, String>, key: &str) -> Result<Option<T>> {
    props
        .get(key)
        .map(|s| serde_json::from_str(s).with_context(|| format!("metadata property {key}")))
        .transpose()
}

fn lower_to_file(
    g: &Graph,
    props: &BTreeMap<String, String>,
    name: String,
    description: String,
    source: SourceInfo,
    winograd: bool,
) -> Result<Converted> {
    let mut values: Vec<ValueSpec> = Vec::new();
    let mut value_index: HashMap<ValueId, usize> = HashMap::new();
    let mut value_of = |g: &Graph, v: ValueId, values: &mut Vec<ValueSpec>| -> Result<usize> {
        if let Some(&i) = value_index.get(&v) {
            return Ok(i);
        }
        if g.constant(v).is_some() {
            bail!("constant {:?} used where an activation is expected", g.values[v].name);
        }
        values.push(ValueSpec {
            name: g.values[v].name.clone(),
            shape: per_sample(g, v)?,
            quant: None,
        });
        value_index.insert(v, values.len() - 1);
        Ok(values.len() - 1)
    };

    let mut inputs = Vec::new();
    for p in &g.inputs {
        let idx = value_of(g, p.value, &mut values)?;
        let features: Option<Vec<Feature>> = parse_json_prop(props, &format!("qp.features.{}", p.name))?;
        let image: Option<ImagePreprocess> = parse_json_prop(props, &format!("qp.image.{}", p.name))?;
        let shape = values[idx].shape.clone();
        if let Some(f) = &features {
            if shape != [f.len()] {
                bail!(
                    "input {:?} has shape {shape:?} but its metadata names {} features",
                    p.name,
                    f.len()
                );
            }
        }
        if let Some(im) = &image {
            if shape != [3, im.height, im.width] {
                bail!(
                    "input {:?} has shape {shape:?}, its image metadata says 3x{}x{}",
                    p.name,
                    im.height,
                    im.width
                );
            }
        }
        inputs.push(IoSpec {
            name: p.name.clone(),
            value: idx,
            dtype: DType::F32,
            shape,
            features,
            image,
        });
    }

    let mut tensors: Vec<TensorSpec> = Vec::new();
    let mut data: Vec<TensorData> = Vec::new();
    let mut add_tensor = |name: String, dims: Vec<usize>, d: Vec<f32>| -> usize {
        tensors.push(TensorSpec {
            name,
            dtype: DType::F32,
            dims,
        });
        data.push(TensorData::F32(d));
        tensors.len() - 1
    };
    let mut nodes = Vec::new();
    let mut stats = ModelStats::default();
    let f32_of = |v: Option<ValueId>| -> Result<Vec<f32>> {
        let v = v.ok_or_else(|| anyhow!("missing parameter"))?;
        Ok(g.constant(v)
            .and_then(|c| c.as_f32())
            .ok_or_else(|| anyhow!("parameter {:?} is not a float constant", g.values[v].name))?
            .to_vec())
    };

    for n in &g.nodes {
        let act_inputs: Vec<ValueId> = match &n.op {
            IrOp::Conv { .. } => [n.input(0), n.input(3)].into_iter().flatten().collect(),
            IrOp::Dense { .. } => vec![n.input(0).ok_or_else(|| anyhow!("dense input"))?],
            _ => n.inputs.iter().flatten().copied().collect(),
        };
        let mut in_idx = Vec::new();
        for v in act_inputs {
            in_idx.push(value_of(g, v, &mut values).with_context(|| format!("node {:?}", n.name))?);
        }
        let out = n.outputs[0];
        let out_idx = value_of(g, out, &mut values)?;
        let out_shape = values[out_idx].shape.clone();
        let mut params = Vec::new();
        let op = match &n.op {
            IrOp::Conv { window, activation, .. } => {
                let wv = n.input(1).ok_or_else(|| anyhow!("conv weights"))?;
                let wdims = g.constant(wv).map(|c| c.dims().to_vec()).unwrap_or_default();
                let (cout, cin, kh, kw) = (wdims[0], wdims[1], wdims[2], wdims[3]);
                let w = f32_of(Some(wv))?;
                let b = match n.input(2) {
                    Some(_) => f32_of(n.input(2))?,
                    None => vec![0.0; cout],
                };
                stats.parameters += (w.len() + cout) as u64;
                let pix = out_shape[1] * out_shape[2];
                stats.flops_per_sample += 2 * (cout * cin * kh * kw * pix) as u64;
                let blocks = pack::padded(cout) / crate::graph::op::PACK_LANES;
                let winograd = winograd && pack::winograd_pays(window, [out_shape[1], out_shape[2]]);
                params.push(if winograd {
                    add_tensor(
                        format!("{}.weight", n.name),
                        vec![
                            blocks,
                            qp_kernels::conv::WINOGRAD_POINTS,
                            cin,
                            crate::graph::op::PACK_LANES,
                        ],
                        pack::winograd_weights(&w, cout, cin),
                    )
                } else {
                    add_tensor(
                        format!("{}.weight", n.name),
                        vec![blocks, kh, kw, cin, crate::graph::op::PACK_LANES],
                        pack::conv_weights(&w, cout, cin, kh, kw),
                    )
                });
                params.push(add_tensor(
                    format!("{}.bias", n.name),
                    vec![pack::padded(cout)],
                    pack::bias(&b),
                ));
                let (cin, cout, window, activation) = (cin, cout, *window, *activation);
                if winograd {
                    Op::ConvWinograd {
                        cin,
                        cout,
                        window,
                        activation,
                    }
                } else {
                    Op::Conv {
                        cin,
                        cout,
                        window,
                        activation,
                    }
                }
            }
            IrOp::Dense { activation } => {
                let wv = n.input(1).ok_or_else(|| anyhow!("dense weights"))?;
                let wdims = g.constant(wv).map(|c| c.dims().to_vec()).unwrap_or_default();
                let (o, k) = (wdims[0], wdims[1]);
                let w = f32_of(Some(wv))?;
                let b = f32_of(n.input(2))?;
                stats.parameters += (w.len() + o) as u64;
                stats.flops_per_sample += 2 * (o * k) as u64;
                let blocks = pack::padded(o) / crate::graph::op::PACK_LANES;
                params.push(add_tensor(
                    format!("{}.weight", n.name),
                    vec![blocks, k, crate::graph::op::PACK_LANES],
                    pack::dense_weights(&w, o, k),
                ));
                params.push(add_tensor(
                    format!("{}.bias", n.name),
                    vec![pack::padded(o)],
                    pack::bias(&b),
                ));
                Op::Dense {
                    input: k,
                    output: o,
                    activation: *activation,
                }
            }
            IrOp::MaxPool { window, ceil_mode, .. } => Op::MaxPool {
                window: *window,
                ceil_mode: *ceil_mode,
            },
            IrOp::AveragePool {
                window,
                ceil_mode,
                count_include_pad,
                ..
            } => Op::AveragePool {
                window: *window,
                ceil_mode: *ceil_mode,
                count_include_pad: *count_include_pad,
            },
            IrOp::GlobalAveragePool => Op::GlobalAveragePool,
            IrOp::Add { activation } => Op::Add {
                activation: *activation,
            },
            IrOp::Relu => Op::Relu,
            IrOp::Sigmoid => Op::Sigmoid,
            IrOp::Reshape { .. } => Op::Reshape,
            IrOp::Concat { axis } => {
                let rank = out_shape.len() as i64 + 1;
                let a = if *axis < 0 { axis + rank } else { *axis };
                if a < 1 || a >= rank {
                    bail!("Concat node {:?}: axis {axis} is not a per-sample axis", n.name);
                }
                Op::Concat { axis: (a - 1) as usize }
            }
            other => bail!(
                "node {:?} ({}) cannot run in the engine: {other:?}",
                n.name,
                n.onnx_type
            ),
        };
        *stats.engine_ops.entry(op.kind().to_string()).or_default() += 1;
        nodes.push(NodeSpec {
            name: n.name.clone(),
            op,
            inputs: in_idx,
            outputs: vec![out_idx],
            params,
        });
    }

    let mut outputs = Vec::new();
    for p in &g.outputs {
        if g.inputs.iter().any(|i| i.value == p.value) {
            bail!(
                "output {:?} is a model input passed through unchanged; not supported",
                p.name
            );
        }
        let idx = value_of(g, p.value, &mut values)?;
        outputs.push(IoSpec {
            name: p.name.clone(),
            value: idx,
            dtype: DType::F32,
            shape: values[idx].shape.clone(),
            features: None,
            image: None,
        });
    }

    Ok(Converted {
        meta: ModelMeta {
            name,
            description,
            precision: "fp32".into(),
            source,
            inputs,
            outputs,
            values,
            nodes,
            tensors,
            stats,
            reports: BTreeMap::new(),
        },
        tensors: data,
    })
}

/// A test fixture (`tests/fixtures/NAME/model.onnx`) converted to FP32 with direct
/// convolutions only, the form quantization starts from.
#[cfg(test)]
pub(crate) fn direct_fixture(name: &str) -> Converted {
    let path = format!("{}/tests/fixtures/{name}/model.onnx", env!("CARGO_MANIFEST_DIR"));
    let onnx = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let direct = ConvertOptions {
        direct_conv: true,
        ..Default::default()
    };
    convert_bytes(&onnx, name, &direct).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A weight f16 cannot hold is refused by name before anything rounds or runs it.
    #[test]
    fn a_weight_outside_the_f16_range_is_refused() {
        let mut model = direct_fixture("tiny_bn");
        let node = model
            .meta
            .nodes
            .iter()
            .position(|n| n.name == "layer2.0.conv2")
            .unwrap();
        let id = model.meta.nodes[node].params[0];
        let TensorData::F32(w) = &mut model.tensors[id] else {
            panic!("f32 weights")
        };
        w[5] = 1e6;
        let err = halve_weights(&mut model, &Int8Options::default(), true).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("outside the f16 range") && msg.contains(&model.meta.tensors[id].name),
            "{msg}"
        );
    }
}
