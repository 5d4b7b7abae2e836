//! `qp-engine healthcheck`: one HTTP/1.1 GET over a plain `TcpStream`, success on a 2xx.
//!
//! Container runtimes run a health probe as a command inside the image; this lets the slim
//! runtime image probe the server with its own binary instead of shipping curl. It speaks
//! just enough HTTP for the server's health endpoints: plain `http://`, one request,
//! `Connection: close`, and only the status line (plus a short body excerpt on failure) is read.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Path probed when no `--url` is given: the KServe v2 readiness endpoint.
pub const DEFAULT_PATH: &str = "/v2/health/ready";
/// The most response bytes read; the status line and headers of a health answer are far smaller.
const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// Longest body excerpt quoted in a failure message.
const MAX_EXCERPT_CHARS: usize = 160;

#[derive(clap::Args, Debug, Clone)]
pub struct HealthcheckArgs {
    /// URL to GET (plain http only). Default: http://127.0.0.1:$QP_PORT/v2/health/ready,
    /// with QP_PORT defaulting to 8080 as for `serve`.
    #[arg(long, env = "QP_HEALTHCHECK_URL")]
    pub url: Option<String>,
    /// Time allowed for the whole probe (connect, send, read), in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

/// Why a probe failed; each renders as one line.
#[derive(Debug, PartialEq, Eq)]
pub enum HealthError {
    BadUrl(String),
    Connect(String),
    Io(String),
    TimedOut,
    BadResponse(String),
    Status { code: u16, reason: String, body: String },
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthError::BadUrl(m) => write!(f, "bad url: {m}"),
            HealthError::Connect(m) => write!(f, "cannot connect: {m}"),
            HealthError::Io(m) => write!(f, "connection error: {m}"),
            HealthError::TimedOut => write!(f, "timed out"),
            HealthError::BadResponse(m) => write!(f, "not an HTTP response: {m}"),
            HealthError::Status { code, reason, body } => {
                write!(f, "HTTP {code}")?;
                if !reason.is_empty() {
                    write!(f, " {reason}")?;
                }
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for HealthError {}

/// A parsed `http://host[:port][/path]` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written, IPv6 literals without their brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with '/'.
    pub path: String,
}

impl HttpUrl {
    /// The `Host` header value: brackets back around IPv6 literals.
    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

pub fn parse_url(url: &str) -> Result<HttpUrl, HealthError> {
    let bad = |m: &str| HealthError::BadUrl(format!("{url:?}: {m}"));
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?} is not supported, only http"))),
        None => return Err(bad("expected http://HOST[:PORT]/PATH")),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if path.chars().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
        return Err(bad("the path holds whitespace or control characters"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' in the host"))?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(&format!("port {p:?} is not 1-65535")))?,
    };
    Ok(HttpUrl {
        host: host.to_string(),
        port,
        path,
    })
}

/// The status line of a response: `HTTP/1.x CODE [REASON]`.
#[derive(Debug, PartialEq, Eq)]
pub struct StatusLine {
    pub code: u16,
    pub reason: String,
}

pub fn parse_status_line(line: &str) -> Result<StatusLine, HealthError> {
    let bad = || HealthError::BadResponse(format!("status line {:?}", excerpt(line)));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let code: u16 = code.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&code) {
        return Err(bad());
    }
    Ok(StatusLine {
        code,
        reason: parts.next().unwrap_or_default().trim().to_string(),
    })
}

/// Splits a (possibly partial) response into its status line and whatever body bytes
/// arrived, cut to `Content-Length` when the headers give one. `None` while the status line
/// is still incomplete.
pub fn parse_response(bytes: &[u8]) -> Result<Option<(StatusLine, Vec<u8>)>, HealthError> {
    let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&bytes[..line_end])
        .map_err(|_| HealthError::BadResponse("status line is not UTF-8".to_string()))?;
    let status = parse_status_line(line)?;
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(Some((status, Vec::new())));
    };
    let head = String::from_utf8_lossy(&bytes[line_end + 2..head_end]);
    let mut body = bytes[head_end + 4..].to_vec();
    let mut chunked = false;
    for header in head.split("\r\n") {
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if let Ok(n) = value.parse::<usize>() {
                body.truncate(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        // Chunk framing would need a decoder; the status alone decides the outcome.
        body.clear();
    }
    Ok(Some((status, body)))
}

/// One line of at most `MAX_EXCERPT_CHARS` characters, for error messages.
fn excerpt(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > MAX_EXCERPT_CHARS {
        format!("{}...", one_line.chars().take(MAX_EXCERPT_CHARS).collect::<String>())
    } else {
        one_line
    }
}

fn remaining(deadline: Instant) -> Result<Duration, HealthError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(HealthError::TimedOut)
    } else {
        Ok(left)
    }
}

