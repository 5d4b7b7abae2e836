//! The qp API: `/predict`, `/predict/batch`, `/model`, `/health`, `/ready`, `/metrics`.
//! Handlers parse and validate; the model threads do the work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::preprocess::{feature_box_margin, image_to_tensor, select_features, PreprocessError};

use super::body::{body_kind, parse_predict_object, read_json, read_multipart, BodyKind, PredictInput};
use super::cache::SampleOutputs;
use super::error::ApiError;
use super::metrics::Gauges;
use super::state::{request_id, AppState, Sample};
use super::sysinfo;
use super::worker::ModelWorker;

/// Model picked for image requests when none is named.
pub const DEFAULT_IMAGE_MODEL: &str = "qualitynet";
/// Model picked for feature-only requests when none is named.
pub const DEFAULT_FEATURE_MODEL: &str = "qualitynet-features";

#[derive(Debug, Deserialize)]
pub struct ModelQuery {
    pub model: Option<String>,
}

type AppResult = Result<Response, ApiError>;

/// A model's part of a batch request: the model, the item indices, their samples.
type ModelShare = (Arc<ModelWorker>, Vec<usize>, Vec<Sample>);

fn latency_ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Confidence of one prediction, from two measurable quantities (see docs/HTTP_API.md):
/// `margin`, the request's smallest distance to the edge of the model's feature box in
/// units of each feature's range (0 on an edge, 0.5 at the centre), and how far the
/// prediction is from 0.5.
pub fn confidence(margin: Option<f64>, prediction: f32) -> &'static str {
    let margin = margin.unwrap_or(0.5);
    let decisiveness = (f64::from(prediction) - 0.5).abs();
    if !prediction.is_finite() || margin < 0.05 || decisiveness < 0.1 {
        "low"
    } else if margin >= 0.15 && decisiveness >= 0.25 {
        "high"
    } else {
        "medium"
    }
}

fn is_image_model(m: &ModelWorker) -> bool {
    m.meta.inputs.iter().any(|i| i.image.is_some())
}

fn is_feature_model(m: &ModelWorker) -> bool {
    !m.meta.inputs.is_empty() && m.meta.inputs.iter().all(|i| i.features.is_some())
}

/// The model a `/predict` item goes to: the one named, else the default for its kind.
fn choose_model(state: &AppState, named: Option<&str>, has_image: bool) -> Result<Arc<ModelWorker>, ApiError> {
    if let Some(name) = named {
        return state.model(name);
    }
    let (default, fits, kind): (&str, fn(&ModelWorker) -> bool, &str) = if has_image {
        (DEFAULT_IMAGE_MODEL, is_image_model, "an image")
    } else {
        (DEFAULT_FEATURE_MODEL, is_feature_model, "named features only")
    };
    state
        .models
        .iter()
        .find(|m| m.name == default && fits(m))
        .or_else(|| state.models.iter().find(|m| fits(m)))
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(
                "no_suitable_model",
                format!(
                    "no loaded model takes {kind}; loaded: {}",
                    state.model_names().join(", ")
                ),
            )
        })
}

/// Builds the model's inputs from a flat request; returns them with the feature-box margin.
async fn build_sample(
    state: &AppState,
    model: &ModelWorker,
    input: PredictInput,
) -> Result<(Sample, Option<f64>), ApiError> {
    if let Some(raw) = model
        .meta
        .inputs
        .iter()
        .find(|i| i.image.is_none() && i.features.is_none())
    {
        return Err(ApiError::bad_request(
            "unsupported_model",
            format!(
                "input `{}` of model `{}` is a raw tensor; use POST /v2/models/{}/infer",
                raw.name, model.name, model.name
            ),
        ));
    }
    let feature_specs = || model.meta.inputs.iter().flat_map(|i| i.features.iter().flatten());
    let is_known = |name: &str| feature_specs().any(|f| f.name == name);
    if !input.fields.keys().all(|k| is_known(k)) {
        return Err(PreprocessError::UnknownFeatures {
            unknown: input.fields.keys().filter(|k| !is_known(k)).cloned().collect(),
            expected: feature_specs().map(|f| f.name.clone()).collect(),
        }
        .into());
    }
    if input.image.is_some() && !is_image_model(model) {
        return Err(ApiError::bad_request(
            "unknown_field",
            format!("model `{}` takes no image", model.name),
        ));
    }
    let mut image = input.image;
    let mut sample = Vec::with_capacity(model.meta.inputs.len());
    let mut margin: Option<f64> = None;
    for spec in &model.meta.inputs {
        if let Some(image_spec) = &spec.image {
            let bytes = image.take().ok_or_else(|| {
                ApiError::bad_request(
                    "missing_field",
                    format!("model `{}` needs an `image` (base64 PNG or JPEG)", model.name),
                )
            })?;
            let image_spec = image_spec.clone();
            let max_pixels = state.limits.max_image_pixels;
            // Decoding is CPU work; keep it off the async workers.
            let values = tokio::task::spawn_blocking(move || image_to_tensor(&bytes, &image_spec, max_pixels))
                .await
                .map_err(|e| ApiError::internal(format!("image decoding task failed: {e}")))??;
            sample.push(values);
        } else {
            // Checked above: an input without an image has features, and every name in the
            // request belongs to one of the model's inputs.
            let features = spec.features.as_deref().unwrap_or_default();
            sample.push(select_features(&input.fields, features)?);
            if let Some(m) = feature_box_margin(&input.fields, features) {
                margin = Some(margin.map_or(m, |prev| prev.min(m)));
            }
        }
    }
    Ok((sample, margin))
}

