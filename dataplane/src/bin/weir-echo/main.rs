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
    /// Address to listen on; repeat it to serve the same replies on several ports (an app
    /// with two HTTP ports, as the sidecar scenario needs).
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: Vec<String>,
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
    let mut serving = tokio::task::JoinSet::new();
    for address in &args.listen {
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(address = %address, error = %e, "cannot listen");
                std::process::exit(1);
            }
        };
        tracing::info!(address = %address, name = %args.name, "weir-echo listening");
        serving.spawn(echo::serve(listener, args.name.clone()));
    }
    // `serve` never returns; this waits forever.
    while serving.join_next().await.is_some() {}
}
