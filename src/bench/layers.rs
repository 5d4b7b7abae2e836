//! Per-layer accounting for `bench --cpu-profile`: FLOPs from each node's geometry, a
//! readable description of the node, and totals per op kind.

use std::collections::BTreeMap;

use crate::format::meta::{ModelMeta, NodeSpec};
use crate::graph::op::Op;

/// Floating-point operations of one node over `batch` samples (a multiply-add counts 2),
/// for the ops whose cost is arithmetic: conv `2*cout*cin*kh*kw*oh*ow` (integer
/// operations for an INT8 conv; for a Winograd conv the direct algorithm's count, so its
/// GFLOP/s is effective and may pass the FMA peak), dense `2*in*out`.
/// `None` for the memory-bound ops (pooling, elementwise, reshapes), whose time is not
/// measured against the FMA peak.
pub fn node_flops(meta: &ModelMeta, node: &NodeSpec, batch: usize) -> Option<u64> {
    let per_sample = match &node.op {
        Op::Conv { cin, cout, window, .. }
        | Op::QConv { cin, cout, window, .. }
        | Op::ConvWinograd { cin, cout, window, .. } => {
            let out = &meta.values.get(*node.outputs.first()?)?.shape;
            let (oh, ow) = match out.as_slice() {
                [_, oh, ow] => (*oh, *ow),
                _ => return None,
            };
            2 * cout * cin * window.kernel[0] * window.kernel[1] * oh * ow
        }
        Op::Dense { input, output, .. } => 2 * input * output,
        _ => return None,
    };
    Some(per_sample as u64 * batch as u64)
}

/// The op kind with its window, e.g. `conv 3x3/2` or `max_pool 3x3/2`.
pub fn node_label(node: &NodeSpec) -> String {
    let window = match &node.op {
        Op::Conv { window, .. }
        | Op::QConv { window, .. }
        | Op::ConvWinograd { window, .. }
        | Op::MaxPool { window, .. }
        | Op::AveragePool { window, .. } => window,
        _ => return node.op.kind().to_string(),
    };
    let mut label = format!("{} {}x{}", node.op.kind(), window.kernel[0], window.kernel[1]);
    if window.stride != [1, 1] {
        if window.stride[0] == window.stride[1] {
            label += &format!("/{}", window.stride[0]);
        } else {
            label += &format!("/{}x{}", window.stride[0], window.stride[1]);
        }
    }
    label
}

/// Per-sample shapes `in -> out` (first input only), e.g. `64x56x56 -> 256x56x56`.
pub fn node_shape(meta: &ModelMeta, node: &NodeSpec) -> String {
    let dims = |v: Option<&usize>| -> String {
        v.and_then(|&v| meta.values.get(v))
            .map(|s| s.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"))
            .unwrap_or_else(|| "?".into())
    };
    format!("{} -> {}", dims(node.inputs.first()), dims(node.outputs.first()))
}

/// One node's measured cost.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTime {
    pub name: String,
    pub kind: &'static str,
    pub label: String,
    pub shape: String,
    /// Median over the profiled runs, seconds.
    pub seconds: f64,
    pub flops: Option<u64>,
}

impl LayerTime {
    pub fn gflops_per_s(&self) -> Option<f64> {
        self.flops
            .filter(|_| self.seconds > 0.0)
            .map(|f| f as f64 / self.seconds / 1e9)
    }
}

/// Builds the per-layer rows (model order) from per-run node times `runs[r][node]`.
pub fn layer_times(meta: &ModelMeta, batch: usize, runs: &[Vec<f64>]) -> Vec<LayerTime> {
    meta.nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let samples: Vec<f64> = runs.iter().filter_map(|r| r.get(i).copied()).collect();
            LayerTime {
                name: node.name.clone(),
                kind: node.op.kind(),
                label: node_label(node),
                shape: node_shape(meta, node),
                seconds: super::stats::median(&samples),
                flops: node_flops(meta, node, batch),
            }
        })
        .collect()
}

/// Totals of one op kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindTotal {
    pub count: usize,
    pub seconds: f64,
    /// Sum over the nodes with a FLOP count.
    pub flops: u64,
    /// Seconds of those nodes (so GFLOP/s is not diluted by uncounted ones).
    pub flop_seconds: f64,
}

