//! The worker pool kernels run on: one rayon pool per engine, its threads pinned to
//! distinct cores (core_affinity) so a layer's tasks never migrate or oversubscribe.
//! Kernels see it only as a `ParallelFor`.
//!
//! Two choices, measured on 2 cores of a Sapphire Rapids-class Xeon (AVX-512, QualityNet,
//! batch 1): 32.3-34.7 ms with rayon's work stealing entered once per layer, 30.3-31.2 ms
//! with both below.
//! - A whole inference runs inside the pool (`enter`): each layer's `run` then starts from
//!   a worker, about 2 µs, instead of waking the pool from outside, 8-20 µs per layer.
//! - Tasks are split statically, worker `i` taking the `i`-th contiguous share, instead of
//!   being stolen: the same worker gets the same pixels (or channels) of every layer, so
//!   what it wrote stays in its core's caches for the next layer. The Winograd layers,
//!   whose three phases pass scratch between them, gained most (0.74 -> 0.56 ms at 56x56).

use qp_kernels::parallel::ParallelFor;

pub struct PinnedPool {
    pool: rayon::ThreadPool,
    threads: usize,
    pinned: bool,
}

impl PinnedPool {
    pub fn new(threads: usize) -> Result<PinnedPool, String> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        // Pin only when there are enough cores to give each worker its own; otherwise
        // pinning would stack workers on the same core.
        let pin = cores.len() >= threads && std::env::var_os("QP_NO_PIN").is_none();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("qp-worker-{i}"))
            .start_handler(move |i| {
                if pin {
                    core_affinity::set_for_current(cores[i]);
                }
            })
            .build()
            .map_err(|e| format!("starting {threads} worker threads: {e}"))?;
        Ok(PinnedPool {
            pool,
            threads,
            pinned: pin,
        })
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// Runs `f` on one of the pool's workers and returns its result; the `run` calls `f`
    /// makes start from inside the pool.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

impl ParallelFor for PinnedPool {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks <= 1 || self.threads == 1 {
            (0..tasks).for_each(f);
            return;
        }
        self.pool.broadcast(|worker| {
            let (i, n) = (worker.index(), worker.num_threads());
            (i * tasks / n..(i + 1) * tasks / n).for_each(f)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn runs_every_task_once_in_contiguous_shares() {
        let pool = PinnedPool::new(3).unwrap();
        for tasks in [0, 1, 2, 3, 7, 12, 13] {
            let runs: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            let owner = Mutex::new(vec![None; tasks]);
            let body = || {
                pool.run(tasks, &|t| {
                    runs[t].fetch_add(1, Ordering::Relaxed);
                    owner.lock().unwrap()[t] = rayon::current_thread_index();
                })
            };
            // From outside the pool and from inside it (as an inference runs).
            body();
            pool.enter(body);
            assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 2), "tasks {tasks}");
            if tasks > 1 {
                // Each worker's tasks form one contiguous run, in worker order.
                let owner = owner.into_inner().unwrap();
                assert!(owner.windows(2).all(|w| w[0] <= w[1]), "tasks {tasks}: {owner:?}");
            }
        }
    }
}
