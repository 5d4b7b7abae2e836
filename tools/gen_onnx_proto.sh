#!/usr/bin/env bash
# Regenerates src/onnx/proto.rs from tools/onnx.proto (copied from the `onnx` PyPI package).
# The generated file is committed so that building qp needs no protoc.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
mkdir -p "$tmp/src" "$tmp/out"
cp "$here/onnx.proto" "$tmp/"
cat > "$tmp/Cargo.toml" <<'TOML'
[package]
name = "genproto"
version = "0.1.0"
edition = "2021"
[dependencies]
prost-build = "0.13"
TOML
cat > "$tmp/src/main.rs" <<'RS'
fn main() {
    let out = std::env::args().nth(1).unwrap();
    prost_build::Config::new().out_dir(&out).compile_protos(&["onnx.proto"], &["."]).unwrap();
}
RS
(cd "$tmp" && cargo run -q -- out)
cp "$tmp/out/onnx.rs" "$here/../src/onnx/proto.rs"
echo "wrote src/onnx/proto.rs"
