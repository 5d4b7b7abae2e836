//! Helpers shared by the `ops_*` kernel tests.
#![allow(dead_code)]

use qp_kernels::parallel::ParallelFor;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Deterministic values in [-1, 1) from a seed (xorshift), so proptest only has to shrink
/// shapes and a seed rather than long vectors.
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Real threads from `std::thread::scope`, tasks handed out through an atomic counter.
pub struct ScopedThreads(pub usize);

impl ParallelFor for ScopedThreads {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.0 {
                s.spawn(|| loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= tasks {
                        break;
                    }
                    f(t);
                });
            }
        });
    }
}

/// Index and values of the worst element, or None when every pair is within
/// `abs + rel * |expected|`.
pub fn first_mismatch(got: &[f32], expected: &[f32], abs: f32, rel: f32) -> Option<(usize, f32, f32)> {
    assert_eq!(got.len(), expected.len(), "length mismatch");
    got.iter().zip(expected).enumerate().find_map(|(i, (&g, &e))| {
        let ok = (g.is_nan() && e.is_nan()) || (g - e).abs() <= abs + rel * e.abs();
        (!ok).then_some((i, g, e))
    })
}
