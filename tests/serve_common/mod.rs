//! Shared by the serve_* tests: a minimal blocking HTTP/1.1 client over `TcpStream`, and
//! small deterministic models (test doubles of the engine with known outputs) so the
//! HTTP layer can be checked exactly.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use qp::engine::{EngineError, Tensor};
use qp::format::meta::{DType, Feature, ImagePreprocess, IoSpec, ModelMeta, ModelStats, SourceInfo};
use qp::serve::{BackendInfo, InferenceBackend, ModelSpec, ServeArgs, ServerHandle};
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

pub fn args(extra: &[&str]) -> ServeArgs {
    let mut argv = vec!["serve", "--port", "0", "--host", "127.0.0.1"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("test flags parse").serve
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        let v = self.json();
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {v}"))
            .to_string()
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (e.g. 413) before reading everything; a failed write is fine.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn feature(name: &str, min: f32, max: f32, default: Option<f32>, normalize: bool) -> Feature {
    Feature {
        name: name.into(),
        min,
        max,
        default,
        description: String::new(),
        normalize,
    }
}

fn io(name: &str, shape: &[usize]) -> IoSpec {
    IoSpec {
        name: name.into(),
        value: 0,
        dtype: DType::F32,
        shape: shape.to_vec(),
        features: None,
        image: None,
    }
}

fn meta(name: &str, inputs: Vec<IoSpec>, outputs: Vec<IoSpec>) -> ModelMeta {
    ModelMeta {
        name: name.into(),
        description: format!("test model {name}"),
        precision: "fp32".into(),
        source: SourceInfo::default(),
        inputs,
        outputs,
        values: vec![],
        nodes: vec![],
        tensors: vec![],
        stats: ModelStats::default(),
        reports: Default::default(),
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Feature model: `a` in [0,10] (normalized), `b` in [-1,1] (raw, default 0), `c` in
/// [0,1] (normalized); output `predicted_ssim = sigmoid(a' + b + c' - 1)`.
pub fn feature_meta() -> ModelMeta {
    let mut input = io("features", &[3]);
    input.features = Some(vec![
        feature("a", 0.0, 10.0, None, true),
        feature("b", -1.0, 1.0, Some(0.0), false),
        feature("c", 0.0, 1.0, None, true),
    ]);
    meta("qualitynet-features", vec![input], vec![io("predicted_ssim", &[1])])
}

pub fn feature_expected(a: f32, b: f32, c: f32) -> f32 {
    sigmoid(a / 10.0 + b + c - 1.0)
}

/// Image model: `image` 3x4x4 (mean 0, std 1), `params` = [p in [0,1] default 0.5, q in
/// [0,100]], both normalized; output `ssim = 0.5 * mean(image) + 0.25 * p' + 0.25 * q'`.
pub fn image_meta() -> ModelMeta {
    let mut image = io("image", &[3, 4, 4]);
    image.image = Some(ImagePreprocess {
        height: 4,
        width: 4,
        mean: [0.0; 3],
        std: [1.0; 3],
    });
    let mut params = io("params", &[2]);
    params.features = Some(vec![
        feature("p", 0.0, 1.0, Some(0.5), true),
        feature("q", 0.0, 100.0, None, true),
    ]);
    meta("qualitynet", vec![image, params], vec![io("ssim", &[1])])
}

/// Raw model: `x` [2] -> `y` = 2x [2] and `sum` = x0 + x1 [1].
pub fn raw_meta() -> ModelMeta {
    meta("raw", vec![io("x", &[2])], vec![io("y", &[2]), io("sum", &[1])])
}

pub struct FakeModel {
    pub meta: ModelMeta,
    pub delay: Duration,
    pub runs: Arc<AtomicUsize>,
}

impl InferenceBackend for FakeModel {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, EngineError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let n = inputs[0].1.shape[0];
        for (name, t) in inputs {
            let spec = self.meta.inputs.iter().find(|i| i.name == *name).expect("known input");
            assert_eq!(t.shape[1..], spec.shape[..], "server passed a wrong shape");
            assert_eq!(t.shape[0], n);
        }
        let per = |i: usize, s: usize| {
            let t = &inputs[i].1;
            let len = t.data.len() / n;
            &t.data[s * len..(s + 1) * len]
        };
        Ok(match self.meta.name.as_str() {
            "qualitynet-features" => {
                let data = (0..n).map(|s| sigmoid(per(0, s).iter().sum::<f32>() - 1.0)).collect();
                vec![("predicted_ssim".into(), Tensor::new(vec![n, 1], data))]
            }
            "qualitynet" => {
                let data = (0..n)
                    .map(|s| {
                        let img = per(0, s);
                        let mean = img.iter().sum::<f32>() / img.len() as f32;
                        let p = per(1, s);
                        0.5 * mean + 0.25 * p[0] + 0.25 * p[1]
                    })
                    .collect();
                vec![("ssim".into(), Tensor::new(vec![n, 1], data))]
            }
            _ => {
                let x = &inputs[0].1.data;
                let y = x.iter().map(|v| 2.0 * v).collect();
                let sum = x.chunks(2).map(|c| c[0] + c[1]).collect();
                // Outputs deliberately out of order: the server must match them by name.
                vec![
                    ("sum".into(), Tensor::new(vec![n, 1], sum)),
                    ("y".into(), Tensor::new(vec![n, 2], y)),
                ]
            }
        })
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            isa: Some("test".into()),
            int8_tier: None,
            threads: Some(1),
            executor: "test-double".into(),
        }
    }
}

pub fn fake_spec(meta: ModelMeta, delay: Duration, runs: Arc<AtomicUsize>) -> ModelSpec {
    ModelSpec {
        name: meta.name.clone(),
        path: None,
        load: Box::new(move || Ok(Box::new(FakeModel { meta, delay, runs }) as Box<dyn InferenceBackend>)),
    }
}

/// A server with the three test models; `delay` slows every engine run.
pub fn start_fakes(extra: &[&str], delay: Duration) -> (ServerHandle, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let specs = vec![
        fake_spec(feature_meta(), delay, runs.clone()),
        fake_spec(image_meta(), delay, runs.clone()),
        fake_spec(raw_meta(), delay, runs.clone()),
    ];
    let server = qp::serve::start(&args(extra), specs, false).expect("server starts");
    (server, runs)
}

pub fn png(width: u32, height: u32, rgba: [u8; 4]) -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(width, height, image::Rgba(rgba));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
