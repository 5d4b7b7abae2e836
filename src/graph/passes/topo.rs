//! Orders nodes so every node runs after the producers of its inputs.

use anyhow::{bail, Result};

use crate::graph::ir::Graph;

pub fn run(g: &mut Graph) -> Result<()> {
    let producers = g.producers();
    let n = g.nodes.len();
    let mut indegree = vec![0usize; n];
    let mut consumers: Vec<Vec<usize>> = vec![vec![]; n];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in node.inputs.iter().flatten() {
            if let Some(p) = producers[*v] {
                indegree[i] += 1;
                consumers[p].push(i);
            }
        }
    }
    // Stable: among ready nodes, keep the original order.
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() != n {
        bail!("the graph has a cycle");
    }
    let mut old: Vec<Option<_>> = std::mem::take(&mut g.nodes).into_iter().map(Some).collect();
    g.nodes = order
        .into_iter()
        .map(|i| old[i].take().expect("each node once"))
        .collect();
    Ok(())
}
