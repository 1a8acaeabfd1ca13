//! KairosDB query mode: route `POST /api/v1/datapoints/query` (and `/query/tags`) by metric
//! name.
//!
//! Request shape (KairosDB REST API): `{start_absolute | start_relative, end_*, metrics:
//! [{name, tags, group_by, aggregators, ...}], ...}`. Response: `{queries: [{sample_size,
//! results: [{name, group_by, tags, values}]}]}`, one `queries` entry per requested metric, in
//! request order. Errors are `{errors: ["..."]}`.
//!
//! - `simple`: the backend of the first metric name (or of an `X-METRICNAME` header) gets the
//!   query byte for byte and its response streams back.
//! - `multi`: metrics are grouped by backend; each backend gets the query with only its metrics
//!   (bounded concurrency, a timeout per backend); the `queries` are put back in request order.
//!   A failed backend fails the whole query with a 502 naming its status and metrics, unless
//!   `allowPartial`: then its metrics get empty results and `x-weir-partial` lists them.

use crate::http::body::{full, BoxError, ProxyBody};
use crate::http::conn::ConnInfo;
use crate::http::headers::{add_forwarding, strip_hop_by_hop};
use crate::http::reply::{error_response, ErrorKind, ProxyError};
use crate::policy::filters::HeaderOps;
use crate::upstream::backend::BackendRt;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version,
};
use http_body_util::{BodyExt, Limited};
use regex::Regex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use weir_config::{
    compile_full_match, Kairos, KairosMode, Rule, StringMatchType, UpstreamProtocol,
};

/// Largest backend response read in `multi` mode.
const MAX_BACKEND_RESPONSE: usize = 64 << 20;
/// Header naming the metric in `simple` mode; wins over the body.
pub static METRIC_HEADER: HeaderName = HeaderName::from_static("x-metricname");
/// Marks a merged answer with missing metrics (`allowPartial`).
pub static PARTIAL_HEADER: HeaderName = HeaderName::from_static("x-weir-partial");

#[derive(Debug)]
enum NameMatch {
    Exact(String),
    Regex(Regex),
}

/// A compiled `kairos`.
#[derive(Debug)]
pub struct KairosRt {
    mode: KairosMode,
    routes: Vec<(NameMatch, Arc<BackendRt>)>,
    fallback: Option<Arc<BackendRt>>,
    max_concurrency: usize,
    backend_timeout: Option<Duration>,
    allow_partial: bool,
    max_body: usize,
    /// The rule's `filters.requestHeaders`, applied to every backend request.
    request_headers: HeaderOps,
}

fn kairos_error(status: StatusCode, msgs: Vec<String>) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(json!({ "errors": msgs }).to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.extensions_mut()
        .insert(ProxyError(ErrorKind::KairosError));
    r
}

impl KairosRt {
    pub fn new(k: &Kairos, rule: &Rule, backends: &HashMap<String, Arc<BackendRt>>) -> KairosRt {
        let routes = k
            .metric_routes
            .iter()
            .filter_map(|m| {
                let b = backends.get(&m.backend)?.clone();
                let nm = match m.kind {
                    StringMatchType::Exact => NameMatch::Exact(m.value.clone()),
                    StringMatchType::RegularExpression => {
                        NameMatch::Regex(compile_full_match(&m.value).ok()?)
                    }
                };
                Some((nm, b))
            })
            .collect();
        KairosRt {
            mode: k.mode,
            routes,
            fallback: rule
                .backend_refs
                .iter()
                .find(|b| b.weight > 0)
                .and_then(|b| backends.get(&b.name).cloned()),
            max_concurrency: k.max_concurrency.max(1) as usize,
            backend_timeout: k.backend_timeout.map(|d| d.get()),
            allow_partial: k.allow_partial,
            max_body: k.max_body_bytes as usize,
            request_headers: HeaderOps::compile(&rule.filters.request_headers),
        }
    }

    /// The backend a metric name routes to.
    fn backend_for(&self, name: &str) -> Option<&Arc<BackendRt>> {
        self.routes
            .iter()
            .find(|(m, _)| match m {
                NameMatch::Exact(e) => e == name,
                NameMatch::Regex(r) => r.is_match(name),
            })
            .map(|(_, b)| b)
            .or(self.fallback.as_ref())
    }

