//! The HTTP API against a real server on 127.0.0.1 (port 0), with deterministic test
//! models standing in for the engine so every answer can be checked exactly.

mod serve_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use serve_common::*;

fn close(a: f64, b: f32) -> bool {
    (a - f64::from(b)).abs() < 1e-5
}

#[test]
fn predict_features_answers_and_caches() {
    let (server, runs) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    let body = json!({"a": 5.0, "b": 0.25, "c": 0.5});
    let r = post_json(addr, "/predict", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(
        close(v["predicted_ssim"].as_f64().unwrap(), feature_expected(5.0, 0.25, 0.5)),
        "{v}"
    );
    assert_eq!(v["model"], "qualitynet-features");
    assert_eq!(v["cached"], false);
    assert!(v["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(["low", "medium", "high"].contains(&v["confidence"].as_str().unwrap()));
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));

    let again = post_json(addr, "/predict", &body).json();
    assert_eq!(again["cached"], true);
    assert_eq!(again["predicted_ssim"], v["predicted_ssim"]);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the second answer came from the cache");

    // Defaults: `b` may be left out.
    let v = post_json(addr, "/predict", &json!({"a": 10, "c": 0})).json();
    assert!(
        close(v["predicted_ssim"].as_f64().unwrap(), feature_expected(10.0, 0.0, 0.0)),
        "{v}"
    );
    server.shutdown().unwrap();
}

#[test]
fn confidence_follows_the_documented_rule() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    // a'=0.9, b=0.8 (position 0.9), c'=0.9: margin 0.1, prediction sigmoid(1.6) = 0.83
    // (0.33 from 0.5) -> medium, because the margin is under 0.15.
    let v = post_json(addr, "/predict", &json!({"a": 9.0, "b": 0.8, "c": 0.9})).json();
    assert_eq!(v["confidence"], "medium", "{v}");
    // a'=0.8, b=0.6 (position 0.8), c'=0.8: margin 0.2, sigmoid(1.2) = 0.77 (0.27) -> high.
    let v = post_json(addr, "/predict", &json!({"a": 8.0, "b": 0.6, "c": 0.8})).json();
    assert_eq!(v["confidence"], "high", "{v}");
    // Margin 0.3 but sigmoid(0.0) = 0.5 exactly: not decisive -> low.
    let v = post_json(addr, "/predict", &json!({"a": 3.0, "b": 0.0, "c": 0.7})).json();
    assert_eq!(v["confidence"], "low", "{v}");
    // On the edge of the box -> low.
    let v = post_json(addr, "/predict", &json!({"a": 10.0, "b": 0.0, "c": 0.5})).json();
    assert_eq!(v["confidence"], "low", "{v}");
    server.shutdown().unwrap();
}

#[test]
fn predict_image_routes_to_the_image_model() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    // Opaque mid-grey 51/255 = 0.2 in every channel; p = 0.5 (default), q = 50.
    let image = base64(&png(9, 7, [51, 51, 51, 255]));
    let r = post_json(addr, "/predict", &json!({"image": image, "q": 50}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["model"], "qualitynet");
    let expected = 0.5 * 0.2 + 0.25 * 0.5 + 0.25 * 0.5;
    assert!((v["predicted_ssim"].as_f64().unwrap() - expected).abs() < 1e-4, "{v}");

    // A data URL works too, and transparent pixels count as white.
    let image = format!("data:image/png;base64,{}", base64(&png(4, 4, [0, 0, 0, 0])));
    let v = post_json(addr, "/predict", &json!({"image": image, "q": 0, "p": 0})).json();
    assert!((v["predicted_ssim"].as_f64().unwrap() - 0.5).abs() < 1e-4, "{v}");
    server.shutdown().unwrap();
}

#[test]
fn predict_image_as_multipart() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    let boundary = "XqpBoundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&png(4, 4, [255, 255, 255, 255]));
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\n100\r\n--{boundary}--\r\n")
            .as_bytes(),
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = request(addr, "POST", "/predict", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let expected = 0.5 * 1.0 + 0.25 * 0.5 + 0.25 * 1.0;
    assert!((r.json()["predicted_ssim"].as_f64().unwrap() - expected).abs() < 1e-4);

    let bad = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"q\"\r\n\r\nNaN\r\n--{boundary}--\r\n");
    let r = request(
        addr,
        "POST",
        "/predict?model=qualitynet",
        &[("Content-Type", &ct)],
        bad.as_bytes(),
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "non_finite"), "{}", r.text());
    let r = request(addr, "POST", "/predict", &[("Content-Type", &ct)], b"garbage");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "malformed_multipart");
    server.shutdown().unwrap();
}