fn io_error(e: std::io::Error) -> HealthError {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => HealthError::TimedOut,
        _ => HealthError::Io(e.to_string()),
    }
}

fn connect(url: &HttpUrl, deadline: Instant) -> Result<TcpStream, HealthError> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| HealthError::Connect(format!("resolving {}: {e}", url.host)))?
        .collect();
    let mut last = HealthError::Connect(format!("{} resolves to no address", url.host));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
            Ok(stream) => return Ok(stream),
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => last = HealthError::TimedOut,
            Err(e) => last = HealthError::Connect(format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// GETs `url` within `timeout`; `Ok` with the status line on a 2xx.
pub fn probe(url: &str, timeout: Duration) -> Result<StatusLine, HealthError> {
    let deadline = Instant::now() + timeout;
    let url = parse_url(url)?;
    let mut stream = connect(&url, deadline)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qp-engine-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header()
    );
    stream.set_write_timeout(Some(remaining(deadline)?)).map_err(io_error)?;
    stream.write_all(request.as_bytes()).map_err(io_error)?;

    let mut response = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut eof = false;
    // Read until the whole (small) response is in, the peer closes, or the limit is reached.
    while !eof && response.len() < MAX_RESPONSE_BYTES {
        stream.set_read_timeout(Some(remaining(deadline)?)).map_err(io_error)?;
        match stream.read(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                let e = io_error(e);
                // A timeout after the status line arrived still leaves an answer to judge.
                if e == HealthError::TimedOut && parse_response(&response)?.is_some() {
                    break;
                }
                return Err(e);
            }
        }
        if let Some((status, _)) = parse_response(&response)? {
            // 2xx: the status is all that matters. Otherwise wait for the body, to quote it.
            if (200..300).contains(&status.code) {
                return Ok(status);
            }
            if body_complete(&response) {
                break;
            }
        }
    }
    match parse_response(&response)? {
        Some((status, _)) if (200..300).contains(&status.code) => Ok(status),
        Some((status, body)) => Err(HealthError::Status {
            code: status.code,
            reason: status.reason,
            body: excerpt(&String::from_utf8_lossy(&body)),
        }),
        None if response.is_empty() => Err(HealthError::BadResponse(
            "connection closed without an answer".to_string(),
        )),
        None => Err(HealthError::BadResponse(format!(
            "{:?}",
            excerpt(&String::from_utf8_lossy(&response))
        ))),
    }
}

/// Whether `response` holds its headers and the whole `Content-Length` body.
fn body_complete(response: &[u8]) -> bool {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..head_end]);
    let length = head.split("\r\n").find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    matches!(length, Some(n) if response.len() - (head_end + 4) >= n)
}

/// The URL probed by default: the readiness endpoint on QP_PORT (default 8080) of loopback.
pub fn default_url(port_env: Option<&str>) -> String {
    let port = port_env.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("8080");
    format!("http://127.0.0.1:{port}{DEFAULT_PATH}")
}

