//! KServe v2 / Open Inference Protocol, REST flavour: server and model metadata, health,
//! and `infer` with JSON tensors (FP32 only; the batch is the leading dimension).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::body::{body_kind, json_kind, json_number, read_json};
use super::error::ApiError;
use super::state::{request_id, AppState, Sample};
use super::worker::ModelWorker;

type AppResult = Result<Response, ApiError>;

fn tensor_meta(name: &str, shape: &[usize]) -> Value {
    let mut dims: Vec<i64> = vec![-1];
    dims.extend(shape.iter().map(|&d| d as i64));
    json!({"name": name, "datatype": "FP32", "shape": dims})
}

pub async fn server_metadata() -> Response {
    Json(json!({
        "name": "qp-engine",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
    .into_response()
}

pub async fn live() -> Response {
    Json(json!({"live": true})).into_response()
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready}))).into_response()
}

pub async fn model_metadata(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> AppResult {
    let model = state.model(&name)?;
    Ok(Json(json!({
        "name": model.name,
        "versions": ["1"],
        "platform": "qp",
        "inputs": model.meta.inputs.iter().map(|i| tensor_meta(&i.name, &i.shape)).collect::<Vec<_>>(),
        "outputs": model.meta.outputs.iter().map(|o| tensor_meta(&o.name, &o.shape)).collect::<Vec<_>>(),
    }))
    .into_response())
}

pub async fn model_ready(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> AppResult {
    let model = state.model(&name)?;
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!({"name": model.name, "ready": ready}))).into_response())
}

/// Flattens row-major nested arrays of numbers.
fn flatten_numbers(value: &Value, what: &str, out: &mut Vec<f32>) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten_numbers(item, what, out)?;
            }
            Ok(())
        }
        other => {
            let v = json_number(other, format_args!("an element of {what}"))?;
            let narrowed = v as f32;
            if !narrowed.is_finite() {
                return Err(ApiError::bad_request(
                    "non_finite",
                    format!("an element of {what} ({v}) overflows FP32"),
                ));
            }
            out.push(narrowed);
            Ok(())
        }
    }
}

struct ParsedInfer {
    id: Option<String>,
    samples: Vec<Sample>,
    batch: usize,
    requested_outputs: Option<Vec<String>>,
}

