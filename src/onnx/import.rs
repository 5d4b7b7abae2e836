//! ONNX `ModelProto` -> conversion graph. Parses every node's attributes into typed ops,
//! turns initializers and `Constant` nodes into constants, and reports every unsupported
//! op of the model in one error.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Context, Result};

use super::proto::{self, tensor_proto::DataType, type_proto, AttributeProto, ModelProto, NodeProto, TensorProto};
use crate::graph::ir::{AutoPad, Const, Dim, Graph, IrOp, Node, Port, SymInt};
use crate::graph::op::{Activation, Window};

/// What the importer keeps besides the graph.
#[derive(Clone, Debug, Default)]
pub struct Imported {
    pub graph: Graph,
    pub opset: i64,
    pub ir_version: i64,
    pub producer_name: String,
    pub producer_version: String,
    pub graph_name: String,
    /// `ModelProto.metadata_props`.
    pub metadata: BTreeMap<String, String>,
    /// Op counts of the source model by ONNX op type.
    pub onnx_ops: BTreeMap<String, usize>,
}

/// The opsets whose semantics this importer implements.
pub const MIN_OPSET: i64 = 7;
pub const MAX_OPSET: i64 = 22;

pub fn import_model(model: &ModelProto) -> Result<Imported> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| anyhow!("the model imports no default-domain ONNX opset"))?;
    if !(MIN_OPSET..=MAX_OPSET).contains(&opset) {
        bail!("ONNX opset {opset} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})");
    }
    let g = model.graph.as_ref().ok_or_else(|| anyhow!("the model has no graph"))?;

    let mut out = Imported {
        opset,
        ir_version: model.ir_version.unwrap_or(0),
        producer_name: model.producer_name.clone().unwrap_or_default(),
        producer_version: model.producer_version.clone().unwrap_or_default(),
        graph_name: g.name.clone().unwrap_or_default(),
        metadata: model
            .metadata_props
            .iter()
            .map(|p| (p.key.clone().unwrap_or_default(), p.value.clone().unwrap_or_default()))
            .collect(),
        ..Default::default()
    };
    for n in &g.node {
        *out.onnx_ops.entry(n.op_type().to_string()).or_default() += 1;
    }

    // Report every unsupported op before doing any work.
    let unsupported: Vec<String> = g
        .node
        .iter()
        .filter(|n| !is_supported(n))
        .map(|n| {
            let domain = n.domain.as_deref().unwrap_or("");
            let dom = if domain.is_empty() {
                String::new()
            } else {
                format!(" (domain {domain})")
            };
            format!("{}{dom} in node {:?}", n.op_type(), node_label(n))
        })
        .collect();
    if !unsupported.is_empty() {
        bail!(
            "unsupported ONNX op{} at opset {opset}: {}",
            if unsupported.len() > 1 { "s" } else { "" },
            unsupported.join("; ")
        );
    }

    let graph = &mut out.graph;
    let mut names: HashMap<String, usize> = HashMap::new();

    for init in &g.initializer {
        let name = init.name().to_string();
        let c = tensor_to_const(init).with_context(|| format!("initializer {name:?}"))?;
        let id = graph.add_const(name.clone(), c);
        names.insert(name, id);
    }
    for input in &g.input {
        let name = input.name().to_string();
        if names.contains_key(&name) {
            // Older exporters list initializers as graph inputs too.
            continue;
        }
        let (shape, batch) = input_shape(input).with_context(|| format!("graph input {name:?}"))?;
        if let Some(b) = batch {
            graph.static_batch = Some(b);
        }
        let id = graph.add_value(name.clone());
        graph.values[id].shape = Some(shape);
        graph.inputs.push(Port {
            name: name.clone(),
            value: id,
        });
        names.insert(name, id);
    }

    for (index, n) in g.node.iter().enumerate() {
        let label = node_label(n);
        let label = if label.is_empty() { format!("#{index}") } else { label };
        if n.op_type() == "Constant" {
            let c = constant_node(n).with_context(|| format!("Constant node {label:?}"))?;
            let out_name = n.output.first().cloned().unwrap_or_default();
            let id = graph.add_const(out_name.clone(), c);
            names.insert(out_name, id);
            continue;
        }
        let op = parse_op(n, opset).with_context(|| format!("{} node {label:?}", n.op_type()))?;
        let mut inputs = Vec::with_capacity(n.input.len());
        for i in &n.input {
            if i.is_empty() {
                inputs.push(None);
            } else {
                let id = *names.get(i).ok_or_else(|| {
                    anyhow!("node {label:?} reads {i:?}, which no initializer, input or earlier node produces (is the graph topologically sorted?)")
                })?;
                inputs.push(Some(id));
            }
        }
        let mut outputs = Vec::with_capacity(n.output.len());
        for (k, o) in n.output.iter().enumerate() {
            if o.is_empty() {
                continue;
            }
            if k > 0 && !extra_output_ok(n) {
                bail!("node {label:?}: output {k} ({o:?}) of {} is not supported", n.op_type());
            }
            let id = graph.add_value(o.clone());
            if names.insert(o.clone(), id).is_some() {
                bail!("value {o:?} is produced twice (second time by node {label:?})");
            }
            if k == 0 {
                outputs.push(id);
            } else {
                // Secondary outputs (Dropout mask, BatchNorm training stats): allowed only
                // if nothing reads them; checked after import.
                outputs.push(id);
            }
        }
        graph.nodes.push(Node {
            name: label,
            onnx_type: n.op_type().to_string(),
            op,
            inputs,
            outputs,
        });
    }

    for o in &g.output {
        let name = o.name().to_string();
        let id = *names
            .get(&name)
            .ok_or_else(|| anyhow!("graph output {name:?} is produced by nothing"))?;
        graph.outputs.push(Port { name, value: id });
    }
    if graph.inputs.is_empty() {
        bail!("the model has no (non-initializer) inputs");
    }
    if graph.outputs.is_empty() {
        bail!("the model has no outputs");
    }
    // Secondary outputs must be unused.
    let uses = graph.use_counts();
    for n in &graph.nodes {
        for &o in n.outputs.iter().skip(1) {
            if uses[o] > 0 {
                bail!(
                    "node {:?}: its secondary output {:?} is used; only inference-mode {} is supported",
                    n.name,
                    graph.values[o].name,
                    n.onnx_type
                );
            }
        }
    }
    Ok(out)
}

