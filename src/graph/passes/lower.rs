//! Lowers ONNX-level ops to engine forms: Gemm and MatMul (+ bias Add) become Dense,
//! Flatten becomes Reshape, constant Adds fold into the producer's bias.

use anyhow::{anyhow, bail, Result};

use crate::graph::ir::{shape_str, Const, Dim, Graph, IrOp, ValueId};
use crate::graph::op::Activation;

pub fn run(g: &mut Graph) -> Result<()> {
    for i in 0..g.nodes.len() {
        let node = g.nodes[i].clone();
        match node.op {
            IrOp::Gemm {
                alpha, beta, trans_b, ..
            } => {
                let b = g
                    .constant(node.input(1).ok_or_else(|| anyhow!("Gemm without B"))?)
                    .cloned();
                let b = b.ok_or_else(|| anyhow!("Gemm B must be constant"))?;
                let bd = b.dims().to_vec();
                let data = b.as_f32().ok_or_else(|| anyhow!("Gemm B must be float"))?;
                let (k, out) = if trans_b { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
                let mut w = vec![0f32; out * k];
                for o in 0..out {
                    for j in 0..k {
                        let v = if trans_b { data[o * k + j] } else { data[j * out + o] };
                        w[o * k + j] = alpha * v;
                    }
                }
                let mut bias = vec![0f32; out];
                if let Some(c) = node.input(2) {
                    let c = g.constant(c).ok_or_else(|| anyhow!("Gemm C must be a constant"))?;
                    let cd = c.as_f32().ok_or_else(|| anyhow!("Gemm C must be float"))?;
                    let dims = c.dims();
                    let per_out = match dims {
                        _ if c.numel() == 1 => false,
                        [n] if *n == out => true,
                        [1, n] if *n == out => true,
                        _ => bail!(
                            "Gemm node {:?}: C of shape {dims:?} is not a per-output bias",
                            node.name
                        ),
                    };
                    for (o, b) in bias.iter_mut().enumerate() {
                        *b = beta * if per_out { cd[o] } else { cd[0] };
                    }
                }
                set_dense(g, i, &node.name, w, out, k, bias);
            }
            IrOp::MatMul => {
                let x = node.input(0).ok_or_else(|| anyhow!("MatMul without A"))?;
                let rank = g.shape(x).map_or(0, |s| s.len());
                if rank != 2 {
                    bail!(
                        "MatMul node {:?}: input of rank {rank}; only [N, K] x [K, M] is supported",
                        node.name
                    );
                }
                let b = g
                    .constant(node.input(1).ok_or_else(|| anyhow!("MatMul without B"))?)
                    .cloned();
                let b = b.ok_or_else(|| anyhow!("MatMul B must be constant"))?;
                let (k, out) = (b.dims()[0], b.dims()[1]);
                let data = b.as_f32().ok_or_else(|| anyhow!("MatMul B must be float"))?;
                let mut w = vec![0f32; out * k];
                for j in 0..k {
                    for o in 0..out {
                        w[o * k + j] = data[j * out + o];
                    }
                }
                set_dense(g, i, &node.name, w, out, k, vec![0.0; out]);
            }
            IrOp::Flatten { .. } | IrOp::Reshape { .. } => {
                // The output shape is already inferred; the engine reshape needs only data.
                g.nodes[i].op = IrOp::Reshape { allow_zero: false };
                g.nodes[i].inputs.truncate(1);
            }
            _ => {}
        }
    }
    fold_constant_adds(g)
}

fn set_dense(g: &mut Graph, i: usize, name: &str, w: Vec<f32>, out: usize, k: usize, bias: Vec<f32>) {
    let wv = g.add_const(
        format!("{name}.weight"),
        Const::F32 {
            dims: vec![out, k],
            data: w,
        },
    );
    let bv = g.add_const(
        format!("{name}.bias"),
        Const::F32 {
            dims: vec![out],
            data: bias,
        },
    );
    let node = &mut g.nodes[i];
    node.op = IrOp::Dense {
        activation: Activation::None,
    };
    node.inputs = vec![node.inputs[0], Some(wv), Some(bv)];
}

/// `Add(activation, constant)`: folded into the bias of the Conv or Dense producing the
/// activation when the constant is per-channel; anything else cannot run.
fn fold_constant_adds(g: &mut Graph) -> Result<()> {
    let mut i = 0;
    while i < g.nodes.len() {
        let node = g.nodes[i].clone();
        if !matches!(node.op, IrOp::Add { .. }) {
            i += 1;
            continue;
        }
        let (a, b) = (node.input(0).unwrap_or(0), node.input(1).unwrap_or(0));
        let (act, cst): (ValueId, ValueId) = match (g.constant(a).is_some(), g.constant(b).is_some()) {
            (false, false) => {
                let (sa, sb) = (g.shape(a), g.shape(b));
                if sa != sb {
                    bail!(
                        "Add node {:?}: broadcasting {} + {} between activations is not supported",
                        node.name,
                        shape_str(sa.unwrap_or(&[])),
                        shape_str(sb.unwrap_or(&[]))
                    );
                }
                i += 1;
                continue;
            }
            (false, true) => (a, b),
            (true, false) => (b, a),
            (true, true) => bail!("Add node {:?} of two constants survived folding", node.name),
        };
        let producers = g.producers();
        let uses = g.use_counts();
        let shape = g.shape(act).map(|s| s.to_vec()).unwrap_or_default();
        let c = g.constant(cst).cloned().expect("checked");
        let cdata = c
            .as_f32()
            .ok_or_else(|| anyhow!("Add of an integer constant"))?
            .to_vec();
        let p = producers[act].filter(|_| uses[act] == 1 && !g.is_graph_output(act));
        let folded = match p.map(|p| (p, g.nodes[p].op.clone())) {
            Some((
                p,
                IrOp::Conv {
                    activation: Activation::None,
                    ..
                },
            ))
            | Some((
                p,
                IrOp::Dense {
                    activation: Activation::None,
                },
            )) => {
                let channels = match shape.get(1) {
                    Some(Dim::Known(c)) => *c,
                    _ => 0,
                };
                let per_channel = per_channel_values(c.dims(), &cdata, shape.len(), channels);
                match per_channel {
                    Some(add) => {
                        let bias_v = g.nodes[p].input(2);
                        let mut bias = match bias_v.and_then(|b| g.constant(b)).and_then(|c| c.as_f32()) {
                            Some(b) => b.to_vec(),
                            None => vec![0.0; channels],
                        };
                        for (x, y) in bias.iter_mut().zip(&add) {
                            *x += y;
                        }
                        let name = format!("{}.bias.folded_add", g.nodes[p].name);
                        let nb = g.add_const(
                            name,
                            Const::F32 {
                                dims: vec![channels],
                                data: bias,
                            },
                        );
                        let pn = &mut g.nodes[p];
                        pn.inputs.resize(pn.inputs.len().max(3), None);
                        pn.inputs[2] = Some(nb);
                        let add_out = node.outputs[0];
                        let keep_name = g.values[add_out].name.clone();
                        g.replace_uses(add_out, act);
                        g.values[act].name = keep_name;
                        g.nodes.remove(i);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !folded {
            bail!(
                "Add node {:?}: adding a constant of shape {:?} to {} is only supported as a per-channel bias right after a Conv, Gemm or MatMul",
                node.name,
                c.dims(),
                shape_str(&shape)
            );
        }
    }
    Ok(())
}

/// The per-channel values of a constant broadcast against `[N, C, ...]` (rank `rank`),
/// or None if it varies along any other axis.
fn per_channel_values(dims: &[usize], data: &[f32], rank: usize, channels: usize) -> Option<Vec<f32>> {
    if data.len() == 1 {
        return Some(vec![data[0]; channels]);
    }
    if data.len() != channels || dims.len() > rank {
        return None;
    }
    // Right-aligned: the channel axis is `rank - 1 - 1` from the end... find where C sits.
    let pos_of_c = rank - dims.len(); // index in the full shape of dims[0]
    let ok = dims.iter().enumerate().all(|(j, &d)| {
        let full_axis = pos_of_c + j;
        if full_axis == 1 {
            d == channels
        } else {
            d == 1
        }
    });
    ok.then(|| data.to_vec())
}
