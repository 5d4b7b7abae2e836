//! Per-(model, batch) execution planning: checks that the stored graph is runnable, and
//! places every activation in one arena, reusing memory once a value is dead.

pub mod validate;

use qp_kernels::conv::{winograd_scratch_len, ConvGeometry};

use crate::format::ModelMeta;
use crate::graph::op::{Op, Window};

/// Activations start on a 64-byte boundary (16 floats) so SIMD loads never split lines.
const SLOT_ALIGN: usize = 16;

/// Floats in a 4 KiB page.
const PAGE: usize = 1024;

/// The line of a 4 KiB page (of 64) on which value `v` starts: 37 lines on from value
/// `v - 1`'s (37 is odd, so any two values less than 64 ids apart start on different
/// lines).
///
/// Why: the L1 data cache maps addresses 4 KiB apart to the same set, and NHWC rows of
/// 1024 channels are 4 KiB long. The 1x1 layers 256 -> 1024 at 14x14 that add a residual
/// (layer3.1-3.5.conv3) read six residual rows and write six output rows per AVX2 tile;
/// with every slot starting on the same line of a page (as it did), all twelve lines fell
/// in one 8-way set. Zen 1, 2 threads, `bench --cpu-profile`, seven runs each, alternating:
/// those layers took 1.07-1.21x the time of the same blocks' conv1 (as many multiply-adds,
/// no residual), now 1.04-1.06x (69-81% -> 81-85% of the FMA peak on the busier runs, 92%
/// on a quiet one); no other layer moved beyond the noise; the arena grows by 0.02 MB.
fn page_line(v: usize) -> usize {
    v * 37 % 64
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Offset into the arena, in floats.
    pub offset: usize,
    /// Length in f32 words: batch x per-sample elements, a quarter of that (rounded up)
    /// for a u8 value.
    pub len: usize,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub batch: usize,
    /// Indexed by value id; every value of the model has a slot.
    pub slots: Vec<Slot>,
    /// Floats the arena needs: the activations, then the scratch.
    pub arena_len: usize,
    /// Kernel scratch at the arena's end, shared by the nodes that need one (Winograd
    /// convolutions keep their transformed input there); its length is the largest need.
    pub scratch: Slot,
}

impl Plan {
    /// Peak activation memory in bytes.
    pub fn arena_bytes(&self) -> usize {
        self.arena_len * std::mem::size_of::<f32>()
    }

    /// Lays out the activations of a validated model for `batch`. A node's outputs never
    /// share memory with its inputs; a value's memory is reused after its last reader.
    pub fn new(meta: &ModelMeta, batch: usize) -> Plan {
        let nv = meta.values.len();
        // Slots are counted in f32 words; a u8 value packs four elements a word, an i16
        // value two.
        let exact = |v: usize| -> usize {
            let elements = meta.values[v].shape.iter().product::<usize>() * batch;
            match meta.values[v].quant {
                Some(q) => (elements * q.element_bytes()).div_ceil(4),
                None => elements,
            }
        };
        // A value's block: its floats rounded to whole lines, and room to start on any line
        // of a page.
        let size = |v: usize| -> usize { exact(v).div_ceil(SLOT_ALIGN).max(1) * SLOT_ALIGN + PAGE - SLOT_ALIGN };
        // Where value `v` starts in a block at `block` (a whole number of lines).
        let start =
            |v: usize, block: usize| -> usize { block + (page_line(v) * SLOT_ALIGN + PAGE - block % PAGE) % PAGE };
        let mut block = vec![0usize; nv];
        // last_use[v]: index of the last node reading v; outputs live to the end.
        let end = meta.nodes.len();
        let mut last_use = vec![0usize; nv];
        for (i, n) in meta.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last_use[v] = last_use[v].max(i);
            }
        }
        for o in &meta.outputs {
            last_use[o.value] = end;
        }
        let mut slots = vec![Slot { offset: 0, len: 0 }; nv];
        let mut free: Vec<(usize, usize)> = Vec::new(); // (offset, len), kept sorted by offset
        let mut arena_len = 0usize;
        let alloc = |len: usize, free: &mut Vec<(usize, usize)>, arena_len: &mut usize| -> usize {
            // Best fit among free blocks, else grow.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.1 >= len)
                .min_by_key(|(_, b)| b.1)
                .map(|(i, _)| i);
            if let Some(i) = best {
                let (off, blen) = free[i];
                if blen == len {
                    free.remove(i);
                } else {
                    free[i] = (off + len, blen - len);
                }
                off
            } else {
                let off = *arena_len;
                *arena_len += len;
                off
            }
        };
        let release = |off: usize, len: usize, free: &mut Vec<(usize, usize)>| {
            let pos = free.partition_point(|b| b.0 < off);
            free.insert(pos, (off, len));
            // Coalesce neighbours.
            let mut i = pos.saturating_sub(1);
            while i + 1 < free.len() {
                if free[i].0 + free[i].1 == free[i + 1].0 {
                    free[i].1 += free[i + 1].1;
                    free.remove(i + 1);
                } else {
                    i += 1;
                }
            }
        };
        let mut placed = vec![false; nv];
        for inp in &meta.inputs {
            if !placed[inp.value] {
                block[inp.value] = alloc(size(inp.value), &mut free, &mut arena_len);
                slots[inp.value] = Slot {
                    offset: start(inp.value, block[inp.value]),
                    len: exact(inp.value),
                };
                placed[inp.value] = true;
            }
        }
        for (i, n) in meta.nodes.iter().enumerate() {
            for &o in &n.outputs {
                block[o] = alloc(size(o), &mut free, &mut arena_len);
                slots[o] = Slot {
                    offset: start(o, block[o]),
                    len: exact(o),
                };
                placed[o] = true;
            }
            let mut dead: Vec<usize> = n.inputs.iter().copied().filter(|&v| last_use[v] == i).collect();
            dead.sort_unstable();
            dead.dedup();
            for v in dead {
                release(block[v], size(v), &mut free);
            }
        }
        let scratch_len = meta
            .nodes
            .iter()
            .map(|n| scratch_len(meta, n, batch))
            .max()
            .unwrap_or(0);
        let scratch = Slot {
            offset: arena_len,
            len: scratch_len,
        };
        Plan {
            batch,
            slots,
            arena_len: arena_len + scratch_len.div_ceil(SLOT_ALIGN) * SLOT_ALIGN,
            scratch,
        }
    }
}

