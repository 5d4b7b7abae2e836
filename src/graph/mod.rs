//! The graph IR, shape inference and the pass pipeline.

pub mod ir;
pub mod op;
pub mod passes;
