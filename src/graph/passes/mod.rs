//! The pass pipeline, in order. Each pass owns one rewrite; `run_all` is the only place
//! that knows the order.

pub mod batchnorm;
pub mod dce;
pub mod fuse;
pub mod identity;
pub mod infer;
pub mod lower;
pub mod topo;

use anyhow::{Context, Result};

use super::ir::Graph;

/// Runs every pass. Afterwards each node is Conv, Dense, MaxPool, AveragePool,
/// GlobalAveragePool, Add, Relu, Sigmoid, Reshape or Concat, every shape is known, and
/// every parameter is a constant.
pub fn run_all(g: &mut Graph) -> Result<()> {
    topo::run(g).context("ordering the graph")?;
    infer::run(g).context("shape inference")?;
    identity::run(g);
    batchnorm::run(g).context("folding BatchNormalization")?;
    lower::run(g).context("lowering")?;
    fuse::activations(g);
    fuse::residual_adds(g);
    dce::run(g);
    topo::run(g).context("ordering the graph")?;
    Ok(())
}
