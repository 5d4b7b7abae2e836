//! Per-(model, batch) execution planning: checks that the stored graph is runnable, and
//! places every activation in one arena, reusing memory once a value is dead.

pub mod validate;

use qp_kernels::conv::{winograd_scratch_len, ConvGeometry};

use crate::format::ModelMeta;
use crate::graph::op::{Op, Window};

/// Activations start on a 64-byte boundary (16 floats) so SIMD loads never split lines.
const SLOT_ALIGN: usize = 16;

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
        // Slots are counted in f32 words; a u8 value packs four elements a word.
        let exact = |v: usize| -> usize {
            let elements = meta.values[v].shape.iter().product::<usize>() * batch;
            match meta.values[v].quant {
                Some(_) => elements.div_ceil(4),
                None => elements,
            }
        };
        let size = |v: usize| -> usize { exact(v).div_ceil(SLOT_ALIGN).max(1) * SLOT_ALIGN };
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
                let off = alloc(size(inp.value), &mut free, &mut arena_len);
                slots[inp.value] = Slot {
                    offset: off,
                    len: exact(inp.value),
                };
                placed[inp.value] = true;
            }
        }
        for (i, n) in meta.nodes.iter().enumerate() {
            for &o in &n.outputs {
                let off = alloc(size(o), &mut free, &mut arena_len);
                slots[o] = Slot {
                    offset: off,
                    len: exact(o),
                };
                placed[o] = true;
            }
            let mut dead: Vec<usize> = n.inputs.iter().copied().filter(|&v| last_use[v] == i).collect();
            dead.sort_unstable();
            dead.dedup();
            for v in dead {
                release(slots[v].offset, size(v), &mut free);
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
