//! One dedicated OS thread per model owns that model's engine and runs it on batches
//! gathered from a bounded queue (dynamic batching).
//!
//! Batching favours latency: when the engine is idle, the first job runs at once, alone.
//! Jobs that queue up while the engine is busy are taken together, up to `max_batch`
//! samples. When the queue held more than one job (the server is under load), the batch
//! is still short, and more HTTP requests are in flight than the batch holds (so another
//! job can still come), the thread waits at most `max_delay` for it to fill. Without that
//! last check a few clients that are all waiting on this batch would each lose the whole
//! delay: four connections on the feature model ran at 5.7k req/s with a 0.8 ms median.
//!
//! Inputs that pass the HTTP checks can still be refused by the engine (values that make
//! the model's arithmetic overflow); a batch refused that way runs again one request at
//! a time, so only the request whose inputs caused it gets the error, and a request of
//! several samples learns which of its samples it was.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use tokio::sync::oneshot;

use crate::engine::{Engine, EngineError, EngineOptions, Tensor};
use crate::format::ModelMeta;

use super::error::ApiError;
use super::metrics::Metrics;

/// What the server needs from a model: its interface and a way to run a batch.
/// `Engine` is the production implementation; tests may supply others.
pub trait InferenceBackend {
    fn meta(&self) -> &ModelMeta;
    /// Inputs in the model's input order, each with the leading batch axis.
    fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError>;
    fn info(&self) -> BackendInfo;
}

/// How a backend executes, for `GET /model`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BackendInfo {
    /// Kernel tier in use ("scalar", "avx2", "avx512").
    pub isa: Option<String>,
    /// INT8 convolution tier ("amx", "avx512-vnni", ...), for INT8 models.
    pub int8_tier: Option<String>,
    /// Worker threads the engine uses.
    pub threads: Option<usize>,
    /// "optimized" or "reference".
    pub executor: String,
}

/// Builds a backend; called once, on the model's own thread.
pub type BackendLoader = Box<dyn FnOnce() -> anyhow::Result<Box<dyn InferenceBackend>> + Send>;

pub struct ModelSpec {
    pub name: String,
    pub path: Option<PathBuf>,
    pub load: BackendLoader,
}

impl ModelSpec {
    /// A `.qpw` file run by `Engine`.
    pub fn from_file(name: String, path: PathBuf, options: EngineOptions) -> ModelSpec {
        let file = path.clone();
        ModelSpec {
            name,
            path: Some(path),
            load: Box::new(move || {
                let engine =
                    Engine::load(&file, options).map_err(|e| anyhow::anyhow!("loading {}: {e}", file.display()))?;
                let info = BackendInfo {
                    isa: Some(engine.isa().name().to_string()),
                    int8_tier: engine.int8_tier().map(|t| t.name().to_string()),
                    threads: Some(engine.threads()),
                    executor: engine.executor_name().to_string(),
                };
                Ok(Box::new(EngineBackend { engine, info }) as Box<dyn InferenceBackend>)
            }),
        }
    }
}

struct EngineBackend {
    engine: Engine,
    info: BackendInfo,
}

impl InferenceBackend for EngineBackend {
    fn meta(&self) -> &ModelMeta {
        self.engine.meta()
    }
    fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        self.engine.run(inputs)
    }
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub queue_capacity: usize,
}

/// Per output, the flat values of every sample of the job, in sample order.
pub type JobOutputs = Vec<Vec<f32>>;

/// Samples of one request, already validated against the model's input shapes.
pub struct Job {
    /// Per model input, `samples` samples concatenated.
    pub inputs: Vec<Vec<f32>>,
    pub samples: usize,
    pub enqueued: Instant,
    pub request_id: String,
    pub reply: oneshot::Sender<Result<JobOutputs, ApiError>>,
}

/// The server's handle on a model thread.
pub struct ModelWorker {
    pub name: String,
    pub path: Option<PathBuf>,
    pub meta: Arc<ModelMeta>,
    pub info: BackendInfo,
    pub load_time: Duration,
    pub loaded_at_unix_s: u64,
    /// `None` once closed.
    tx: Mutex<Option<SyncSender<Job>>>,
    queue_depth: Arc<AtomicUsize>,
}