    /// Answers one KairosDB request.
    pub async fn handle<B>(
        &self,
        conn: &ConnInfo,
        path: &str,
        rule_timeout: Option<Duration>,
        req: Request<B>,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let bytes = match Limited::new(body, self.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let too_big = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                return if too_big {
                    kairos_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        vec![format!("query larger than {} bytes", self.max_body)],
                    )
                } else {
                    kairos_error(
                        StatusCode::BAD_REQUEST,
                        vec![format!("reading the query failed: {e}")],
                    )
                };
            }
        };
        let query: Option<Value> = serde_json::from_slice(&bytes).ok();
        let names = query.as_ref().and_then(metric_names);
        let header_name = parts
            .headers
            .get(&METRIC_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let pq = match parts.uri.path_and_query() {
            Some(pq) if pq.path() == path => pq.clone(),
            _ => match PathAndQuery::try_from(match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            }) {
                Ok(pq) => pq,
                Err(e) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        ErrorKind::BadPath,
                        &e.to_string(),
                    )
                }
            },
        };
        // Backend requests carry what forwarded requests do (see crate::pipeline::proxy::forward): the
        // client's host, X-Forwarded-* / Forwarded, then the rule's request header filters.
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        let host_value = match parts.uri.authority() {
            Some(a) => {
                let a = a.as_str();
                HeaderValue::from_str(a.rsplit_once('@').map_or(a, |(_, h)| h)).ok()
            }
            None => parts.headers.get(header::HOST).cloned(),
        };
        add_forwarding(&mut headers, conn, host_value.as_ref());
        if let Some(h) = host_value {
            headers.insert(header::HOST, h);
        }
        self.request_headers.apply(&mut headers);

        // simple mode, a header, or a single backend: the query goes through unchanged.
        let target = match (&header_name, &names, self.mode) {
            (Some(h), _, _) => Some(self.backend_for(h).cloned()),
            (None, Some(n), KairosMode::Simple) if !n.is_empty() => {
                Some(self.backend_for(&n[0]).cloned())
            }
            (None, Some(n), KairosMode::Multi) if !n.is_empty() => {
                let first = self.backend_for(&n[0]).map(|b| b.name.clone());
                n.iter()
                    .all(|x| self.backend_for(x).map(|b| b.name.clone()) == first)
                    .then(|| self.backend_for(&n[0]).cloned())
            }
            _ => {
                return kairos_error(
                    StatusCode::BAD_REQUEST,
                    vec!["the query is not KairosDB JSON with metrics[].name".into()],
                )
            }
        };
        if let Some(target) = target {
            let Some(b) = target else {
                return kairos_error(
                    StatusCode::BAD_GATEWAY,
                    vec!["no backend for the metric".into()],
                );
            };
            let timeout = self.timeout_for(&b, rule_timeout);
            let sent = b
                .dispatch(
                    parts.method.clone(),
                    pq,
                    version_for(&b),
                    headers,
                    full(bytes),
                    timeout,
                    None,
                )
                .await;
            return match sent.response {
                Ok(r) | Err(r) => {
                    let (mut p, body) = r.into_parts();
                    strip_hop_by_hop(&mut p.headers);
                    Response::from_parts(p, body)
                }
            };
        }

        // multi: group metric indexes by backend, in order of first appearance.
        let (Some(query), Some(names)) = (query, names) else {
            return kairos_error(StatusCode::BAD_REQUEST, vec!["bad query".into()]);
        };
        let mut groups: Vec<(Arc<BackendRt>, Vec<usize>)> = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let Some(b) = self.backend_for(n) else {
                return kairos_error(
                    StatusCode::BAD_GATEWAY,
                    vec![format!("no backend for metric {n:?}")],
                );
            };
            match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, b)) {
                Some((_, v)) => v.push(i),
                None => groups.push((b.clone(), vec![i])),
            }
        }
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let sem = Arc::new(tokio::sync::Semaphore::new(self.max_concurrency));
        // Owned futures built in a loop (no borrowing closures: they upset `Send` inference).
        let mut calls = Vec::with_capacity(groups.len());
        for (b, idx) in &groups {
            let body = sub_query(&query, idx);
            let headers = headers.clone();
            let method = parts.method.clone();
            let pq = pq.clone();
            let sem = sem.clone();
            let timeout = self.timeout_for(b, rule_timeout);
            let group_names: Vec<String> = idx.iter().map(|i| names[*i].clone()).collect();
            let b = b.clone();
            let n = idx.len();
            calls.push(tokio::spawn(async move {
                let _permit = sem.acquire().await;
                let out =
                    tokio::time::timeout(timeout, query_backend(&b, method, pq, headers, body, n))
                        .await
                        .unwrap_or_else(|_| Err(format!("no complete answer within {timeout:?}")));
                out.map_err(|why| {
                    format!(
                        "backend {:?} failed for metrics {group_names:?}: {why}",
                        b.name
                    )
                })
            }));
        }
        let results: Vec<Result<Vec<Value>, String>> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| Err(format!("backend task failed: {e}"))))
            .collect();

        let idxs: Vec<Vec<usize>> = groups.iter().map(|(_, idx)| idx.clone()).collect();
        let Merged {
            queries,
            errors,
            missing,
        } = merge(&names, &idxs, results);
        if !errors.is_empty() && !self.allow_partial {
            return kairos_error(StatusCode::BAD_GATEWAY, errors);
        }
        let mut resp = Response::new(full(Bytes::from(json!({ "queries": queries }).to_string())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if !missing.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&missing.join(",")) {
                resp.headers_mut().insert(PARTIAL_HEADER.clone(), v);
            }
        }
        resp
    }

    fn timeout_for(&self, b: &BackendRt, rule_timeout: Option<Duration>) -> Duration {
        self.backend_timeout
            .or(rule_timeout)
            .unwrap_or(b.config.timeouts.request.get())
    }
}

