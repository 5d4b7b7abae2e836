//! A least-recently-used cache of per-sample model outputs, bounded both in entries and in
//! bytes, keyed by a 128-bit hash of the model name and the exact f32 input bits.

use std::collections::{BTreeMap, HashMap};

use xxhash_rust::xxh3::Xxh3;

/// Outputs of one sample, one `Vec` per model output.
pub type SampleOutputs = Vec<Vec<f32>>;

/// Accounting overhead per entry (key, map slots, vectors' headers), so a cache of many
/// tiny entries still respects the byte bound.
const ENTRY_OVERHEAD_BYTES: usize = 96;

pub fn cache_key(model: &str, inputs: &[Vec<f32>]) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(&(model.len() as u64).to_le_bytes());
    hasher.update(model.as_bytes());
    for input in inputs {
        hasher.update(&(input.len() as u64).to_le_bytes());
        for v in input {
            hasher.update(&v.to_bits().to_le_bytes());
        }
    }
    hasher.digest128()
}

struct Entry {
    outputs: SampleOutputs,
    bytes: usize,
    tick: u64,
}

pub struct ResponseCache {
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
    entries: HashMap<u128, Entry>,
    /// Recency order: oldest tick first.
    order: BTreeMap<u64, u128>,
}

impl ResponseCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> ResponseCache {
        ResponseCache {
            max_entries,
            max_bytes,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.max_entries > 0 && self.max_bytes > 0
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn get(&mut self, key: u128) -> Option<SampleOutputs> {
        self.clock += 1;
        let entry = self.entries.get_mut(&key)?;
        self.order.remove(&entry.tick);
        entry.tick = self.clock;
        self.order.insert(self.clock, key);
        Some(entry.outputs.clone())
    }

    pub fn insert(&mut self, key: u128, outputs: SampleOutputs) {
        let bytes = ENTRY_OVERHEAD_BYTES
            + outputs
                .iter()
                .map(|o| o.len() * 4 + std::mem::size_of::<Vec<f32>>())
                .sum::<usize>();
        if !self.is_enabled() || bytes > self.max_bytes {
            return;
        }
        self.remove(key);
        while !self.entries.is_empty()
            && (self.entries.len() >= self.max_entries || self.bytes + bytes > self.max_bytes)
        {
            let (_, oldest) = self.order.pop_first().expect("order tracks every entry");
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
        self.clock += 1;
        self.order.insert(self.clock, key);
        self.entries.insert(
            key,
            Entry {
                outputs,
                bytes,
                tick: self.clock,
            },
        );
        self.bytes += bytes;
    }

    fn remove(&mut self, key: u128) {
        if let Some(e) = self.entries.remove(&key) {
            self.order.remove(&e.tick);
            self.bytes -= e.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_model_and_exact_bits() {
        let a = cache_key("m", &[vec![0.0, 1.0]]);
        assert_eq!(a, cache_key("m", &[vec![0.0, 1.0]]));
        assert_ne!(a, cache_key("n", &[vec![0.0, 1.0]]));
        assert_ne!(a, cache_key("m", &[vec![-0.0, 1.0]]));
        assert_ne!(a, cache_key("m", &[vec![0.0], vec![1.0]]));
    }

    #[test]
    fn evicts_least_recently_used_by_count() {
        let mut c = ResponseCache::new(2, 1 << 20);
        c.insert(1, vec![vec![1.0]]);
        c.insert(2, vec![vec![2.0]]);
        assert!(c.get(1).is_some()); // 2 is now the oldest
        c.insert(3, vec![vec![3.0]]);
        assert_eq!(c.len(), 2);
        assert!(c.get(2).is_none());
        assert_eq!(c.get(1), Some(vec![vec![1.0]]));
        assert_eq!(c.get(3), Some(vec![vec![3.0]]));
    }

    #[test]
    fn evicts_by_bytes_and_refuses_oversized_entries() {
        let entry = |n: usize| vec![vec![0.5f32; n]];
        let one = ENTRY_OVERHEAD_BYTES + 100 * 4 + std::mem::size_of::<Vec<f32>>();
        let mut c = ResponseCache::new(100, 2 * one + one / 2);
        c.insert(1, entry(100));
        c.insert(2, entry(100));
        assert_eq!(c.bytes(), 2 * one);
        c.insert(3, entry(100));
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= c.max_bytes());
        assert!(c.get(1).is_none());
        c.insert(4, entry(10_000));
        assert!(c.get(4).is_none());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn reinserting_a_key_does_not_double_count() {
        let mut c = ResponseCache::new(10, 1 << 20);
        c.insert(7, vec![vec![1.0; 4]]);
        let b = c.bytes();
        c.insert(7, vec![vec![1.0; 4]]);
        assert_eq!((c.len(), c.bytes()), (1, b));
    }

    #[test]
    fn disabled_cache_stores_nothing() {
        let mut c = ResponseCache::new(0, 1 << 20);
        c.insert(1, vec![vec![1.0]]);
        assert_eq!(c.len(), 0);
    }
}