#[test]
fn model_selection_by_field_and_query() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    let body = json!({"a": 1, "c": 1, "model": "qualitynet-features"});
    assert_eq!(post_json(addr, "/predict", &body).status, 200);
    let r = post_json(addr, "/predict?model=qualitynet-features", &json!({"a": 1, "c": 1}));
    assert_eq!(r.status, 200);
    let r = post_json(addr, "/predict?model=nope", &json!({"a": 1, "c": 1}));
    assert_eq!((r.status, r.error_code().as_str()), (404, "model_not_found"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("qualitynet-features"));
    let r = post_json(addr, "/predict?model=raw", &json!({"model": "qualitynet"}));
    assert_eq!((r.status, r.error_code().as_str()), (400, "conflicting_model"));
    let r = post_json(addr, "/predict", &json!({"model": "raw", "x": 1}));
    assert_eq!(r.status, 400, "a raw-tensor model is not reachable through /predict");
    assert!(r.text().contains("/v2/models/raw/infer"), "{}", r.text());
    server.shutdown().unwrap();
}

#[test]
fn predict_batch_keeps_order_across_models() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    let image = base64(&png(4, 4, [0, 0, 0, 255]));
    let body = json!({"items": [
        {"a": 0, "c": 0},
        {"image": image, "q": 100, "p": 1},
        {"a": 10, "c": 1, "b": 1},
    ]});
    let r = post_json(addr, "/predict/batch", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(close(
        results[0]["predicted_ssim"].as_f64().unwrap(),
        feature_expected(0.0, 0.0, 0.0)
    ));
    assert_eq!(results[1]["model"], "qualitynet");
    assert!((results[1]["predicted_ssim"].as_f64().unwrap() - 0.5).abs() < 1e-4);
    assert!(close(
        results[2]["predicted_ssim"].as_f64().unwrap(),
        feature_expected(10.0, 1.0, 1.0)
    ));
    assert!(v["latency_ms"].is_number());

    let r = post_json(
        addr,
        "/predict/batch",
        &json!({"items": [{"a": 1, "c": 1}, {"a": 11, "c": 1}]}),
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "out_of_range"));
    assert!(r.text().contains("items[1]"), "{}", r.text());
    for (body, code) in [
        (json!({"items": []}), "empty_batch"),
        (json!({"items": {}}), "invalid_type"),
        (json!({}), "missing_field"),
        (json!({"items": [], "extra": 1}), "unknown_field"),
    ] {
        let r = post_json(addr, "/predict/batch", &body);
        assert_eq!((r.status, r.error_code()), (400, code.to_string()), "{body}");
    }
    server.shutdown().unwrap();

    let (server, _) = start_fakes(&["--max-request-batch", "2"], Duration::ZERO);
    let items: Vec<Value> = (0..3).map(|i| json!({"a": i, "c": 0})).collect();
    let r = post_json(server.local_addr(), "/predict/batch", &json!({"items": items}));
    assert_eq!((r.status, r.error_code().as_str()), (400, "batch_too_large"));
    server.shutdown().unwrap();
}