fn version_for(b: &BackendRt) -> Version {
    if b.config.protocol == UpstreamProtocol::H2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

/// One sub-query: its `queries`, which must have `n` entries.
async fn query_backend(
    b: &BackendRt,
    method: Method,
    pq: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
    n: usize,
) -> Result<Vec<Value>, String> {
    let sent = b
        .dispatch(
            method,
            pq,
            version_for(b),
            headers,
            full(body),
            Duration::from_secs(3600),
            None,
        )
        .await;
    let resp = match sent.response {
        Ok(r) => r,
        Err(local) => {
            let status = local.status();
            let text = collect_text(local.into_body()).await;
            return Err(format!("{status}: {text}"));
        }
    };
    let status = resp.status();
    let bytes = collect_limited(resp.into_body(), MAX_BACKEND_RESPONSE).await?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
        return Err(format!("status {}: {text}", status.as_u16()));
    }
    answer_queries(&bytes, n)
}

/// The metric names of a KairosDB query (`metrics[].name`), in request order; `None` when the
/// query has no such array or a metric has no string name.
pub fn metric_names(query: &Value) -> Option<Vec<String>> {
    query
        .get("metrics")?
        .as_array()?
        .iter()
        .map(|m| m.get("name")?.as_str().map(str::to_string))
        .collect()
}

/// The sub-query one backend gets: `query` with only the metrics at `idx` (indexes into its
/// `metrics`, as [`metric_names`] numbered them).
pub fn sub_query(query: &Value, idx: &[usize]) -> Bytes {
    let metrics = query.get("metrics").and_then(Value::as_array);
    let picked = idx
        .iter()
        .filter_map(|i| metrics.and_then(|m| m.get(*i)).cloned())
        .collect();
    let mut sub = query.clone();
    if let Some(o) = sub.as_object_mut() {
        o.insert("metrics".to_string(), Value::Array(picked));
    }
    Bytes::from(sub.to_string())
}

/// A backend's answer to a sub-query of `n` metrics: its `queries`, which must have `n`
/// entries.
pub fn answer_queries(bytes: &[u8], n: usize) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    let queries = v
        .get("queries")
        .and_then(Value::as_array)
        .ok_or_else(|| "answer has no queries array".to_string())?;
    if queries.len() != n {
        return Err(format!(
            "answer has {} queries for {n} metrics",
            queries.len()
        ));
    }
    Ok(queries.clone())
}

/// The answers of a split query put back together.
#[derive(Debug)]
pub struct Merged {
    /// One entry per requested metric, in request order.
    pub queries: Vec<Value>,
    /// Why the failed groups failed.
    pub errors: Vec<String>,
    /// Names of the metrics whose backend failed (they got empty results).
    pub missing: Vec<String>,
}

/// Merges per-group answers: `groups[g]` lists the metric indexes (into `names`) group `g`
/// asked for and `results[g]` is its [`answer_queries`] outcome. A failed group's metrics get
/// empty results.
pub fn merge(
    names: &[String],
    groups: &[Vec<usize>],
    results: Vec<Result<Vec<Value>, String>>,
) -> Merged {
    let mut queries: Vec<Value> = vec![Value::Null; names.len()];
    let mut errors = Vec::new();
    let mut missing = Vec::new();
    for (idx, res) in groups.iter().zip(results) {
        match res {
            Ok(answers) => {
                for (i, a) in idx.iter().zip(answers) {
                    if let Some(slot) = queries.get_mut(*i) {
                        *slot = a;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "KairosDB backend failed");
                errors.push(e);
                for i in idx {
                    let Some(name) = names.get(*i) else { continue };
                    missing.push(name.clone());
                    queries[*i] = json!({
                        "sample_size": 0,
                        "results": [{ "name": name, "group_by": [], "tags": {}, "values": [] }]
                    });
                }
            }
        }
    }
    Merged {
        queries,
        errors,
        missing,
    }
}

async fn collect_text(body: ProxyBody) -> String {
    match collect_limited(body, 4096).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => e,
    }
}

/// Reads a whole body of at most `max` bytes.
async fn collect_limited(mut body: ProxyBody, max: usize) -> Result<Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer failed: {e}"))?;
        if let Ok(d) = frame.into_data() {
            if buf.len() + d.len() > max {
                return Err(format!("answer larger than {max} bytes"));
            }
            buf.extend_from_slice(&d);
        }
    }
    Ok(buf.freeze())
}
