//! `qp-engine serve`: an HTTP front for one or more `.qpw` models.
//!
//! Each model runs on its own OS thread fed by a bounded queue with dynamic batching
//! (see `worker`); the async runtime only parses, validates and answers. Endpoints,
//! fields, errors and every flag are documented in docs/HTTP_API.md.

mod body;
mod cache;
mod error;
mod handlers;
mod kserve;
mod metrics;
mod middleware;
mod ratelimit;
mod state;
mod sysinfo;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tower::util::MapRequestLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::engine::{EngineOptions, Isa};

pub use error::ApiError;
pub use worker::{BackendInfo, BackendLoader, InferenceBackend, ModelSpec};

use self::cache::ResponseCache;
use self::metrics::Metrics;
use self::middleware::{JsonErrorsLayer, RecordMetricsLayer, RequestIdSource};
use self::ratelimit::RateLimiter;
use self::state::{AppState, Limits};
use self::worker::{BatchConfig, ModelWorker};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Where models are looked for when none is named.
pub const BUNDLED_WEIGHTS_DIR: &str = "weights";
pub const BUNDLED_MODELS: [&str; 2] = ["qualitynet", "qualitynet-features"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Settings of `qp-engine serve`; each flag also reads the `QP_*` variable shown.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// A model to serve (repeatable); its name is the file stem.
    #[arg(long = "model", value_name = "FILE.qpw", env = "QP_MODELS", value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Serve every `.qpw` file in this directory.
    #[arg(long, value_name = "DIR", env = "QP_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "QP_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "QP_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Most samples per engine run.
    #[arg(long, env = "QP_MAX_BATCH", default_value_t = 8)]
    pub max_batch: usize,
    /// Longest wait for a batch to fill while the server is under load, in microseconds
    /// (an idle engine never waits).
    #[arg(long, env = "QP_MAX_DELAY_US", default_value_t = 500)]
    pub max_delay_us: u64,
    /// Jobs each model's queue holds; past that, requests get 503 at once.
    #[arg(long, env = "QP_QUEUE_CAPACITY", default_value_t = 256)]
    pub queue_capacity: usize,
    /// Most samples one request may carry (`/predict/batch` items, v2 batch dimension).
    #[arg(long, env = "QP_MAX_REQUEST_BATCH", default_value_t = 256)]
    pub max_request_batch: usize,
    /// Engine worker threads per model (default: one per core).
    #[arg(long, env = "QP_THREADS")]
    pub threads: Option<usize>,
    /// Cap on the kernel tier: scalar, avx2, avx512.
    #[arg(long, env = "QP_MAX_ISA")]
    pub max_isa: Option<Isa>,
    /// Run the scalar reference executor (slow; for checking).
    #[arg(long, env = "QP_REFERENCE")]
    pub reference: bool,
    /// Threads of the HTTP runtime (parsing, image decoding is on a blocking pool).
    #[arg(long, env = "QP_HTTP_THREADS", default_value_t = 2)]
    pub http_threads: usize,
    /// Response cache size in entries (0 disables the cache).
    #[arg(long, env = "QP_CACHE_ENTRIES", default_value_t = 10_000)]
    pub cache_entries: usize,
    /// Response cache size in bytes.
    #[arg(long, env = "QP_CACHE_BYTES", default_value_t = 64 << 20)]
    pub cache_bytes: usize,
    /// Requests per second allowed per client IP (0 = no limit).
    #[arg(long, env = "QP_RATE_LIMIT", default_value_t = 0.0)]
    pub rate_limit: f64,
    /// Burst size of the per-client rate limit.
    #[arg(long, env = "QP_RATE_LIMIT_BURST", default_value_t = 50)]
    pub rate_limit_burst: u32,
    /// Origins allowed by CORS (repeatable or comma-separated; `*` for any). None: no CORS headers.
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "QP_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "QP_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Largest decoded image, in pixels (width x height).
    #[arg(long, env = "QP_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// On SIGTERM/SIGINT, how long to wait for accepted requests before exiting anyway.
    #[arg(long, env = "QP_SHUTDOWN_TIMEOUT_S", default_value_t = 30)]
    pub shutdown_timeout_s: u64,
    /// Log format (logs go to stderr; the level is set by QP_LOG, e.g. `info`, `debug`).
    #[arg(long, env = "QP_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// The settings used when every flag is left at its default and no model is named.
    pub fn defaults() -> ServeArgs {
        use clap::{Args, FromArgMatches};
        let cmd = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
        let matches = cmd.try_get_matches_from(Vec::<String>::new()).expect("defaults parse");
        ServeArgs::from_arg_matches(&matches).expect("defaults parse")
    }

    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            max_isa: self.max_isa,
            threads: self.threads,
            reference: self.reference,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_batch == 0 {
            bail!("--max-batch must be at least 1");
        }
        if self.queue_capacity == 0 {
            bail!("--queue-capacity must be at least 1");
        }
        if self.max_request_batch == 0 {
            bail!("--max-request-batch must be at least 1");
        }
        if self.http_threads == 0 {
            bail!("--http-threads must be at least 1");
        }
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        if !(self.rate_limit.is_finite() && self.rate_limit >= 0.0) {
            bail!("--rate-limit must be a non-negative number");
        }
        Ok(())
    }
}

