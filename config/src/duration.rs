//! Human-readable durations (`250ms`, `2s`, `1m30s`) in the config contract.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A duration written as a human-readable string such as `500ms`, `2s` or `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| {
                format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"2s\", \"1m30s\"")
            })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: Duration = "1m30s".parse().unwrap();
        assert_eq!(d.get(), std::time::Duration::from_secs(90));
        assert_eq!(d.to_string(), "1m 30s");
        let d: Duration = "250ms".parse().unwrap();
        assert_eq!(d.get(), std::time::Duration::from_millis(250));
        assert!("fast".parse::<Duration>().is_err());
    }
}
