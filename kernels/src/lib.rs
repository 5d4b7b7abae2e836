//! qp's kernels: the only crate of qp with `unsafe` code and `std::arch`.
//!
//! Every kernel has a scalar reference, and SIMD versions chosen at run time from the
//! CPU's features (see `cpu`); `QP_MAX_ISA` caps the choice for testing.

pub mod conv;
pub mod cpu;
pub mod cpuinfo;
pub mod dense;
pub mod eltwise;
pub mod fpstatus;
pub mod mapping;
pub mod parallel;
pub mod peak;
pub mod pool;
pub mod qconv;
pub mod quantize;
pub mod reorder;
pub mod simd;
mod split;
