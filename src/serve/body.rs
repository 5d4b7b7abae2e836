//! Reading request bodies: content-type checks, size limits, JSON and multipart parsing,
//! all failing with the API's JSON errors.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine as _;
use serde_json::Value;

use super::error::ApiError;

pub enum BodyKind {
    Json,
    Multipart,
}

/// Accepts `application/json` (or any `+json` type), and multipart only where allowed.
pub fn body_kind(headers: &HeaderMap, multipart_allowed: bool) -> Result<BodyKind, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(BodyKind::Json)
    } else if multipart_allowed && essence == "multipart/form-data" {
        Ok(BodyKind::Multipart)
    } else {
        let expected = if multipart_allowed {
            "application/json or multipart/form-data"
        } else {
            "application/json"
        };
        let got = if content_type.is_empty() {
            "no content-type".to_string()
        } else {
            format!("content-type `{content_type}`")
        };
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected {expected}, got {got}"),
        ))
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is over the limit of {limit} bytes"),
    )
}

/// Reads the whole body as JSON, within `limit` bytes.
pub async fn read_json(body: Body, limit: usize) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return too_large(limit);
            }
            source = err.source();
        }
        ApiError::bad_request("body_read_error", format!("could not read the request body: {inner}"))
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("malformed_json", "the request body is empty"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("malformed_json", format!("invalid JSON: {e}")))
}

/// A `/predict` request before it is matched to a model.
#[derive(Debug, Default)]
pub struct PredictInput {
    pub model: Option<String>,
    pub image: Option<Vec<u8>>,
    pub fields: BTreeMap<String, f64>,
}

/// A number from a JSON value; strings spelling non-finite values get their own error
/// because JSON has no way to carry NaN or infinity.
pub fn json_number(value: &Value, what: impl std::fmt::Display) -> Result<f64, ApiError> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| ApiError::bad_request("non_finite", format!("{what} is not a finite number"))),
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(v) if !v.is_finite() => Err(ApiError::bad_request(
                "non_finite",
                format!("{what} is \"{s}\"; NaN and infinities are not accepted"),
            )),
            _ => Err(ApiError::bad_request(
                "invalid_type",
                format!("{what} must be a JSON number, not a string"),
            )),
        },
        other => Err(ApiError::bad_request(
            "invalid_type",
            format!("{what} must be a JSON number, not {}", json_kind(other)),
        )),
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn decode_base64_image(text: &str) -> Result<Vec<u8>, ApiError> {
    // Accept data URLs (`data:image/png;base64,...`) as browsers produce them.
    let payload = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or(rest, |(_, data)| data),
        None => text,
    };
    let compact: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&compact))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&compact))
        .map_err(|e| ApiError::bad_request("invalid_image", format!("`image` is not valid base64: {e}")))
}

/// Parses one flat `/predict` object: `model` (string), `image` (base64 string) and
/// numeric feature fields.
pub fn parse_predict_object(value: Value) -> Result<PredictInput, ApiError> {
    let map = match value {
        Value::Object(map) => map,
        other => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("expected a JSON object, got {}", json_kind(&other)),
            ))
        }
    };
    let mut input = PredictInput::default();
    for (key, v) in map {
        match key.as_str() {
            "model" => match v {
                Value::String(s) => input.model = Some(s),
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!("`model` must be a string, not {}", json_kind(&other)),
                    ))
                }
            },
            "image" => match v {
                Value::String(s) => input.image = Some(decode_base64_image(&s)?),
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_type",
                        format!("`image` must be a base64 string, not {}", json_kind(&other)),
                    ))
                }
            },
            _ => {
                let number = json_number(&v, format_args!("field `{key}`"))?;
                input.fields.insert(key, number);
            }
        }
    }
    Ok(input)
}

/// Parses a multipart `/predict` form: an `image` file part, an optional `model` part,
/// and one text part per numeric field.
pub async fn read_multipart(request: Request, limit: usize) -> Result<PredictInput, ApiError> {
    let map_err = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::bad_request(
                "malformed_multipart",
                format!("invalid multipart body: {}", e.body_text()),
            )
        }
    };
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request("malformed_multipart", e.body_text()))?;
    let mut input = PredictInput::default();
    while let Some(field) = multipart.next_field().await.map_err(map_err)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "" => {
                return Err(ApiError::bad_request(
                    "malformed_multipart",
                    "a multipart part has no name",
                ))
            }
            "image" => input.image = Some(field.bytes().await.map_err(map_err)?.to_vec()),
            "model" => input.model = Some(field.text().await.map_err(map_err)?),
            _ => {
                let text = field.text().await.map_err(map_err)?;
                let value: f64 = text.trim().parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_type",
                        format!("field `{name}` must be a number, got \"{text}\""),
                    )
                })?;
                if !value.is_finite() {
                    return Err(ApiError::bad_request(
                        "non_finite",
                        format!("field `{name}` is \"{text}\"; NaN and infinities are not accepted"),
                    ));
                }
                input.fields.insert(name, value);
            }
        }
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_and_their_failures() {
        assert_eq!(json_number(&json!(1.5), "x").unwrap(), 1.5);
        assert_eq!(json_number(&json!(3), "x").unwrap(), 3.0);
        assert_eq!(json_number(&json!("NaN"), "x").unwrap_err().code, "non_finite");
        assert_eq!(json_number(&json!("-inf"), "x").unwrap_err().code, "non_finite");
        assert_eq!(json_number(&json!("Infinity"), "x").unwrap_err().code, "non_finite");
        assert_eq!(json_number(&json!("1.0"), "x").unwrap_err().code, "invalid_type");
        assert_eq!(json_number(&json!(null), "x").unwrap_err().code, "invalid_type");
        assert_eq!(json_number(&json!([1]), "x").unwrap_err().code, "invalid_type");
    }

    #[test]
    fn base64_variants_decode() {
        assert_eq!(decode_base64_image("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64_image("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64_image("data:image/png;base64,aG\nk=").unwrap(), b"hi");
        assert_eq!(decode_base64_image("***").unwrap_err().code, "invalid_image");
    }

    #[test]
    fn predict_object_parses_fields() {
        let p = parse_predict_object(json!({"a": 1, "model": "m", "image": "aGk="})).unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert_eq!(p.image.as_deref(), Some(&b"hi"[..]));
        assert_eq!(p.fields.get("a"), Some(&1.0));
        assert_eq!(parse_predict_object(json!([1])).unwrap_err().code, "invalid_body");
        assert_eq!(
            parse_predict_object(json!({"model": 3})).unwrap_err().code,
            "invalid_type"
        );
        assert_eq!(
            parse_predict_object(json!({"a": "nan"})).unwrap_err().code,
            "non_finite"
        );
    }
}
