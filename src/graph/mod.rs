//! The graph IR, shape inference and the pass pipeline.

pub mod op;
