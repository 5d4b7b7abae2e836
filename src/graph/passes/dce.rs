//! Removes nodes whose outputs nothing reads.

use crate::graph::ir::Graph;

pub fn run(g: &mut Graph) {
    loop {
        let uses = g.use_counts();
        let before = g.nodes.len();
        g.nodes.retain(|n| n.outputs.iter().any(|&o| uses[o] > 0));
        if g.nodes.len() == before {
            break;
        }
    }
}
