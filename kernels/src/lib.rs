//! qp's kernels: the only crate of qp with `unsafe` code and `std::arch`.
//!
//! Every kernel has a scalar reference in `scalar`, and SIMD versions chosen at run time
//! from the CPU's features (see `cpu`).

pub mod mapping;
