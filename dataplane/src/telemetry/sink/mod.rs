//! Telemetry sinks: one running sink per configured one, each with bounded queues fed from the
//! request path ([`Sinks::ship_access`], and the tracer's span queues: `try_send`, never waits;
//! a full queue drops and counts) and tasks that batch, encode and send.
//!
//! Every sink kind implements [`SinkKind`] in a file of its own, its encoder beside it:
//!
//! - `httpJson` ([`http_json`], encoder [`ecs`]): access logs as ECS 8.0 JSON documents,
//!   POSTed as a JSON array of up to `batchSize` documents to `endpoint`; every
//!   `flushInterval`, the registry's counters and gauges (histograms as `_count`/`_sum`) as
//!   `{name,type,value,labels,timestamp,help}` objects POSTed to `metricsEndpoint` (default
//!   `endpoint`); `http` or `https` (system roots or `caFile`, or no verification with
//!   `tlsVerify: false`), over HTTP/1.1 or, with `transport: http3`, HTTP/3. Retries with
//!   backoff on 5xx, 429, timeouts and connection errors (4 attempts), never on other 4xx;
//!   then the batch is counted as failed and dropped.
//! - `syslog` ([`syslog`]): each access log as one RFC 5424 message, one per UDP datagram or
//!   octet-counted on TCP (reconnecting after a failure).
//! - `otlp` ([`otlp`], encoders [`otlp_enc`]): access logs, metrics and request spans over
//!   OTLP/HTTP protobuf or OTLP/gRPC.
//!
//! The transports are not kinds: [`http`] (HTTP/1.1 and HTTP/2 clients, hyper) and [`h3`]
//! (HTTP/3, quinn). [`format`] and [`proto`] hold what the encoders share.
//!
//! [`Sinks::reconcile`] runs after every config apply: sinks whose name and settings are
//! unchanged keep running (and their counters); changed ones are replaced, removed ones
//! stopped (items still queued there are discarded). [`Sinks::close`] and [`flush`] let the
//! sinks send what is queued at shutdown, for a bounded time.

pub mod ecs;
pub mod format;
pub(crate) mod h3;
pub(crate) mod http;
pub mod http_json;
pub mod kind;
pub mod otlp;
pub mod otlp_enc;
pub mod proto;
pub mod registry;
pub mod syslog;

pub use kind::{Gather, Inputs, Queue, SinkHandle, SinkKind, SinkStats, Tasks};
pub use registry::{flush, report, Sinks, SHUTDOWN_FLUSH};
