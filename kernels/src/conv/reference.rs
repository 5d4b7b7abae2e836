//! The scalar oracle: direct loops over the definition, no tiling, no unsafe.

use std::ops::Range;

use super::{Job, Tiling, PANEL};

/// One pixel per task unit and every channel in one unit: tasks split pixels only.
pub(super) struct ReferenceTiles;

impl Tiling for ReferenceTiles {
    const PIXELS: usize = 1;
    const PANELS: usize = usize::MAX;
}

/// Computes output pixels `px` (flattened over batch, rows, columns), all channels, into
/// `out` (`px.len() * cout` floats).
pub(super) fn conv_pixels(job: &Job, px: Range<usize>, out: &mut [f32]) {
    let g = job.g;
    let [kh_n, kw_n] = g.kernel;
    let weight_index = |co: usize, kh: usize, kw: usize, ci: usize| {
        ((((co / PANEL) * kh_n + kh) * kw_n + kw) * g.cin + ci) * PANEL + co % PANEL
    };
    for (q, out_px) in px.zip(out.chunks_exact_mut(g.cout)) {
        let n = q / (g.out_h * g.out_w);
        let oh = q / g.out_w % g.out_h;
        let ow = q % g.out_w;
        for (co, y) in out_px.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for kh in 0..kh_n {
                // Input row of this tap, or None when it falls in the padding.
                let ih = (oh * g.stride[0] + kh * g.dilation[0]).checked_sub(g.pads[0]);
                let Some(ih) = ih.filter(|&ih| ih < g.in_h) else {
                    continue;
                };
                for kw in 0..kw_n {
                    let iw = (ow * g.stride[1] + kw * g.dilation[1]).checked_sub(g.pads[1]);
                    let Some(iw) = iw.filter(|&iw| iw < g.in_w) else {
                        continue;
                    };
                    let pixel = ((n * g.in_h + ih) * g.in_w + iw) * g.cin;
                    for ci in 0..g.cin {
                        acc += job.input[pixel + ci] * job.weights[weight_index(co, kh, kw, ci)];
                    }
                }
            }
            let mut v = acc + job.bias[co];
            if let Some(r) = job.residual {
                v += r[q * g.cout + co];
            }
            *y = if job.relu { v.max(0.0) } else { v };
        }
    }
}
