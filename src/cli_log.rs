//! Output of the command-line tools: log lines on stderr, results on stdout. The log level
//! comes from `QP_LOG` or the tool's default; `serve` logs on its own terms.

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

/// Writes part of a command's result to stdout, `end` after it. `print!` panics when the
/// reader has gone (`qp-engine info M | head`); a closed pipe ends the command quietly
/// instead, as SIGPIPE ends the standard Unix tools, and any other write error ends it with
/// a message.
pub fn write_stdout(text: std::fmt::Arguments, end: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.write_all(end.as_bytes())) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!` for the command-line tools' results, through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli_log::write_stdout(format_args!($($arg)*), "")
    };
}

/// `println!` for the command-line tools' results, through [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli_log::write_stdout(format_args!(""), "\n")
    };
    ($($arg:tt)*) => {
        $crate::cli_log::write_stdout(format_args!($($arg)*), "\n")
    };
}
