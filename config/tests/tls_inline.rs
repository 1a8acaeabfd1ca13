//! Inline (`certPem`/`keyPem`) certificates: exactly one source per certificate, and the key
//! never shown by `redacted()` or `Debug`.

fn errors(yaml: &str) -> Vec<(String, String)> {
    let snap = weir_config::parse_yaml(yaml).unwrap();
    match snap.validate() {
        Ok(()) => vec![],
        Err(e) => e.errors.into_iter().map(|f| (f.path, f.message)).collect(),
    }
}

fn listener(cert: &str) -> String {
    format!(
        "listeners: [{{name: https, address: '0.0.0.0:8443', protocol: https, tls: {{certificates: [{cert}]}}}}]"
    )
}

#[test]
fn one_source_per_certificate() {
    let p = "listeners[0].tls.certificates[0]";
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("{certFile: a.crt, keyFile: a.key}", &[]),
        ("{certPem: 'CERT', keyPem: 'KEY'}", &[]),
        (
            "{certFile: a.crt, keyFile: a.key, certPem: 'CERT', keyPem: 'KEY'}",
            &[(
                "",
                "set either certFile + keyFile or certPem + keyPem, not both",
            )],
        ),
        ("{certPem: 'CERT'}", &[(".keyPem", "must not be empty")]),
        (
            "{certPem: ' ', keyPem: 'KEY'}",
            &[(".certPem", "must not be empty")],
        ),
        (
            "{hostnames: [a.example.com]}",
            &[
                (".certFile", "must not be empty"),
                (".keyFile", "must not be empty"),
            ],
        ),
    ];
    for (cert, want) in cases {
        let got = errors(&listener(cert));
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(suffix, m)| (format!("{p}{suffix}"), m.to_string()))
            .collect();
        assert_eq!(got, want, "{cert}");
    }
}

#[test]
fn inline_key_is_redacted() {
    let snap = weir_config::parse_yaml(&listener(
        "{certPem: 'CERT', keyPem: '-----BEGIN PRIVATE KEY-----'}",
    ))
    .unwrap();
    let shown = serde_json::to_string(&snap.redacted()).unwrap();
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(shown.contains(weir_config::REDACTED));
    assert!(shown.contains("CERT"), "the certificate is public");
    assert!(!format!("{snap:?}").contains("PRIVATE KEY"));
    // The unredacted form round-trips (what the operator pushes).
    let back = weir_config::parse_json(serde_json::to_string(&snap).unwrap().as_bytes()).unwrap();
    assert_eq!(back, snap);
}
