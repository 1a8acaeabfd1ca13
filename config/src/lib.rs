//! The Weir config contract.
//!
//! [`Snapshot`] is the one type both the operator (which compiles custom resources into it) and
//! the dataplane (which serves it) agree on. A standalone YAML file is a `Snapshot`, and so is
//! the body of the dataplane's `PUT /config`.
//!
//! Parsing rejects unknown fields and reports where ([`parse_yaml`], [`parse_json`]);
//! [`Snapshot::validate`] reports *every* semantic problem with its field path.

mod delta;
mod duration;
mod error;
mod model;
mod packed;
mod policy;
mod protocol;
#[cfg(feature = "schema")]
mod schema;
mod telemetry;
mod validate;

pub use delta::{parse_delta_json, Delta, RouteChange};
pub use duration::Duration;
pub use error::{ConfigError, Errors, FieldError};
pub use model::*;
pub use packed::{is_gzip, pack_gzip, unpack};
pub use policy::*;
pub use protocol::{CorsPolicy, ListenerLimits, OriginMatch, WebSocketConfig};
#[cfg(feature = "schema")]
pub use schema::DURATION_PATTERN;
pub use telemetry::{OtlpProtocol, TracingConfig};
pub use validate::{compile_full_match, is_hop_by_hop, is_valid_hostname_pattern, parse_host_port};

use sha2::{Digest, Sha256};

/// Top-level fields whose values are maps keyed by a user-chosen name: paths into them are
/// written `backends["api"]`.
const NAMED_MAPS: &[&str] = &["backends", "sinks"];

fn render_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let mut prev_named_map = false;
    for (i, seg) in path.iter().enumerate() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if prev_named_map => out.push_str(&format!("[{key:?}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
        prev_named_map =
            i == 0 && matches!(seg, Segment::Map { key } if NAMED_MAPS.contains(&key.as_str()));
    }
    out
}

fn parse_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ConfigError {
    let path = render_path(e.path());
    ConfigError::single(path, e.into_inner().to_string())
}

/// Parses a YAML snapshot (no validation beyond types and unknown fields).
pub fn parse_yaml(text: &str) -> Result<Snapshot, ConfigError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(parse_error)
}

/// Parses a JSON snapshot (no validation beyond types and unknown fields).
pub fn parse_json(bytes: &[u8]) -> Result<Snapshot, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let snap: Snapshot = serde_path_to_error::deserialize(&mut de).map_err(parse_error)?;
    de.end()
        .map_err(|e| ConfigError::single("", e.to_string()))?;
    Ok(snap)
}

/// Parses JSON when the text starts with `{`, YAML otherwise (gzip-compressed JSON is
/// decompressed first), then validates.
pub fn load(bytes: &[u8]) -> Result<Snapshot, ConfigError> {
    let snap = parse_json_or_yaml(bytes)?;
    snap.validate()?;
    Ok(snap)
}

/// Parses JSON when the text starts with `{`, YAML otherwise; no validation beyond types and
/// unknown fields (for callers that validate later, such as the dataplane's compile).
/// gzip-compressed JSON ([`pack_gzip`]) is decompressed first.
pub fn parse_json_or_yaml(bytes: &[u8]) -> Result<Snapshot, ConfigError> {
    let bytes = unpack(bytes)?;
    let bytes = bytes.as_ref();
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let snap = if first == Some(&b'{') {
        parse_json(bytes)?
    } else {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ConfigError::single("", format!("config is not UTF-8: {e}")))?;
        parse_yaml(text)?
    };
    Ok(snap)
}

impl Snapshot {
    /// `sha256:` + the first 16 hex digits of the SHA-256 of the canonical JSON form, with
    /// `version` left out. Equal content gives equal hashes on every machine.
    pub fn content_hash(&self) -> String {
        let mut copy = self.clone();
        copy.version.clear();
        // Serializing plain data types cannot fail.
        let json = serde_json::to_vec(&copy).unwrap_or_default();
        let digest = Sha256::digest(&json);
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// A copy with every credential value replaced by [`REDACTED`], for display
    /// (`GET /config`, logs).
    pub fn redacted(&self) -> Snapshot {
        let mut copy = self.clone();
        for b in copy.backends.values_mut() {
            if let Some(c) = &mut b.credential {
                c.value = REDACTED.to_string();
            }
        }
        for s in copy.sinks.values_mut() {
            if let Some(k) = &mut s.api_key {
                k.0 = REDACTED.to_string();
            }
        }
        for l in &mut copy.listeners {
            for c in l.tls.iter_mut().flat_map(|t| t.certificates.iter_mut()) {
                if let Some(k) = &mut c.key_pem {
                    k.0 = REDACTED.to_string();
                }
            }
        }
        copy
    }

    /// The version to report: `version` when set, the content hash otherwise.
    pub fn effective_version(&self) -> String {
        if self.version.is_empty() {
            self.content_hash()
        } else {
            self.version.clone()
        }
    }
}
