//! Folds inference-mode BatchNormalization into the preceding convolution:
//! `w' = w * s`, `b' = (b - mean) * s + beta` with `s = gamma / sqrt(var + eps)`,
//! computed in f64 so folding adds no error of its own.

use anyhow::{anyhow, bail, Result};

use crate::graph::ir::{Const, Graph, IrOp};

pub fn run(g: &mut Graph) -> Result<()> {
    let mut i = 0;
    while i < g.nodes.len() {
        let IrOp::BatchNorm { epsilon } = g.nodes[i].op else {
            i += 1;
            continue;
        };
        let bn = g.nodes[i].clone();
        let x = bn.input(0).ok_or_else(|| anyhow!("BatchNormalization without input"))?;
        let producers = g.producers();
        let uses = g.use_counts();
        let conv_idx = producers[x]
            .filter(|&p| matches!(g.nodes[p].op, IrOp::Conv { .. }) && uses[x] == 1 && !g.is_graph_output(x));
        let Some(ci) = conv_idx else {
            bail!(
                "BatchNormalization node {:?} does not follow a convolution that only it reads; standalone BatchNormalization is not supported",
                bn.name
            );
        };
        let param = |k: usize| -> Result<Vec<f64>> {
            let v = bn.input(k).ok_or_else(|| anyhow!("missing BN input {k}"))?;
            Ok(g.constant(v)
                .and_then(|c| c.as_f32())
                .ok_or_else(|| anyhow!("BN parameter {k} is not a float constant"))?
                .iter()
                .map(|&f| f as f64)
                .collect())
        };
        let (gamma, beta, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
        let conv = &g.nodes[ci];
        let wv = conv.input(1).ok_or_else(|| anyhow!("conv without weights"))?;
        let w = g
            .constant(wv)
            .and_then(|c| c.as_f32())
            .ok_or_else(|| anyhow!("conv weights"))?;
        let wdims = g.constant(wv).map(|c| c.dims().to_vec()).unwrap_or_default();
        let cout = wdims[0];
        let per_out = w.len() / cout;
        let bias: Vec<f64> = match conv.input(2) {
            Some(b) => g
                .constant(b)
                .and_then(|c| c.as_f32())
                .ok_or_else(|| anyhow!("conv bias"))?
                .iter()
                .map(|&f| f as f64)
                .collect(),
            None => vec![0.0; cout],
        };
        // A variance at or below -epsilon has no square root: the fold would write NaN or
        // infinite weights.
        if let Some(o) = (0..cout).find(|&o| var[o] + epsilon as f64 <= 0.0) {
            bail!(
                "BatchNormalization node {:?}: channel {o} has variance {} with epsilon {epsilon}; \
                 variance + epsilon must be positive",
                bn.name,
                var[o]
            );
        }
        let mut nw = Vec::with_capacity(w.len());
        let mut nb = Vec::with_capacity(cout);
        for o in 0..cout {
            let s = gamma[o] / (var[o] + epsilon as f64).sqrt();
            nw.extend(w[o * per_out..(o + 1) * per_out].iter().map(|&x| (x as f64 * s) as f32));
            nb.push(((bias[o] - mean[o]) * s + beta[o]) as f32);
        }
        let conv_name = g.nodes[ci].name.clone();
        let new_w = g.add_const(
            format!("{conv_name}.weight.bn_folded"),
            Const::F32 { dims: wdims, data: nw },
        );
        let new_b = g.add_const(
            format!("{conv_name}.bias.bn_folded"),
            Const::F32 {
                dims: vec![cout],
                data: nb,
            },
        );
        let conv = &mut g.nodes[ci];
        conv.inputs.resize(3, None);
        conv.inputs[1] = Some(new_w);
        conv.inputs[2] = Some(new_b);
        // The conv now writes what the BN wrote.
        let bn_out = bn.outputs[0];
        let conv_out = conv.outputs[0];
        g.nodes.remove(i);
        g.replace_uses(bn_out, conv_out);
        // Keep the BN output's name on the edge (it may be a graph output).
        g.values[conv_out].name = g.values[bn_out].name.clone();
    }
    Ok(())
}
