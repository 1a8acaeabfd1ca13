//! Protobuf written by hand for the OTLP encoders (log records and spans): the bytes prost
//! writes (fields by tag, proto3 defaults omitted) without building the messages (~20
//! allocations per span, ~30 per log record); and the prost `KeyValue` builders the message
//! forms (resource, metrics, OTLP/JSON) use.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Wire types.
pub(crate) const VARINT: u8 = 0;
pub(crate) const I64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const I32: u8 = 5;

pub(crate) fn key(out: &mut Vec<u8>, tag: u8, wire: u8) {
    varint(out, (u64::from(tag) << 3) | u64::from(wire));
}

/// A `fixed64` field, omitted when 0 (proto3).
pub(crate) fn fixed64(out: &mut Vec<u8>, tag: u8, v: u64) {
    if v != 0 {
        key(out, tag, I64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A varint field (`uint`, `int64`, enum), omitted when 0 (proto3).
pub(crate) fn varint_field(out: &mut Vec<u8>, tag: u8, v: u64) {
    if v != 0 {
        key(out, tag, VARINT);
        varint(out, v);
    }
}

/// A `string`/`bytes`/message field (always written: callers skip empty proto3 scalars).
pub(crate) fn bytes_field(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
    key(out, tag, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// `AnyValue` payloads of attributes.
pub(crate) enum Val<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    F64(f64),
}

impl Val<'_> {
    /// The encoded length of the `AnyValue` message.
    pub(crate) fn len(&self) -> usize {
        match self {
            Val::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
            Val::Bool(_) => 2,
            Val::Int(i) => 1 + varint_len(*i as u64),
            Val::F64(_) => 9,
        }
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::Str(s) => bytes_field(out, 1, s.as_bytes()),
            Val::Bool(b) => {
                key(out, 2, VARINT);
                out.push(u8::from(*b));
            }
            Val::Int(i) => {
                key(out, 3, VARINT);
                varint(out, *i as u64);
            }
            Val::F64(f) => {
                key(out, 4, I64);
                out.extend_from_slice(&f.to_le_bytes());
            }
        }
    }
}

/// A `KeyValue` attribute as field `tag` of the enclosing message.
pub(crate) fn kv(out: &mut Vec<u8>, tag: u8, k: &str, v: Val<'_>) {
    let vlen = v.len();
    let len = 1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(vlen as u64) + vlen;
    key(out, tag, LEN);
    varint(out, len as u64);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    varint(out, vlen as u64);
    v.write(out);
}

/// `Export{Logs,Trace}ServiceRequest { 1: Resource{Logs,Spans} { 1: resource, 2:
/// Scope{Logs,Spans} { 1: scope, 2: items } } }`: the two requests have the same shape;
/// `records` holds the items, each already keyed and framed.
pub(crate) fn envelope(
    resource: &Resource,
    scope: &InstrumentationScope,
    records: &[u8],
) -> Vec<u8> {
    let scope = scope.encode_to_vec();
    let resource = resource.encode_to_vec();
    // ScopeLogs { scope: 1, log_records: 2 }
    let scope_logs_len = 1 + varint_len(scope.len() as u64) + scope.len() + records.len();
    // ResourceLogs { resource: 1, scope_logs: 2 }
    let resource_logs_len = 1
        + varint_len(resource.len() as u64)
        + resource.len()
        + 1
        + varint_len(scope_logs_len as u64)
        + scope_logs_len;
    let mut out = Vec::with_capacity(1 + varint_len(resource_logs_len as u64) + resource_logs_len);
    // ExportLogsServiceRequest { resource_logs: 1 }
    key(&mut out, 1, LEN);
    varint(&mut out, resource_logs_len as u64);
    bytes_field(&mut out, 1, &resource);
    key(&mut out, 2, LEN);
    varint(&mut out, scope_logs_len as u64);
    bytes_field(&mut out, 1, &scope);
    out.extend_from_slice(records);
    out
}

pub(crate) fn kv_str(k: impl Into<String>, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

pub(crate) fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
