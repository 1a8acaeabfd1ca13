//! TLS for the TCP listener: certificates from PEM files, SNI selection, and a self-signed
//! fallback when a listener names no certificate.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use weir_config::{Errors, TlsConfig};

/// ALPN protocols offered on the TLS TCP listener, most preferred first.
pub const TCP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Picks a certificate by SNI; the first certificate answers when SNI is absent or unknown
/// (clients connecting to an IP address send no SNI).
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    named: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            let sni = sni.to_ascii_lowercase();
            let hit = self.named.iter().find(|(n, _)| n == &sni).or_else(|| {
                self.named.iter().find(|(n, _)| {
                    n.strip_prefix('*')
                        .is_some_and(|suffix| sni.len() > suffix.len() && sni.ends_with(suffix))
                })
            });
            if let Some((_, k)) = hit {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// A generated certificate for `localhost`, `127.0.0.1` and `::1`, made once per process.
/// The private key stays in memory; the certificate is also written to a file (its path is
/// logged) so that a client can trust it (`curl --cacert`). [`remove_self_signed_file`]
/// deletes that file on a clean shutdown.
pub struct SelfSigned {
    pub cert_file: PathBuf,
    cert_pem: String,
    key_pem: String,
}

static SELF_SIGNED: OnceLock<Result<SelfSigned, String>> = OnceLock::new();

fn self_signed_dir() -> PathBuf {
    std::env::temp_dir().join(format!("weir-selfsigned-{}", std::process::id()))
}

pub fn self_signed() -> Result<&'static SelfSigned, String> {
    SELF_SIGNED
        .get_or_init(|| {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
            let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
            let dir = self_signed_dir();
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let cert_file = dir.join("cert.pem");
            let cert_pem = ck.cert.pem();
            std::fs::write(&cert_file, &cert_pem)
                .map_err(|e| format!("{}: {e}", cert_file.display()))?;
            tracing::warn!(
                cert = %cert_file.display(),
                "no certificate configured for a TLS listener: serving a generated self-signed certificate"
            );
            Ok(SelfSigned { cert_file, cert_pem, key_pem: ck.signing_key.serialize_pem() })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Deletes the generated certificate's file and folder, if this process made one.
pub fn remove_self_signed_file() {
    if let Some(Ok(ss)) = SELF_SIGNED.get() {
        if let Err(e) = std::fs::remove_file(&ss.cert_file) {
            tracing::debug!(file = %ss.cert_file.display(), error = %e, "cannot remove the self-signed certificate");
        }
        if let Some(dir) = ss.cert_file.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn load_key(
    provider: &CryptoProvider,
    cert_file: &str,
    key_file: &str,
) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read certificate file {cert_file:?}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {cert_file:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {cert_file:?}"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {key_file:?}: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key in {key_file:?}: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("{key_file:?} does not belong to {cert_file:?}: {e}"))?;
    Ok(ck)
}

/// Loads a certificate chain and key given inline as PEM text (from a TLS Secret). Errors
/// never quote the key.
fn load_key_pem(
    provider: &CryptoProvider,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in certPem: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in certPem".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("cannot read a private key from keyPem: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key in keyPem: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| format!("keyPem does not belong to certPem: {e}"))?;
    Ok(ck)
}

/// The rustls configs of one `https` listener: TCP (TLS 1.2/1.3, ALPN h2 + http/1.1) and,
/// when HTTP/3 is on, QUIC (TLS 1.3 only, ALPN h3, no 0-RTT). Both share one SNI resolver.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub tcp: Arc<rustls::ServerConfig>,
    pub quic: Option<Arc<rustls::ServerConfig>>,
}

/// ALPN for QUIC.
pub const H3_ALPN: &[&[u8]] = &[b"h3"];

/// Builds the TLS configs for a listener at `path` (`listeners[1]`), pushing any problem to
/// `errs` with its field path.
pub fn listener_tls(
    tls: Option<&TlsConfig>,
    path: &str,
    quic: bool,
    errs: &mut Errors,
) -> Option<ListenerTls> {
    let provider = provider();
    let mut keys = Vec::new();
    let certs = tls.map(|t| t.certificates.as_slice()).unwrap_or_default();
    if certs.is_empty() {
        match self_signed() {
            Ok(ss) => match load_key_pem(&provider, &ss.cert_pem, &ss.key_pem) {
                Ok(k) => keys.push((Vec::new(), Arc::new(k))),
                Err(e) => errs.push(format!("{path}.tls"), e),
            },
            Err(e) => errs.push(
                format!("{path}.tls"),
                format!("cannot generate a self-signed certificate: {e}"),
            ),
        }
    }
    for (i, c) in certs.iter().enumerate() {
        let loaded = match (&c.cert_pem, &c.key_pem) {
            (Some(cert), Some(key)) => load_key_pem(&provider, &cert.0, &key.0),
            _ => load_key(&provider, &c.cert_file, &c.key_file),
        };
        match loaded {
            Ok(k) => keys.push((c.hostnames.clone(), Arc::new(k))),
            Err(e) => errs.push(format!("{path}.tls.certificates[{i}]"), e),
        }
    }
    let (_, default) = keys.first()?.clone();
    let named = keys
        .iter()
        .flat_map(|(names, k)| names.iter().map(|n| (n.to_ascii_lowercase(), k.clone())))
        .collect();
    let resolver = Arc::new(SniResolver { default, named });
    let build = |versions: &[&'static rustls::SupportedProtocolVersion], alpn: &[&[u8]]| {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // 0-RTT stays off: early data can be replayed by an attacker.
        cfg.max_early_data_size = 0;
        Ok::<_, String>(Arc::new(cfg))
    };
    let tcp = match build(rustls::DEFAULT_VERSIONS, TCP_ALPN) {
        Ok(c) => c,
        Err(e) => {
            errs.push(format!("{path}.tls"), e);
            return None;
        }
    };
    let quic = if quic {
        match build(&[&rustls::version::TLS13], H3_ALPN) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(format!("{path}.http3"), e);
                return None;
            }
        }
    } else {
        None
    };
    Some(ListenerTls { tcp, quic })
}

/// A TLS client configuration for the proxy's own HTTP clients (sinks, auth webhooks):
/// roots from `ca_file` when given, else the system roots when `https` is used, else none
/// (plain http). The error says why TLS cannot be set up.
pub(crate) fn client_config(
    ca_file: Option<&str>,
    https: bool,
) -> Result<rustls::ClientConfig, String> {
    use hyper_rustls::ConfigBuilderExt;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    Ok(match ca_file {
        Some(f) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(f).map_err(|e| format!("caFile {f}: {e}"))? {
                let c = c.map_err(|e| format!("caFile {f}: {e}"))?;
                roots.add(c).map_err(|e| format!("caFile {f}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("caFile {f}: no certificates"));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None if https => builder
            .with_native_roots()
            .map_err(|e| format!("no system CA certificates ({e}); set caFile or SSL_CERT_FILE"))?
            .with_no_client_auth(),
        // Plain http: no roots needed.
        None => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    })
}

/// A TLS client configuration that accepts any server certificate (sinks with
/// `tlsVerify: false`); handshake signatures are still verified with the provider's algorithms.
pub(crate) fn client_config_no_verify() -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    )
}

/// Accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// quinn server config from a rustls config (TLS 1.3, ALPN h3) and the listener's settings.
/// Built here, with the other TLS material, so compiling a snapshot does not call into the
/// QUIC front door.
pub fn quic_server_config(
    rustls_cfg: Arc<rustls::ServerConfig>,
    s: &weir_config::Http3Config,
) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg)
        .map_err(|e| format!("TLS config unusable for QUIC: {e}"))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(s.max_concurrent_streams))
        // Control, QPACK encoder/decoder, plus room for extensions.
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(16))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(s.idle_timeout.get())
                .map_err(|e| format!("idleTimeout: {e}"))?,
        ))
        .stream_receive_window(quinn::VarInt::from_u32(s.stream_receive_window))
        .receive_window(quinn::VarInt::from_u32(s.receive_window))
        .send_window(u64::from(s.send_window));
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::{Certificate, SecretString};

    fn inline(cert: &str, key: &str, hostnames: &[&str]) -> Certificate {
        Certificate {
            cert_file: String::new(),
            key_file: String::new(),
            cert_pem: Some(SecretString(cert.to_string())),
            key_pem: Some(SecretString(key.to_string())),
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        }
    }

    #[test]
    fn inline_pem_certificates_load_and_errors_name_the_field_not_the_key() {
        let a = rcgen::generate_simple_self_signed(vec!["a.example.com".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example.com".to_string()]).unwrap();
        let (a_crt, a_key) = (a.cert.pem(), a.signing_key.serialize_pem());
        let b_key = b.signing_key.serialize_pem();

        let tls = TlsConfig {
            certificates: vec![inline(&a_crt, &a_key, &["a.example.com"])],
        };
        let mut errs = Errors::default();
        assert!(listener_tls(Some(&tls), "listeners[0]", true, &mut errs).is_some());
        assert!(errs.is_empty(), "{errs:?}");

        for (cert, key, want) in [
            (
                a_crt.as_str(),
                b_key.as_str(),
                "keyPem does not belong to certPem",
            ),
            ("not pem", a_key.as_str(), "no certificate in certPem"),
            (a_crt.as_str(), "not pem", "keyPem"),
        ] {
            let tls = TlsConfig {
                certificates: vec![inline(cert, key, &[])],
            };
            let mut errs = Errors::default();
            listener_tls(Some(&tls), "listeners[0]", false, &mut errs);
            let text = format!("{errs:?}");
            assert!(text.contains("listeners[0].tls.certificates[0]"), "{text}");
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }
    }
}