/// Totals per op kind, keyed by kind name.
pub fn kind_totals(layers: &[LayerTime]) -> BTreeMap<&'static str, KindTotal> {
    let mut totals: BTreeMap<&'static str, KindTotal> = BTreeMap::new();
    for l in layers {
        let t = totals.entry(l.kind).or_default();
        t.count += 1;
        t.seconds += l.seconds;
        if let Some(f) = l.flops {
            t.flops += f;
            t.flop_seconds += l.seconds;
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::meta::{SourceInfo, ValueSpec};
    use crate::graph::op::{Activation, Window};

    fn meta(values: Vec<Vec<usize>>, nodes: Vec<NodeSpec>) -> ModelMeta {
        ModelMeta {
            name: "m".into(),
            description: String::new(),
            precision: "fp32".into(),
            source: SourceInfo::default(),
            inputs: vec![],
            outputs: vec![],
            values: values
                .into_iter()
                .enumerate()
                .map(|(i, shape)| ValueSpec {
                    name: format!("v{i}"),
                    shape,
                    quant: None,
                })
                .collect(),
            nodes,
            tensors: vec![],
            stats: Default::default(),
            reports: Default::default(),
        }
    }

    fn node(name: &str, op: Op, inputs: Vec<usize>, outputs: Vec<usize>) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            op,
            inputs,
            outputs,
            params: vec![],
        }
    }

    fn stem_window() -> Window {
        Window {
            kernel: [7, 7],
            stride: [2, 2],
            dilation: [1, 1],
            pads: [3, 3, 3, 3],
        }
    }

    #[test]
    fn conv_and_dense_flops_follow_their_geometry() {
        let conv = node(
            "stem",
            Op::Conv {
                cin: 3,
                cout: 64,
                window: stem_window(),
                activation: Activation::Relu,
            },
            vec![0],
            vec![1],
        );
        let dense = node(
            "fc",
            Op::Dense {
                input: 2056,
                output: 512,
                activation: Activation::None,
            },
            vec![2],
            vec![3],
        );
        let relu = node("r", Op::Relu, vec![3], vec![4]);
        let m = meta(
            vec![vec![3, 224, 224], vec![64, 112, 112], vec![2056], vec![512], vec![512]],
            vec![conv.clone(), dense.clone(), relu.clone()],
        );
        assert_eq!(node_flops(&m, &conv, 2), Some(2 * 64 * 3 * 7 * 7 * 112 * 112 * 2));
        assert_eq!(node_flops(&m, &dense, 8), Some(2 * 2056 * 512 * 8));
        assert_eq!(node_flops(&m, &relu, 1), None);
        assert_eq!(node_label(&conv), "conv 7x7/2");
        assert_eq!(node_shape(&m, &conv), "3x224x224 -> 64x112x112");
    }

    #[test]
    fn per_layer_medians_and_kind_totals() {
        let dense = node(
            "fc",
            Op::Dense {
                input: 4,
                output: 2,
                activation: Activation::None,
            },
            vec![0],
            vec![1],
        );
        let relu = node("r", Op::Relu, vec![1], vec![2]);
        let m = meta(vec![vec![4], vec![2], vec![2]], vec![dense, relu]);
        let runs = vec![vec![3.0, 1.0], vec![1.0, 5.0], vec![2.0, 3.0]];
        let layers = layer_times(&m, 1, &runs);
        assert_eq!(layers[0].seconds, 2.0);
        assert_eq!(layers[1].seconds, 3.0);
        assert_eq!(layers[0].gflops_per_s(), Some(16.0 / 2.0 / 1e9));
        assert_eq!(layers[1].gflops_per_s(), None);
        let totals = kind_totals(&layers);
        assert_eq!(
            totals["dense"],
            KindTotal {
                count: 1,
                seconds: 2.0,
                flops: 16,
                flop_seconds: 2.0
            }
        );
        assert_eq!(totals["relu"].flops, 0);
        assert_eq!(totals["relu"].seconds, 3.0);
    }
}