impl ModelWorker {
    /// Starts the model's thread and waits until its backend has loaded.
    pub fn spawn(
        spec: ModelSpec,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(ModelWorker, JoinHandle<()>)> {
        let (tx, rx) = sync_channel::<Job>(config.queue_capacity.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let queue_depth = Arc::new(AtomicUsize::new(0));
        let depth = queue_depth.clone();
        let name = spec.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("qp-model-{}", spec.name))
            .spawn(move || {
                let started = Instant::now();
                let backend = match (spec.load)() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let meta = Arc::new(backend.meta().clone());
                let _ = ready_tx.send(Ok((meta.clone(), backend.info(), started.elapsed())));
                drop(ready_tx);
                serve_queue(&name, backend, &meta, rx, config, &metrics, &depth);
            })?;
        let (meta, info, load_time) = match ready_rx.recv() {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.context(format!("model `{}`", spec.name)));
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("model `{}`: loader thread panicked", spec.name);
            }
        };
        let loaded_at_unix_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok((
            ModelWorker {
                name: spec.name,
                path: spec.path,
                meta,
                info,
                load_time,
                loaded_at_unix_s,
                tx: Mutex::new(Some(tx)),
                queue_depth,
            },
            thread,
        ))
    }

    /// Stops taking jobs; the thread finishes those queued and exits.
    pub fn close(&self) {
        self.tx.lock().unwrap().take();
    }

    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Queues a job without waiting: a full queue is refused at once.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let tx = self.tx.lock().unwrap().clone();
        let Some(tx) = tx else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "model_unavailable",
                format!("model `{}` is shutting down", self.name),
            ));
        };
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "queue_full",
                        format!("model `{}` has a full queue; retry shortly", self.name),
                    )
                    .with_retry_after(1),
                    TrySendError::Disconnected(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "model_unavailable",
                        format!("model `{}` is not running", self.name),
                    ),
                })
            }
        }
    }
}

fn serve_queue(
    name: &str,
    mut backend: Box<dyn InferenceBackend>,
    meta: &ModelMeta,
    rx: Receiver<Job>,
    config: BatchConfig,
    metrics: &Metrics,
    depth: &AtomicUsize,
) {
    let max_batch = config.max_batch.max(1);
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                // Every sender is gone: the server has shut down and the queue is drained.
                Err(_) => break,
            },
        };
        depth.fetch_sub(1, Ordering::Relaxed);
        let mut samples = first.samples;
        let mut jobs = vec![first];
        let mut deadline: Option<Instant> = None;
        while samples < max_batch {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => loop {
                    let more_can_come = metrics.http_in_flight.load(Ordering::Relaxed) > jobs.len();
                    if jobs.len() < 2 || config.max_delay.is_zero() || !more_can_come {
                        break None;
                    }
                    let until = *deadline.get_or_insert_with(|| Instant::now() + config.max_delay);
                    let now = Instant::now();
                    if now >= until {
                        break None;
                    }
                    // Look again every quarter of the delay: the requests the previous batch
                    // answered stay in flight for a moment after their answer.
                    match rx.recv_timeout((until - now).min(config.max_delay / 4)) {
                        Ok(job) => break Some(job),
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break None,
                    }
                },
            };
            let Some(job) = next else { break };
            depth.fetch_sub(1, Ordering::Relaxed);
            if samples + job.samples > max_batch {
                carry = Some(job);
                // It was counted out of the queue; count it back until it is taken.
                depth.fetch_add(1, Ordering::Relaxed);
                break;
            }
            samples += job.samples;
            jobs.push(job);
        }
        run_batch(name, backend.as_mut(), meta, jobs, samples, metrics);
    }
}

/// Why the engine gave no outputs for a batch.
enum RunFailure {
    /// The engine refused the inputs (`EngineError::BadInput`): values that pass the HTTP
    /// checks but overflow the model.
    Refused(String),
    /// Anything else: the server's fault, not the request's.
    Failed(ApiError),
}

impl RunFailure {
    fn into_api(self) -> ApiError {
        match self {
            RunFailure::Refused(msg) => ApiError::bad_request("bad_input", msg),
            RunFailure::Failed(e) => e,
        }
    }
}

/// Runs one batch of `samples` samples; `gather(i, data)` appends the batch's values of
/// model input `i` to `data`.
fn run_engine(
    backend: &mut dyn InferenceBackend,
    meta: &ModelMeta,
    samples: usize,
    gather: impl Fn(usize, &mut Vec<f32>),
) -> Result<JobOutputs, RunFailure> {
    let inputs: Vec<(&str, Tensor)> = meta
        .inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let per_sample: usize = spec.shape.iter().product();
            let mut data = Vec::with_capacity(per_sample * samples);
            gather(i, &mut data);
            let mut shape = vec![samples];
            shape.extend_from_slice(&spec.shape);
            (spec.name.as_str(), Tensor { shape, data })
        })
        .collect();
    match catch_unwind(AssertUnwindSafe(|| backend.run(&inputs))) {
        Ok(Ok(outputs)) => order_outputs(meta, outputs, samples).map_err(RunFailure::Failed),
        Ok(Err(EngineError::BadInput(msg))) => Err(RunFailure::Refused(msg)),
        Ok(Err(e)) => Err(RunFailure::Failed(ApiError::internal(format!("inference failed: {e}")))),
        Err(_) => Err(RunFailure::Failed(ApiError::internal(
            "inference failed: the engine panicked",
        ))),
    }
}

