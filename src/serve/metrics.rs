//! Counters and histograms for `GET /metrics`, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Latency buckets (seconds): 50 µs .. 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Clone, Debug)]
struct ModelStats {
    samples: u64,
    runs: u64,
    failed_runs: u64,
    batch_size: Histogram,
    queue_seconds: Histogram,
    compute_seconds: Histogram,
}

impl Default for ModelStats {
    fn default() -> ModelStats {
        ModelStats {
            samples: 0,
            runs: 0,
            failed_runs: 0,
            batch_size: Histogram::new(BATCH_BUCKETS),
            queue_seconds: Histogram::new(SECONDS_BUCKETS),
            compute_seconds: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

type HistogramOf = fn(&ModelStats) -> &Histogram;

/// One route's requests: counts by status code and the latency histogram.
#[derive(Debug)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    seconds: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<String, RouteStats>>,
    models: Mutex<BTreeMap<String, ModelStats>>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// HTTP requests between arrival and response head; the model threads read it to tell
    /// whether more jobs can still come (see `worker`).
    pub http_in_flight: AtomicUsize,
}

/// Values sampled at scrape time rather than counted.
pub struct Gauges {
    pub rss_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub uptime_seconds: f64,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub queue_depth: Vec<(String, usize)>,
    pub ready: bool,
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One metric without labels: its HELP and TYPE lines and its value.
fn unlabelled(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

impl Metrics {
    pub fn record_http(&self, route: &str, status: u16, seconds: f64) {
        let mut http = self.http.lock().unwrap();
        // Look up before inserting: every request lands here, and the key is only
        // allocated the first time a route is seen.
        let stats = match http.get_mut(route) {
            Some(stats) => stats,
            None => http.entry(route.to_string()).or_insert_with(|| RouteStats {
                by_status: BTreeMap::new(),
                seconds: Histogram::new(SECONDS_BUCKETS),
            }),
        };
        *stats.by_status.entry(status).or_default() += 1;
        stats.seconds.observe(seconds);
    }

    pub fn record_rejection(&self, reason: &'static str) {
        *self.rejections.lock().unwrap().entry(reason).or_default() += 1;
    }

    /// One engine run of `samples` samples; `queue_seconds` has one entry per job in it.
    pub fn record_run(&self, model: &str, samples: usize, queue_seconds: &[f64], compute_seconds: f64, ok: bool) {
        let mut models = self.models.lock().unwrap();
        let m = models.entry(model.to_string()).or_default();
        m.runs += 1;
        if !ok {
            m.failed_runs += 1;
        }
        m.samples += samples as u64;
        m.batch_size.observe(samples as f64);
        m.compute_seconds.observe(compute_seconds);
        for q in queue_seconds {
            m.queue_seconds.observe(*q);
        }
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP qp_http_requests_total HTTP requests by route and status code.\n");
        out.push_str("# TYPE qp_http_requests_total counter\n");
        let http = self.http.lock().unwrap();
        for (route, stats) in http.iter() {
            for (status, n) in &stats.by_status {
                let outcome = match status {
                    200..=399 => "ok",
                    400..=499 => "client_error",
                    _ => "server_error",
                };
                let _ = writeln!(
                    out,
                    "qp_http_requests_total{{route=\"{}\",status=\"{status}\",outcome=\"{outcome}\"}} {n}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP qp_http_request_duration_seconds Time from request to response head.\n");
        out.push_str("# TYPE qp_http_request_duration_seconds histogram\n");
        for (route, stats) in http.iter() {
            stats.seconds.render(
                &mut out,
                "qp_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        drop(http);

        let models = self.models.lock().unwrap().clone();
        let per_model = |out: &mut String, name: &str, kind: &str, help: &str, f: &dyn Fn(&ModelStats) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (model, m) in &models {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", escape(model), f(m));
            }
        };
        per_model(
            &mut out,
            "qp_inferences_total",
            "counter",
            "Samples inferred (answered by the engine, not the cache).",
            &|m| m.samples.to_string(),
        );
        per_model(
            &mut out,
            "qp_engine_runs_total",
            "counter",
            "Engine executions (batches); samples / runs is the mean batch size.",
            &|m| m.runs.to_string(),
        );
        per_model(
            &mut out,
            "qp_engine_failed_runs_total",
            "counter",
            "Engine executions that returned an error.",
            &|m| m.failed_runs.to_string(),
        );
        per_model(
            &mut out,
            "qp_mean_batch_size",
            "gauge",
            "Mean samples per engine execution since start.",
            &|m| {
                if m.runs == 0 {
                    "0".into()
                } else {
                    format!("{}", m.samples as f64 / m.runs as f64)
                }
            },
        );
        let histograms: [(&str, &str, HistogramOf); 3] = [
            ("qp_batch_size", "Samples per engine execution.", |m| &m.batch_size),
            (
                "qp_queue_seconds",
                "Time a job waited in the model queue before its batch started.",
                |m| &m.queue_seconds,
            ),
            ("qp_compute_seconds", "Engine execution time per batch.", |m| {
                &m.compute_seconds
            }),
        ];
        for (name, help, get) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (model, m) in &models {
                get(m).render(&mut out, name, &format!("model=\"{}\"", escape(model)));
            }
        }

        let hits = self.cache_hits.load(Ordering::Relaxed);
        unlabelled(
            &mut out,
            "qp_cache_hits_total",
            "counter",
            "Samples answered from the response cache.",
            hits,
        );
        let misses = self.cache_misses.load(Ordering::Relaxed);
        unlabelled(
            &mut out,
            "qp_cache_misses_total",
            "counter",
            "Samples not found in the response cache.",
            misses,
        );
        let in_flight = self.http_in_flight.load(Ordering::Relaxed);
        let help = "HTTP requests received and not yet answered.";
        unlabelled(&mut out, "qp_http_requests_in_flight", "gauge", help, in_flight);
        let help = "Entries in the response cache.";
        unlabelled(&mut out, "qp_cache_entries", "gauge", help, gauges.cache_entries);
        let help = "Bytes accounted to the response cache.";
        unlabelled(&mut out, "qp_cache_bytes", "gauge", help, gauges.cache_bytes);

        out.push_str(
            "# HELP qp_rejections_total Requests refused for capacity: queue_full (503), rate_limited (429).\n",
        );
        out.push_str("# TYPE qp_rejections_total counter\n");
        let rejections = self.rejections.lock().unwrap();
        for reason in ["queue_full", "rate_limited"] {
            let n = rejections.get(reason).copied().unwrap_or(0);
            let _ = writeln!(out, "qp_rejections_total{{reason=\"{reason}\"}} {n}");
        }

        out.push_str("# HELP qp_queue_depth Jobs waiting in each model's queue.\n# TYPE qp_queue_depth gauge\n");
        for (model, depth) in &gauges.queue_depth {
            let _ = writeln!(out, "qp_queue_depth{{model=\"{}\"}} {depth}", escape(model));
        }
        let help = "1 while the server accepts work, 0 while draining.";
        unlabelled(&mut out, "qp_ready", "gauge", help, u8::from(gauges.ready));
        let help = "Seconds since the server started.";
        unlabelled(&mut out, "qp_uptime_seconds", "gauge", help, gauges.uptime_seconds);
        if let Some(rss) = gauges.rss_bytes {
            unlabelled(
                &mut out,
                "process_resident_memory_bytes",
                "gauge",
                "Resident set size.",
                rss,
            );
        }
        if let Some(cpu) = gauges.cpu_seconds {
            let help = "User and system CPU time.";
            unlabelled(&mut out, "process_cpu_seconds_total", "counter", help, cpu);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.7, 9.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_count{a=\"b\"} 4\n"), "{s}");
    }

    #[test]
    fn render_reports_mean_batch_size() {
        let m = Metrics::default();
        m.record_run("net", 6, &[0.001, 0.002], 0.01, true);
        m.record_run("net", 2, &[0.001], 0.01, true);
        m.record_http("/predict", 200, 0.01);
        m.record_http("/predict", 400, 0.01);
        m.record_rejection("queue_full");
        let text = m.render(&Gauges {
            rss_bytes: Some(1),
            cpu_seconds: None,
            uptime_seconds: 1.0,
            cache_entries: 0,
            cache_bytes: 0,
            queue_depth: vec![("net".into(), 0)],
            ready: true,
        });
        assert!(text.contains("qp_mean_batch_size{model=\"net\"} 4\n"), "{text}");
        assert!(text.contains("qp_engine_runs_total{model=\"net\"} 2\n"), "{text}");
        assert!(text.contains("qp_inferences_total{model=\"net\"} 8\n"), "{text}");
        assert!(
            text.contains("qp_rejections_total{reason=\"queue_full\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("route=\"/predict\",status=\"400\",outcome=\"client_error\"} 1"),
            "{text}"
        );
    }
}