#[test]
fn bad_input_gets_a_named_4xx() {
    let (server, _) = start_fakes(&["--max-image-pixels", "1000"], Duration::ZERO);
    let addr = server.local_addr();
    let json_ct = [("Content-Type", "application/json")];
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{\"a\": 1,", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[1, 2]", 400, "invalid_body"),
        (b"{\"a\": 1}", 400, "missing_field"),
        (b"{\"a\": 1, \"c\": 1, \"zzz\": 2}", 400, "unknown_field"),
        (b"{\"a\": \"NaN\", \"c\": 1}", 400, "non_finite"),
        (b"{\"a\": \"inf\", \"c\": 1}", 400, "non_finite"),
        (b"{\"a\": 1e999, \"c\": 1}", 400, "malformed_json"),
        (b"{\"a\": \"1\", \"c\": 1}", 400, "invalid_type"),
        (b"{\"a\": null, \"c\": 1}", 400, "invalid_type"),
        (b"{\"a\": 10.5, \"c\": 1}", 400, "out_of_range"),
        (b"{\"a\": 1, \"c\": -0.1}", 400, "out_of_range"),
        (b"{\"image\": \"!!!notbase64\", \"q\": 1}", 400, "invalid_image"),
        (b"{\"image\": \"aGVsbG8=\", \"q\": 1}", 400, "invalid_image"),
        (b"{\"image\": 5, \"q\": 1}", 400, "invalid_type"),
        (b"{\"model\": \"qualitynet\", \"q\": 1}", 400, "missing_field"),
        (
            b"{\"model\": \"qualitynet-features\", \"image\": \"aGk=\", \"a\": 1, \"c\": 1}",
            400,
            "unknown_field",
        ),
    ];
    for (body, status, code) in cases {
        let r = request(addr, "POST", "/predict", &json_ct, body);
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.to_string()),
            "{} -> {}",
            String::from_utf8_lossy(body),
            r.text()
        );
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
    }
    // The message names the problem.
    let r = request(addr, "POST", "/predict", &json_ct, b"{\"a\": 1, \"c\": 1, \"zzz\": 2}");
    assert!(r.text().contains("zzz"), "{}", r.text());
    let r = request(addr, "POST", "/predict", &json_ct, b"{\"a\": 10.5, \"c\": 1}");
    assert!(r.text().contains("`a`"), "{}", r.text());

    // 40x40 = 1600 pixels > 1000.
    let big = base64(&png(40, 40, [1, 2, 3, 255]));
    let r = post_json(addr, "/predict", &json!({"image": big, "q": 1}));
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "image_too_large"),
        "{}",
        r.text()
    );

    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = request(addr, "POST", "/predict", &[("Content-Type", ct)], b"{\"a\":1,\"c\":1}");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (415, "unsupported_media_type"),
            "{ct}"
        );
    }
    let r = request(addr, "POST", "/predict", &[], b"{\"a\":1,\"c\":1}");
    assert_eq!(r.status, 415);

    let r = get(addr, "/no/such/route");
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = get(addr, "/predict");
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
    server.shutdown().unwrap();
}

#[test]
fn oversized_body_is_413_json() {
    let (server, _) = start_fakes(&["--max-body-bytes", "1000"], Duration::ZERO);
    let addr = server.local_addr();
    let filler = "x".repeat(2000);
    let body = json!({"a": 1, "c": 1, "pad": filler}).to_string();
    for path in ["/predict", "/predict/batch", "/v2/models/raw/infer"] {
        let r = request(
            addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (413, "payload_too_large"),
            "{path}: {}",
            r.text()
        );
    }
    server.shutdown().unwrap();
}

