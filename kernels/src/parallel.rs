//! How kernels run on several threads without owning a pool: the executor passes a
//! `ParallelFor`, and each kernel splits its own output into disjoint tasks, so the
//! disjointness that makes the writes safe is proven inside this crate.

use crate::fpstatus::{self, FpExceptions};

/// Runs `f(0..tasks)`, possibly concurrently; returns when all calls have returned.
pub trait ParallelFor: Sync {
    /// Threads that may run tasks at once (for choosing a task count).
    fn threads(&self) -> usize;
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync));
    /// The floating-point exception flags raised by the tasks run since the last call
    /// (see `fpstatus`), and clears them. Called between jobs, on the thread that calls
    /// `run`. The default reads the calling thread's only, which is right for
    /// implementations that run every task there.
    fn take_fp_exceptions(&self) -> FpExceptions {
        fpstatus::take()
    }
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

/// Helper threads that run `ParallelFor` jobs together with the calling thread, and wait
/// for the next job by spinning before they sleep.
///
/// Why not rayon's `broadcast`: its idle workers sleep on a futex, and on the KVM guests
/// qp is measured on, waking one (and the caller, waiting for the last task) took 10-75
/// µs per layer: about 0.7-1.1 ms of a 10 ms INT8 inference and 2.1-2.5 ms of a 29 ms
/// FP32 one, on 2 cores. Layers follow each other within microseconds, so a helper that
/// spins a little after each job is already waiting when the next one comes; one that saw
/// no job for `SPIN` parks, and the next job wakes it.
///
/// Helper `i` (1..=helpers) starts on the `i`-th contiguous share of the tasks and the
/// caller on the 0-th, every job, so each thread keeps the same pixels or channels from
/// layer to layer. A thread done with its share takes the tasks other threads have not
/// started yet, so a core that was interrupted or got the costlier tasks does not hold
/// the job up: with a busy process sharing 2 cores, FP32 batch 1 took 93-102 ms with
/// fixed shares and 90-94 ms with this (medians of three alternating rounds); on idle
/// cores the two are the same. A job started while another runs (a nested or concurrent `run`) runs serially
/// on its caller. A panicking task is caught, the job completes, and the panic resumes on
/// the caller.
pub struct SpinTeam {
    shared: std::sync::Arc<TeamShared>,
    helpers: Vec<std::thread::JoinHandle<()>>,
}

/// How long a helper spins for the next job before it parks.
const SPIN: std::time::Duration = std::time::Duration::from_millis(1);
/// How long it spins with `spin_loop` before it yields its core between checks (when
/// threads outnumber cores, a spinner must not hold up the thread it waits for).
const SPIN_HOT: std::time::Duration = std::time::Duration::from_micros(50);

/// An atomic on a cache line of its own, so claims on one share do not slow another's.
#[repr(align(128))]
struct Padded(std::sync::atomic::AtomicUsize);

#[derive(Clone, Copy)]
struct JobRef {
    f: *const (dyn Fn(usize) + Sync + 'static),
    tasks: usize,
}

// safety: the pointer is only dereferenced by helpers while the `run` call that stored
// it waits for them (see `SpinTeam::run`), and the closure it points to is `Sync`.
unsafe impl Send for JobRef {}

struct TeamShared {
    parties: usize,
    /// Incremented once per job; helpers wait for it to change.
    epoch: std::sync::atomic::AtomicU64,
    job: std::sync::Mutex<Option<JobRef>>,
    /// Helpers done with the current job.
    done: std::sync::atomic::AtomicUsize,
    /// A job is in flight (set by the `run` that owns it).
    busy: std::sync::atomic::AtomicBool,
    panicked: std::sync::atomic::AtomicBool,
    shutdown: std::sync::atomic::AtomicBool,
    sleepers: std::sync::atomic::AtomicUsize,
    /// Per party, the next unclaimed task of its share (claimed by `fetch_add`, by the
    /// owner or by a thread done with its own share).
    cursors: Box<[Padded]>,
    /// Floating-point exception flags the helpers raised since the caller last took them.
    fp_exceptions: std::sync::atomic::AtomicU32,
    park: std::sync::Mutex<()>,
    wake: std::sync::Condvar,
}

impl SpinTeam {
    /// A team of `helpers` threads besides the caller; each runs `on_start(i)` first
    /// (`i` in 1..=helpers), e.g. to pin itself to a core.
    pub fn new(helpers: usize, on_start: impl Fn(usize) + Send + Sync + 'static) -> std::io::Result<SpinTeam> {
        use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
        let shared = std::sync::Arc::new(TeamShared {
            parties: helpers + 1,
            epoch: AtomicU64::new(0),
            job: std::sync::Mutex::new(None),
            done: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            cursors: (0..=helpers).map(|_| Padded(AtomicUsize::new(0))).collect(),
            fp_exceptions: AtomicU32::new(0),
            park: std::sync::Mutex::new(()),
            wake: std::sync::Condvar::new(),
        });
        let on_start = std::sync::Arc::new(on_start);
        let mut team = SpinTeam {
            shared,
            helpers: Vec::with_capacity(helpers),
        };
        for i in 1..=helpers {
            let (shared, on_start) = (team.shared.clone(), on_start.clone());
            let handle = std::thread::Builder::new()
                .name(format!("qp-helper-{i}"))
                .spawn(move || {
                    // A failed start hook (say, pinning) must not lose the helper: every
                    // job waits for all of them.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_start(i)));
                    // A new thread starts with its creator's floating-point flags; they
                    // are not this team's.
                    fpstatus::take();
                    helper_loop(&shared, i);
                })?;
            team.helpers.push(handle);
        }
        Ok(team)
    }

