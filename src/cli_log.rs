//! Logging for the command-line tools: plain lines on stderr (their results go to stdout),
//! the level from `QP_LOG` or the tool's default. `serve` logs on its own terms.

/// Installs the stderr logger; `default_level` applies where `QP_LOG` is unset or invalid.
pub fn init(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}
