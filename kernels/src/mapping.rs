//! Read-only file mapping, the one `unsafe` call the loader needs.

use std::fs::File;

pub use memmap2::Mmap;

/// Maps `file` read-only.
pub fn map_readonly(file: &File) -> std::io::Result<Mmap> {
    // safety: the mapping is read-only and private to this process. A file truncated or
    // rewritten in place by another process while mapped is outside what any mmap loader
    // can defend against; qp-convert replaces model files by rename, never in place.
    unsafe { Mmap::map(file) }
}