    /// Threads that run a job's tasks: the helpers and the caller.
    pub fn parties(&self) -> usize {
        self.shared.parties
    }

    /// Runs `f(0..tasks)` on the caller and the helpers; returns when all calls have.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
        let shared = &*self.shared;
        let n = shared.parties;
        if tasks <= 1 || n == 1 || shared.busy.swap(true, Acquire) {
            (0..tasks).for_each(f);
            return;
        }
        // safety: only the lifetime is erased. Helpers dereference the pointer between
        // seeing the epoch below and incrementing `done`, and this call does not return
        // (or unwind) before `done` counts every helper, so `f` outlives every use.
        let erased: &'static (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        *lock(&shared.job) = Some(JobRef { f: erased, tasks });
        for (i, cursor) in shared.cursors.iter().enumerate() {
            cursor.0.store(share(i, n, tasks).start, Relaxed);
        }
        shared.done.store(0, Relaxed);
        // SeqCst with the helpers' `sleepers` increment and epoch check: either this
        // sees the sleeper and wakes it, or the sleeper sees the new epoch.
        shared.epoch.fetch_add(1, SeqCst);
        if shared.sleepers.load(SeqCst) > 0 {
            let _guard = lock(&shared.park);
            shared.wake.notify_all();
        }
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claim_and_run(shared, 0, tasks, f)));
        wait_for(|| shared.done.load(Acquire) == n - 1);
        *lock(&shared.job) = None;
        let helper_panicked = shared.panicked.swap(false, Relaxed);
        shared.busy.store(false, Release);
        if let Err(payload) = own {
            std::panic::resume_unwind(payload);
        }
        assert!(!helper_panicked, "a parallel task panicked on a helper thread");
    }
}