/// The subcommand: prints one line and returns `Err` (exit status 1) unless the answer is 2xx.
pub fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let url = match &args.url {
        Some(u) => u.clone(),
        None => default_url(std::env::var("QP_PORT").ok().as_deref()),
    };
    match probe(&url, Duration::from_millis(args.timeout_ms)) {
        Ok(status) => {
            crate::outln!("{url}: HTTP {} {}", status.code, status.reason);
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("healthcheck {url}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn urls_parse_host_port_and_path() {
        let u = parse_url("http://127.0.0.1:8080/v2/health/ready").unwrap();
        assert_eq!(
            u,
            HttpUrl {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/v2/health/ready".into()
            }
        );
        let u = parse_url("HTTP://localhost").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("localhost", 80, "/"));
        let u = parse_url("http://[::1]:9000/ready?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 9000, "/ready?x=1"));
        assert_eq!(u.host_header(), "[::1]:9000");
        let u = parse_url("http://example:81?q").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("example", 81, "/?q"));
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (url, why) in [
            ("https://127.0.0.1/", "only http"),
            ("127.0.0.1:8080/ready", "expected http://"),
            ("http://:8080/", "no host"),
            ("http://host:0/", "not 1-65535"),
            ("http://host:99999/", "not 1-65535"),
            ("http://host:abc/", "not 1-65535"),
            ("http://[::1/", "unclosed"),
            ("http://u:p@host/", "credentials"),
            ("http://host/a b", "whitespace"),
        ] {
            match parse_url(url) {
                Err(HealthError::BadUrl(m)) => assert!(m.contains(why), "{url}: {m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(
            parse_status_line("HTTP/1.1 200 OK").unwrap(),
            StatusLine {
                code: 200,
                reason: "OK".into()
            }
        );
        assert_eq!(parse_status_line("HTTP/1.0 204").unwrap().code, 204);
        let s = parse_status_line("HTTP/1.1 503 Service Unavailable").unwrap();
        assert_eq!((s.code, s.reason.as_str()), (503, "Service Unavailable"));
        for bad in [
            "",
            "HTTP/1.1",
            "HTTP/1.1 20 OK",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 abc OK",
            "SSH-2.0-OpenSSH",
            "HTTP/1.1 700 X",
        ] {
            assert!(
                matches!(parse_status_line(bad), Err(HealthError::BadResponse(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn responses_split_into_status_and_body() {
        assert_eq!(parse_response(b"HTTP/1.1 200 O").unwrap(), None);
        let (s, body) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((s.code, body.len()), (200, 0));
        let r = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 15\r\n\r\n{\"ready\":false}trailing";
        let (s, body) = parse_response(r).unwrap().unwrap();
        assert_eq!((s.code, body.as_slice()), (503, b"{\"ready\":false}".as_slice()));
        assert!(body_complete(r));
        assert!(!body_complete(b"HTTP/1.1 503 X\r\nContent-Length: 15\r\n\r\n{\"re"));
        let r = b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert!(parse_response(r).unwrap().unwrap().1.is_empty());
        assert!(matches!(
            parse_response(b"garbage\r\n"),
            Err(HealthError::BadResponse(_))
        ));
    }

    #[test]
    fn default_url_follows_qp_port() {
        assert_eq!(default_url(None), "http://127.0.0.1:8080/v2/health/ready");
        assert_eq!(default_url(Some("9000")), "http://127.0.0.1:9000/v2/health/ready");
        assert_eq!(default_url(Some("")), "http://127.0.0.1:8080/v2/health/ready");
    }

    /// A one-connection server that reads the request head, checks it, and sends `reply`.
    fn serve_once(reply: &'static [u8]) -> (String, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v2/health/ready", listener.local_addr().unwrap());
        let handle = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(reply).unwrap();
            String::from_utf8(request).unwrap()
        });
        (url, handle)
    }

    #[test]
    fn a_2xx_answer_is_healthy_and_the_request_is_well_formed() {
        let (url, server) = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\n{\"ready\":true}");
        let status = probe(&url, Duration::from_secs(5)).unwrap();
        assert_eq!(status.code, 200);
        let request = server.join().unwrap();
        let port = url.split(':').nth(2).unwrap().split('/').next().unwrap();
        assert!(request.starts_with("GET /v2/health/ready HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("Host: 127.0.0.1:{port}\r\n")), "{request}");
        assert!(request.contains("Connection: close\r\n"), "{request}");
    }

    #[test]
    fn a_503_answer_is_unhealthy_and_quotes_the_body() {
        let (url, server) = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 42\r\n\r\n{\"ready\":false,\"reason\":\"shutting down\"}\n\n",
        );
        let err = probe(&url, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert_eq!(
            err.to_string(),
            r#"HTTP 503 Service Unavailable: {"ready":false,"reason":"shutting down"}"#
        );
    }

    #[test]
    fn a_closed_or_garbled_answer_is_unhealthy() {
        let (url, server) = serve_once(b"");
        let err = probe(&url, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert!(err.to_string().contains("closed without an answer"), "{err}");
        let (url, server) = serve_once(b"SSH-2.0-OpenSSH_9.2\r\n");
        let err = probe(&url, Duration::from_secs(5)).unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, HealthError::BadResponse(_)), "{err}");
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        // The listener accepts (the kernel completes the handshake) but never answers.
        let start = Instant::now();
        let err = probe(&url, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err, HealthError::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(listener);
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = probe(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, HealthError::Connect(_)), "{err}");
    }
}
