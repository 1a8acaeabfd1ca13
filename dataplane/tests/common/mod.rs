//! Shared helpers for the dataplane integration tests: the real `weir-dataplane` binary as a
//! child process, in-process echo backends, and a small HTTP client.
//!
//! Every test picks its own ports, so tests run in parallel. Timeouts here only guard against
//! hangs; no test asserts on how long something took.

#![allow(dead_code)]

pub mod browser;
/// The demo backend: the `weir-echo` binary's module, compiled into the tests.
#[path = "../../src/bin/weir-echo/echo.rs"]
pub mod echo_backend;
pub mod rawh3;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, Body>;

/// Upper bound for anything a test waits on; only there so a broken build fails instead of hanging.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

pub const BIN: &str = env!("CARGO_BIN_EXE_weir-dataplane");

/// A port on 127.0.0.1, free for TCP and UDP, for a listener that is bound later (usually by
/// the dataplane child).
///
/// A port from `bind(":0")` is released before the child binds it, and in between the kernel
/// may hand it to anything else that asks for an ephemeral port: another test's echo backend,
/// an outgoing connection, a QUIC client socket (the HTTP/3 listener binds UDP). So ports come
/// from just below the kernel's ephemeral range, where nothing gets a port without naming it,
/// and this process never hands one out twice (tests run in parallel threads of one process).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // The kernel's ephemeral range starts at 32768 unless configured otherwise.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if ephemeral_low < 12_000 {
        return ephemeral_port();
    }
    let (low, span) = (ephemeral_low - 10_000, 10_000);
    // Test processes running at the same time (other crates' tests, other checkouts) start at
    // different places in the range.
    let start = *START.get_or_init(|| {
        (std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % u64::from(span)) as u32
    });
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(low + (start + n) % span) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    ephemeral_port()
}

/// A free TCP port on 127.0.0.1 from the kernel (bound, read, released).
fn ephemeral_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// An HTTP/3 connection (weir-bench's client, certificate not verified) to 127.0.0.1:`port`.
pub async fn h3_conn(port: u16) -> weir_bench::h3client::H3Conn {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    tokio::time::timeout(HANG_GUARD, weir_bench::h3client::connect(addr, None, true))
        .await
        .expect("connect hang")
        .expect("HTTP/3 connect")
}

/// A request body sent as these chunks, without a length (chunked on HTTP/1.1).
pub fn streamed(chunks: Vec<Bytes>) -> Body {
    let s = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(hyper::body::Frame::data(c))),
    );
    BodyExt::boxed(http_body_util::StreamBody::new(s))
}

/// Starts an in-process echo backend; returns its address.
pub async fn echo(name: &str) -> SocketAddr {
    echo_backend::spawn("127.0.0.1:0", name)
        .await
        .expect("spawn echo backend")
}

/// Extra knobs for [`Dataplane::start_with`].
#[derive(Default)]
pub struct Opts {
    pub token: Option<String>,
    pub drain_timeout: Option<String>,
    /// More command-line arguments.
    pub args: Vec<String>,
    /// `RUST_LOG` for the child instead of `$WEIR_TEST_LOG` (default `warn`).
    pub log_filter: Option<String>,
    /// More environment variables for the child (e.g. `OTEL_*`).
    pub env: Vec<(String, String)>,
}

/// A running `weir-dataplane` child process; killed (SIGKILL) on drop.
pub struct Dataplane {
    child: Child,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
    pub dir: tempfile::TempDir,
}

/// Spawns the dataplane binary with a scrubbed `WEIR_*` environment, logging to `log`.
pub fn command(dir: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let filter = std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let out = std::fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    cmd.env("RUST_LOG", filter)
        // The self-signed certificate of https listeners goes under $TMPDIR.
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    cmd
}

impl Dataplane {
    pub async fn start(config: &str) -> Dataplane {
        Self::start_with(config, Opts::default()).await
    }

    /// Writes `config` (YAML or JSON) to a file, starts the binary on it and waits for `/readyz`.
    pub async fn start_with(config: &str, opts: Opts) -> Dataplane {
        Self::start_from_bytes(config.as_bytes(), opts).await
    }

    /// As [`Dataplane::start_with`], for a config file that is not text (gzip-compressed).
    pub async fn start_from_bytes(config: &[u8], opts: Opts) -> Dataplane {
        let mut dp = Self::spawn(Some(config), opts);
        dp.wait_for("/readyz").await;
        dp
    }

    /// Starts the binary without `--config` (it waits for `PUT /config`); waits for `/healthz`.
    pub async fn start_without_config() -> Dataplane {
        let mut dp = Self::spawn(None, Opts::default());
        dp.wait_for("/healthz").await;
        dp
    }

