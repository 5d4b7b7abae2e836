//! Epilogue fusion: a ReLU moves into the op producing its input, and a residual Add
//! moves into the convolution computing one of its operands, so the kernel applies
//! bias, residual and ReLU while the output tile is still in registers.

use crate::graph::ir::{Graph, IrOp};
use crate::graph::op::Activation;

pub fn activations(g: &mut Graph) {
    let mut i = 0;
    while i < g.nodes.len() {
        if g.nodes[i].op != IrOp::Relu {
            i += 1;
            continue;
        }
        let x = g.nodes[i].input(0).expect("Relu has an input");
        let producers = g.producers();
        let uses = g.use_counts();
        let fusable = producers[x].filter(|_| uses[x] == 1 && !g.is_graph_output(x));
        let target = fusable.filter(|&p| {
            matches!(
                g.nodes[p].op,
                IrOp::Conv {
                    activation: Activation::None,
                    ..
                } | IrOp::Dense {
                    activation: Activation::None
                } | IrOp::Add {
                    activation: Activation::None
                }
            )
        });
        let Some(p) = target else {
            i += 1;
            continue;
        };
        match &mut g.nodes[p].op {
            IrOp::Conv { activation, .. } | IrOp::Dense { activation } | IrOp::Add { activation } => {
                *activation = Activation::Relu
            }
            _ => unreachable!("filtered above"),
        }
        let relu = g.nodes.remove(i);
        let out = relu.outputs[0];
        let keep_name = g.values[out].name.clone();
        g.replace_uses(out, x);
        g.values[x].name = keep_name;
    }
}

pub fn residual_adds(g: &mut Graph) {
    let mut i = 0;
    while i < g.nodes.len() {
        let IrOp::Add { activation } = g.nodes[i].op else {
            i += 1;
            continue;
        };
        let (a, b) = (g.nodes[i].input(0), g.nodes[i].input(1));
        let (Some(a), Some(b)) = (a, b) else {
            i += 1;
            continue;
        };
        if g.shape(a) != g.shape(b) {
            i += 1;
            continue;
        }
        let producers = g.producers();
        let uses = g.use_counts();
        let candidate = |v: usize| {
            producers[v].filter(|&p| {
                uses[v] == 1
                    && !g.is_graph_output(v)
                    && matches!(
                        g.nodes[p].op,
                        IrOp::Conv {
                            activation: Activation::None,
                            ..
                        }
                    )
                    && g.nodes[p].inputs.len() <= 3
            })
        };
        // Prefer the conv that runs later, so the other operand is ready before it.
        let pick = match (candidate(a), candidate(b)) {
            (Some(pa), Some(pb)) => Some(if pa > pb { (pa, b) } else { (pb, a) }),
            (Some(pa), None) => Some((pa, b)),
            (None, Some(pb)) => Some((pb, a)),
            (None, None) => None,
        };
        let Some((conv, other)) = pick else {
            i += 1;
            continue;
        };
        let add = g.nodes.remove(i);
        let conv = if conv > i { conv - 1 } else { conv };
        let node = &mut g.nodes[conv];
        node.inputs.resize(3, None);
        node.inputs.push(Some(other));
        if let IrOp::Conv { activation: act, .. } = &mut node.op {
            *act = activation;
        }
        let conv_out = node.outputs[0];
        let out = add.outputs[0];
        let keep_name = g.values[out].name.clone();
        g.replace_uses(out, conv_out);
        g.values[conv_out].name = keep_name;
    }
}
