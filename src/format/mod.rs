//! The `.qpw` model file: layout, writer, validating loader. Spec: docs/FORMAT.md.

pub mod layout;
pub mod loader;
pub mod meta;
pub mod writer;

pub use loader::{FormatError, QpwFile};
pub use meta::{DType, ModelMeta};
