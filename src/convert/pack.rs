//! Weight layouts the kernels read (see `graph::op::PACK_LANES`), produced once at
//! conversion so the engine reads them in place.

use crate::graph::op::PACK_LANES;

pub fn padded(n: usize) -> usize {
    n.div_ceil(PACK_LANES) * PACK_LANES
}

/// OIHW -> `[ceil(cout/16)][kh][kw][cin][16]`, zero-padded lanes.
pub fn conv_weights(w: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> Vec<f32> {
    assert_eq!(w.len(), cout * cin * kh * kw, "conv weight size");
    let blocks = cout.div_ceil(PACK_LANES);
    let mut out = vec![0f32; blocks * kh * kw * cin * PACK_LANES];
    for o in 0..cout {
        let (b, lane) = (o / PACK_LANES, o % PACK_LANES);
        for c in 0..cin {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((o * cin + c) * kh + y) * kw + x;
                    let dst = (((b * kh + y) * kw + x) * cin + c) * PACK_LANES + lane;
                    out[dst] = w[src];
                }
            }
        }
    }
    out
}

/// `[out][in]` -> `[ceil(out/16)][in][16]`, zero-padded lanes.
pub fn dense_weights(w: &[f32], out: usize, input: usize) -> Vec<f32> {
    conv_weights(w, out, input, 1, 1)
}

pub fn bias(b: &[f32]) -> Vec<f32> {
    let mut v = b.to_vec();
    v.resize(padded(b.len()), 0.0);
    v
}
