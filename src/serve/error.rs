//! The one error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::preprocess::PreprocessError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (503 and 429).
    pub retry_after: Option<u64>,
    /// For an error about one sample of a multi-sample job: its index among the job's
    /// samples, which the handler turns into a location in its request (`items[3]`).
    pub sample: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            sample: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// Prefixes the message with where in the request the problem is (e.g. `items[3]`).
    pub fn at(mut self, location: &str) -> ApiError {
        self.message = format!("{location}: {}", self.message);
        self
    }

    /// Marks the error as one sample's (see `sample`).
    pub fn for_sample(mut self, sample: usize) -> ApiError {
        self.sample = Some(sample);
        self
    }

    /// Turns `sample` into a location with `locate(sample)`, if the error has one.
    pub fn locate_sample(mut self, locate: impl FnOnce(usize) -> String) -> ApiError {
        match self.sample.take() {
            Some(k) => self.at(&locate(k)),
            None => self,
        }
    }

    /// The JSON code for a status that arrived without one (axum's own rejections,
    /// the body-limit layer, unmatched routes).
    pub fn code_for_status(status: StatusCode) -> &'static str {
        match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::REQUEST_TIMEOUT => "timeout",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_client_error() => "bad_request",
            _ => "internal",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl From<PreprocessError> for ApiError {
    fn from(e: PreprocessError) -> ApiError {
        let status = if e.is_client_error() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, status = self.status.as_u16(), "{}", self.message);
        } else {
            tracing::info!(code = self.code, status = self.status.as_u16(), "{}", self.message);
        }
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
