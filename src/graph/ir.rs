//! The conversion-time graph: ONNX semantics, typed attributes, constants held in memory.
//! Passes rewrite it until every node is an engine op (see `op.rs`).

use super::op::{Activation, Window};

pub type ValueId = usize;

/// One axis of an activation's shape. The batch is symbolic: a converted model runs any
/// batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Batch,
    Known(usize),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Batch => f.write_str("N"),
            Dim::Known(n) => write!(f, "{n}"),
        }
    }
}

pub fn shape_str(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// A compile-time constant. Integer tensors may hold the symbolic batch, which is how
/// `Shape -> Gather -> Concat -> Reshape` chains fold even with a dynamic batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    F32 { dims: Vec<usize>, data: Vec<f32> },
    Int { dims: Vec<usize>, data: Vec<SymInt> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymInt {
    Known(i64),
    Batch,
}

impl Const {
    pub fn dims(&self) -> &[usize] {
        match self {
            Const::F32 { dims, .. } | Const::Int { dims, .. } => dims,
        }
    }
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            Const::F32 { data, .. } => Some(data),
            _ => None,
        }
    }
    /// Integer values, if all are known.
    pub fn as_ints(&self) -> Option<Vec<i64>> {
        match self {
            Const::Int { data, .. } => data
                .iter()
                .map(|v| match v {
                    SymInt::Known(k) => Some(*k),
                    SymInt::Batch => None,
                })
                .collect(),
            Const::F32 { data, .. } => data.iter().map(|&f| (f.fract() == 0.0).then_some(f as i64)).collect(),
        }
    }
    pub fn as_sym_ints(&self) -> Option<&[SymInt]> {
        match self {
            Const::Int { data, .. } => Some(data),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    /// Full shape including the batch axis; `None` until shape inference reaches it.
    pub shape: Option<Vec<Dim>>,
    pub constant: Option<Const>,
}

/// Conversion-time operators: the ONNX ops qp imports, and the fused forms the passes make.
#[derive(Clone, Debug, PartialEq)]
pub enum IrOp {
    /// Inputs: x, weight `[cout, cin, kh, kw]`, optional bias, optional residual (fused Add).
    Conv {
        window: Window,
        group: usize,
        auto_pad: AutoPad,
        activation: Activation,
    },
    /// Inputs: x, scale, bias, mean, var.
    BatchNorm {
        epsilon: f32,
    },
    Relu,
    Sigmoid,
    /// Identity and inference-mode Dropout.
    Identity,
    MaxPool {
        window: Window,
        auto_pad: AutoPad,
        ceil_mode: bool,
    },
    AveragePool {
        window: Window,
        auto_pad: AutoPad,
        ceil_mode: bool,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    Add {
        activation: Activation,
    },
    Flatten {
        axis: i64,
    },
    /// Inputs: data, shape.
    Reshape {
        allow_zero: bool,
    },
    Concat {
        axis: i64,
    },
    /// Inputs: A, B, optional C.
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    /// Lowered fully connected layer. Inputs: x `[N, in]`, weight `[out, in]`, bias `[out]`.
    Dense {
        activation: Activation,
    },
    // Shape arithmetic, only ever constant-folded.
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather {
        axis: i64,
    },
    /// Axes from the attribute (opset < 13) or from the second input.
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Cast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    /// The ONNX op type it came from (for messages and statistics).
    pub onnx_type: String,
    pub op: IrOp,
    /// `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
}

impl Node {
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
}

/// A named model input or output.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
    pub value: ValueId,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// The fixed batch size the model was exported with, if any. The engine still treats
    /// the batch as symbolic; this lets `Reshape([1, -1])` in a batch-1 export stay batched.
    pub static_batch: Option<usize>,
}

impl Graph {
    pub fn add_value(&mut self, name: impl Into<String>) -> ValueId {
        self.values.push(Value {
            name: name.into(),
            shape: None,
            constant: None,
        });
        self.values.len() - 1
    }

    pub fn add_const(&mut self, name: impl Into<String>, c: Const) -> ValueId {
        let id = self.add_value(name);
        self.values[id].constant = Some(c);
        id
    }

    pub fn constant(&self, v: ValueId) -> Option<&Const> {
        self.values[v].constant.as_ref()
    }

    pub fn shape(&self, v: ValueId) -> Option<&[Dim]> {
        self.values[v].shape.as_deref()
    }

    /// How many node inputs and graph outputs read each value.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0; self.values.len()];
        for n in &self.nodes {
            for v in n.inputs.iter().flatten() {
                uses[*v] += 1;
            }
        }
        for o in &self.outputs {
            uses[o.value] += 1;
        }
        uses
    }

    /// Index of the node producing each value, if any.
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &o in &n.outputs {
                p[o] = Some(i);
            }
        }
        p
    }

    pub fn is_graph_output(&self, v: ValueId) -> bool {
        self.outputs.iter().any(|o| o.value == v)
    }

    /// Replaces every read of `from` (node inputs and graph outputs) by `to`.
    pub fn replace_uses(&mut self, from: ValueId, to: ValueId) {
        for n in &mut self.nodes {
            for v in n.inputs.iter_mut().flatten() {
                if *v == from {
                    *v = to;
                }
            }
        }
        for o in &mut self.outputs {
            if o.value == from {
                o.value = to;
            }
        }
    }
}