fn node_label(n: &NodeProto) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => n.output.first().map(|o| format!("->{o}")).unwrap_or_default(),
    }
}

fn extra_output_ok(n: &NodeProto) -> bool {
    matches!(n.op_type(), "Dropout" | "BatchNormalization" | "MaxPool")
}

/// Every ONNX op type the importer reads (default domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Sigmoid",
    "Identity",
    "Dropout",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Add",
    "Flatten",
    "Reshape",
    "Concat",
    "Gemm",
    "MatMul",
    "Shape",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Constant",
];

fn is_supported(n: &NodeProto) -> bool {
    matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx")) && SUPPORTED_OPS.contains(&n.op_type())
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}

fn attr_int(n: &NodeProto, name: &str, default: i64) -> Result<i64> {
    match attr(n, name) {
        None => Ok(default),
        Some(a) => a.i.ok_or_else(|| anyhow!("attribute {name} is not an int")),
    }
}

fn attr_float(n: &NodeProto, name: &str, default: f32) -> Result<f32> {
    match attr(n, name) {
        None => Ok(default),
        Some(a) => a.f.ok_or_else(|| anyhow!("attribute {name} is not a float")),
    }
}

fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn attr_str(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

fn to_usize_pair(v: &[i64], what: &str) -> Result<[usize; 2]> {
    if v.len() != 2 {
        bail!("{what} has {} entries; only 2-D (NCHW) windows are supported", v.len());
    }
    let f = |x: i64| usize::try_from(x).map_err(|_| anyhow!("{what} has a negative entry {x}"));
    Ok([f(v[0])?, f(v[1])?])
}

/// Parses the window attributes shared by Conv and the pools. `kernel` may come from the
/// weight shape later (Conv without `kernel_shape`), in which case it is `[0, 0]` here.
fn window(n: &NodeProto, kernel_required: bool) -> Result<(Window, AutoPad)> {
    let kernel = match attr_ints(n, "kernel_shape") {
        Some(k) => {
            let k = to_usize_pair(&k, "kernel_shape")?;
            if k[0] == 0 || k[1] == 0 {
                bail!("kernel_shape has a zero entry");
            }
            k
        }
        None if kernel_required => bail!("kernel_shape is required"),
        None => [0, 0],
    };
    let stride = match attr_ints(n, "strides") {
        Some(s) => to_usize_pair(&s, "strides")?,
        None => [1, 1],
    };
    let dilation = match attr_ints(n, "dilations") {
        Some(d) => to_usize_pair(&d, "dilations")?,
        None => [1, 1],
    };
    if stride.contains(&0) || dilation.contains(&0) {
        bail!("strides and dilations must be positive");
    }
    let pads = match attr_ints(n, "pads") {
        Some(p) => {
            if p.len() != 4 || p.iter().any(|&x| x < 0) {
                bail!("pads {p:?}: expected 4 non-negative values for a 2-D window");
            }
            // ONNX order: [x1_begin, x2_begin, x1_end, x2_end] = top, left, bottom, right.
            [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
        }
        None => [0; 4],
    };
    let auto_pad = match attr_str(n, "auto_pad").as_deref() {
        None | Some("NOTSET") | Some("") => AutoPad::NotSet,
        Some("SAME_UPPER") => AutoPad::SameUpper,
        Some("SAME_LOWER") => AutoPad::SameLower,
        Some("VALID") => AutoPad::Valid,
        Some(other) => bail!("auto_pad {other:?} is not valid"),
    };
    Ok((
        Window {
            kernel,
            stride,
            dilation,
            pads,
        },
        auto_pad,
    ))
}

fn parse_op(n: &NodeProto, opset: i64) -> Result<IrOp> {
    Ok(match n.op_type() {
        "Conv" => {
            let (window, auto_pad) = window(n, false)?;
            let group = attr_int(n, "group", 1)?;
            if group != 1 {
                bail!("Conv with group={group} is not supported (only group 1)");
            }
            IrOp::Conv {
                window,
                group: 1,
                auto_pad,
                activation: Activation::None,
            }
        }
        "BatchNormalization" => {
            if attr_int(n, "training_mode", 0)? != 0 {
                bail!("BatchNormalization in training mode is not supported");
            }
            IrOp::BatchNorm {
                epsilon: attr_float(n, "epsilon", 1e-5)?,
            }
        }
        "Relu" => IrOp::Relu,
        "Sigmoid" => IrOp::Sigmoid,
        "Identity" => IrOp::Identity,
        "Dropout" => {
            if opset < 7 && attr_int(n, "is_test", 0)? == 0 {
                bail!("Dropout in training mode is not supported");
            }
            IrOp::Identity
        }
        "MaxPool" => {
            let (window, auto_pad) = window(n, true)?;
            if attr_int(n, "storage_order", 0)? != 0 && n.output.len() > 1 {
                bail!("MaxPool indices output is not supported");
            }
            IrOp::MaxPool {
                window,
                auto_pad,
                ceil_mode: attr_int(n, "ceil_mode", 0)? != 0,
            }
        }
        "AveragePool" => {
            let (window, auto_pad) = window(n, true)?;
            IrOp::AveragePool {
                window,
                auto_pad,
                ceil_mode: attr_int(n, "ceil_mode", 0)? != 0,
                count_include_pad: attr_int(n, "count_include_pad", 0)? != 0,
            }
        }
        "GlobalAveragePool" => IrOp::GlobalAveragePool,
        "Add" => {
            if opset < 7 && attr(n, "broadcast").is_some() {
                bail!("legacy Add broadcast attribute is not supported");
            }
            IrOp::Add {
                activation: Activation::None,
            }
        }
        "Flatten" => IrOp::Flatten {
            axis: attr_int(n, "axis", 1)?,
        },
        "Reshape" => IrOp::Reshape {
            allow_zero: attr_int(n, "allowzero", 0)? != 0,
        },
        "Concat" => IrOp::Concat {
            axis: attr(n, "axis")
                .and_then(|a| a.i)
                .ok_or_else(|| anyhow!("Concat needs an axis attribute"))?,
        },
        "Gemm" => IrOp::Gemm {
            alpha: attr_float(n, "alpha", 1.0)?,
            beta: attr_float(n, "beta", 1.0)?,
            trans_a: attr_int(n, "transA", 0)? != 0,
            trans_b: attr_int(n, "transB", 0)? != 0,
        },
        "MatMul" => IrOp::MatMul,
        "Shape" => IrOp::Shape {
            start: attr_int(n, "start", 0)?,
            end: attr(n, "end").and_then(|a| a.i),
        },
        "Gather" => IrOp::Gather {
            axis: attr_int(n, "axis", 0)?,
        },
        "Unsqueeze" => IrOp::Unsqueeze {
            axes: attr_ints(n, "axes"),
        },
        "Squeeze" => IrOp::Squeeze {
            axes: attr_ints(n, "axes"),
        },
        "Cast" => IrOp::Cast,
        other => bail!("unsupported op {other}"),
    })
}

fn constant_node(n: &NodeProto) -> Result<Const> {
    let a = n
        .attribute
        .first()
        .ok_or_else(|| anyhow!("Constant without a value attribute"))?;
    match a.name() {
        "value" => tensor_to_const(a.t.as_ref().ok_or_else(|| anyhow!("value is not a tensor"))?),
        "value_float" => Ok(Const::F32 {
            dims: vec![],
            data: vec![a.f.unwrap_or_default()],
        }),
        "value_floats" => Ok(Const::F32 {
            dims: vec![a.floats.len()],
            data: a.floats.clone(),
        }),
        "value_int" => Ok(Const::Int {
            dims: vec![],
            data: vec![SymInt::Known(a.i.unwrap_or_default())],
        }),
        "value_ints" => Ok(Const::Int {
            dims: vec![a.ints.len()],
            data: a.ints.iter().map(|&i| SymInt::Known(i)).collect(),
        }),
        other => bail!("Constant attribute {other:?} is not supported"),
    }
}

/// Decodes an initializer or constant tensor: raw little-endian bytes or typed fields.
pub fn tensor_to_const(t: &TensorProto) -> Result<Const> {
    if t.data_location == Some(proto::tensor_proto::DataLocation::External as i32) || !t.external_data.is_empty() {
        bail!("external tensor data is not supported; save the model with all tensors inside the .onnx file");
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| anyhow!("negative dimension {d}")))
        .collect::<Result<_>>()?;
    let numel = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("dimensions {dims:?} overflow"))?;
    let raw = t.raw_data.as_deref();
    let dt = DataType::try_from(t.data_type.unwrap_or(0)).unwrap_or(DataType::Undefined);
    let check = |n: usize| -> Result<()> {
        if n != numel {
            bail!("holds {n} values but its dims {dims:?} need {numel}");
        }
        Ok(())
    };
    let raw_chunks = |size: usize| -> Result<Option<std::slice::ChunksExact<'_, u8>>> {
        match raw {
            Some(r) if !r.is_empty() || numel == 0 => {
                if r.len() != numel * size {
                    bail!("raw_data is {} bytes, dims {dims:?} need {}", r.len(), numel * size);
                }
                Ok(Some(r.chunks_exact(size)))
            }
            _ => Ok(None),
        }
    };
    let c = match dt {
        DataType::Float => {
            let data: Vec<f32> = match raw_chunks(4)? {
                Some(ch) => ch.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                None => t.float_data.clone(),
            };
            check(data.len())?;
            Const::F32 { dims, data }
        }
        DataType::Double => {
            let data: Vec<f32> = match raw_chunks(8)? {
                Some(ch) => ch
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
                    .collect(),
                None => t.double_data.iter().map(|&d| d as f32).collect(),
            };
            check(data.len())?;
            Const::F32 { dims, data }
        }
        DataType::Float16 => {
            let data: Vec<f32> = match raw_chunks(2)? {
                Some(ch) => ch
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                    .collect(),
                // Typed FLOAT16 values sit in int32_data as their bit patterns.
                None => t
                    .int32_data
                    .iter()
                    .map(|&v| half::f16::from_bits(v as u16).to_f32())
                    .collect(),
            };
            check(data.len())?;
            Const::F32 { dims, data }
        }
        DataType::Int64 => {
            let data: Vec<i64> = match raw_chunks(8)? {
                Some(ch) => ch
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8-byte chunk")))
                    .collect(),
                None => t.int64_data.clone(),
            };
            check(data.len())?;
            Const::Int {
                dims,
                data: data.into_iter().map(SymInt::Known).collect(),
            }
        }
        DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint8 | DataType::Bool => {
            let size = match dt {
                DataType::Int32 => 4,
                DataType::Int16 => 2,
                _ => 1,
            };
            let data: Vec<i64> = match raw_chunks(size)? {
                Some(ch) => ch
                    .map(|b| match dt {
                        DataType::Int32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
                        DataType::Int16 => i16::from_le_bytes([b[0], b[1]]) as i64,
                        DataType::Int8 => b[0] as i8 as i64,
                        _ => b[0] as i64,
                    })
                    .collect(),
                None => t.int32_data.iter().map(|&v| v as i64).collect(),
            };
            check(data.len())?;
            Const::Int {
                dims,
                data: data.into_iter().map(SymInt::Known).collect(),
            }
        }
        other => bail!("tensor data type {other:?} is not supported"),
    };
    Ok(c)
}

