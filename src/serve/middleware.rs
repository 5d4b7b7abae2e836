//! The layers every request passes through besides tower-http's: request ids, HTTP
//! metrics, JSON error bodies, the per-client rate limit.
//!
//! The ones on every request are plain tower services with their own futures rather than
//! `axum::middleware::from_fn`, which boxes the rest of the stack and its future per
//! request and per layer: on the feature model's `/predict`, three such layers cost about
//! a fifth of the server's CPU time per request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::request_id::{MakeRequestId, RequestId};

use super::error::ApiError;
use super::metrics::Metrics;
use super::state::AppState;

/// Makes request ids: a per-process prefix and a counter.
#[derive(Clone)]
pub struct RequestIdSource {
    prefix: u32,
    next: Arc<AtomicU64>,
}

impl RequestIdSource {
    pub fn new() -> RequestIdSource {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
        RequestIdSource {
            prefix: nanos ^ std::process::id().rotate_left(16),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for RequestIdSource {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let value = HeaderValue::from_str(&format!("{:08x}-{n:08x}", self.prefix)).expect("hex is a valid header");
        Some(RequestId::new(value))
    }
}

/// A client's id is kept if it is short and plain (it goes into logs); otherwise one is made.
fn acceptable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

/// Removes a client id that is not acceptable, so that the next layer makes one.
pub fn drop_unacceptable_request_id(mut req: Request) -> Request {
    let header = super::REQUEST_ID_HEADER;
    if req.headers().get(header).is_some_and(|v| !acceptable_request_id(v)) {
        req.headers_mut().remove(header);
    }
    req
}

/// Counts every response by route and status, with its latency.
#[derive(Clone)]
pub struct RecordMetricsLayer {
    pub metrics: Arc<Metrics>,
}

impl<S> Layer<S> for RecordMetricsLayer {
    type Service = RecordMetrics<S>;

    fn layer(&self, inner: S) -> RecordMetrics<S> {
        RecordMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RecordMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, ResBody> Service<axum::http::Request<B>> for RecordMetrics<S>
where
    S: Service<axum::http::Request<B>, Response = axum::http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        RecordMetricsFuture {
            route: req.extensions().get::<MatchedPath>().cloned(),
            start: Instant::now(),
            in_flight: InFlight::enter(&self.metrics),
            inner: self.inner.call(req),
        }
    }
}

/// Counts a request in `http_in_flight` for as long as it lives, answered or dropped.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn enter(metrics: &Arc<Metrics>) -> InFlight {
        metrics.http_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.http_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    pub struct RecordMetricsFuture<F> {
        #[pin]
        inner: F,
        route: Option<MatchedPath>,
        start: Instant,
        in_flight: InFlight,
    }
}

impl<F, ResBody, E> Future for RecordMetricsFuture<F>
where
    F: Future<Output = Result<axum::http::Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.in_flight.0.record_http(
                this.route.as_ref().map_or("unmatched", |p| p.as_str()),
                response.status().as_u16(),
                this.start.elapsed().as_secs_f64(),
            );
        }
        Poll::Ready(result)
    }
}

/// Gives errors produced outside the handlers (unmatched routes, wrong methods, body-limit
/// and extractor rejections) the same JSON shape as the handlers' own.
#[derive(Clone, Copy)]
pub struct JsonErrorsLayer;

impl<S> Layer<S> for JsonErrorsLayer {
    type Service = JsonErrors<S>;

    fn layer(&self, inner: S) -> JsonErrors<S> {
        JsonErrors { inner }
    }
}

#[derive(Clone)]
pub struct JsonErrors<S> {
    inner: S,
}

impl<S, ResBody> Service<Request> for JsonErrors<S>
where
    S: Service<Request, Response = axum::http::Response<ResBody>>,
    ResBody: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = JsonErrorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        JsonErrorsFuture::Inner {
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    #[project = JsonErrorsProjection]
    pub enum JsonErrorsFuture<F> {
        Inner { #[pin] inner: F },
        // Only error responses that are not JSON yet take this (allocating) path.
        Rewrite { rewrite: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F, ResBody, E> Future for JsonErrorsFuture<F>
where
    F: Future<Output = Result<axum::http::Response<ResBody>, E>>,
    ResBody: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                JsonErrorsProjection::Inner { inner } => {
                    let response = ready!(inner.poll(cx))?.map(Body::new);
                    if !needs_json_body(&response) {
                        return Poll::Ready(Ok(response));
                    }
                    self.set(JsonErrorsFuture::Rewrite {
                        rewrite: Box::pin(json_error_body(response)),
                    });
                }
                JsonErrorsProjection::Rewrite { rewrite } => return rewrite.as_mut().poll(cx).map(Ok),
            }
        }
    }
}

fn needs_json_body(response: &Response) -> bool {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    (status.is_client_error() || status.is_server_error()) && !is_json
}

async fn json_error_body(response: Response) -> Response {
    let status = response.status();
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let error = ApiError::new(status, ApiError::code_for_status(status), message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(error.body().to_string()))
}

/// Probes and scrapes are never rate limited.
fn exempt_from_rate_limit(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics") || path.starts_with("/v2/health")
}

/// The per-client rate limit (installed only when `--rate-limit` is set).
pub async fn rate_limit(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(limiter) = &state.rate_limiter {
        if !exempt_from_rate_limit(req.uri().path()) {
            if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
                if let Err(retry_after) = limiter.check(peer.ip(), Instant::now()) {
                    state.metrics.record_rejection("rate_limited");
                    return ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        format!("too many requests from {}; retry in {retry_after} s", peer.ip()),
                    )
                    .with_retry_after(retry_after)
                    .into_response();
                }
            }
        }
    }
    next.run(req).await
}
