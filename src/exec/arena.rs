//! Safe split borrows of the activation arena: one node's output slot mutably, its input
//! slots shared. The planner guarantees a node's output never overlaps its inputs; this
//! module checks it rather than trusting it.

use crate::plan::Slot;

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
