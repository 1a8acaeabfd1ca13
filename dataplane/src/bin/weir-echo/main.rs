//! Demo backend for `make run` and tests: `weir-echo --listen 127.0.0.1:9101 --name a`.

use clap::Parser;

// `spawn` (an in-process backend) is for the integration tests, which compile this module too
// (tests/common); the binary itself only serves.
#[allow(dead_code)]
mod echo;

#[derive(Parser)]
#[command(
    version,
    about = "Weir demo backend: replies with a JSON description of each request"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: String,
    /// Name reported in replies (`server` field, `x-echo-server` header).
    #[arg(long, default_value = "echo")]
    name: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %args.listen, error = %e, "cannot listen");
            std::process::exit(1);
        }
    };
    tracing::info!(address = %args.listen, name = %args.name, "weir-echo listening");
    echo::serve(listener, args.name).await;
}
