//! The `httpJson` sink kind: access logs as ECS documents (encoder: [`crate::telemetry::sink::ecs`])
//! POSTed as JSON arrays, and the registry's counters and gauges as JSON objects, over HTTP/1.1
//! or HTTP/3 (see the folder's documentation for the settings).

use crate::telemetry::event::AccessEvent;
use crate::telemetry::sink::http::{send_once, sink_client, SinkClient};
use crate::telemetry::sink::kind::{now_ms, Gather, Inputs, Queue, SinkHandle, SinkKind, Tasks};
use bytes::Bytes;
use prometheus::proto::{MetricFamily, MetricType};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub struct HttpJson;

impl SinkKind for HttpJson {
    fn start(&self, handle: &Arc<SinkHandle>, inputs: Inputs) -> Tasks {
        let mut tasks = Tasks::default();
        let client = sink_client(&handle.config).map_err(|e| {
            tracing::error!(sink = %handle.name, error = %e, "cannot set up the sink's HTTP client; every send fails");
            e
        });
        if let Some(q) = inputs.logs {
            tasks
                .flush
                .push(tokio::spawn(http_logs(handle.clone(), client.clone(), q)));
        }
        if let Some(gather) = inputs.gather {
            tasks
                .other
                .push(tokio::spawn(http_metrics(handle.clone(), client, gather)));
        }
        tasks
    }
}

async fn http_logs(
    h: Arc<SinkHandle>,
    client: Result<SinkClient, String>,
    mut q: Queue<Arc<AccessEvent>>,
) {
    let c = &h.config;
    let uri: http::Uri = match c.endpoint.parse() {
        Ok(u) => u,
        Err(_) => return, // validated
    };
    while let Some(batch) = q.next_batch(c.batch_size(), c.flush_interval()).await {
        // Written straight into the body: no per-event `serde_json::Value`.
        let body = Bytes::from(crate::telemetry::sink::ecs::ecs_batch(
            &batch,
            c.source_name(),
        ));
        let n = batch.len() as u64;
        drop(batch);
        let sent = post(&h, &client, &uri, body).await;
        q.settle(&h, n, "log", sent).await;
    }
}

async fn http_metrics(h: Arc<SinkHandle>, client: Result<SinkClient, String>, gather: Gather) {
    let c = &h.config;
    let uri: http::Uri = match c.metrics_endpoint().parse() {
        Ok(u) => u,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(c.flush_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; ship after one interval
    loop {
        tick.tick().await;
        let objs = metric_objects(&gather(), now_ms());
        let n = objs.len() as u64;
        for chunk in objs.chunks(c.batch_size().max(1)) {
            let body = Bytes::from(serde_json::to_vec(chunk).unwrap_or_default());
            let k = chunk.len() as u64;
            match post(&h, &client, &uri, body).await {
                Ok(()) => h.stats.success(k),
                Err(e) => {
                    tracing::warn!(sink = %h.name, items = n, error = %e, "metrics batch dropped");
                    h.stats.failure(k, e);
                }
            }
        }
    }
}

const MAX_ATTEMPTS: u32 = 4;

/// POSTs a JSON body; retries 5xx, 429, timeouts and connection errors with backoff.
async fn post(
    h: &SinkHandle,
    client: &Result<SinkClient, String>,
    uri: &http::Uri,
    body: Bytes,
) -> Result<(), String> {
    let c = &h.config;
    let client = client.as_ref().map_err(|e| e.clone())?;
    let mut waits = crate::telemetry::backoff::send_waits(MAX_ATTEMPTS);
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            if let Some(wait) = waits.next() {
                tokio::time::sleep(wait).await;
            }
        }
        let mut req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "weir-dataplane");
        if let Some(k) = &c.api_key {
            req = req.header(c.api_key_header(), k.0.as_str());
        }
        let req = match req.body(body.clone()) {
            Ok(r) => r,
            Err(e) => return Err(format!("cannot build request: {e}")),
        };
        h.stats.attempts.fetch_add(1, Ordering::Relaxed);
        match send_once(client, req, c.timeout()).await {
            Err(e) => last = e,
            Ok(status) => {
                if status.is_success() {
                    return Ok(());
                }
                last = format!("status {status}");
                if status.is_client_error() && status != http::StatusCode::TOO_MANY_REQUESTS {
                    return Err(format!("{last} (not retried)"));
                }
            }
        }
    }
    Err(format!("{last} after {MAX_ATTEMPTS} attempts"))
}

/// Counters and gauges (histograms and summaries as `_count` and `_sum` counters) as JSON
/// objects `{name,type,value,labels,timestamp,help}`.
pub fn metric_objects(families: &[MetricFamily], now_ms: u64) -> Vec<serde_json::Value> {
    let ts =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(now_ms)).to_string();
    let mut out = Vec::new();
    for f in families {
        for m in f.get_metric() {
            let labels: serde_json::Map<String, serde_json::Value> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().into()))
                .collect();
            let mut push = |name: String, kind: &str, value: f64| {
                out.push(serde_json::json!({
                    "name": name,
                    "type": kind,
                    "value": value,
                    "labels": labels.clone(),
                    "timestamp": ts,
                    "help": f.help(),
                }));
            };
            match f.get_field_type() {
                MetricType::COUNTER => {
                    push(f.name().into(), "counter", m.get_counter().get_value())
                }
                MetricType::GAUGE => push(f.name().into(), "gauge", m.get_gauge().get_value()),
                MetricType::HISTOGRAM => {
                    let hg = m.get_histogram();
                    push(
                        format!("{}_count", f.name()),
                        "counter",
                        hg.get_sample_count() as f64,
                    );
                    push(format!("{}_sum", f.name()), "counter", hg.get_sample_sum());
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::event::sample_event;

    fn event() -> AccessEvent {
        sample_event(0)
    }

    #[test]
    fn ecs_fields() {
        let d: serde_json::Value = serde_json::from_slice(&crate::telemetry::sink::ecs::ecs_batch(
            &[Arc::new(event())],
            "edge",
        ))
        .unwrap();
        let d = &d[0];
        assert_eq!(d["@timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(d["ecs"]["version"], "8.0.0");
        assert_eq!(d["event"]["duration"], 1_500_000);
        assert_eq!(d["http"]["response"]["status_code"], 200);
        assert_eq!(d["http"]["response"]["body"]["bytes"], 42);
        assert_eq!(d["url"]["domain"], "example.com");
        assert_eq!(d["client"]["address"], "10.0.0.1");
        assert_eq!(d["service"]["name"], "edge");
        assert_eq!(d["labels"]["route"], "r");
    }

    #[test]
    fn metric_objects_from_registry() {
        let r = prometheus::Registry::new();
        let c =
            prometheus::IntCounterVec::new(prometheus::Opts::new("x_total", "X."), &["k"]).unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["v"]).inc_by(3);
        let objs = metric_objects(&r.gather(), 0);
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0]["name"], "x_total");
        assert_eq!(objs[0]["type"], "counter");
        assert_eq!(objs[0]["value"], 3.0);
        assert_eq!(objs[0]["labels"]["k"], "v");
        assert_eq!(objs[0]["help"], "X.");
        assert_eq!(objs[0]["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}
