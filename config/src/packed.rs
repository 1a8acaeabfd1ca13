//! The snapshot as bytes at rest: what `--config` files, `PUT /config` bodies and the
//! operator's last-known-good Secret hold. JSON or YAML as written, or JSON compressed with
//! gzip (RFC 1952), recognised by its magic bytes.
//!
//! Why gzip: a Secret holds at most 1 MiB of data, and a 10,000-route snapshot is ~5 MB of
//! JSON. Its text is repetitive (field names, hostnames, backends), so it compresses to a few
//! percent of that (BENCHMARKS.md "last-known-good Secret"). The operator compresses only a
//! snapshot that would not fit as text, so small installs keep a Secret `kubectl` can show.

use crate::ConfigError;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::borrow::Cow;
use std::io::{Read, Write};

/// The first two bytes of every gzip member (RFC 1952 §2.3.1).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The most bytes a compressed snapshot may expand to. A bound against a gzip bomb in a file
/// or request body: 50× the 10,000-route snapshot.
const MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;

/// Whether `bytes` is gzip-compressed.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// The snapshot text in `bytes`: decompressed when gzip, else `bytes` itself.
pub fn unpack(bytes: &[u8]) -> Result<Cow<'_, [u8]>, ConfigError> {
    if !is_gzip(bytes) {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(8));
    GzDecoder::new(bytes)
        .take(MAX_UNPACKED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ConfigError::single(
                "",
                format!("config is gzip but cannot be decompressed: {e}"),
            )
        })?;
    if out.len() as u64 > MAX_UNPACKED_BYTES {
        return Err(ConfigError::single(
            "",
            format!("config is gzip and expands past {MAX_UNPACKED_BYTES} bytes"),
        ));
    }
    Ok(Cow::Owned(out))
}

/// `text` compressed with gzip at the fastest level: the operator pays it once per snapshot
/// version that does not fit a Secret as text (level 1 measured against the default level 6
/// in BENCHMARKS.md "last-known-good Secret").
pub fn pack_gzip(text: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(text.len() / 8), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(text);
    enc.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_through_and_gzip_round_trips() {
        let text = br#"{"version":"v1","listeners":[]}"#;
        assert!(matches!(unpack(text), Ok(Cow::Borrowed(_))));
        let packed = pack_gzip(text);
        assert!(is_gzip(&packed));
        assert_eq!(unpack(&packed).expect("unpacks").as_ref(), text);
    }

    #[test]
    fn broken_or_oversized_gzip_is_refused() {
        let mut packed = pack_gzip(b"{\"version\":\"v1\"}");
        packed.truncate(packed.len() - 6);
        let e = unpack(&packed).expect_err("truncated");
        assert!(e.to_string().contains("cannot be decompressed"), "{e}");

        // 300 MiB of one byte compresses to ~300 KiB: refused without holding it all.
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        let chunk = vec![b' '; 1024 * 1024];
        for _ in 0..300 {
            enc.write_all(&chunk).expect("write");
        }
        let bomb = enc.finish().expect("finish");
        let e = unpack(&bomb).expect_err("bomb");
        assert!(e.to_string().contains("expands past"), "{e}");
    }
}