/// Floats of kernel scratch node `n` needs at `batch`.
fn scratch_len(meta: &ModelMeta, n: &crate::format::meta::NodeSpec, batch: usize) -> usize {
    match &n.op {
        Op::ConvWinograd { cin, cout, window, .. } => {
            let shape = |v: usize| meta.values[v].shape.as_slice();
            winograd_scratch_len(&conv_geometry(
                batch,
                shape(n.inputs[0]),
                shape(n.outputs[0]),
                *cin,
                *cout,
                window,
            ))
        }
        _ => 0,
    }
}

/// The kernel geometry of a convolution from its per-sample shapes `[C, H, W]` in and out.
pub fn conv_geometry(batch: usize, is: &[usize], os: &[usize], cin: usize, cout: usize, w: &Window) -> ConvGeometry {
    ConvGeometry {
        batch,
        in_h: is[1],
        in_w: is[2],
        cin,
        out_h: os[1],
        out_w: os[2],
        cout,
        kernel: w.kernel,
        stride: w.stride,
        dilation: w.dilation,
        pads: w.pads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On residual-block fixtures at batch 1 and 3: values alive at the same time never
    /// share memory, and the values one node reads and writes start on different lines
    /// of a page (`page_line`).
    #[test]
    fn live_values_are_disjoint_and_start_on_different_lines_of_a_page() {
        for fixture in ["basic_block", "feature_model", "tiny_bn"] {
            let meta = crate::convert::direct_fixture(fixture).meta;
            for batch in [1, 3] {
                let plan = Plan::new(&meta, batch);
                let lines = |v: usize| {
                    plan.slots[v].offset.div_ceil(SLOT_ALIGN)
                        ..(plan.slots[v].offset + plan.slots[v].len).div_ceil(SLOT_ALIGN)
                };
                let mut born = vec![usize::MAX; meta.values.len()];
                let mut last_read = vec![0; meta.values.len()];
                for i in &meta.inputs {
                    born[i.value] = 0;
                }
                for (i, n) in meta.nodes.iter().enumerate() {
                    n.inputs.iter().for_each(|&v| last_read[v] = i);
                    n.outputs.iter().for_each(|&v| born[v] = i);
                    let touched: Vec<usize> = n.inputs.iter().chain(&n.outputs).copied().collect();
                    for (a, &u) in touched.iter().enumerate() {
                        for &v in &touched[a + 1..] {
                            let line = |v: usize| plan.slots[v].offset / SLOT_ALIGN % 64;
                            assert!(u == v || line(u) != line(v), "{fixture}: {} values {u} and {v}", n.name);
                        }
                    }
                }
                for o in &meta.outputs {
                    last_read[o.value] = meta.nodes.len();
                }
                for u in 0..meta.values.len() {
                    assert!(plan.slots[u].offset + plan.slots[u].len <= plan.scratch.offset);
                    for v in u + 1..meta.values.len() {
                        let overlap_in_time = born[u] <= last_read[v] && born[v] <= last_read[u];
                        let (a, b) = (lines(u), lines(v));
                        let overlap_in_memory = a.start < b.end && b.start < a.end;
                        assert!(
                            !(overlap_in_time && overlap_in_memory),
                            "{fixture} batch {batch}: values {u} and {v}"
                        );
                    }
                }
            }
        }
    }
}
