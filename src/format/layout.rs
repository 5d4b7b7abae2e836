//! The binary frame of a `.qpw` file (spec: docs/FORMAT.md).
//!
//! ```text
//! 0      header (128 bytes, little endian, checksummed)
//! 128    metadata JSON (meta_len bytes)
//! ...    tensor table: tensor_count x TensorEntry (32 bytes each), 8-byte aligned
//! ...    zero padding to the next 4096-byte boundary
//! data   tensors, each starting on a 64-byte boundary
//! ```

use bytemuck::{Pod, Zeroable};

pub const MAGIC: [u8; 8] = *b"QPWMODEL";
/// 2: quantization grids wider than 8 bits (`QuantParams::bits`, values stored as i16)
/// and the paired weight packing of a `qconv` that reads one, which a version-1 reader
/// would misread as u8.
pub const FORMAT_VERSION: u32 = 2;
pub const HEADER_SIZE: usize = std::mem::size_of::<Header>();
/// Every tensor starts on a cache line, so SIMD loads never split one.
pub const TENSOR_ALIGN: usize = 64;
/// The data section starts on a page, so an mmap of the file aligns every tensor.
pub const DATA_ALIGN: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub header_size: u32,
    pub file_len: u64,
    pub meta_offset: u64,
    pub meta_len: u64,
    pub meta_checksum: u64,
    pub table_offset: u64,
    pub tensor_count: u64,
    pub table_checksum: u64,
    pub data_offset: u64,
    pub data_len: u64,
    pub reserved: [u64; 4],
    /// xxh3-64 of the 120 bytes before this field.
    pub header_checksum: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct TensorEntry {
    /// Byte offset from the start of the file.
    pub offset: u64,
    pub len: u64,
    pub dtype: u32,
    pub reserved: u32,
    /// xxh3-64 of the tensor's bytes.
    pub checksum: u64,
}

pub const ENTRY_SIZE: usize = std::mem::size_of::<TensorEntry>();

const _: () = assert!(HEADER_SIZE == 128);
const _: () = assert!(ENTRY_SIZE == 32);

pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

pub fn header_checksum(h: &Header) -> u64 {
    let bytes = bytemuck::bytes_of(h);
    checksum(&bytes[..HEADER_SIZE - 8])
}

pub fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}