impl Drop for SpinTeam {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
        {
            let _guard = lock(&self.shared.park);
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Tasks of party `i` of `n`: the `i`-th contiguous share.
fn share(i: usize, n: usize, tasks: usize) -> std::ops::Range<usize> {
    i * tasks / n..(i + 1) * tasks / n
}

/// Runs party `me`'s share of the tasks, then what is left of the others' shares, each
/// task claimed from its share's cursor so every task runs exactly once.
fn claim_and_run(shared: &TeamShared, me: usize, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let n = shared.parties;
    for party in (me..n).chain(0..me) {
        let end = share(party, n, tasks).end;
        let cursor = &shared.cursors[party].0;
        // A cursor past `end` stays past it: each claim only moves it further.
        while cursor.load(std::sync::atomic::Ordering::Relaxed) < end {
            let t = cursor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if t >= end {
                break;
            }
            f(t);
        }
    }
}

/// A poisoned lock only means a panic elsewhere; the data (a job slot) stays valid.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spins until `ready()`, yielding the core once the wait passes `SPIN_HOT`.
fn wait_for(ready: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    let mut polls = 0u32;
    while !ready() {
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(64) && start.elapsed() > SPIN_HOT {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn helper_loop(shared: &TeamShared, i: usize) {
    use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
    // The epoch the team started with, not the current one: a job may have been
    // published before this thread got to run.
    let mut seen = 0;
    loop {
        let start = std::time::Instant::now();
        let mut polls = 0u32;
        loop {
            if shared.shutdown.load(Relaxed) {
                return;
            }
            let epoch = shared.epoch.load(Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited < SPIN_HOT {
                std::hint::spin_loop();
            } else if waited < SPIN {
                std::thread::yield_now();
            } else {
                let mut guard = lock(&shared.park);
                shared.sleepers.fetch_add(1, SeqCst);
                while shared.epoch.load(SeqCst) == seen && !shared.shutdown.load(SeqCst) {
                    guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                shared.sleepers.fetch_sub(1, SeqCst);
            }
        }
        let job = *lock(&shared.job);
        if let Some(job) = job {
            // safety: `run` stored this pointer for the epoch just seen and waits for
            // this helper's `done` before the closure goes out of scope.
            let f = unsafe { &*job.f };
            let run = || claim_and_run(shared, i, job.tasks, f);
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                shared.panicked.store(true, Relaxed);
            }
            // Published by the `done` increment's release, before the caller can read it.
            let raised = fpstatus::take();
            if !raised.is_empty() {
                shared.fp_exceptions.fetch_or(raised.bits(), Relaxed);
            }
        }
        shared.done.fetch_add(1, Release);
    }
}

impl ParallelFor for SpinTeam {
    fn threads(&self) -> usize {
        self.parties()
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        SpinTeam::run(self, tasks, f)
    }
    /// The caller's flags and those every helper raised in the jobs since the last call.
    fn take_fp_exceptions(&self) -> FpExceptions {
        let helpers = self.shared.fp_exceptions.swap(0, std::sync::atomic::Ordering::Relaxed);
        fpstatus::take().union(FpExceptions::from_bits(helpers))
    }
}

#[cfg(test)]
mod spin_team_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counts(team: &SpinTeam, tasks: usize) -> Vec<usize> {
        let runs: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
        team.run(tasks, &|t| {
            runs[t].fetch_add(1, Ordering::Relaxed);
        });
        runs.iter().map(|r| r.load(Ordering::Relaxed)).collect()
    }

    #[test]
    fn every_task_runs_once_before_run_returns() {
        let team = SpinTeam::new(3, |_| {}).unwrap();
        for tasks in [0, 1, 2, 3, 4, 5, 17, 100] {
            assert!(counts(&team, tasks).iter().all(|&c| c == 1), "tasks {tasks}");
        }
    }

    #[test]
    fn parked_helpers_wake_for_the_next_job() {
        let team = SpinTeam::new(2, |_| {}).unwrap();
        for _ in 0..3 {
            std::thread::sleep(SPIN * 5);
            // `run` returns only once every helper has seen the job.
            assert!(counts(&team, 6).iter().all(|&c| c == 1));
        }
    }

    #[test]
    fn a_thread_done_with_its_share_takes_the_tasks_another_has_not_started() {
        let team = SpinTeam::new(2, |_| {}).unwrap();
        // Tasks 0 and 1 are the caller's share; task 0 waits for task 1, so only another
        // thread can run task 1.
        let task1_ran = std::sync::atomic::AtomicBool::new(false);
        team.run(6, &|t| match t {
            0 => {
                let start = std::time::Instant::now();
                while !task1_ran.load(Ordering::Acquire) {
                    assert!(
                        start.elapsed() < std::time::Duration::from_secs(10),
                        "task 1 was not taken"
                    );
                    std::thread::yield_now();
                }
            }
            1 => task1_ran.store(true, Ordering::Release),
            _ => {}
        });
    }

    #[test]
    fn nested_and_concurrent_runs_complete() {
        let team = SpinTeam::new(2, |_| {}).unwrap();
        let inner = AtomicUsize::new(0);
        team.run(3, &|_| {
            team.run(4, &|_| {
                inner.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(inner.load(Ordering::Relaxed), 12);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for tasks in 0..50 {
                        assert!(counts(&team, tasks).iter().all(|&c| c == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn a_failing_start_hook_keeps_the_helper() {
        let team = SpinTeam::new(2, |i| assert_ne!(i, 1, "hook fails on helper {i}")).unwrap();
        assert!(counts(&team, 10).iter().all(|&c| c == 1));
    }

    #[test]
    fn a_task_panic_reaches_the_caller_and_the_team_survives() {
        let team = SpinTeam::new(2, |_| {}).unwrap();
        // Task 5 is in the last helper's share, task 0 in the caller's.
        for bad in [5, 0] {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                team.run(6, &|t| assert_ne!(t, bad, "task {t} fails"));
            }));
            assert!(result.is_err(), "task {bad}'s panic was lost");
            assert!(counts(&team, 9).iter().all(|&c| c == 1));
        }
    }

    #[test]
    fn an_overflow_on_any_thread_reaches_the_caller_once() {
        let team = SpinTeam::new(2, |_| {}).unwrap();
        team.take_fp_exceptions();
        // Task 5 runs on the last helper, task 0 on the caller.
        for bad in [5, 0] {
            team.run(6, &|t| {
                let scale = if t == bad { 10.0 } else { 1.0 };
                std::hint::black_box(std::hint::black_box(3e38f32) * scale);
            });
            assert_eq!(team.take_fp_exceptions().describe(), "overflow", "task {bad}");
            assert!(team.take_fp_exceptions().is_empty(), "taking clears the flags");
        }
        team.run(6, &|_| {
            std::hint::black_box(std::hint::black_box(3e38f32) * 0.5);
        });
        assert!(team.take_fp_exceptions().is_empty());
    }

    #[test]
    fn helpers_do_not_report_the_flags_they_started_with() {
        // Threads start with their creator's flags: raise one, then start the team.
        std::hint::black_box(std::hint::black_box(3e38f32) * 10.0);
        let team = SpinTeam::new(2, |_| {}).unwrap();
        fpstatus::take();
        team.run(6, &|_| {});
        assert!(team.take_fp_exceptions().is_empty());
    }
}
