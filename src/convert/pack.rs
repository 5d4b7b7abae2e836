//! Weight layouts the kernels read (see `graph::op::PACK_LANES`), produced once at
//! conversion so the engine reads them in place. The layouts are owned by the kernels;
//! this module only adapts them to the converter.

use crate::graph::op::PACK_LANES;

pub fn padded(n: usize) -> usize {
    n.div_ceil(PACK_LANES) * PACK_LANES
}

/// OIHW -> `[ceil(cout/16)][kh][kw][cin][16]`, zero-padded lanes.
pub fn conv_weights(w: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<f32> {
    qp_kernels::conv::pack_weights_oihw(w, cout, cin, kh, kw)
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