/// One prediction as the API answers it (serialized directly: this is the hot path).
#[derive(Serialize)]
struct Prediction<'a> {
    model: &'a str,
    predicted_ssim: f32,
    confidence: &'static str,
    cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
}

impl<'a> Prediction<'a> {
    fn new(model: &'a ModelWorker, outputs: &SampleOutputs, cached: bool, margin: Option<f64>) -> Prediction<'a> {
        let predicted = outputs.first().and_then(|o| o.first()).copied().unwrap_or(f32::NAN);
        Prediction {
            model: &model.name,
            predicted_ssim: predicted,
            confidence: confidence(margin, predicted),
            cached,
            latency_ms: None,
        }
    }
}

async fn read_predict_input(state: &AppState, request: Request) -> Result<PredictInput, ApiError> {
    match body_kind(request.headers(), true)? {
        BodyKind::Json => {
            let value = read_json(request.into_body(), state.limits.max_body_bytes).await?;
            parse_predict_object(value)
        }
        BodyKind::Multipart => read_multipart(request, state.limits.max_body_bytes).await,
    }
}

fn merge_model_names(query: Option<String>, body: Option<String>) -> Result<Option<String>, ApiError> {
    match (query, body) {
        (Some(q), Some(b)) if q != b => Err(ApiError::bad_request(
            "conflicting_model",
            format!("`?model={q}` and body `model: {b}` disagree"),
        )),
        (q, b) => Ok(b.or(q)),
    }
}

pub async fn predict(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ModelQuery>,
    request: Request,
) -> AppResult {
    let start = Instant::now();
    let id = request_id(request.headers());
    let mut input = read_predict_input(&state, request).await?;
    let named = merge_model_names(query.model, input.model.take())?;
    let model = choose_model(&state, named.as_deref(), input.image.is_some())?;
    let (sample, margin) = build_sample(&state, &model, input).await?;
    let mut answers = state.infer(&model, vec![sample], &id).await?;
    let (outputs, cached) = answers.pop().ok_or_else(|| ApiError::internal("no answer"))?;
    let mut body = Prediction::new(&model, &outputs, cached, margin);
    body.latency_ms = Some(latency_ms(start));
    Ok(Json(body).into_response())
}

pub async fn predict_batch(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ModelQuery>,
    headers: HeaderMap,
    request: Request,
) -> AppResult {
    let start = Instant::now();
    body_kind(&headers, false)?;
    let value = read_json(request.into_body(), state.limits.max_body_bytes).await?;
    let items = match value {
        Value::Object(mut map) => {
            if let Some(extra) = map.keys().find(|k| k.as_str() != "items") {
                return Err(ApiError::bad_request(
                    "unknown_field",
                    format!("unknown field `{extra}`; a batch is {{\"items\": [...]}}"),
                ));
            }
            match map.remove("items") {
                Some(Value::Array(items)) => items,
                Some(_) => return Err(ApiError::bad_request("invalid_type", "`items` must be an array")),
                None => return Err(ApiError::bad_request("missing_field", "missing `items`")),
            }
        }
        _ => return Err(ApiError::bad_request("invalid_body", "expected {\"items\": [...]}")),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "`items` is empty"));
    }
    if items.len() > state.limits.max_request_batch {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!(
                "{} items; the limit is {} (--max-request-batch)",
                items.len(),
                state.limits.max_request_batch
            ),
        ));
    }

    // Validate every item before any work is queued: a batch is answered whole or refused.
    let count = items.len();
    let mut prepared = Vec::with_capacity(count);
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("items[{i}]");
        let mut input = parse_predict_object(item).map_err(|e| e.at(&at))?;
        let named = merge_model_names(query.model.clone(), input.model.take()).map_err(|e| e.at(&at))?;
        let model = choose_model(&state, named.as_deref(), input.image.is_some()).map_err(|e| e.at(&at))?;
        let (sample, margin) = build_sample(&state, &model, input).await.map_err(|e| e.at(&at))?;
        prepared.push((model, sample, margin));
    }

    // One job per model, all queued before any is awaited so the models work in parallel.
    let mut by_model: BTreeMap<String, ModelShare> = BTreeMap::new();
    let mut margins = Vec::with_capacity(prepared.len());
    for (i, (model, sample, margin)) in prepared.into_iter().enumerate() {
        margins.push(margin);
        let entry = by_model
            .entry(model.name.clone())
            .or_insert_with(|| (model.clone(), Vec::new(), Vec::new()));
        entry.1.push(i);
        entry.2.push(sample);
    }
    let id = request_id(&headers);
    let runs = by_model.into_values().map(|(model, indices, samples)| {
        let state = state.clone();
        let id = id.clone();
        async move {
            let answers = state
                .infer(&model, samples, &id)
                .await
                .map_err(|e| e.locate_sample(|k| format!("items[{}]", indices[k])))?;
            Ok::<_, ApiError>((model, indices, answers))
        }
    });
    let mut results = vec![Value::Null; count];
    for done in join_all(runs).await {
        let (model, indices, answers) = done?;
        for (i, (outputs, cached)) in indices.into_iter().zip(answers) {
            results[i] = json!(Prediction::new(&model, &outputs, cached, margins[i]));
        }
    }
    Ok(Json(json!({"results": results, "latency_ms": latency_ms(start)})).into_response())
}

