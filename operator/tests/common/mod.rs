//! The real-API-server harness shared by the end-to-end tests (`e2e.rs`, `gateway_e2e.rs`):
//! etcd + kube-apiserver on loopback, child processes killed with the test, small HTTP and
//! Kubernetes helpers. Each test crate uses part of it.
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "e2e-admin-token";
pub const DP_NS: &str = "weir-system";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// A child process killed (and reaped) on drop, with its log file.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, mut cmd: Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        cmd.stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null());
        // If the test process dies without unwinding (SIGKILL), take the children with it.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL: no chance to release the Lease.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log (tail)\n{}", self.name, tail(&self.log_text()));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("WEIR_E2E_BIN_DIR").expect("WEIR_E2E_BIN_DIR (run `make e2e`)");
    Path::new(&dir).join(name)
}

pub struct Cluster {
    // Field order = drop order: the API server before etcd.
    pub _apiserver: Proc,
    pub _etcd: Proc,
    pub kubeconfig: PathBuf,
    pub client: Client,
}

pub async fn start_cluster(dir: &Path) -> Cluster {
    let apiserver_bin =
        std::env::var("WEIR_E2E_APISERVER").expect("WEIR_E2E_APISERVER (run `make e2e`)");
    let etcd_bin = std::env::var("WEIR_E2E_ETCD").unwrap_or_else(|_| "etcd".into());
    let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(etcd_bin);
    cmd.arg("--data-dir")
        .arg(dir.join("etcd"))
        .arg("--listen-client-urls")
        .arg(format!("http://127.0.0.1:{client_port}"))
        .arg("--advertise-client-urls")
        .arg(format!("http://127.0.0.1:{client_port}"))
        .arg("--listen-peer-urls")
        .arg(format!("http://127.0.0.1:{peer_port}"))
        .arg("--initial-advertise-peer-urls")
        .arg(format!("http://127.0.0.1:{peer_port}"))
        .arg("--initial-cluster")
        .arg(format!("default=http://127.0.0.1:{peer_port}"));
    let etcd = Proc::spawn("etcd", dir, cmd);

    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(dir.join("sa.key"))
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success()
        && Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(dir.join("sa.key"))
            .arg("-out")
            .arg(dir.join("sa.pub"))
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
    assert!(ok, "openssl failed");
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{TOKEN},admin,admin,system:masters\n"),
    )
    .unwrap();
    let mut cmd = Command::new(apiserver_bin);
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={api_port}"))
        .arg(format!("--cert-dir={}", certs.display()))
        .arg(format!(
            "--token-auth-file={}",
            dir.join("tokens.csv").display()
        ))
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-key-file={}",
            dir.join("sa.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            dir.join("sa.key").display()
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg("--service-cluster-ip-range=10.96.0.0/24")
        .arg("--advertise-address=127.0.0.1")
        .arg("--disable-admission-plugins=ServiceAccount");
    let apiserver = Proc::spawn("kube-apiserver", dir, cmd);

    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: admin}}\ncurrent-context: e2e\n"
        ),
    )
    .unwrap();
    let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let t = Instant::now();
    loop {
        let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
        if let Ok(s) = client.request_text(req).await {
            if s.trim() == "ok" {
                break;
            }
        }
        // A hang guard only: on a loaded 2-core machine the apiserver has taken 45 s.
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "kube-apiserver not ready:\n{}",
            tail(&apiserver.log_text())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("e2e: kube-apiserver ready in {:?}", t.elapsed());
    Cluster {
        _apiserver: apiserver,
        _etcd: etcd,
        kubeconfig,
        client,
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `f` until it returns `Some`, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Minimal HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    request(addr, "e2e.example.com", path, &[])
}

/// A GET with a Host header and extra headers; (status, body).
pub fn request(
    addr: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    request_full(addr, host, path, headers).map(|(st, _, body)| (st, body))
}

/// A GET with a Host header and extra headers; (status, response head, body).
pub fn request_full(
    addr: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String, String)> {
    request_method(addr, "GET", host, path, headers)
}

/// As `request_full`, with any method and no body (other methods than GET say
/// `Content-Length: 0`, so a POST or PUT is complete; a GET is sent as `request_full` always has).
pub fn request_method(
    addr: &str,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String, String)> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}{length}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((status, head.to_string(), body.to_string()))
}

/// The echo server that answered (`server` field), when the proxy answered 200.
pub fn served_by(addr: &str, path: &str) -> Option<String> {
    let (status, body) = http_get(addr, path)?;
    if status != 200 {
        return None;
    }
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    let v: serde_json::Value = serde_json::from_str(&body[start..=end]).ok()?;
    v.get("server")?.as_str().map(str::to_string)
}

pub fn condition(obj: &serde_json::Value, t: &str) -> Option<serde_json::Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .cloned()
}

pub async fn apply<K>(api: &Api<K>, name: &str, v: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&v))
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
}

pub async fn register_pod(client: &Client, name: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), DP_NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "weir-dataplane"}},
        "spec": {"containers": [{"name": "dataplane", "image": "weir-dataplane:e2e"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}
