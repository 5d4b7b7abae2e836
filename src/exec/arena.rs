//! The activation arena: its memory, aligned so the planner's slot alignment holds in
//! memory, and safe split borrows of it: one node's output slot mutably, its input slots
//! shared. The planner guarantees a node's output never overlaps its inputs; this module
//! checks it rather than trusting it.

use crate::plan::Slot;

/// Bytes the arena's first float is aligned to: one cache line, the planner's slot unit.
const ARENA_ALIGN: usize = 64;

/// Activation memory whose first float lies on a 64-byte boundary. A plain `Vec<f32>` of
/// this size comes from `mmap` 16 bytes past a page start, which put every activation 16
/// bytes off its line: each AVX-512 access of a slot straddled two lines, and tasks that
/// split a layer's channels wrote into each other's boundary lines.
#[derive(Default)]
pub struct Arena {
    buf: Vec<f32>,
    start: usize,
}

impl Arena {
    /// Makes at least `len` floats usable; what they held is not kept when it grows.
    pub fn reserve(&mut self, len: usize) {
        if self.as_slice().len() >= len {
            return;
        }
        let spare = ARENA_ALIGN / std::mem::size_of::<f32>();
        self.buf = vec![0.0; len + spare];
        // `align_offset` can answer "never"; then the arena stays as allocated.
        self.start = self.buf.as_ptr().align_offset(ARENA_ALIGN).min(spare);
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..]
    }
}

pub fn split_io<'a>(arena: &'a mut [f32], out: &Slot, ins: &[&Slot]) -> (&'a mut [f32], Vec<&'a [f32]>) {
    let (o0, o1) = (out.offset, out.offset + out.len);
    for s in ins {
        assert!(
            s.offset + s.len <= o0 || s.offset >= o1,
            "planner bug: an input overlaps the output"
        );
    }
    let (before, rest) = arena.split_at_mut(o0);
    let (output, after) = rest.split_at_mut(out.len);
    let before: &'a [f32] = before;
    let after: &'a [f32] = after;
    let inputs = ins
        .iter()
        .map(|s| {
            if s.offset + s.len <= o0 {
                &before[s.offset..s.offset + s.len]
            } else {
                let start = s.offset - o1;
                &after[start..start + s.len]
            }
        })
        .collect();
    (output, inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_starts_on_a_cache_line_and_grows() {
        let mut arena = Arena::default();
        for len in [1, 1000, 3 << 20, 10] {
            arena.reserve(len);
            assert!(arena.as_slice().len() >= len);
            assert_eq!(arena.as_slice().as_ptr() as usize % ARENA_ALIGN, 0, "len {len}");
        }
    }
}
