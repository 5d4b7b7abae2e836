//! Weight layouts the kernels read (see `graph::op::PACK_LANES`), produced once at
//! conversion so the engine reads them in place. The layouts are owned by the kernels;
//! this module only adapts them to the converter.

use crate::graph::op::{Window, PACK_LANES};

pub fn padded(n: usize) -> usize {
    n.div_ceil(PACK_LANES) * PACK_LANES
}

/// OIHW -> `[ceil(cout/16)][kh][kw][cin][16]`, zero-padded lanes.
pub fn conv_weights(w: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<f32> {
    qp_kernels::conv::pack_weights_oihw(w, cout, cin, kh, kw)
}

/// 3x3 OIHW -> Winograd `U = G g Gᵀ`, `[ceil(cout/16)][16][cin][16]`, zero-padded lanes.
pub fn winograd_weights(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    qp_kernels::conv::pack_winograd_weights(w, cout, cin)
}

/// Whether a convolution is stored for Winograd F(2x2, 3x3): a 3x3 stride-1 window whose
/// output is at least 8x8. On ResNet-50's 7x7 maps the 2x2 tiles cover 8x8 (31% wasted)
/// and the transformed weights are 16/9 the size, which a batch-1 pass streams from L3:
/// measured single-thread (Zen 3, AVX2) 1.0-1.17x the direct kernel's speed there,
/// against 1.2-1.7x on the 14x14 to 56x56 layers, and converting them too left the whole
/// model's time unchanged (1.006x at batch 1, 1.003x at batch 8, alternating files) for
/// a 13% larger file.
pub fn winograd_pays(window: &Window, out_hw: [usize; 2]) -> bool {
    window.is_winograd_3x3() && out_hw.iter().all(|&e| e >= 8)
}

/// `[out][in]` -> `[ceil(out/16)][in][16]`, zero-padded lanes.
pub fn dense_weights(w: &[f32], out: usize, input: usize) -> Vec<f32> {
    qp_kernels::dense::pack_dense_weights(w, out, input)
}

pub fn bias(b: &[f32]) -> Vec<f32> {
    let mut v = b.to_vec();
    v.resize(padded(b.len()), 0.0);
    v
}
