//! The command-line tools' results on stdout: a reader that stops early (`| head`) ends the
//! command quietly, and a stdout that cannot be written is a clear error, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qp-cli-output-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_model(dir: &Path) -> PathBuf {
    let onnx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_bn/model.onnx");
    let qpw = dir.join("tiny.qpw");
    let o = Command::new(env!("CARGO_BIN_EXE_qp-convert"))
        .args([onnx.to_str().unwrap(), "-o", qpw.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    qpw
}

/// Runs `cmd` with stdout on a pipe whose reading end is closed before it starts, so its
/// first write fails with a broken pipe whatever the timing.
fn run_with_closed_stdout(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn a_reader_that_has_gone_ends_the_command_quietly() {
    let dir = scratch("closed");
    let qpw = tiny_model(&dir);
    let model = qpw.to_str().unwrap();
    let onnx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_bn/model.onnx");
    let again = dir.join("again.qpw");
    let commands: [(&str, Vec<&str>); 3] = [
        (env!("CARGO_BIN_EXE_qp-engine"), vec!["info", model]),
        (env!("CARGO_BIN_EXE_qp-engine"), vec!["info", "--json", model]),
        (
            env!("CARGO_BIN_EXE_qp-convert"),
            vec![onnx.to_str().unwrap(), "-o", again.to_str().unwrap()],
        ),
    ];
    for (program, args) in commands {
        let o = run_with_closed_stdout(Command::new(program).args(&args));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {:?} {stderr}", o.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // The conversion's file was written in full before its summary was printed.
    assert!(qp::format::QpwFile::open(&again).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_stdout_that_cannot_be_written_is_a_clear_error() {
    let dir = scratch("full");
    let qpw = tiny_model(&dir);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_qp-engine"))
        .args(["info", qpw.to_str().unwrap()])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing to stdout"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
