//! The worker pool kernels run on: threads pinned to distinct cores (core_affinity), so
//! a layer's tasks never migrate or oversubscribe. Kernels see it only as a
//! `ParallelFor`.
//!
//! Three choices, measured on 2 cores of a Sapphire Rapids-class Xeon (AVX-512,
//! QualityNet, batch 1):
//! - A whole inference runs on the pool's first thread (`enter`, a one-thread rayon pool):
//!   each layer's `run` then starts from a pinned thread instead of waking the pool from
//!   outside, 8-20 µs per layer (32.3-34.7 ms -> 30.3-31.2 ms with the next choice).
//! - Tasks are split statically, thread `i` taking the `i`-th contiguous share: the same
//!   thread gets the same pixels (or channels) of every layer, so what it wrote stays in
//!   its core's caches for the next layer. The Winograd layers, whose three phases pass
//!   scratch between them, gained most (0.74 -> 0.56 ms at 56x56).
//! - The other threads wait for the next layer by spinning (`qp_kernels::parallel::
//!   SpinTeam`), not on a futex: rayon's `broadcast` left 10-75 µs per layer between the
//!   last task's end and the next layer's start (waking the sleeping worker, then the
//!   waiting caller), 0.7-1.1 ms of a 10 ms INT8 inference and 2.1-2.5 ms of a 29 ms FP32
//!   one.

use qp_kernels::parallel::{ParallelFor, SpinTeam};

pub struct PinnedPool {
    /// Runs entered closures: the thread that calls `team.run` in an inference.
    entry: rayon::ThreadPool,
    team: SpinTeam,
    pinned: bool,
}

impl PinnedPool {
    pub fn new(threads: usize) -> Result<PinnedPool, String> {
        let threads = threads.max(1);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        // Pin only when there are enough cores to give each thread its own; otherwise
        // pinning would stack threads on the same core.
        let pin = cores.len() >= threads && std::env::var_os("QP_NO_PIN").is_none();
        let first_core = cores.first().copied();
        let entry = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "qp-worker-0".to_string())
            .start_handler(move |_| {
                if let (true, Some(core)) = (pin, first_core) {
                    core_affinity::set_for_current(core);
                }
            })
            .build()
            .map_err(|e| format!("starting the entry thread: {e}"))?;
        let team = SpinTeam::new(threads - 1, move |i| {
            if pin {
                core_affinity::set_for_current(cores[i]);
            }
        })
        .map_err(|e| format!("starting {} helper threads: {e}", threads - 1))?;
        Ok(PinnedPool {
            entry,
            team,
            pinned: pin,
        })
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// Runs `f` on the pool's first thread and returns its result; the `run` calls `f`
    /// makes start there, with the helpers.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.entry.install(f)
    }
}

impl ParallelFor for PinnedPool {
    fn threads(&self) -> usize {
        self.team.parties()
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.team.run(tasks, f)
    }

    fn take_fp_exceptions(&self) -> qp_kernels::fpstatus::FpExceptions {
        self.team.take_fp_exceptions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn entered_closures_run_on_the_first_thread() {
        let pool = PinnedPool::new(2).unwrap();
        let name = pool.enter(|| std::thread::current().name().map(str::to_string));
        assert_eq!(name.as_deref(), Some("qp-worker-0"));
    }

    #[test]
    fn runs_every_task_once_from_outside_and_inside() {
        // Which thread runs which task is not fixed (a thread done with its share takes
        // the others' unstarted tasks); that each runs exactly once is.
        let pool = PinnedPool::new(3).unwrap();
        for tasks in [0, 1, 2, 3, 7, 12, 13] {
            let runs: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            let body = || {
                pool.run(tasks, &|t| {
                    runs[t].fetch_add(1, Ordering::Relaxed);
                })
            };
            // From outside the pool and from inside it (as an inference runs).
            body();
            pool.enter(body);
            assert!(runs.iter().all(|r| r.load(Ordering::Relaxed) == 2), "tasks {tasks}");
        }
    }
}
