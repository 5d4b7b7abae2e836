//! State shared by every handler, and the one path by which samples reach a model:
//! cache lookup, queueing on the model's thread, cache fill.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::oneshot;

use super::cache::{cache_key, ResponseCache, SampleOutputs};
use super::error::ApiError;
use super::metrics::Metrics;
use super::ratelimit::RateLimiter;
use super::worker::{Job, ModelWorker};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_image_pixels: u64,
    pub max_request_batch: usize,
}

pub struct AppState {
    pub models: Vec<Arc<ModelWorker>>,
    pub cache: Mutex<ResponseCache>,
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    pub started: Instant,
    pub limits: Limits,
    pub rate_limiter: Option<RateLimiter>,
}

/// One sample: per model input, its flat values.
pub type Sample = Vec<Vec<f32>>;

impl AppState {
    pub fn model(&self, name: &str) -> Result<Arc<ModelWorker>, ApiError> {
        self.models.iter().find(|m| m.name == name).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("no model named `{name}`; loaded: {}", self.model_names().join(", ")),
            )
        })
    }

    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Answers each sample from the cache or the model; the flag says which.
    /// Every sample must already match the model's input shapes. An error about one
    /// sample carries its index in `samples` (`ApiError::sample`).
    pub async fn infer(
        &self,
        model: &ModelWorker,
        mut samples: Vec<Sample>,
        request_id: &str,
    ) -> Result<Vec<(SampleOutputs, bool)>, ApiError> {
        let keys: Vec<u128> = samples.iter().map(|s| cache_key(&model.name, s)).collect();
        let mut results: Vec<Option<(SampleOutputs, bool)>> = vec![None; samples.len()];
        {
            let mut cache = self.cache.lock().unwrap();
            if cache.is_enabled() {
                for (slot, key) in results.iter_mut().zip(&keys) {
                    *slot = cache.get(*key).map(|o| (o, true));
                }
            }
        }
        let missing: Vec<usize> = (0..samples.len()).filter(|i| results[*i].is_none()).collect();
        let hits = (samples.len() - missing.len()) as u64;
        self.metrics.cache_hits.fetch_add(hits, Ordering::Relaxed);
        self.metrics
            .cache_misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);

        if !missing.is_empty() {
            let inputs = if let [only] = missing[..] {
                std::mem::take(&mut samples[only])
            } else {
                let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); model.meta.inputs.len()];
                for &i in &missing {
                    for (input, values) in inputs.iter_mut().zip(&samples[i]) {
                        input.extend_from_slice(values);
                    }
                }
                inputs
            };
            let (reply, answer) = oneshot::channel();
            let submitted = model.submit(Job {
                inputs,
                samples: missing.len(),
                enqueued: Instant::now(),
                request_id: request_id.to_string(),
                reply,
            });
            if let Err(e) = submitted {
                if e.code == "queue_full" {
                    self.metrics.record_rejection("queue_full");
                }
                return Err(e);
            }
            let outputs = answer
                .await
                .map_err(|_| ApiError::internal("the model thread stopped before answering"))?
                // The job held only the samples missing from the cache: name the caller's.
                .map_err(|mut e| {
                    e.sample = e.sample.map(|j| missing[j]);
                    e
                })?;
            let n = missing.len();
            let mut cache = self.cache.lock().unwrap();
            for (j, &i) in missing.iter().enumerate() {
                let sample: SampleOutputs = outputs
                    .iter()
                    .map(|flat| {
                        let len = flat.len() / n;
                        flat[j * len..(j + 1) * len].to_vec()
                    })
                    .collect();
                cache.insert(keys[i], sample.clone());
                results[i] = Some((sample, false));
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// The request id set by the request-id middleware (always present past it).
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(super::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