    fn spawn(config: Option<&[u8]>, opts: Opts) -> Dataplane {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("weir.yaml");
        let log_path = dir.path().join("dataplane.log");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = command(dir.path(), &log_path);
        if let Some(config) = config {
            std::fs::write(&config_path, config).expect("write config");
            cmd.arg("--config").arg(&config_path);
        }
        cmd.arg("--admin-address").arg(admin.to_string());
        if let Some(d) = &opts.drain_timeout {
            cmd.arg("--drain-timeout").arg(d);
        }
        if let Some(t) = &opts.token {
            cmd.env("WEIR_ADMIN_TOKEN", t);
        }
        if let Some(f) = &opts.log_filter {
            cmd.env("RUST_LOG", f);
        }
        cmd.args(&opts.args);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().expect("spawn weir-dataplane");
        Dataplane {
            child,
            admin,
            config_path,
            log_path,
            exited: None,
            dir,
        }
    }

    /// Polls an admin path until it answers 200.
    async fn wait_for(&mut self, path: &str) {
        let c = client();
        let url = self.admin_url(path);
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "weir-dataplane exited during startup with {status}; log:\n{}",
                    self.log()
                );
            }
            let req = Request::get(&url).body(empty()).unwrap();
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "weir-dataplane never answered 200 on {path}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Replaces the config file (for SIGHUP): YAML or JSON text, or gzip-compressed JSON.
    pub fn write_config(&self, config: impl AsRef<[u8]>) {
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// The process's peak resident set size (`VmHWM`) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(s);
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "weir-dataplane did not exit; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The child's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        if s.len() > 16_000 {
            let cut = s.len() - 16_000;
            let cut = (cut..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s = format!("...{}", &s[cut..]);
        }
        s
    }

    /// GET /config as JSON (with a bearer token when given).
    pub async fn get_config(&self, token: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut req = Request::get(self.admin_url("/config"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let r = send(&client(), req.body(empty()).unwrap()).await;
        (r.status, r.json())
    }

    /// PUT /config with a YAML or JSON body.
    pub async fn put_config(&self, body: impl Into<Bytes>) -> (StatusCode, serde_json::Value) {
        let req = Request::put(self.admin_url("/config"))
            .body(full(body))
            .unwrap();
        let r = send(&client(), req).await;
        (r.status, r.json())
    }

    /// The running config's version according to GET /config.
    pub async fn version(&self) -> String {
        let (status, v) = self.get_config(None).await;
        assert_eq!(status, StatusCode::OK, "GET /config: {v}");
        v["version"].as_str().expect("version string").to_string()
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- weir-dataplane log ---\n{}\n---", self.log());
        }
    }
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    // Without it, Nagle's algorithm and delayed ACKs add ~40ms to HTTP/2 requests with bodies.
    c.set_nodelay(true);
    c
}

/// An HTTP/1.1 keep-alive client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(connector())
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector())
}

/// A fully read response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// Sends a request and reads the whole response; errors are returned, not panicked on.
pub async fn try_send(c: &HttpClient, req: Request<Body>) -> Result<Resp, String> {
    let fut = async {
        let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {e:?}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(HANG_GUARD, fut)
        .await
        .unwrap_or_else(|_| Err("hang guard expired".into()))
}

pub async fn send(c: &HttpClient, req: Request<Body>) -> Resp {
    try_send(c, req).await.expect("request failed")
}

/// `GET url` with optional extra headers (a `host` entry overrides the Host header).
pub fn get_req(url: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(empty()).unwrap()
}

pub async fn get(c: &HttpClient, url: &str) -> Resp {
    send(c, get_req(url, &[])).await
}

/// A TCP forwarder in front of `target` that notifies once any client bytes arrive, so a test
/// knows a request has reached the backend side.
pub async fn tap(target: SocketAddr) -> (SocketAddr, Arc<Notify>) {
    tap_gated(target, None).await
}

/// Like [`tap`], but when `gate` is given the bytes are held until the gate is notified, so the
/// request stays in flight for as long as the test wants.
pub async fn tap_gated(target: SocketAddr, gate: Option<Arc<Notify>>) -> (SocketAddr, Arc<Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Notify::new());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let s = s.clone();
            let gate = gate.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let mut first = [0u8; 4096];
                let Ok(n) = down.read(&mut first).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                s.notify_one();
                if let Some(g) = gate {
                    g.notified().await;
                }
                if up.write_all(&first[..n]).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    (addr, seen)
}

/// Polls until a fresh TCP connection to `addr` is refused (panics after the hang guard).
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lowercase hex of `bytes` (digests, ids), as the echo backend and the sinks write them.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A config with one `listener` (a YAML flow mapping) and a route to the WebSocket backend
/// `ws` with three rules: `/off` (WebSockets disabled), `/idle` (1 s idle timeout), the rest.
pub fn websocket_config(listener: &str, ws: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - {listener}
backends:
  ws: {{ endpoints: ["{ws}"] }}
routes:
  - name: ws
    rules:
      - matches: [{{ path: {{ value: /off }} }}]
        websocket: {{ enabled: false }}
        backendRefs: [{{ name: ws }}]
      - matches: [{{ path: {{ value: /idle }} }}]
        websocket: {{ idleTimeout: 1s }}
        backendRefs: [{{ name: ws }}]
      - backendRefs: [{{ name: ws }}]
"#
    )
}

/// A WebSocket echo backend (tokio-tungstenite): echoes text and binary messages, answers
/// close with close.
pub async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        let _ = tx.close().await;
                        return;
                    }
                }
            });
        }
    });
    addr
}
