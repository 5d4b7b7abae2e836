//! How kernels run on several threads without owning a pool: the executor passes a
//! `ParallelFor`, and each kernel splits its own output into disjoint tasks, so the
//! disjointness that makes the writes safe is proven inside this crate.

/// Runs `f(0..tasks)`, possibly concurrently; returns when all calls have returned.
pub trait ParallelFor: Sync {
    /// Threads that may run tasks at once (for choosing a task count).
    fn threads(&self) -> usize;
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync));
}

/// Runs every task on the calling thread.
pub struct Serial;

impl ParallelFor for Serial {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(f)
    }
}

/// Splits tasks over three scoped threads, strided: the unit tests' concurrent
/// `ParallelFor`, so task splits are exercised off the calling thread.
#[cfg(test)]
pub(crate) struct ThreeThreads;

#[cfg(test)]
impl ParallelFor for ThreeThreads {
    fn threads(&self) -> usize {
        3
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|s| {
            for t0 in 0..3 {
                s.spawn(move || (t0..tasks).step_by(3).for_each(f));
            }
        });
    }
}
