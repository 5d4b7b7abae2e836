//! Parameter access for the executors. f32 tensors are read in place from the mapped
//! file; f16 tensors (an `--precision fp16` file: half the size on disk) are widened once,
//! at load, into owned f32 buffers, so the kernels always read f32. An f16 file stores
//! its Winograd layers' weights as for the direct kernel (half the bytes of transformed
//! f32 ones); those are transformed here, once, too.

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use rayon::prelude::*;

use crate::exec::arena::Arena;
use crate::format::meta::DType;
use crate::format::QpwFile;
use crate::graph::op::{winograd_weights_direct, Op};

pub struct Params {
    widened: Vec<Option<Widened>>,
}

/// A tensor built at load, on a cache line like the file's tensors (a plain `Vec<f32>` of
/// this size starts 16 bytes past one: see `Arena`).
struct Widened {
    buf: Arena,
    len: usize,
}

impl Widened {
    /// `len` floats that `fill` writes.
    fn filled(len: usize, fill: impl FnOnce(&mut [f32])) -> Widened {
        let mut buf = Arena::default();
        buf.reserve(len);
        fill(&mut buf.as_mut_slice()[..len]);
        Widened { buf, len }
    }

    fn as_slice(&self) -> &[f32] {
        &self.buf.as_slice()[..self.len]
    }
}

impl Params {
    /// Widens every f16 tensor of a validated file and transforms the direct-layout
    /// weights of its Winograd layers.
    pub fn new(file: &QpwFile) -> Params {
        let meta = &file.meta;
        // The Winograd layer reading each tensor as direct weights, if any: (cin, cout).
        let mut transform: Vec<Option<(usize, usize)>> = vec![None; meta.tensors.len()];
        for node in &meta.nodes {
            if let Op::ConvWinograd { cin, cout, .. } = node.op {
                if winograd_weights_direct(&meta.tensors[node.params[0]].dims, cin, cout) {
                    transform[node.params[0]] = Some((cin, cout));
                }
            }
        }
        // One tensor per task on all cores, with F16C, straight into the aligned buffers:
        // this is most of a fresh engine's first inference for an f16 file (on the Zen 1
        // host 3.1x a steady inference when serial, 1.8x now).
        let widened = (0..meta.tensors.len())
            .into_par_iter()
            .map(|id| {
                let f16 = meta.tensors[id].dtype == DType::F16;
                if !f16 && transform[id].is_none() {
                    return None;
                }
                let len = meta.tensors[id].numel();
                // F16C where the CPU has it (the `half` crate detects it at run time).
                let widen = |dst: &mut [f32]| match file.tensor_u16(id) {
                    Some(bits) => bits.reinterpret_cast::<half::f16>().convert_to_f32_slice(dst),
                    None => dst.copy_from_slice(file.tensor_f32(id).expect("validated: f32 or f16 parameters")),
                };
                Some(match transform[id] {
                    Some((cin, cout)) => {
                        let direct = Widened::filled(len, widen);
                        Widened::filled(qp_kernels::conv::winograd_weight_len(cin, cout), |dst| {
                            qp_kernels::conv::pack_winograd_weights_from_direct(direct.as_slice(), cout, cin, dst)
                        })
                    }
                    None => Widened::filled(len, widen),
                })
            })
            .collect();
        Params { widened }
    }

    /// Bytes held on the heap by widened tensors.
    pub fn heap_bytes(&self) -> usize {
        self.widened.iter().flatten().map(|v| v.len * 4).sum()
    }

    pub fn get<'a>(&'a self, file: &'a QpwFile, id: usize) -> &'a [f32] {
        match &self.widened[id] {
            Some(v) => v.as_slice(),
            None => file.tensor_f32(id).expect("validated: f32 or f16 parameters"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::{convert_bytes, ConvertOptions, Precision};

    /// Every tensor built at load starts on a cache line, as the file's own tensors do,
    /// and a Winograd layer's direct f16 weights come out transformed.
    #[test]
    fn widened_tensors_are_aligned_and_transformed() {
        let onnx = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny_bn/model.onnx"
        ))
        .unwrap();
        let options = ConvertOptions {
            precision: Precision::Fp16,
            ..Default::default()
        };
        let bytes = convert_bytes(&onnx, "t", &options).unwrap().to_bytes().unwrap();
        let file = QpwFile::from_bytes(&bytes).unwrap();
        let params = Params::new(&file);
        let mut transformed = 0;
        let built = params.widened.iter().flatten().count();
        assert!(built > 3, "{built} tensors built at load");
        for (id, spec) in file.meta.tensors.iter().enumerate() {
            let values = params.get(&file, id);
            if params.widened[id].is_some() {
                assert_eq!(values.as_ptr() as usize % 64, 0, "{}", spec.name);
            }
            if values.len() != spec.numel() {
                transformed += 1;
                assert_eq!(values.len() * 9, spec.numel() * 16, "{}", spec.name);
            }
        }
        assert_eq!(transformed, 3);
    }
}