#[test]
fn model_health_ready_metrics() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    let all = get(addr, "/model").json();
    let names: Vec<&str> = all["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["qualitynet-features", "qualitynet", "raw"]);
    let m = get(addr, "/model?model=qualitynet").json();
    for key in [
        "precision",
        "isa",
        "threads",
        "reports",
        "load_time_ms",
        "inputs",
        "outputs",
        "executor",
    ] {
        assert!(m.get(key).is_some(), "/model lacks {key}: {m}");
    }
    assert_eq!(m["inputs"][0]["image"]["height"], 4);
    assert_eq!(m["inputs"][1]["features"][1]["name"], "q");
    assert_eq!(get(addr, "/model?model=x").status, 404);

    post_json(addr, "/predict", &json!({"a": 1, "c": 1}));
    post_json(addr, "/predict", &json!({"a": 1, "c": 1}));
    post_json(addr, "/predict", &json!({"a": 99, "c": 1}));

    let h = get(addr, "/health");
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["models"].as_array().unwrap().len(), 3);
    assert_eq!(h["cache"]["entries"], 1);
    assert!(h["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
    if cfg!(target_os = "linux") {
        assert!(h["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    }
    let r = get(addr, "/ready");
    assert_eq!((r.status, r.json()["ready"].as_bool()), (200, Some(true)));

    let text = get(addr, "/metrics").text();
    for needle in [
        "qp_http_requests_total{route=\"/predict\",status=\"200\",outcome=\"ok\"} 2",
        "qp_http_requests_total{route=\"/predict\",status=\"400\",outcome=\"client_error\"} 1",
        "qp_inferences_total{model=\"qualitynet-features\"} 1",
        "qp_engine_runs_total{model=\"qualitynet-features\"} 1",
        "qp_cache_hits_total 1",
        "qp_cache_misses_total 1",
        "qp_rejections_total{reason=\"queue_full\"} 0",
        "qp_queue_seconds_count{model=\"qualitynet-features\"} 1",
        "qp_compute_seconds_count{model=\"qualitynet-features\"} 1",
        "# TYPE qp_http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(needle), "metrics lack `{needle}`:\n{text}");
    }
    if cfg!(target_os = "linux") {
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }
    server.shutdown().unwrap();
}

#[test]
fn kserve_v2_endpoints() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    assert_eq!(get(addr, "/v2").json()["name"], "qp-engine");
    assert_eq!(get(addr, "/v2/health/live").json()["live"], true);
    assert_eq!(get(addr, "/v2/health/ready").json()["ready"], true);
    let m = get(addr, "/v2/models/raw").json();
    assert_eq!(
        m["inputs"][0],
        json!({"name": "x", "datatype": "FP32", "shape": [-1, 2]})
    );
    assert_eq!(m["outputs"][1]["name"], "sum");
    assert_eq!(get(addr, "/v2/models/raw/ready").json()["ready"], true);
    assert_eq!(get(addr, "/v2/models/none/ready").status, 404);
    assert_eq!(get(addr, "/v2/models/none").status, 404);

    let body = json!({"id": "req-1", "inputs": [
        {"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [[1, 2], [3, 4], [5, 6]]}
    ]});
    let r = post_json(addr, "/v2/models/raw/infer", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], "req-1");
    assert_eq!(v["model_name"], "raw");
    assert_eq!(
        v["outputs"][0],
        json!({"name": "y", "datatype": "FP32", "shape": [3, 2], "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]})
    );
    assert_eq!(
        v["outputs"][1],
        json!({"name": "sum", "datatype": "FP32", "shape": [3, 1], "data": [3.0, 7.0, 11.0]})
    );

    let only_sum = json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}],
                          "outputs": [{"name": "sum"}]});
    let v = post_json(addr, "/v2/models/raw/infer", &only_sum).json();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(v["outputs"][0]["data"], json!([2.0]));

    let x = |shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]});
    let cases = vec![
        (x(json!([1, 2]), "INT64", json!([1, 2])), 400, "unsupported_datatype"),
        (x(json!([1, 3]), "FP32", json!([1, 2, 3])), 400, "invalid_shape"),
        (x(json!([2]), "FP32", json!([1, 2])), 400, "invalid_shape"),
        (x(json!([0, 2]), "FP32", json!([])), 400, "invalid_shape"),
        (x(json!([1, -2]), "FP32", json!([1, 2])), 400, "invalid_shape"),
        (x(json!([2, 2]), "FP32", json!([1, 2, 3])), 400, "invalid_shape"),
        (x(json!([1, 2]), "FP32", json!([1, "NaN"])), 400, "non_finite"),
        (x(json!([1, 2]), "FP32", json!([1, 1e39])), 400, "non_finite"),
        (x(json!([1, 2]), "FP32", json!([1, true])), 400, "invalid_type"),
        (json!({"inputs": []}), 400, "missing_input"),
        (json!({}), 400, "missing_field"),
        (
            json!({"inputs": [{"name": "y", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
            400,
            "unknown_input",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
                           {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
            400,
            "duplicate_input",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                "outputs": [{"name": "nope"}]}),
            400,
            "unknown_output",
        ),
    ];
    for (body, status, code) in cases {
        let r = post_json(addr, "/v2/models/raw/infer", &body);
        assert_eq!(
            (r.status, r.error_code()),
            (status, code.to_string()),
            "{body} -> {}",
            r.text()
        );
    }
    let r = post_json(addr, "/v2/models/none/infer", &x(json!([1, 2]), "FP32", json!([1, 2])));
    assert_eq!((r.status, r.error_code().as_str()), (404, "model_not_found"));

    // Multi-input model: batch sizes must agree.
    let img = vec![0.5f32; 2 * 48];
    let body = json!({"inputs": [
        {"name": "image", "shape": [2, 3, 4, 4], "datatype": "FP32", "data": img},
        {"name": "params", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 0.5]},
    ]});
    let r = post_json(addr, "/v2/models/qualitynet/infer", &body);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_shape"),
        "{}",
        r.text()
    );
    let body = json!({"inputs": [
        {"name": "image", "shape": [2, 3, 4, 4], "datatype": "FP32", "data": img},
        {"name": "params", "shape": [2, 2], "datatype": "FP32", "data": [0.0, 0.0, 1.0, 1.0]},
    ]});
    let v = post_json(addr, "/v2/models/qualitynet/infer", &body).json();
    assert_eq!(v["outputs"][0]["data"], json!([0.25, 0.75]));
    server.shutdown().unwrap();
}

