//! Removes Identity (and inference-mode Dropout) nodes by rewiring their readers.

use crate::graph::ir::{Graph, IrOp};

pub fn run(g: &mut Graph) {
    let mut i = 0;
    while i < g.nodes.len() {
        if g.nodes[i].op == IrOp::Identity {
            let node = g.nodes.remove(i);
            if let (Some(src), Some(&dst)) = (node.input(0), node.outputs.first()) {
                g.replace_uses(dst, src);
            }
        } else {
            i += 1;
        }
    }
}
