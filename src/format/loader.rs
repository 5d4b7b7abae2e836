//! Maps a `.qpw` file and validates every byte of its frame before anything uses it.
//! Tensors are handed out as slices of the mapping: no copy, no heap.

use std::path::Path;

use memmap2::Mmap;
use rayon::prelude::*;

use super::layout::*;
use super::meta::{DType, ModelMeta};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot open {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("not a qp model file (bad magic {0:?}); convert an ONNX model with qp-convert first")]
    BadMagic([u8; 8]),
    #[error("model file format version {found} is not supported (this build reads version {supported}); re-convert the model")]
    Version { found: u32, supported: u32 },
    #[error("model file is truncated: {0}")]
    Truncated(String),
    #[error("model file is corrupt: {0}")]
    Corrupt(String),
}

enum Backing {
    Mapped(Mmap),
    /// u64 words keep the buffer 8-byte aligned; tensors stay 64-aligned relative to it
    /// only when it is, so heap-backed files are re-aligned on load (tests, fuzzing).
    Heap {
        words: Vec<u64>,
        len: usize,
    },
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Heap { words, len } => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// A validated model file. Tensor accessors borrow from the mapping.
pub struct QpwFile {
    backing: Backing,
    pub header: Header,
    pub meta: ModelMeta,
    entries: Vec<TensorEntry>,
}

impl std::fmt::Debug for QpwFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QpwFile")
            .field("name", &self.meta.name)
            .field("file_len", &self.header.file_len)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl QpwFile {
    /// Maps the file read-only and validates it.
    pub fn open(path: &Path) -> Result<QpwFile, FormatError> {
        let io = |cause| FormatError::Io {
            path: path.display().to_string(),
            cause,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (a directory?)",
            )));
        }
        let len = metadata.len();
        if (len as usize) < HEADER_SIZE {
            return Err(FormatError::Truncated(format!(
                "{len} bytes, smaller than the {HEADER_SIZE}-byte header"
            )));
        }
        let map = qp_kernels::mapping::map_readonly(&file).map_err(io)?;
        Self::validate(Backing::Mapped(map))
    }

    /// Validates a file image held in memory (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<QpwFile, FormatError> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self::validate(Backing::Heap {
            words,
            len: bytes.len(),
        })
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    pub fn file_len(&self) -> u64 {
        self.header.file_len
    }

    fn validate(backing: Backing) -> Result<QpwFile, FormatError> {
        let bytes = backing.bytes();
        let len = bytes.len();
        if len < HEADER_SIZE {
            return Err(FormatError::Truncated(format!(
                "{len} bytes, smaller than the {HEADER_SIZE}-byte header"
            )));
        }
        let header: Header = bytemuck::pod_read_unaligned(&bytes[..HEADER_SIZE]);
        if header.magic != MAGIC {
            return Err(FormatError::BadMagic(header.magic));
        }
        if header.version != FORMAT_VERSION {
            return Err(FormatError::Version {
                found: header.version,
                supported: FORMAT_VERSION,
            });
        }
        if header.header_checksum != header_checksum(&header) {
            return Err(FormatError::Corrupt("header checksum mismatch".into()));
        }
        if header.header_size as usize != HEADER_SIZE {
            return Err(FormatError::Corrupt(format!(
                "header size {} (expected {HEADER_SIZE})",
                header.header_size
            )));
        }
        if header.file_len != len as u64 {
            return Err(if (len as u64) < header.file_len {
                FormatError::Truncated(format!("{len} bytes on disk, the header says {}", header.file_len))
            } else {
                FormatError::Corrupt(format!(
                    "{len} bytes on disk, the header says {} (trailing bytes)",
                    header.file_len
                ))
            });
        }
        let section = |what: &str, off: u64, n: u64| -> Result<std::ops::Range<usize>, FormatError> {
            let end = off
                .checked_add(n)
                .filter(|&e| e <= len as u64)
                .ok_or_else(|| FormatError::Corrupt(format!("{what} [{off}, +{n}) lies outside the file")))?;
            Ok(off as usize..end as usize)
        };
        let meta_range = section("metadata", header.meta_offset, header.meta_len)?;
        let table_len = header
            .tensor_count
            .checked_mul(ENTRY_SIZE as u64)
            .ok_or_else(|| FormatError::Corrupt("tensor count overflows".into()))?;
        let table_range = section("tensor table", header.table_offset, table_len)?;
        let data_range = section("data", header.data_offset, header.data_len)?;
        if !(header.data_offset as usize).is_multiple_of(DATA_ALIGN) {
            return Err(FormatError::Corrupt("data section is not page aligned".into()));
        }
        if !header.table_offset.is_multiple_of(8)
            || (meta_range.end > table_range.start)
            || (table_range.end > data_range.start)
        {
            return Err(FormatError::Corrupt("sections overlap or are misaligned".into()));
        }

        let meta_bytes = &bytes[meta_range];
        if checksum(meta_bytes) != header.meta_checksum {
            return Err(FormatError::Corrupt("metadata checksum mismatch".into()));
        }
        let meta: ModelMeta = serde_json::from_slice(meta_bytes)
            .map_err(|e| FormatError::Corrupt(format!("metadata is not valid: {e}")))?;

        let table_bytes = &bytes[table_range];
        if checksum(table_bytes) != header.table_checksum {
            return Err(FormatError::Corrupt("tensor table checksum mismatch".into()));
        }
        let entries: Vec<TensorEntry> = table_bytes
            .chunks_exact(ENTRY_SIZE)
            .map(bytemuck::pod_read_unaligned)
            .collect();
        if entries.len() != meta.tensors.len() {
            return Err(FormatError::Corrupt(format!(
                "tensor table has {} entries, metadata lists {}",
                entries.len(),
                meta.tensors.len()
            )));
        }
        let mut ranges = Vec::with_capacity(entries.len());
        for (i, (e, spec)) in entries.iter().zip(&meta.tensors).enumerate() {
            let what = format!("tensor {i} ({})", spec.name);
            let r = section(&what, e.offset, e.len)?;
            if r.start < data_range.start || r.end > data_range.end {
                return Err(FormatError::Corrupt(format!("{what} lies outside the data section")));
            }
            if r.start % TENSOR_ALIGN != 0 {
                return Err(FormatError::Corrupt(format!(
                    "{what} is not {TENSOR_ALIGN}-byte aligned"
                )));
            }
            if DType::from_code(e.dtype) != Some(spec.dtype) {
                return Err(FormatError::Corrupt(format!(
                    "{what}: dtype code {} disagrees with the metadata",
                    e.dtype
                )));
            }
            if spec.byte_len() != Some(e.len as usize) {
                return Err(FormatError::Corrupt(format!(
                    "{what}: {} bytes, dims {:?} need {:?}",
                    e.len,
                    spec.dims,
                    spec.byte_len()
                )));
            }
            ranges.push(r);
        }
        // The checksums read the whole file (110 MB for the FP32 model): on every core,
        // as the first inference's time is load + run. The first bad tensor in table
        // order is reported, whichever thread finds it.
        // One pass per tensor checks both its bytes and, for float tensors, that every
        // value is finite: the converter refuses non-finite parameters, but a file
        // written otherwise can carry a NaN weight with checksums to match, and a ReLU
        // after it would turn the NaN into 0, an answer instead of an error.
        let problem = ranges
            .par_iter()
            .zip(&entries)
            .enumerate()
            .find_map_first(|(i, (r, e))| {
                let (sum, non_finite) = checksum_and_first_non_finite(meta.tensors[i].dtype, &bytes[r.clone()]);
                if sum != e.checksum {
                    Some((i, "checksum mismatch".to_string()))
                } else {
                    non_finite.map(|at| (i, format!("element {at} is not finite (NaN or infinite)")))
                }
            });
        if let Some((i, what)) = problem {
            return Err(FormatError::Corrupt(format!(
                "tensor {i} ({}): {what}",
                meta.tensors[i].name
            )));
        }
        // The writer lays tensors out one after another; two that share bytes would both
        // pass their checksums and still not be what the converter wrote.
        let mut by_offset: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].len > 0).collect();
        by_offset.sort_by_key(|&i| entries[i].offset);
        for pair in by_offset.windows(2) {
            let (a, b) = (&entries[pair[0]], &entries[pair[1]]);
            // Both ranges were checked to lie inside the file, so the sum cannot overflow.
            if a.offset + a.len > b.offset {
                return Err(FormatError::Corrupt(format!(
                    "tensors {} ({}) and {} ({}) overlap",
                    pair[0], meta.tensors[pair[0]].name, pair[1], meta.tensors[pair[1]].name
                )));
            }
        }
        Ok(QpwFile {
            backing,
            header,
            meta,
            entries,
        })
    }

    /// Raw bytes of tensor `id` (validated at load).
    pub fn tensor_bytes(&self, id: usize) -> Option<&[u8]> {
        let e = self.entries.get(id)?;
        let o = e.offset as usize;
        Some(&self.backing.bytes()[o..o + e.len as usize])
    }

    /// Tensor `id` viewed in place as f32; `None` if it is not an f32 tensor.
    pub fn tensor_f32(&self, id: usize) -> Option<&[f32]> {
        if self.meta.tensors.get(id)?.dtype != DType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.tensor_bytes(id)?).ok()
    }

    /// Tensor `id` viewed in place as raw f16 bits.
    pub fn tensor_u16(&self, id: usize) -> Option<&[u16]> {
        if self.meta.tensors.get(id)?.dtype != DType::F16 {
            return None;
        }
        bytemuck::try_cast_slice(self.tensor_bytes(id)?).ok()
    }

    /// Tensor `id` viewed in place as i8 (INT8 weights).
    pub fn tensor_i8(&self, id: usize) -> Option<&[i8]> {
        if self.meta.tensors.get(id)?.dtype != DType::I8 {
            return None;
        }
        bytemuck::try_cast_slice(self.tensor_bytes(id)?).ok()
    }

    /// Tensor `id` viewed in place as i32 (INT8 biases).
    pub fn tensor_i32(&self, id: usize) -> Option<&[i32]> {
        if self.meta.tensors.get(id)?.dtype != DType::I32 {
            return None;
        }
        bytemuck::try_cast_slice(self.tensor_bytes(id)?).ok()
    }

    /// Address of tensor `id`'s first byte; lets tests prove tensors are read in place.
    pub fn tensor_addr(&self, id: usize) -> Option<usize> {
        self.tensor_bytes(id).map(|b| b.as_ptr() as usize)
    }

    /// The address range of the whole file image.
    pub fn image_range(&self) -> std::ops::Range<usize> {
        let b = self.backing.bytes();
        let s = b.as_ptr() as usize;
        s..s + b.len()
    }
}