fn parse_infer(model: &ModelWorker, body: &Value, max_batch: usize) -> Result<ParsedInfer, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("expected a JSON object, got {}", json_kind(body)),
        ));
    };
    if let Some(extra) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "inputs" | "outputs" | "parameters"))
    {
        return Err(ApiError::bad_request(
            "unknown_field",
            format!("unknown field `{extra}`"),
        ));
    }
    let id = match map.get("id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_type",
                format!("`id` must be a string, not {}", json_kind(other)),
            ))
        }
    };
    let inputs = match map.get("inputs") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad_request("invalid_type", "`inputs` must be an array")),
        None => return Err(ApiError::bad_request("missing_field", "missing `inputs`")),
    };

    let meta = &model.meta;
    let mut given: Vec<Option<(usize, Vec<f32>)>> = vec![None; meta.inputs.len()];
    for (k, tensor) in inputs.iter().enumerate() {
        let at = format!("inputs[{k}]");
        let Value::Object(t) = tensor else {
            return Err(ApiError::bad_request("invalid_type", format!("{at} must be an object")));
        };
        if let Some(extra) = t
            .keys()
            .find(|k| !matches!(k.as_str(), "name" | "shape" | "datatype" | "data" | "parameters"))
        {
            return Err(ApiError::bad_request(
                "unknown_field",
                format!("{at}: unknown field `{extra}`"),
            ));
        }
        let name = match t.get("name") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(ApiError::bad_request(
                    "missing_field",
                    format!("{at}: missing string `name`"),
                ))
            }
        };
        let at = format!("input `{name}`");
        let index = meta.inputs.iter().position(|i| i.name == name).ok_or_else(|| {
            ApiError::bad_request(
                "unknown_input",
                format!(
                    "model `{}` has no input `{name}`; inputs: {}",
                    model.name,
                    meta.inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        if given[index].is_some() {
            return Err(ApiError::bad_request("duplicate_input", format!("{at} is given twice")));
        }
        match t.get("datatype") {
            Some(Value::String(d)) if d == "FP32" => {}
            Some(Value::String(d)) => {
                return Err(ApiError::bad_request(
                    "unsupported_datatype",
                    format!("{at}: datatype `{d}` is not supported; use FP32"),
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "missing_field",
                    format!("{at}: missing string `datatype`"),
                ))
            }
        }
        let shape: Vec<usize> = match t.get("shape") {
            Some(Value::Array(dims)) => dims
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_shape",
                        format!("{at}: `shape` must hold non-negative integers"),
                    )
                })?,
            _ => {
                return Err(ApiError::bad_request(
                    "missing_field",
                    format!("{at}: missing array `shape`"),
                ))
            }
        };
        let expected = &meta.inputs[index].shape;
        if shape.len() != expected.len() + 1 || shape[1..] != expected[..] {
            return Err(ApiError::bad_request(
                "invalid_shape",
                format!(
                    "{at}: shape {shape:?} does not match [N, {}]",
                    expected.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let batch = shape[0];
        if batch == 0 {
            return Err(ApiError::bad_request("invalid_shape", format!("{at}: batch size 0")));
        }
        if batch > max_batch {
            return Err(ApiError::bad_request(
                "batch_too_large",
                format!("{at}: batch {batch} is over the limit of {max_batch} (--max-request-batch)"),
            ));
        }
        let data = t
            .get("data")
            .ok_or_else(|| ApiError::bad_request("missing_field", format!("{at}: missing `data`")))?;
        let mut values = Vec::new();
        flatten_numbers(data, &at, &mut values)?;
        let want = shape.iter().product::<usize>();
        if values.len() != want {
            return Err(ApiError::bad_request(
                "invalid_shape",
                format!("{at}: shape {shape:?} needs {want} values, `data` has {}", values.len()),
            ));
        }
        given[index] = Some((batch, values));
    }
    let missing: Vec<&str> = meta
        .inputs
        .iter()
        .zip(&given)
        .filter(|(_, g)| g.is_none())
        .map(|(i, _)| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(
            "missing_input",
            format!("missing input(s): {}", missing.join(", ")),
        ));
    }
    let given: Vec<(usize, Vec<f32>)> = given.into_iter().flatten().collect();
    let batch = given[0].0;
    if given.iter().any(|(b, _)| *b != batch) {
        return Err(ApiError::bad_request(
            "invalid_shape",
            "inputs disagree on the batch size (leading dimension)",
        ));
    }
    let mut samples: Vec<Sample> = (0..batch).map(|_| Vec::with_capacity(given.len())).collect();
    for (_, values) in &given {
        let len = values.len() / batch;
        for (s, sample) in samples.iter_mut().enumerate() {
            sample.push(values[s * len..(s + 1) * len].to_vec());
        }
    }

    let requested_outputs = match map.get("outputs") {
        None => None,
        Some(Value::Array(outs)) => {
            let mut names = Vec::new();
            for o in outs {
                let name = o
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::bad_request("invalid_type", "each of `outputs` needs a string `name`"))?;
                if !meta.outputs.iter().any(|m| m.name == name) {
                    return Err(ApiError::bad_request(
                        "unknown_output",
                        format!("model `{}` has no output `{name}`", model.name),
                    ));
                }
                names.push(name.to_string());
            }
            Some(names)
        }
        Some(_) => return Err(ApiError::bad_request("invalid_type", "`outputs` must be an array")),
    };
    Ok(ParsedInfer {
        id,
        samples,
        batch,
        requested_outputs,
    })
}

pub async fn infer(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> AppResult {
    let start = Instant::now();
    let model = state.model(&name)?;
    body_kind(&headers, false)?;
    let body = read_json(request.into_body(), state.limits.max_body_bytes).await?;
    let parsed = parse_infer(&model, &body, state.limits.max_request_batch)?;
    let answers = state
        .infer(&model, parsed.samples, &request_id(&headers))
        .await
        .map_err(|e| e.locate_sample(|k| format!("sample {k} of the batch")))?;
    let all_cached = answers.iter().all(|(_, cached)| *cached);
    let outputs: Vec<Value> = model
        .meta
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| match &parsed.requested_outputs {
            None => true,
            Some(names) => names.contains(&o.name),
        })
        .map(|(k, o)| {
            let mut shape = vec![parsed.batch];
            shape.extend_from_slice(&o.shape);
            let data: Vec<f32> = answers.iter().flat_map(|(outs, _)| outs[k].iter().copied()).collect();
            json!({"name": o.name, "datatype": "FP32", "shape": shape, "data": data})
        })
        .collect();
    let mut response = json!({
        "model_name": model.name,
        "model_version": "1",
        "outputs": outputs,
        "parameters": {
            "cached": all_cached,
            "latency_ms": (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        },
    });
    if let Some(id) = parsed.id {
        response["id"] = json!(id);
    }
    Ok(Json(response).into_response())
}
