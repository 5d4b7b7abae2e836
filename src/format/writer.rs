//! Serializes a converted model into the `.qpw` byte layout.

use std::io::Write;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::layout::*;
use super::meta::ModelMeta;

/// Tensor bytes to write, in `meta.tensors` order.
pub struct TensorBytes<'a> {
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// Builds the complete file in memory (models are at most a few hundred MB).
pub fn to_bytes(meta: &ModelMeta, tensors: &[TensorBytes<'_>]) -> Result<Vec<u8>> {
    ensure!(
        meta.tensors.len() == tensors.len(),
        "metadata lists {} tensors but {} were given",
        meta.tensors.len(),
        tensors.len()
    );
    let meta_json = serde_json::to_vec(meta).context("serializing metadata")?;
    let meta_offset = HEADER_SIZE;
    let table_offset = align_up(meta_offset + meta_json.len(), 8);
    let table_len = tensors.len() * ENTRY_SIZE;
    let data_offset = align_up(table_offset + table_len, DATA_ALIGN);

    let mut entries = Vec::with_capacity(tensors.len());
    let mut cursor = data_offset;
    for (spec, t) in meta.tensors.iter().zip(tensors) {
        ensure!(
            spec.byte_len() == Some(t.bytes.len()),
            "tensor {} is {} bytes, its spec says {:?}",
            spec.name,
            t.bytes.len(),
            spec.byte_len()
        );
        cursor = align_up(cursor, TENSOR_ALIGN);
        entries.push(TensorEntry {
            offset: cursor as u64,
            len: t.bytes.len() as u64,
            dtype: spec.dtype.code(),
            reserved: 0,
            checksum: checksum(&t.bytes),
        });
        cursor += t.bytes.len();
    }
    let file_len = align_up(cursor, TENSOR_ALIGN);

    let mut out = vec![0u8; file_len];
    out[meta_offset..meta_offset + meta_json.len()].copy_from_slice(&meta_json);
    let table_bytes: &[u8] = bytemuck::cast_slice(&entries);
    out[table_offset..table_offset + table_len].copy_from_slice(table_bytes);
    for (e, t) in entries.iter().zip(tensors) {
        let o = e.offset as usize;
        out[o..o + t.bytes.len()].copy_from_slice(&t.bytes);
    }
    let mut header = Header {
        magic: MAGIC,
        version: FORMAT_VERSION,
        header_size: HEADER_SIZE as u32,
        file_len: file_len as u64,
        meta_offset: meta_offset as u64,
        meta_len: meta_json.len() as u64,
        meta_checksum: checksum(&meta_json),
        table_offset: table_offset as u64,
        tensor_count: entries.len() as u64,
        table_checksum: checksum(table_bytes),
        data_offset: data_offset as u64,
        data_len: (file_len - data_offset) as u64,
        reserved: [0; 4],
        header_checksum: 0,
    };
    header.header_checksum = header_checksum(&header);
    out[..HEADER_SIZE].copy_from_slice(bytemuck::bytes_of(&header));
    Ok(out)
}

/// Writes atomically: a temporary file beside the target, then a rename, so a crash never
/// leaves a half-written model under the final name.
pub fn write_file(path: &Path, meta: &ModelMeta, tensors: &[TensorBytes<'_>]) -> Result<u64> {
    let bytes = to_bytes(meta, tensors)?;
    let tmp = path.with_extension("qpw.tmp");
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(bytes.len() as u64)
}
