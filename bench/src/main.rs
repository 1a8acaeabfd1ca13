//! `weir-bench` command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use weir_bench::{Error, LoadConfig, Protocol, Result, Trust};

/// HTTP/1.1, HTTP/2 and HTTP/3 load driver and one-shot client for Weir.
///
/// Load:     weir-bench [--protocol h1|h2|h3] -c CONNS -m STREAMS (-d 10s | -n COUNT) URL
///
/// One-shot: weir-bench -v [--protocol h3] URL   (status line, headers, body to stdout)
///
/// Server:   weir-bench serve --listen 127.0.0.1:8080 [--h3] [--body-size N]
#[derive(Parser, Debug)]
#[command(
    name = "weir-bench",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Minimal server: every request gets 200 with a fixed body.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Target URL (http:// or https://).
    #[arg(required = true)]
    url: Option<String>,
    /// Protocol: h1, h2 (TLS ALPN for https, h2c prior knowledge for http) or h3.
    #[arg(short = 'p', long, default_value = "h1", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Number of connections.
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,
    /// Concurrent streams per connection (h2, h3; ignored for h1).
    #[arg(short = 'm', long, default_value_t = 1)]
    streams: usize,
    /// Total number of requests.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Run duration, e.g. 10s, 1m (default 10s when -n is not given).
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Request method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// Extra request header 'name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body of this many bytes (suffixes k, m accepted), generated once.
    #[arg(long, value_parser = parse_size, conflicts_with = "body_file")]
    body_size: Option<usize>,
    /// Request body read from this file.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Skip certificate verification (self-signed servers).
    #[arg(short = 'k', long, conflicts_with = "cacert")]
    insecure: bool,
    /// Trust the certificates of this PEM file instead of the system roots.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Connect to HOST:PORT instead of the URL's host and port (SNI and Host stay).
    #[arg(long)]
    connect_to: Option<String>,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Worker threads (default: min(CPUs available, connections)).
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// One-shot mode: send one request, print status line, headers and body to stdout.
    #[arg(short = 'v', long)]
    verbose: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on (TCP; UDP too with --h3).
    #[arg(short = 'l', long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Response body size in bytes (suffixes k, m accepted).
    #[arg(long, default_value = "13", value_parser = parse_size)]
    body_size: usize,
    /// Also serve HTTP/3 on UDP, same port (self-signed certificate).
    #[arg(long)]
    h3: bool,
    /// Also accept TLS (ALPN h2, http/1.1) on the TCP port (self-signed certificate).
    #[arg(long)]
    tls: bool,
    /// Worker threads (default: CPUs available).
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
    /// Fault injection: send this many body bytes, then reset the stream.
    #[arg(long, value_parser = parse_size)]
    reset_after: Option<usize>,
}

fn parse_protocol(s: &str) -> std::result::Result<Protocol, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1024),
        Some((i, 'm' | 'M')) => (&t[..i], 1024 * 1024),
        Some((i, 'g' | 'G')) => (&t[..i], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Some(Command::Serve(a)) => serve(a),
        None => client(cli.load),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(a: &LoadArgs) -> Result<LoadConfig> {
    let url = a
        .url
        .clone()
        .ok_or_else(|| Error::Input("a URL is required".into()))?;
    let mut cfg = LoadConfig::new(url, a.protocol);
    cfg.connections = a.connections.max(1);
    cfg.streams = a.streams.max(1);
    cfg.requests = a.requests;
    cfg.duration = a.duration;
    cfg.method = Method::from_bytes(a.method.as_bytes())
        .map_err(|e| Error::Input(format!("method {:?}: {e}", a.method)))?;
    let mut headers = HeaderMap::new();
    for h in &a.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| Error::Input(format!("header {h:?}: expected 'name: value'")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| Error::Input(format!("header {h:?}: {e}")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|e| Error::Input(format!("header {h:?}: {e}")))?;
        headers.append(name, value);
    }
    cfg.headers = headers;
    cfg.body = match (&a.body_file, a.body_size) {
        (Some(p), _) => Bytes::from(
            std::fs::read(p).map_err(|e| Error::Input(format!("{}: {e}", p.display())))?,
        ),
        (None, Some(n)) => Bytes::from(vec![b'x'; n]),
        (None, None) => Bytes::new(),
    };
    cfg.trust = match (&a.cacert, a.insecure) {
        (Some(p), _) => Trust::from_pem_file(p)?,
        (None, true) => Trust::Insecure,
        (None, false) => Trust::System,
    };
    cfg.connect_to = a.connect_to.clone();
    cfg.timeout = a.timeout;
    cfg.threads = a.threads;
    Ok(cfg)
}

fn client(a: LoadArgs) -> Result<ExitCode> {
    let cfg = load_config(&a)?;
    if a.verbose {
        if a.requests.is_some_and(|n| n != 1) || a.duration.is_some() {
            return Err(Error::Input(
                "-v (one-shot) sends exactly one request".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("runtime: {e}")))?;
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let r = rt.block_on(weir_bench::oneshot::run(&cfg, &mut out));
        let _ = out.flush();
        return r.map(|_| ExitCode::SUCCESS);
    }
    let report = weir_bench::load::run(&cfg)?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.human());
    }
    // Exit 1 when nothing succeeded; errors alongside successes are data.
    Ok(if report.responses == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if a.threads > 0 {
        b.worker_threads(a.threads);
    }
    let rt = b
        .build()
        .map_err(|e| Error::Other(format!("runtime: {e}")))?;
    rt.block_on(async {
        let server = weir_bench::server::start(weir_bench::server::ServeConfig {
            listen: a.listen,
            body_size: a.body_size,
            h3: a.h3,
            tls: a.tls,
            reset_after: a.reset_after,
        })
        .await?;
        let mut line = format!(
            "weir-bench serve: listening on {} (http/1.1, h2c",
            server.addr()
        );
        if a.tls {
            line.push_str(", tls h2/http1.1");
        }
        line.push(')');
        if let Some(u) = server.h3_addr() {
            line.push_str(&format!(", h3 on udp {u}"));
        }
        eprintln!("{line}");
        tokio::select! {
            _ = server.wait() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}
