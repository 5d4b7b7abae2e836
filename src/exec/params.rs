//! Parameter access for the executors. f32 tensors are read in place from the mapped
//! file; f16 tensors (an `--precision fp16` file: half the size on disk) are widened once,
//! at load, into owned f32 buffers, so the kernels always read f32.

use crate::format::meta::DType;
use crate::format::QpwFile;

pub struct Params {
    widened: Vec<Option<Vec<f32>>>,
}

impl Params {
    /// Widens every f16 tensor of a validated file.
    pub fn new(file: &QpwFile) -> Params {
        let widened = file
            .meta
            .tensors
            .iter()
            .enumerate()
            .map(|(id, spec)| match spec.dtype {
                DType::F16 => {
                    let bits = file.tensor_u16(id).expect("validated: f16 tensor");
                    Some(bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect())
                }
                _ => None,
            })
            .collect();
        Params { widened }
    }

    /// Bytes held on the heap by widened tensors.
    pub fn heap_bytes(&self) -> usize {
        self.widened.iter().flatten().map(|v| v.len() * 4).sum()
    }

    pub fn get<'a>(&'a self, file: &'a QpwFile, id: usize) -> &'a [f32] {
        match &self.widened[id] {
            Some(v) => v,
            None => file.tensor_f32(id).expect("validated: f32 or f16 parameters"),
        }
    }
}
