//! The engine's public face: load a `.qpw`, run batches. Used by the CLI, the bench and
//! the server.

use std::path::Path;

use crate::format::{ModelMeta, QpwFile};
pub use qp_kernels::cpu::Isa;

/// A dense f32 tensor; `shape` includes the leading batch axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }
}

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Cap on the kernel tier (also `QP_MAX_ISA`).
    pub max_isa: Option<Isa>,
    /// Worker threads (also `QP_THREADS`); default: one per physical core available.
    pub threads: Option<usize>,
    /// Run the plain scalar reference executor instead of the optimized one.
    pub reference: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Format(#[from] crate::format::FormatError),
    /// The file is well-formed but describes something this engine cannot run.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The caller's inputs are wrong (names, shapes, batch, non-finite values).
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("{0}")]
    Config(String),
}

pub struct Engine {
    file: QpwFile,
}

impl Engine {
    pub fn load(path: &Path, _options: EngineOptions) -> Result<Engine, EngineError> {
        let file = QpwFile::open(path)?;
        Ok(Engine { file })
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.file.meta
    }

    /// Runs one batch. Every model input must be given exactly once, all with the same
    /// batch size; returns every model output, in the model's order.
    pub fn run(&mut self, _inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        Err(EngineError::Config("executor not built yet".into()))
    }
}