/// A graph input's shape with axis 0 as the symbolic batch. Returns the fixed batch size
/// when the model wrote one.
fn input_shape(v: &proto::ValueInfoProto) -> Result<(Vec<Dim>, Option<usize>)> {
    use proto::tensor_shape_proto::dimension::Value as D;
    let tt = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => bail!("is not a tensor"),
    };
    let elem = tt.elem_type.unwrap_or(0);
    if elem != DataType::Float as i32 {
        bail!(
            "has element type {:?}; only float32 inputs are supported",
            DataType::try_from(elem).unwrap_or(DataType::Undefined)
        );
    }
    let shape = tt
        .shape
        .as_ref()
        .ok_or_else(|| anyhow!("has no shape; qp needs input shapes (all but the batch fixed)"))?;
    if shape.dim.is_empty() {
        bail!("is a scalar; inputs need a leading batch axis");
    }
    let mut dims = vec![Dim::Batch];
    let mut batch = None;
    if let Some(D::DimValue(b)) = shape.dim[0].value {
        if b > 0 {
            batch = Some(b as usize);
        }
    }
    for (i, d) in shape.dim.iter().enumerate().skip(1) {
        match d.value {
            Some(D::DimValue(x)) if x > 0 => dims.push(Dim::Known(x as usize)),
            Some(D::DimParam(ref p)) => bail!("axis {i} is symbolic ({p:?}); only the batch axis (0) may be dynamic"),
            _ => bail!("axis {i} has no fixed size; only the batch axis (0) may be dynamic"),
        }
    }
    Ok((dims, batch))
}