/// Awaits futures concurrently, keeping their order.
async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

pub fn model_json(m: &ModelWorker) -> Value {
    let meta = &m.meta;
    json!({
        "name": m.name,
        "file": m.path.as_ref().map(|p| p.display().to_string()),
        "description": meta.description,
        "precision": meta.precision,
        "source": meta.source,
        "inputs": meta.inputs.iter().map(|i| json!({
            "name": i.name, "dtype": i.dtype, "shape": i.shape,
            "features": i.features, "image": i.image,
        })).collect::<Vec<_>>(),
        "outputs": meta.outputs.iter().map(|o| json!({
            "name": o.name, "dtype": o.dtype, "shape": o.shape,
        })).collect::<Vec<_>>(),
        "parameters": meta.stats.parameters,
        "flops_per_sample": meta.stats.flops_per_sample,
        "isa": m.info.isa,
        "int8_tier": m.info.int8_tier,
        "threads": m.info.threads,
        "executor": m.info.executor,
        "reports": meta.reports,
        "load_time_ms": (m.load_time.as_secs_f64() * 1e6).round() / 1e3,
        "loaded_at_unix_s": m.loaded_at_unix_s,
    })
}

pub async fn model_info(State(state): State<Arc<AppState>>, Query(query): Query<ModelQuery>) -> AppResult {
    match query.model {
        Some(name) => {
            let model = state.model(&name)?;
            Ok(Json(model_json(&model)).into_response())
        }
        None => Ok(Json(json!({
            "models": state.models.iter().map(|m| model_json(m)).collect::<Vec<_>>()
        }))
        .into_response()),
    }
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let cache = state.cache.lock().unwrap();
    let features = qp_kernels::cpu::features();
    let body = json!({
        "status": if state.is_ready() { "ok" } else { "draining" },
        "models": state.model_names(),
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "cpu": {
            "best_isa": features.best_isa().name(),
            "logical_cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "process_cpu_seconds": sysinfo::cpu_seconds(),
        },
        "memory": {"rss_bytes": sysinfo::rss_bytes()},
        "cache": {
            "entries": cache.len(), "bytes": cache.bytes(),
            "max_entries": cache.max_entries(), "max_bytes": cache.max_bytes(),
        },
        "queues": state.models.iter().map(|m| (m.name.clone(), json!(m.queue_depth()))).collect::<serde_json::Map<_, _>>(),
    });
    Json(body).into_response()
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        Json(json!({"ready": true, "models": state.model_names()})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "shutting down"})),
        )
            .into_response()
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (cache_entries, cache_bytes) = {
        let cache = state.cache.lock().unwrap();
        (cache.len(), cache.bytes())
    };
    let text = state.metrics.render(&Gauges {
        rss_bytes: sysinfo::rss_bytes(),
        cpu_seconds: sysinfo::cpu_seconds(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        cache_entries,
        cache_bytes,
        queue_depth: state.models.iter().map(|m| (m.name.clone(), m.queue_depth())).collect(),
        ready: state.is_ready(),
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

pub async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

#[cfg(test)]
mod tests {
    use super::confidence;

    #[test]
    fn confidence_levels() {
        assert_eq!(confidence(Some(0.3), 0.9), "high");
        assert_eq!(confidence(Some(0.3), 0.2), "high");
        assert_eq!(confidence(Some(0.1), 0.9), "medium");
        assert_eq!(confidence(Some(0.3), 0.7), "medium");
        assert_eq!(confidence(Some(0.01), 0.95), "low");
        assert_eq!(confidence(Some(0.3), 0.55), "low");
        assert_eq!(confidence(None, 0.95), "high");
        assert_eq!(confidence(Some(0.3), f32::NAN), "low");
    }
}