/// The `(name, file)` pairs to serve, from `--model`, `--model-dir`, or the bundled weights.
pub fn resolve_models(args: &ServeArgs) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<PathBuf> = args.models.clone();
    if let Some(dir) = &args.model_dir {
        let entries = std::fs::read_dir(dir).with_context(|| format!("reading --model-dir {}", dir.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "qpw"))
            .collect();
        if found.is_empty() {
            bail!("--model-dir {} holds no .qpw file", dir.display());
        }
        found.sort();
        files.extend(found);
    }
    if files.is_empty() {
        let dir = Path::new(BUNDLED_WEIGHTS_DIR);
        let bundled: Vec<PathBuf> = BUNDLED_MODELS.iter().map(|n| dir.join(format!("{n}.qpw"))).collect();
        let missing: Vec<String> = bundled
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        if !missing.is_empty() {
            bail!(
                "no model given (--model FILE.qpw or --model-dir DIR) and the bundled model(s) {} \
                 are missing. Build them with:\n  \
                 python tools/qualitynet.py weights/qualitynet.onnx && \
                 qp-convert weights/qualitynet.onnx -o weights/qualitynet.qpw\n  \
                 python tools/feature_model.py weights/feature_model.onnx && \
                 qp-convert weights/feature_model.onnx -o weights/qualitynet-features.qpw\n\
                 (see weights/README.md)",
                missing.join(", ")
            );
        }
        files = bundled;
    }
    let mut out: Vec<(String, PathBuf)> = Vec::with_capacity(files.len());
    for path in files {
        if !path.is_file() {
            bail!("model file {} does not exist", path.display());
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .with_context(|| format!("cannot name a model after {}", path.display()))?
            .to_string();
        if let Some((_, other)) = out.iter().find(|(n, _)| *n == name) {
            bail!(
                "two models are named `{name}`: {} and {}",
                other.display(),
                path.display()
            );
        }
        out.push((name, path));
    }
    Ok(out)
}

/// Serves the models `args` names until SIGTERM or SIGINT, then drains and returns.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let models = resolve_models(&args)?
        .into_iter()
        .map(|(name, path)| ModelSpec::from_file(name, path, args.engine_options()))
        .collect();
    let server = start(&args, models, true)?;
    server.wait()
}

/// Installs the global tracing subscriber (stderr); a second call is a no-op.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    trigger: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes every accepted request, stops the model threads.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
        self.join()
    }

    /// Blocks until a signal has shut the server down.
    pub fn wait(mut self) -> anyhow::Result<()> {
        let _keep_trigger_alive = self.trigger.take();
        self.join()
    }

    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("the server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(trigger) = self.trigger.take() {
            let _ = trigger.send(());
        }
        let _ = self.join();
    }
}

/// Loads the models (each on its own thread), binds, and serves in the background.
/// With `handle_signals`, SIGTERM and SIGINT start a graceful shutdown.
pub fn start(args: &ServeArgs, models: Vec<ModelSpec>, handle_signals: bool) -> anyhow::Result<ServerHandle> {
    args.validate()?;
    if models.is_empty() {
        bail!("no model to serve");
    }
    let metrics = Arc::new(Metrics::default());
    let batch = BatchConfig {
        max_batch: args.max_batch,
        max_delay: Duration::from_micros(args.max_delay_us),
        queue_capacity: args.queue_capacity,
    };
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    for spec in models {
        if workers.iter().any(|w: &Arc<ModelWorker>| w.name == spec.name) {
            bail!("two models are named `{}`", spec.name);
        }
        let (worker, thread) = ModelWorker::spawn(spec, batch, metrics.clone())?;
        tracing::info!(
            model = worker.name,
            load_ms = worker.load_time.as_secs_f64() * 1e3,
            isa = worker.info.isa.as_deref().unwrap_or("unknown"),
            executor = worker.info.executor,
            "model loaded"
        );
        workers.push(Arc::new(worker));
        threads.push(thread);
    }
    let state = Arc::new(AppState {
        models: workers,
        cache: Mutex::new(ResponseCache::new(args.cache_entries, args.cache_bytes)),
        metrics,
        ready: AtomicBool::new(true),
        started: Instant::now(),
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_image_pixels: args.max_image_pixels,
            max_request_batch: args.max_request_batch,
        },
        rate_limiter: (args.rate_limit > 0.0).then(|| RateLimiter::new(args.rate_limit, args.rate_limit_burst)),
    });
    let app = router(state.clone(), args)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.http_threads)
        .thread_name("qp-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((args.host.as_str(), args.port)))
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    // Registered before returning, so a signal that arrives as soon as the caller
    // learns the address is already handled.
    let signals = if handle_signals {
        Some(runtime.block_on(async { Signals::new() })?)
    } else {
        None
    };
    let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
    let drain_timeout = Duration::from_secs(args.shutdown_timeout_s);
    tracing::info!(%addr, models = ?state.model_names(), "listening");

    let thread = std::thread::Builder::new().name("qp-serve".into()).spawn(move || {
        let result = runtime.block_on(serve_until_shutdown(
            listener,
            app,
            state.clone(),
            triggered,
            signals,
            drain_timeout,
        ));
        // Closing the queues lets each model thread finish what it holds and exit.
        for model in &state.models {
            model.close();
        }
        drop(state);
        runtime.shutdown_timeout(Duration::from_secs(1));
        for t in threads {
            let _ = t.join();
        }
        tracing::info!("stopped");
        result
    })?;
    Ok(ServerHandle {
        addr,
        trigger: Some(trigger),
        thread: Some(thread),
    })
}

struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
                interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}

async fn serve_until_shutdown(
    listener: tokio::net::TcpListener,
    app: Router,
    state: Arc<AppState>,
    triggered: tokio::sync::oneshot::Receiver<()>,
    mut signals: Option<Signals>,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let (drain, draining) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(
        async move {
            let _ = draining.await;
        },
    );
    let mut server = tokio::spawn(async move { server.await });
    let reason = tokio::select! {
        done = &mut server => {
            return match done {
                Ok(r) => r.context("the HTTP server stopped"),
                Err(e) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
            };
        }
        _ = triggered => "shutdown requested",
        reason = async {
            match signals.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        } => reason,
    };
    state.ready.store(false, Ordering::SeqCst);
    tracing::info!(reason, "shutting down: no new connections, finishing accepted requests");
    let _ = drain.send(());
    match tokio::time::timeout(drain_timeout, &mut server).await {
        Ok(Ok(r)) => r.context("the HTTP server failed while draining"),
        Ok(Err(e)) => Err(anyhow::anyhow!("the HTTP server task failed: {e}")),
        Err(_) => {
            server.abort();
            tracing::warn!(
                timeout_s = drain_timeout.as_secs(),
                "requests still open at the shutdown timeout were dropped"
            );
            Ok(())
        }
    }
}

fn router(state: Arc<AppState>, args: &ServeArgs) -> anyhow::Result<Router> {
    let cors = cors_layer(&args.cors_origins)?;
    let request_id = header::HeaderName::from_static(REQUEST_ID_HEADER);
    let layers = ServiceBuilder::new()
        .layer(MapRequestLayer::new(middleware::drop_unacceptable_request_id))
        .layer(SetRequestIdLayer::new(request_id.clone(), RequestIdSource::new()))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %req.method(),
                        path = %req.uri().path(),
                    )
                })
                .on_request(())
                .on_response(
                    DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Micros),
                ),
        )
        .layer(RecordMetricsLayer {
            metrics: state.metrics.clone(),
        })
        .layer(CompressionLayer::new())
        .layer(JsonErrorsLayer)
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            ApiError::internal("the request handler panicked").into_response()
        }))
        .option_layer(cors)
        // CORS answers preflights with an empty body of the inner type, so it needs one
        // that has a default.
        .map_response(|r: axum::http::Response<_>| r.map(axum::body::Body::new))
        .layer(RequestBodyLimitLayer::new(args.max_body_bytes))
        .layer(DefaultBodyLimit::max(args.max_body_bytes));

    let mut router = Router::new()
        .route("/predict", post(handlers::predict))
        .route("/predict/batch", post(handlers::predict_batch))
        .route("/model", get(handlers::model_info))
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route("/v2/models/{name}/infer", post(kserve::infer))
        .fallback(handlers::not_found)
        .with_state(state.clone());
    if state.rate_limiter.is_some() {
        // Innermost, so that answers it refuses still get CORS headers and a request id.
        router = router.layer(axum::middleware::from_fn_with_state(state, middleware::rate_limit));
    }
    Ok(router.layer(layers))
}

fn cors_layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let base = CorsLayer::new()
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::HeaderName::from_static(REQUEST_ID_HEADER)])
        .expose_headers([header::HeaderName::from_static(REQUEST_ID_HEADER), header::RETRY_AFTER]);
    if origins.iter().any(|o| o == "*") {
        return Ok(Some(base.allow_origin(Any)));
    }
    let values = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).with_context(|| format!("--cors-origin {o:?} is not a valid origin")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(base.allow_origin(AllowOrigin::list(values))))
}
