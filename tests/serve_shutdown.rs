//! Graceful shutdown of a real server process: requests in flight when SIGTERM arrives
//! all get their answers, and the process exits 0.
#![cfg(unix)]

mod serve_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::json;
use serve_common::*;

const CHILD_ENV: &str = "QP_SERVE_SHUTDOWN_CHILD";

/// The server process of `sigterm_drains_in_flight_requests` (this test binary re-run
/// with `CHILD_ENV` set); a plain test run skips it.
#[test]
#[ignore = "run as a child process by sigterm_drains_in_flight_requests"]
fn child_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let runs = Arc::new(AtomicUsize::new(0));
    // Slow runs, one sample each, so several requests are queued or running at SIGTERM.
    let specs = vec![fake_spec(feature_meta(), Duration::from_millis(300), runs)];
    let server = qp::serve::start(&args(&["--cache-entries", "0", "--max-batch", "1"]), specs, true)
        .expect("child server starts");
    println!("QP_LISTENING {}", server.local_addr());
    server.wait().expect("clean shutdown");
    println!("QP_STOPPED");
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_server",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the server process");
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let addr: std::net::SocketAddr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the server process announces its address");
        // libtest prints the test's name on the same line first.
        if let Some(at) = line.find("QP_LISTENING ") {
            break line[at + "QP_LISTENING ".len()..].trim().parse().unwrap();
        }
    };

    let clients: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || post_json(addr, "/predict", &json!({"a": i, "c": 1}))))
        .collect();
    // Let every request reach the server: with 300 ms per sample, one at a time, they
    // are still queued or running when the signal arrives.
    std::thread::sleep(Duration::from_millis(150));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    for (i, client) in clients.into_iter().enumerate() {
        let r = client.join().unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let got = r.json()["predicted_ssim"].as_f64().unwrap();
        assert!((got - f64::from(feature_expected(i as f32, 0.0, 1.0))).abs() < 1e-5);
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit:?}");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("QP_STOPPED")), "{rest:?}");
    assert!(std::net::TcpStream::connect(addr).is_err(), "nothing listens any more");
}
