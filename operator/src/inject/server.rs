//! The webhook's HTTPS endpoint: `POST /mutate` with an `admission.k8s.io/v1` AdmissionReview,
//! answered with a JSON patch, an unchanged pod or a denial. The certificate (`tls.crt`,
//! `tls.key` in `--injector-tls-dir`, a mounted Secret the chart or cert-manager keeps) is
//! re-read when the files change, so a rotation needs no restart.

use super::metrics::INJECTOR;
use super::patch::{decide, Input, Outcome};
use super::{InjectError, Settings};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Largest AdmissionReview accepted (a pod is far smaller; the API server caps requests at 3 MiB).
const MAX_REVIEW_BYTES: usize = 4 << 20;
/// How often the certificate files are compared with the ones in use.
const CERT_CHECK: Duration = Duration::from_secs(10);

/// The serving certificate, swapped in place when the mounted files change.
#[derive(Debug)]
pub struct CertStore {
    dir: PathBuf,
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

fn load_pair(dir: &Path) -> Result<(Vec<u8>, Arc<CertifiedKey>), InjectError> {
    let err = |path: &Path, message: String| InjectError::Certificate {
        path: path.display().to_string(),
        message,
    };
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let crt_pem = std::fs::read(&crt).map_err(|e| err(&crt, e.to_string()))?;
    let key_pem = std::fs::read(&key).map_err(|e| err(&key, e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(&crt, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err(&crt, "holds no certificate".into()));
    }
    let pk = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(&key, format!("not a PEM private key: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&pk)
        .map_err(|e| err(&key, format!("unsupported key: {e}")))?;
    let mut fingerprint = crt_pem;
    fingerprint.extend_from_slice(&key_pem);
    Ok((fingerprint, Arc::new(CertifiedKey::new(certs, signing))))
}

impl CertStore {
    pub fn load(dir: PathBuf) -> Result<Arc<Self>, InjectError> {
        let pair = load_pair(&dir)?;
        Ok(Arc::new(CertStore {
            dir,
            current: RwLock::new(pair),
        }))
    }

    /// Re-reads the files; a broken pair (half-written rotation) keeps the old certificate.
    pub fn reload(&self) {
        match load_pair(&self.dir) {
            Ok((fp, ck)) => {
                let Ok(mut cur) = self.current.write() else {
                    return;
                };
                if cur.0 != fp {
                    tracing::info!(dir = %self.dir.display(), "injector certificate reloaded");
                    *cur = (fp, ck);
                }
            }
            Err(e) => tracing::warn!("{e}; keeping the certificate in use"),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.1.clone())
    }
}

/// What `/mutate` needs besides the request.
pub struct Injector {
    pub settings: Settings,
    pub client: kube::Client,
}

/// The AdmissionReview answer for one request (pure: the patch is base64 of its JSON).
pub fn review_response(uid: &str, outcome: &Result<Outcome, super::Denial>) -> Value {
    let response = match outcome {
        Ok(Outcome::Skip(_)) => json!({"uid": uid, "allowed": true}),
        Ok(Outcome::Patch(ops)) => {
            let patch = serde_json::to_vec(ops).unwrap_or_default();
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch",
                   "patch": base64::engine::general_purpose::STANDARD.encode(patch)})
        }
        Err(d) => json!({"uid": uid, "allowed": false,
            "status": {"code": 400, "reason": "Invalid",
                       "message": format!("weir sidecar injector: {d}")}}),
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// A request the webhook cannot answer (malformed review, API server unreachable): a 4xx/5xx
/// makes the API server apply the failure policy.
#[derive(Debug, thiserror::Error)]
enum AdmitError {
    #[error("malformed AdmissionReview: {0}")]
    BadReview(String),
    #[error("cannot read {what}: {source}")]
    Kube { what: String, source: kube::Error },
}

impl Injector {
    async fn admit(&self, body: &[u8]) -> Result<Value, AdmitError> {
        let review: Value =
            serde_json::from_slice(body).map_err(|e| AdmitError::BadReview(e.to_string()))?;
        let req = review
            .get("request")
            .ok_or_else(|| AdmitError::BadReview("no `request`".into()))?;
        let uid = req
            .get("uid")
            .and_then(Value::as_str)
            .ok_or_else(|| AdmitError::BadReview("no `request.uid`".into()))?;
        let object = req
            .get("object")
            .cloned()
            .ok_or_else(|| AdmitError::BadReview("no `request.object`".into()))?;
        let pod: Pod = serde_json::from_value(object)
            .map_err(|e| AdmitError::BadReview(format!("request.object: {e}")))?;
        // A pod created through a Deployment has no name nor namespace yet: the request has it.
        let ns = req
            .get("namespace")
            .and_then(Value::as_str)
            .or(pod.metadata.namespace.as_deref())
            .unwrap_or("default")
            .to_string();
        let span = tracing::info_span!("admit", namespace = %ns, pod = %pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or(""), uid);
        let _enter = span.enter();
        let namespace = Api::<Namespace>::all(self.client.clone())
            .get(&ns)
            .await
            .map_err(|source| AdmitError::Kube {
                what: format!("namespace {ns}"),
                source,
            })?;
        let services = Api::<Service>::namespaced(self.client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .map_err(|source| AdmitError::Kube {
                what: format!("services in {ns}"),
                source,
            })?;
        let outcome = decide(&Input {
            pod: &pod,
            namespace_labels: &namespace.metadata.labels.unwrap_or_default(),
            services: &services.items,
            settings: &self.settings,
        });
        match &outcome {
            Ok(Outcome::Skip(why)) => {
                INJECTOR
                    .skipped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(reason = why, "left alone");
            }
            Ok(Outcome::Patch(ops)) => {
                INJECTOR
                    .injected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(operations = ops.len(), "sidecar injected");
                // The sidecar reads its admin token from this Secret: make sure it exists before
                // the pod does, or the kubelet would hold the pod until the operator wrote it.
                // A failure still injects (failing admission would block the app); the
                // workload controller creates the Secret when it sees the pod.
                if let Err(e) = crate::workload::token::ensure(&self.client, &ns).await {
                    let e = e.counted();
                    tracing::warn!(error = %e, kind = e.kind(), "sidecar token Secret not ensured at admission");
                }
            }
            Err(d) => {
                INJECTOR
                    .denied
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(field = %d.field, "pod refused: {d}");
            }
        }
        Ok(review_response(uid, &outcome))
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: Vec<u8>, json: bool| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            if json {
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
            r
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => return reply(StatusCode::OK, b"ok\n".to_vec(), false),
            (&Method::POST, "/mutate") => {}
            _ => return reply(StatusCode::NOT_FOUND, b"not found\n".to_vec(), false),
        }
        let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                INJECTOR
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return reply(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}\n").into_bytes(),
                    false,
                );
            }
        };
        match self.admit(&body).await {
            Ok(v) => reply(StatusCode::OK, v.to_string().into_bytes(), true),
            Err(e) => {
                INJECTOR
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("admission failed (the API server applies the failure policy): {e}");
                let status = match e {
                    AdmitError::BadReview(_) => StatusCode::BAD_REQUEST,
                    AdmitError::Kube { .. } => StatusCode::SERVICE_UNAVAILABLE,
                };
                reply(status, format!("{e}\n").into_bytes(), false)
            }
        }
    }
}

/// Serves the webhook on `listener` until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    certs: Arc<CertStore>,
    injector: Arc<Injector>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), InjectError> {
    let address = listener
        .local_addr()
        .map_err(|source| InjectError::Listen {
            address: ([0, 0, 0, 0], 0).into(),
            source,
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| InjectError::Certificate {
            path: certs.dir.display().to_string(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    super::metrics::ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%address, "sidecar injector listening (HTTPS, POST /mutate)");
    let reloader = certs.clone();
    let reload = tokio::spawn(async move {
        loop {
            tokio::time::sleep(CERT_CHECK).await;
            reloader.reload();
        }
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let Ok((tcp, peer)) = accepted else { continue };
        let acceptor = acceptor.clone();
        let injector = injector.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, "injector TLS handshake failed: {e}");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let injector = injector.clone();
                async move { Ok::<_, std::convert::Infallible>(injector.handle(req).await) }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, "injector connection: {e}");
            }
        });
    }
    reload.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn write_pair(dir: &Path, name: &str) -> CertificateDer<'static> {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        std::fs::write(dir.join("tls.crt"), ck.cert.pem()).expect("write crt");
        std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).expect("write key");
        ck.cert.der().clone()
    }

    /// One HTTP/1.1 request over TLS to `addr`, trusting only `ca` for `name`.
    async fn request(
        addr: std::net::SocketAddr,
        ca: &CertificateDer<'static>,
        name: &str,
        raw: &str,
    ) -> Result<String, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| e.to_string())?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let sni =
            rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(sni, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(raw.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The real listener on a real socket: TLS with the mounted pair, a malformed review is a
    /// 400 (so the API server applies the failure policy), and a rotated pair is served after
    /// `reload` without a restart while a broken one keeps the old.
    #[tokio::test]
    async fn serves_tls_rejects_bad_reviews_and_reloads_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = write_pair(dir.path(), "weir-injector.weir-system.svc");
        let certs = CertStore::load(dir.path().to_path_buf()).expect("load");
        // Never contacted: a malformed review is refused before any API call.
        let config = kube::Config::new("https://127.0.0.1:9".parse().expect("uri"));
        let client = kube::Client::try_from(config).expect("client");
        let settings: Settings =
            serde_json::from_value(json!({"image": "weir-dataplane"})).expect("settings");
        let injector = Arc::new(Injector { settings, client });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(listener, certs.clone(), injector, stop_rx));
        let name = "weir-injector.weir-system.svc";

        let health = "GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let got = request(addr, &first, name, health)
            .await
            .expect("healthz over TLS");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        let body = "{\"request\": {}}";
        let bad = format!("POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        let got = request(addr, &first, name, &bad)
            .await
            .expect("mutate over TLS");
        assert!(
            got.starts_with("HTTP/1.1 400") && got.contains("request.uid"),
            "{got}"
        );

        let second = write_pair(dir.path(), name);
        certs.reload();
        assert!(
            request(addr, &first, name, health).await.is_err(),
            "old certificate still served"
        );
        let got = request(addr, &second, name, health)
            .await
            .expect("rotated certificate");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");

        std::fs::write(dir.path().join("tls.key"), "not a key").expect("write");
        certs.reload();
        let got = request(addr, &second, name, health)
            .await
            .expect("kept after a bad rotation");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }

    #[test]
    fn denial_names_the_annotation_and_patch_is_base64_json() {
        let d = super::super::Denial {
            field: "metadata.annotations[weir.dev/log-level]".into(),
            message: "bad".into(),
        };
        let v = review_response("u1", &Err(d));
        assert_eq!(v["response"]["allowed"], json!(false));
        assert_eq!(v["response"]["uid"], json!("u1"));
        let msg = v["response"]["status"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("metadata.annotations[weir.dev/log-level]"),
            "{msg}"
        );

        let ops = vec![json!({"op": "add", "path": "/a", "value": 1})];
        let v = review_response("u2", &Ok(Outcome::Patch(ops.clone())));
        assert_eq!(v["response"]["patchType"], json!("JSONPatch"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap_or(""))
            .unwrap_or_default();
        let back: Vec<Value> = serde_json::from_slice(&raw).unwrap_or_default();
        assert_eq!(back, ops);

        let v = review_response("u3", &Ok(Outcome::Skip("x")));
        assert_eq!(v["response"], json!({"uid": "u3", "allowed": true}));
    }
}
