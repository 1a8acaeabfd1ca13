//! `$(POD_IP)` in a config file: the operator writes listener addresses such as
//! `$(POD_IP):8080` in the canonical snapshot (the last-known-good Secret) when pods must bind
//! their own IP; a pod booting from that file replaces the placeholder with its `POD_IP`
//! (downward API `status.podIP`). The snapshot's `version` is left as written, so the operator
//! sees the pod run the version it pushed.

use weir_config::ConfigError;

/// The placeholder, as the operator writes it.
pub const PLACEHOLDER: &str = "$(POD_IP)";

/// Replaces every `$(POD_IP)` in `bytes` with `pod_ip`. Without the placeholder the bytes are
/// returned unchanged; with it but no (or an unusable) `pod_ip`, an error says what to set.
pub fn expand(bytes: Vec<u8>, pod_ip: Option<&str>) -> Result<Vec<u8>, ConfigError> {
    let needle = PLACEHOLDER.as_bytes();
    if !bytes.windows(needle.len()).any(|w| w == needle) {
        return Ok(bytes);
    }
    let ip = pod_ip
        .map(str::trim)
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .ok_or_else(|| {
            ConfigError::single(
                "listeners",
                "an address uses $(POD_IP) but the POD_IP environment variable is not an IP \
                 address (set it from the downward API: fieldRef status.podIP)",
            )
        })?;
    // IPv6 needs brackets in `ip:port`.
    let ip = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let text = String::from_utf8(bytes)
        .map_err(|e| ConfigError::single("", format!("config is not UTF-8: {e}")))?;
    Ok(text.replace(PLACEHOLDER, &ip).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_only_when_present_and_requires_an_ip() {
        let plain = b"listeners: [{name: h, address: '0.0.0.0:8080', protocol: http}]".to_vec();
        assert_eq!(expand(plain.clone(), None).unwrap(), plain);
        let with = b"{\"version\":\"v1\",\"listeners\":[{\"name\":\"h\",\"address\":\"$(POD_IP):8080\",\"protocol\":\"http\"}]}".to_vec();
        let out = expand(with.clone(), Some("10.1.2.3")).unwrap();
        let snap = weir_config::load(&out).unwrap();
        assert_eq!(snap.listeners[0].address, "10.1.2.3:8080");
        assert_eq!(snap.version, "v1", "the version is kept");
        let v6 = weir_config::load(&expand(with.clone(), Some("fd00::7")).unwrap()).unwrap();
        assert_eq!(v6.listeners[0].address, "[fd00::7]:8080");
        for bad in [None, Some(""), Some("not-an-ip")] {
            let e = expand(with.clone(), bad).unwrap_err();
            assert_eq!(e.errors[0].path, "listeners");
        }
    }
}
