//! qp: a CPU inference engine for the vtracer quality prediction model.
//!
//! Data flows one way: `onnx` (import) -> `graph` (IR and passes) -> `convert` (packing,
//! writing) -> `format` (the `.qpw` file) -> `plan` (per-batch execution plan) -> `exec`
//! (executors) -> `serve` / `bench` / the CLIs. All `unsafe` lives in the `qp-kernels` crate.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli_log;
pub mod convert;
pub mod engine;
pub mod exec;
pub mod format;
pub mod graph;
pub mod healthcheck;
pub mod npy;
pub mod onnx;
pub mod plan;
pub mod preprocess;
pub mod quant;
pub mod serve;
