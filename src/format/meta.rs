//! The metadata section of a `.qpw` file: a JSON document describing the model's
//! interface, its graph and its tensors. The tensor *bytes* live in the data section;
//! the binary tensor table (see `layout`) says where.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::op::Op;
pub use crate::graph::op::QuantParams;

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    F16,
    I8,
    U8,
    I32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
            DType::I8 | DType::U8 => 1,
        }
    }

    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 1,
            DType::F16 => 2,
            DType::I8 => 3,
            DType::U8 => 4,
            DType::I32 => 5,
        }
    }

    pub fn from_code(code: u32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            2 => DType::F16,
            3 => DType::I8,
            4 => DType::U8,
            5 => DType::I32,
            _ => return None,
        })
    }
}

/// A named scalar feature of a flat input (e.g. one vtracer parameter) with its valid range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub min: f32,
    pub max: f32,
    /// Value a client may omit the feature for; `None` means the feature is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<f32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// When true, clients give the raw value in `[min, max]` and the front end feeds the
    /// model `(v - min) / (max - min)`; when false the raw value is fed as is.
    #[serde(default)]
    pub normalize: bool,
}

/// How a person's image becomes this input: resize to `height x width`, RGB in [0,1],
/// then `(x - mean[c]) / std[c]`, laid out NCHW.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImagePreprocess {
    pub height: usize,
    pub width: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// One model input or output. The batch is always the leading, symbolic axis;
/// `shape` is the per-sample shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoSpec {
    pub name: String,
    /// Index into `ModelMeta::values`.
    pub value: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<Feature>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImagePreprocess>,
}

/// An activation (a graph edge): name and per-sample shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Set for a value stored quantized (inside an INT8 region): its grid, `real = (q -
    /// zero) * scale`, u8 for 8 bits, i16 for more. Unset: the value is f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<QuantParams>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub op: Op,
    /// Value ids read.
    pub inputs: Vec<usize>,
    /// Value ids written.
    pub outputs: Vec<usize>,
    /// Tensor ids of the parameters, in the order the op documents.
    #[serde(default)]
    pub params: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn byte_len(&self) -> Option<usize> {
        self.dims
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d))
    }
}

/// Where the model came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub producer_name: String,
    pub producer_version: String,
    pub opset: i64,
    pub ir_version: i64,
    /// SHA-256 of the source ONNX file, hex.
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    pub parameters: u64,
    /// Multiply-adds count twice.
    pub flops_per_sample: u64,
    /// Source ONNX op counts by type.
    pub onnx_ops: BTreeMap<String, usize>,
    /// Engine op counts by kind after the graph passes.
    pub engine_ops: BTreeMap<String, usize>,
}

/// The whole metadata document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// "fp32", "fp16" or "int8".
    pub precision: String,
    pub source: SourceInfo,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    pub values: Vec<ValueSpec>,
    pub nodes: Vec<NodeSpec>,
    pub tensors: Vec<TensorSpec>,
    pub stats: ModelStats,
    /// Free-form reports (e.g. quantization accuracy) shown by `qp-engine info`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reports: BTreeMap<String, serde_json::Value>,
}
