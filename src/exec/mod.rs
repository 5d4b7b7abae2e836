//! Executors: run a validated model's nodes over a planned arena.
//! `reference` is the scalar NCHW oracle; `fast` runs the SIMD kernels on NHWC data.

pub mod arena;
pub mod fast;
pub mod params;
pub mod pool;
pub mod reference;

use crate::format::QpwFile;
use crate::plan::Plan;
use qp_kernels::fpstatus::{self, FpExceptions};

/// A node whose arithmetic left the f32 range (overflow, an invalid operation or a
/// division by zero): its output, and so the model's, means nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    /// The node's index in the model's node list.
    pub node: usize,
    pub raised: FpExceptions,
}

/// Runs every node of `file` with the reference executor, on the calling thread. Inputs
/// must already be in their arena slots; outputs are left in theirs. Stops at the first
/// node that overflows.
pub fn run_reference(
    file: &QpwFile,
    weights: &params::Params,
    plan: &Plan,
    arena: &mut [f32],
    mut timings: Option<&mut Vec<f64>>,
) -> Result<(), Overflow> {
    let meta = &file.meta;
    fpstatus::take();
    for (index, node) in meta.nodes.iter().enumerate() {
        let start = std::time::Instant::now();
        let out_v = node.outputs[0];
        let in_slots: Vec<_> = node.inputs.iter().map(|&v| &plan.slots[v]).collect();
        let (out, ins) = arena::split_io(arena, &plan.slots[out_v], &in_slots);
        let in_shapes: Vec<&[usize]> = node.inputs.iter().map(|&v| meta.values[v].shape.as_slice()).collect();
        let params = reference::Params {
            tensors: node.params.iter().map(|&p| weights.get(file, p)).collect(),
        };
        reference::run_node(
            node,
            plan.batch,
            &ins,
            &in_shapes,
            &meta.values[out_v].shape,
            &params,
            out,
        );
        if let Some(t) = timings.as_deref_mut() {
            t.push(start.elapsed().as_secs_f64());
        }
        let raised = fpstatus::take();
        if !raised.is_empty() {
            return Err(Overflow { node: index, raised });
        }
    }
    Ok(())
}
