//! JSON Schemas for the contract types whose serde form is hand-written (feature `schema`).
//!
//! The schemas are valid Kubernetes structural schemas, so the operator can embed contract
//! types in its CRDs: durations are strings with a pattern, status ranges are
//! `x-kubernetes-int-or-string`, secret strings are plain strings.

use crate::{Duration, Endpoint, SecretString, StatusRange};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use std::borrow::Cow;

/// What [`Duration`] accepts (humantime): one or more `<number><unit>` groups, e.g. `500ms`,
/// `2s`, `1m30s`, `1m 30s`, `1day`.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*[a-zA-Z]+\s*)+$";

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

impl JsonSchema for StatusRange {
    fn schema_name() -> Cow<'static, str> {
        "StatusRange".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // `204` or `"200-299"`; the range itself is checked when parsing.
        // (As k8s-openapi's IntOrString: the extension alone is a valid structural schema.)
        json_schema!({
            "x-kubernetes-int-or-string": true,
        })
    }
}

impl JsonSchema for Endpoint {
    fn schema_name() -> Cow<'static, str> {
        "Endpoint".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // `"host:port"` or `{address, weight}`: no structural schema can say "string or
        // object", so the value is kept as is and checked when parsing.
        json_schema!({
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

impl JsonSchema for SecretString {
    fn schema_name() -> Cow<'static, str> {
        "SecretString".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_pattern_accepts_what_parses() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["500ms", "2s", "1m30s", "1m 30s", "1day", "24h"] {
            assert!(re.is_match(ok), "{ok}");
            assert!(ok.parse::<Duration>().is_ok(), "{ok}");
        }
        for d in [Duration::from_secs(86400), Duration::from_millis(1500)] {
            assert!(re.is_match(&d.to_string()), "{d}");
        }
        for bad in ["", "fast", "5", "-1s"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn snapshot_schema_has_docs_and_no_refs_to_missing_types() {
        let schema = schemars::schema_for!(crate::Snapshot);
        let v = schema.as_value();
        let text = v.to_string();
        assert!(
            text.contains("Sockets to accept client traffic on."),
            "doc comments carry over"
        );
        assert!(text.contains("x-kubernetes-int-or-string"));
    }
}