#[test]
fn request_id_is_echoed_or_generated() {
    let (server, _) = start_fakes(&[], Duration::ZERO);
    let addr = server.local_addr();
    let r = request(addr, "GET", "/health", &[("x-request-id", "abc-123")], b"");
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let a = get(addr, "/health");
    let b = get(addr, "/health");
    let (a, b) = (a.header("x-request-id").unwrap(), b.header("x-request-id").unwrap());
    assert_ne!(a, b);
    // Ids unfit for logs are replaced.
    let r = request(addr, "GET", "/health", &[("x-request-id", "has space\"quote")], b"");
    assert_ne!(r.header("x-request-id"), Some("has space\"quote"));
    assert!(!r.header("x-request-id").unwrap().is_empty());
    // Errors carry it too.
    let r = request(addr, "GET", "/nowhere", &[("x-request-id", "e-1")], b"");
    assert_eq!((r.status, r.header("x-request-id")), (404, Some("e-1")));
    server.shutdown().unwrap();
}

#[test]
fn cors_and_gzip() {
    let (server, _) = start_fakes(&["--cors-origin", "https://app.example"], Duration::ZERO);
    let addr = server.local_addr();
    let r = request(addr, "GET", "/health", &[("Origin", "https://app.example")], b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    let r = request(addr, "GET", "/health", &[("Origin", "https://evil.example")], b"");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = request(
        addr,
        "OPTIONS",
        "/predict",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert!(r.status < 300, "preflight: {}", r.status);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));

    let r = request(addr, "GET", "/metrics", &[("Accept-Encoding", "gzip")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(&r.body[..2], &[0x1f, 0x8b], "gzip magic");
    let r = get(addr, "/metrics");
    assert_eq!(r.header("content-encoding"), None);
    server.shutdown().unwrap();
}

#[test]
fn rate_limit_per_client() {
    let (server, _) = start_fakes(&["--rate-limit", "0.5", "--rate-limit-burst", "2"], Duration::ZERO);
    let addr = server.local_addr();
    let body = json!({"a": 1, "c": 1});
    assert_eq!(post_json(addr, "/predict", &body).status, 200);
    assert_eq!(post_json(addr, "/predict", &body).status, 200);
    let r = post_json(addr, "/predict", &body);
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(r.header("x-request-id").is_some(), "refusals carry a request id too");
    assert_eq!(get(addr, "/health").status, 200, "probes are exempt");
    assert!(get(addr, "/metrics")
        .text()
        .contains("qp_rejections_total{reason=\"rate_limited\"} 1"));
    server.shutdown().unwrap();
}

#[test]
fn full_queue_is_503_with_retry_after() {
    // One slow sample at a time, a queue of one: a burst must overflow.
    let (server, _) = start_fakes(
        &["--queue-capacity", "1", "--max-batch", "1", "--cache-entries", "0"],
        Duration::from_millis(300),
    );
    let addr = server.local_addr();
    let threads: Vec<_> = (0..6)
        .map(|i| std::thread::spawn(move || post_json(addr, "/predict", &json!({"a": i, "c": 1}))))
        .collect();
    let responses: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let rejected: Vec<&Resp> = responses.iter().filter(|r| r.status == 503).collect();
    assert!(ok >= 1, "some requests succeed");
    assert!(
        !rejected.is_empty(),
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(ok + rejected.len(), 6);
    for r in rejected {
        assert_eq!(r.error_code(), "queue_full");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    server.shutdown().unwrap();
}

#[test]
fn a_batch_does_not_wait_for_requests_that_cannot_come() {
    // Three clients, a 200 ms engine and a 4 s batching delay. The first request runs
    // alone; the other two queue behind it and are then the only requests in flight, so
    // their batch must run at once instead of waiting out the delay for a third. (The
    // model thread looks again every quarter of the delay, so at worst 1 s is lost.)
    let (server, runs) = start_fakes(
        &["--max-batch", "8", "--max-delay-us", "4000000", "--cache-entries", "0"],
        Duration::from_millis(200),
    );
    let addr = server.local_addr();
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                // Stagger the arrivals so that the first one finds the engine idle.
                std::thread::sleep(Duration::from_millis(10 * i));
                post_json(addr, "/predict", &json!({"a": i, "c": 0.5})).status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(3000),
        "3 requests took {elapsed:?}: a batch waited for a request that was not coming"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run alone, then one batch of two");
    let text = get(addr, "/metrics").text();
    assert!(
        text.contains("qp_http_requests_in_flight 1\n"),
        "only the scrape itself: {text}"
    );
    server.shutdown().unwrap();
}

#[test]
fn concurrent_requests_are_batched() {
    let (server, runs) = start_fakes(
        &["--max-batch", "8", "--cache-entries", "0"],
        Duration::from_millis(100),
    );
    let addr = server.local_addr();
    let threads: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let a = f64::from(i) / 2.0;
                let r = post_json(addr, "/predict", &json!({"a": a, "c": 0.5}));
                (a, r)
            })
        })
        .collect();
    for t in threads {
        let (a, r) = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        // Each request gets its own sample's answer back out of the batch.
        let got = r.json()["predicted_ssim"].as_f64().unwrap();
        assert!(close(got, feature_expected(a as f32, 0.0, 0.5)), "a={a}: {got}");
    }
    let runs = runs.load(Ordering::SeqCst);
    assert!(
        runs < 12,
        "12 concurrent requests took {runs} engine runs; expected batching"
    );
    let text = get(addr, "/metrics").text();
    assert!(
        text.contains("qp_inferences_total{model=\"qualitynet-features\"} 12"),
        "{text}"
    );
    server.shutdown().unwrap();
}

