//! The `syslog` sink kind: each access log as one RFC 5424 message, one per UDP datagram or
//! octet-counted on TCP (reconnecting after a failure).

use crate::telemetry::event::AccessEvent;
use crate::telemetry::sink::kind::{Inputs, Queue, SinkHandle, SinkKind, Tasks};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use weir_config::{Sink, SyslogTransport};

pub struct Syslog;

impl SinkKind for Syslog {
    fn start(&self, handle: &Arc<SinkHandle>, inputs: Inputs) -> Tasks {
        let mut tasks = Tasks::default();
        if let Some(q) = inputs.logs {
            tasks.flush.push(tokio::spawn(syslog(handle.clone(), q)));
        }
        tasks
    }
}

/// RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG`.
pub fn syslog_message(e: &AccessEvent, sink: &Sink) -> String {
    let ip = e.client.ip().to_string();
    let mut line = String::with_capacity(128);
    crate::telemetry::sink::format::access_line(&mut line, e, &ip);
    let severity = if e.status >= 500 { 3 } else { 6 };
    let pri = u32::from(sink.facility()) * 8 + severity;
    let sd_escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace(']', "\\]")
    };
    format!(
        "<{pri}>1 {} {} {} {} access [weir@32473 route=\"{}\" backend=\"{}\" status=\"{}\" method=\"{}\" duration_ms=\"{:.3}\" trace_id=\"{}\"] {}",
        humantime::format_rfc3339_millis(e.time),
        sink.source_name(),
        sink.app_name(),
        std::process::id(),
        sd_escape(&e.route),
        sd_escape(&e.backend),
        e.status,
        sd_escape(e.method.as_str()),
        e.duration.as_secs_f64() * 1000.0,
        crate::http::tracecontext::TraceId(e.trace_id),
        line
    )
}

async fn syslog(h: Arc<SinkHandle>, mut rx: Queue<Arc<AccessEvent>>) {
    let c = &h.config;
    let timeout = c.timeout();
    match c.transport() {
        // http / http3 are refused for syslog by validation.
        SyslogTransport::Udp | SyslogTransport::Http | SyslogTransport::Http3 => {
            let mut sock: Option<tokio::net::UdpSocket> = None;
            while let Some(ev) = rx.next().await {
                let msg = syslog_message(&ev, c);
                h.stats.attempts.fetch_add(1, Ordering::Relaxed);
                if sock.is_none() {
                    sock = udp_connect(&c.endpoint)
                        .await
                        .map_err(|e| h.stats.failure(1, e))
                        .ok();
                    if sock.is_none() {
                        continue;
                    }
                }
                if let Some(s) = &sock {
                    match s.send(msg.as_bytes()).await {
                        Ok(_) => h.stats.success(1),
                        Err(e) => {
                            h.stats.failure(1, format!("udp send: {e}"));
                            sock = None;
                        }
                    }
                }
            }
        }
        SyslogTransport::Tcp => {
            let mut conn: Option<tokio::net::TcpStream> = None;
            while let Some(ev) = rx.next().await {
                let msg = syslog_message(&ev, c);
                let frame = format!("{} {}", msg.len(), msg);
                // One reconnect per message: a stale connection is noticed on write.
                let mut sent = false;
                let mut err = String::new();
                for _ in 0..2 {
                    h.stats.attempts.fetch_add(1, Ordering::Relaxed);
                    if conn.is_none() {
                        match tokio::time::timeout(
                            timeout,
                            tokio::net::TcpStream::connect(c.endpoint.as_str()),
                        )
                        .await
                        {
                            Ok(Ok(s)) => {
                                let _ = s.set_nodelay(true);
                                conn = Some(s);
                            }
                            Ok(Err(e)) => {
                                err = format!("tcp connect: {e}");
                                break;
                            }
                            Err(_) => {
                                err = "tcp connect timed out".into();
                                break;
                            }
                        }
                    }
                    let Some(s) = conn.as_mut() else { break };
                    match tokio::time::timeout(timeout, s.write_all(frame.as_bytes())).await {
                        Ok(Ok(())) => {
                            sent = true;
                            break;
                        }
                        Ok(Err(e)) => err = format!("tcp write: {e}"),
                        Err(_) => err = "tcp write timed out".into(),
                    }
                    conn = None;
                }
                if sent {
                    h.stats.success(1);
                } else {
                    h.stats.failure(1, err);
                }
            }
        }
    }
}

async fn udp_connect(endpoint: &str) -> Result<tokio::net::UdpSocket, String> {
    let addr = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("resolve {endpoint}: {e}"))?
        .next()
        .ok_or_else(|| format!("{endpoint} resolves to nothing"))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("udp bind: {e}"))?;
    s.connect(addr)
        .await
        .map_err(|e| format!("udp connect: {e}"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::event::sample_event;
    use weir_config::SinkType;

    fn event() -> AccessEvent {
        sample_event(0)
    }

    #[test]
    fn syslog_framing() {
        let s = Sink::new(SinkType::Syslog, "127.0.0.1:514");
        let m = syslog_message(&event(), &s);
        assert!(
            m.starts_with("<134>1 2023-11-14T22:13:20.123Z weir weir "),
            "{m}"
        );
        assert!(
            m.contains(" access [weir@32473 route=\"r\" backend=\"b\\\"\\]\""),
            "{m}"
        );
    }
}