fn run_batch(
    name: &str,
    backend: &mut dyn InferenceBackend,
    meta: &ModelMeta,
    mut jobs: Vec<Job>,
    samples: usize,
    metrics: &Metrics,
) {
    let start = Instant::now();
    let queue_seconds: Vec<f64> = jobs
        .iter()
        .map(|j| start.saturating_duration_since(j.enqueued).as_secs_f64())
        .collect();
    let result = run_engine(backend, meta, samples, |i, data| {
        for job in &jobs {
            data.extend_from_slice(&job.inputs[i]);
        }
    });
    let compute = start.elapsed();
    let refused = matches!(result, Err(RunFailure::Refused(_)));
    if refused && jobs.len() > 1 {
        // One request's inputs must not fail the others batched with it: each runs again
        // alone and gets its own answer. The refused run counts as a failed run; the
        // jobs' queue time is counted once, by the reruns.
        metrics.record_run(name, samples, &[], compute.as_secs_f64(), false);
        tracing::debug!(
            model = name,
            jobs = jobs.len(),
            "a batch refused its inputs; running each request alone"
        );
        for job in jobs {
            let samples = job.samples;
            run_batch(name, backend, meta, vec![job], samples, metrics);
        }
        return;
    }
    metrics.record_run(name, samples, &queue_seconds, compute.as_secs_f64(), result.is_ok());
    let request_ids = || jobs.iter().map(|j| j.request_id.as_str()).collect::<Vec<_>>();
    // Field values are only evaluated when the event is enabled.
    tracing::debug!(
        model = name,
        batch_samples = samples,
        jobs = jobs.len(),
        request_ids = ?request_ids(),
        compute_ms = compute.as_secs_f64() * 1e3,
        "batch done"
    );
    match result {
        Ok(outputs) => {
            let per_sample: Vec<usize> = outputs.iter().map(|o| o.len() / samples).collect();
            let mut offset = 0;
            for job in jobs {
                let part = outputs
                    .iter()
                    .zip(&per_sample)
                    .map(|(o, len)| o[offset * len..(offset + job.samples) * len].to_vec())
                    .collect();
                offset += job.samples;
                let _ = job.reply.send(Ok(part));
            }
        }
        Err(RunFailure::Refused(msg)) if samples > 1 => {
            // A request of several samples is refused whole, naming the first sample the
            // engine refuses on its own.
            let job = jobs.pop().expect("a refused batch of one job");
            let error = first_refused_sample(name, backend, meta, &job, metrics)
                .unwrap_or_else(|| ApiError::bad_request("bad_input", msg));
            let _ = job.reply.send(Err(error));
        }
        Err(failure) => {
            let e = failure.into_api();
            if e.status.is_server_error() {
                tracing::error!(model = name, request_ids = ?request_ids(), "{}", e.message);
            }
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Runs each sample of `job` alone until the engine refuses one; that sample's error,
/// marked with its index. `None` if every sample runs alone (or another error stops the
/// search).
fn first_refused_sample(
    name: &str,
    backend: &mut dyn InferenceBackend,
    meta: &ModelMeta,
    job: &Job,
    metrics: &Metrics,
) -> Option<ApiError> {
    let sizes: Vec<usize> = job.inputs.iter().map(|input| input.len() / job.samples).collect();
    for k in 0..job.samples {
        let start = Instant::now();
        let result = run_engine(backend, meta, 1, |i, data| {
            data.extend_from_slice(&job.inputs[i][k * sizes[i]..(k + 1) * sizes[i]]);
        });
        metrics.record_run(name, 1, &[], start.elapsed().as_secs_f64(), result.is_ok());
        match result {
            Ok(_) => continue,
            Err(RunFailure::Refused(msg)) => return Some(ApiError::bad_request("bad_input", msg).for_sample(k)),
            Err(RunFailure::Failed(_)) => return None,
        }
    }
    None
}

/// Puts the engine's outputs in the metadata's output order and checks their sizes.
fn order_outputs(meta: &ModelMeta, mut outputs: Vec<(String, Tensor)>, samples: usize) -> Result<JobOutputs, ApiError> {
    meta.outputs
        .iter()
        .map(|spec| {
            let pos = outputs
                .iter()
                .position(|(n, _)| n == &spec.name)
                .ok_or_else(|| ApiError::internal(format!("engine returned no output `{}`", spec.name)))?;
            let (_, tensor) = outputs.swap_remove(pos);
            let per_sample: usize = spec.shape.iter().product();
            if tensor.data.len() != per_sample * samples {
                return Err(ApiError::internal(format!(
                    "engine output `{}` has {} values, expected {} x {per_sample}",
                    spec.name,
                    tensor.data.len(),
                    samples
                )));
            }
            Ok(tensor.data)
        })
        .collect()
}
