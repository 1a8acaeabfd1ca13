//! The admin listener: probes, config read/replace. Everything but the probes needs the bearer
//! token when one is configured.

use crate::body::{full, ProxyBody};
use crate::server::Dataplane;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest config body `PUT /config` accepts.
pub const MAX_CONFIG_BYTES: usize = 16 << 20;

pub struct Admin {
    pub dataplane: Arc<Dataplane>,
    pub token: Option<String>,
}

/// Serves the admin API until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, s: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(s));
    *r.status_mut() = status;
    r
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], want: &[u8]) -> bool {
    if given.len() != want.len() {
        return false;
    }
    given
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| token_matches(given.trim().as_bytes(), token.as_bytes()))
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/healthz" => return text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                return if self.dataplane.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else if self.dataplane.is_shutting_down() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded\n")
                };
            }
            _ => {}
        }
        if !self.authorized(&req) {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized", "message": "send Authorization: Bearer <admin token>"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/config") => match self.dataplane.runtime() {
                Some(rt) => json(
                    StatusCode::OK,
                    serde_json::json!({ "version": rt.version, "snapshot": rt.snapshot.as_ref() }),
                ),
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "no_config", "message": "no configuration loaded yet"}),
                ),
            },
            (Method::PUT, "/config") | (Method::POST, "/config") => self.put_config(req).await,
            (_, "/config") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed", "message": "use GET or PUT"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "message": format!("no admin endpoint {path}")}),
            ),
        }
    }

    async fn put_config(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let body = match Limited::new(req.into_body(), MAX_CONFIG_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_big = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                let (status, msg) = if too_big {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("config larger than {MAX_CONFIG_BYTES} bytes"),
                    )
                } else {
                    (StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))
                };
                return json(
                    status,
                    serde_json::json!({"error": "bad_body", "message": msg}),
                );
            }
        };
        let result = match weir_config::load(&body) {
            Ok(snap) => self.dataplane.apply(snap).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(version) => json(StatusCode::OK, serde_json::json!({ "version": version })),
            Err(e) => {
                tracing::warn!(
                    errors = e.errors.len(),
                    "rejected config from PUT /config:\n{e}"
                );
                let current = self.dataplane.runtime().map(|rt| rt.version.clone());
                json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({ "errors": e.errors, "currentVersion": current }),
                )
            }
        }
    }
}