/// The checksum of a tensor's bytes and, for f32 and f16 tensors, the index of its first
/// value that is not finite (exponent bits all ones). One pass: each block is scanned
/// right after it is hashed, while it is in cache (a second pass over the 110 MB FP32
/// file took the first inference from 1.5x to 1.8x a steady one).
fn checksum_and_first_non_finite(dtype: DType, bytes: &[u8]) -> (u64, Option<usize>) {
    const BLOCK: usize = 64 << 10;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut first = None;
    for (b, block) in bytes.chunks(BLOCK).enumerate() {
        hasher.update(block);
        if first.is_none() {
            first = first_non_finite(dtype, block).map(|k| b * BLOCK / dtype.size() + k);
        }
    }
    (hasher.digest(), first)
}

/// `checksum_and_first_non_finite`'s scan of one block (a whole number of values).
fn first_non_finite(dtype: DType, block: &[u8]) -> Option<usize> {
    // An OR of comparisons without early exit, on the magnitudes as signed integers:
    // baseline x86-64 (SSE2) compares those 4 or 8 at a time, where a `max` or an
    // `any` stayed scalar (4x slower). The position is looked for only in a block that
    // has one. Tensors are 64-byte aligned in the file, so the casts hold.
    match dtype {
        DType::F32 => {
            let words: &[u32] = bytemuck::try_cast_slice(block).ok()?;
            let bad = |w: u32| (w & 0x7fff_ffff) as i32 > 0x7f7f_ffff;
            let any = words.iter().fold(false, |acc, &w| acc | bad(w));
            any.then(|| words.iter().position(|&w| bad(w)))?
        }
        DType::F16 => {
            let halves: &[u16] = bytemuck::try_cast_slice(block).ok()?;
            let bad = |h: u16| (h & 0x7fff) as i16 > 0x7bff;
            let any = halves.iter().fold(false, |acc, &h| acc | bad(h));
            any.then(|| halves.iter().position(|&h| bad(h)))?
        }
        DType::I8 | DType::U8 | DType::I32 => None,
    }
}
