//! `cargo run --release --example serve -- --model weights/qualitynet.qpw`: the server
//! alone, with the same flags and QP_* variables as `qp-engine serve`.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Serve .qpw models over HTTP (see docs/HTTP_API.md)")]
struct Cli {
    #[command(flatten)]
    serve: qp::serve::ServeArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = qp::serve::run(cli.serve) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
