//! The HTTP transports of sinks: an HTTP/1.1 client (`httpJson`, OTLP/HTTP) or an HTTP/2-only
//! one (OTLP/gRPC), both hyper over rustls; and, for `httpJson` with `transport: http3`, the
//! QUIC client in [`crate::telemetry::sink::h3`]. Retries and counters are the kinds'.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use weir_config::{Sink, SyslogTransport};

pub(crate) type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client of an `httpJson` sink: HTTP/1.1 (`transport: http`) or HTTP/3.
#[derive(Clone)]
pub(crate) enum SinkClient {
    Http(Box<HttpClient>),
    H3(Arc<crate::telemetry::sink::h3::H3Client>),
}

pub(crate) fn sink_client(sink: &Sink) -> Result<SinkClient, String> {
    Ok(match sink.transport() {
        SyslogTransport::Http3 => {
            SinkClient::H3(Arc::new(crate::telemetry::sink::h3::H3Client::new(sink)?))
        }
        _ => SinkClient::Http(Box::new(http_client(sink)?)),
    })
}

/// One send; the response status once its body is read (a slow body is cut after `timeout`).
pub(crate) async fn send_once(
    client: &SinkClient,
    req: http::Request<Bytes>,
    timeout: Duration,
) -> Result<http::StatusCode, String> {
    match client {
        SinkClient::H3(c) => match tokio::time::timeout(timeout, c.request(req)).await {
            Err(_) => Err(format!("timed out after {timeout:?}")),
            Ok(r) => r,
        },
        SinkClient::Http(c) => {
            match tokio::time::timeout(timeout, c.request(req.map(Full::new))).await {
                Err(_) => Err(format!("timed out after {timeout:?}")),
                Ok(Err(e)) => Err(format!("request failed: {e}")),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    // Drain so the connection can be reused.
                    let _ = tokio::time::timeout(
                        timeout,
                        http_body_util::BodyExt::collect(resp.into_body()),
                    )
                    .await;
                    Ok(status)
                }
            }
        }
    }
}

/// An HTTP/1.1 client for `http://` and `https://` (system roots, or `caFile`); the error says
/// why TLS cannot be set up (every send then fails with it).
pub(crate) fn http_client(sink: &Sink) -> Result<HttpClient, String> {
    client_for(sink, false)
}

/// [`http_client`], or with `h2` an HTTP/2-only one (h2c for `http://`, ALPN h2 for
/// `https://`), for OTLP/gRPC.
pub(crate) fn client_for(sink: &Sink, h2: bool) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(sink.timeout()));
    http.enforce_http(false);
    let https_needed =
        sink.endpoint.starts_with("https://") || sink.metrics_endpoint().starts_with("https://");
    let tls = if sink.tls_verify() {
        crate::http::tls::client_config(sink.ca_file.as_deref(), https_needed)?
    } else {
        crate::http::tls::client_config_no_verify()?
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if h2 {
        let https = builder.enable_http2().wrap_connector(http);
        return Ok(Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(https));
    }
    let https = builder.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}