#[test]
fn shutdown_finishes_accepted_requests_in_process() {
    let (server, _) = start_fakes(&["--cache-entries", "0"], Duration::from_millis(400));
    let addr = server.local_addr();
    let threads: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || post_json(addr, "/predict", &json!({"a": i, "c": 1}))))
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    server.shutdown().unwrap();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener is closed");
}

#[test]
fn startup_errors_are_clear() {
    // Duplicate model names.
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let specs = vec![
        fake_spec(raw_meta(), Duration::ZERO, runs.clone()),
        fake_spec(raw_meta(), Duration::ZERO, runs),
    ];
    let err = qp::serve::start(&args(&[]), specs, false)
        .err()
        .expect("duplicate names refused");
    assert!(err.to_string().contains("raw"), "{err}");

    // A model file that is not there, and a missing bundled weights dir.
    let a = args(&["--model", "/nonexistent/x.qpw"]);
    let err = qp::serve::resolve_models(&a).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.qpw"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let a = args(&["--model-dir", dir.path().to_str().unwrap()]);
    let err = qp::serve::resolve_models(&a).unwrap_err();
    assert!(err.to_string().contains("no .qpw"), "{err}");
    std::fs::write(dir.path().join("one.qpw"), b"x").unwrap();
    std::fs::write(dir.path().join("two.qpw"), b"x").unwrap();
    std::fs::write(dir.path().join("skip.txt"), b"x").unwrap();
    let names: Vec<String> = qp::serve::resolve_models(&a)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["one", "two"]);
    // A file that is not a model fails to load with its path in the message.
    let err = qp::serve::run(args(&["--model", dir.path().join("one.qpw").to_str().unwrap()])).unwrap_err();
    assert!(format!("{err:#}").contains("one.qpw"), "{err:#}");
}
