//! The worker pool kernels run on: one rayon pool per engine, its threads pinned to
//! distinct cores (core_affinity) so a layer's tasks never migrate or oversubscribe.
//! Kernels see it only as a `ParallelFor`.

use qp_kernels::parallel::ParallelFor;
use rayon::prelude::*;

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
        self.pool
            .install(|| (0..tasks).into_par_iter().with_max_len(1).for_each(f));
    }
}
