//! Executors: run a validated model's nodes over a planned arena.
//! `reference` is the scalar NCHW oracle; `fast` runs the SIMD kernels on NHWC data.

pub mod arena;
pub mod fast;
pub mod params;
pub mod pool;
pub mod reference;

use crate::format::QpwFile;
use crate::plan::Plan;

/// Runs every node of `file` with the reference executor. Inputs must already be in
/// their arena slots; outputs are left in theirs.
pub fn run_reference(
    file: &QpwFile,
    weights: &params::Params,
    plan: &Plan,
    arena: &mut [f32],
    mut timings: Option<&mut Vec<f64>>,
) {
    let meta = &file.meta;
    for node in &meta.nodes {
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
    }
}
