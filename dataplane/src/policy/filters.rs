//! Header transforms and path rewrites (`filters.requestHeaders`, `responseHeaders`, `path`):
//! rule protocol data, applied when the upstream request and the response are made (see
//! [`crate::policy::rule`]).

use http::{HeaderMap, HeaderName, HeaderValue};
use weir_config::{HeaderFilter, PathRewrite};

/// Header add/set/remove, validated and pre-parsed.
#[derive(Debug, Default)]
pub struct HeaderOps {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Validation already checked names and values; anything unparsable is skipped.
    pub fn compile(f: &HeaderFilter) -> HeaderOps {
        let pair = |h: &weir_config::HeaderValue| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
            ))
        };
        HeaderOps {
            add: f.add.iter().filter_map(pair).collect(),
            set: f.set.iter().filter_map(pair).collect(),
            remove: f
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }

    /// Order: remove, set, add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// Applies stripPrefix, replacePrefix, addPrefix in that order, or replaceFull (validation
/// keeps it apart from the other three). Prefixes match on segment boundaries; the result
/// always starts with `/`.
pub fn rewrite_path(rw: &PathRewrite, path: &str) -> String {
    if let Some(full) = &rw.replace_full {
        return full.clone();
    }
    let mut out = path.to_string();
    if let Some(p) = &rw.strip_prefix {
        if let Some(rest) = strip_segment_prefix(&out, p) {
            out = ensure_slash(rest);
        }
    }
    if let Some(r) = &rw.replace_prefix {
        if let Some(rest) = strip_segment_prefix(&out, &r.from) {
            out = join(&r.to, rest);
        }
    }
    if let Some(p) = &rw.add_prefix {
        out = join(p, &out);
    }
    out
}

fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let p = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(p)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn ensure_slash(s: &str) -> String {
    if s.starts_with('/') {
        s.to_string()
    } else {
        format!("/{s}")
    }
}

/// `/a` + `/b` = `/a/b`; `/a/` + `/` = `/a/`; `/a` + `` = `/a`.
fn join(prefix: &str, rest: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if rest.is_empty() {
        return ensure_slash(if p.is_empty() { "/" } else { prefix });
    }
    ensure_slash(&format!("{p}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::PrefixReplace;

    fn rw(strip: Option<&str>, replace: Option<(&str, &str)>, add: Option<&str>) -> PathRewrite {
        PathRewrite {
            strip_prefix: strip.map(str::to_string),
            replace_prefix: replace.map(|(f, t)| PrefixReplace {
                from: f.into(),
                to: t.into(),
            }),
            add_prefix: add.map(str::to_string),
            ..PathRewrite::default()
        }
    }

    #[test]
    fn rewrites() {
        let cases = [
            (rw(Some("/api"), None, None), "/api/users", "/users"),
            (rw(Some("/api"), None, None), "/api", "/"),
            (rw(Some("/api"), None, None), "/apix/users", "/apix/users"),
            (
                rw(None, Some(("/v1", "/v2")), None),
                "/v1/items?",
                "/v2/items?",
            ),
            (rw(None, Some(("/v1", "/")), None), "/v1/items", "/items"),
            (rw(None, Some(("/v1", "/")), None), "/v1", "/"),
            (rw(None, None, Some("/internal")), "/x", "/internal/x"),
            (rw(None, None, Some("/internal")), "/", "/internal/"),
            (rw(Some("/api"), None, Some("/svc")), "/api/a/b", "/svc/a/b"),
            // Gateway API ReplacePrefixMatch, the spec's table.
            (
                rw(None, Some(("/foo", "/xyz")), None),
                "/foo/bar",
                "/xyz/bar",
            ),
            (
                rw(None, Some(("/foo", "/xyz/")), None),
                "/foo/bar",
                "/xyz/bar",
            ),
            (
                rw(None, Some(("/foo/", "/xyz")), None),
                "/foo/bar",
                "/xyz/bar",
            ),
            (
                rw(None, Some(("/foo/", "/xyz/")), None),
                "/foo/bar",
                "/xyz/bar",
            ),
            (rw(None, Some(("/foo", "/xyz")), None), "/foo", "/xyz"),
            (rw(None, Some(("/foo", "/xyz")), None), "/foo/", "/xyz/"),
            (rw(None, Some(("/foo", "/")), None), "/foo/bar", "/bar"),
            (rw(None, Some(("/foo", "/")), None), "/foo/", "/"),
            (rw(None, Some(("/foo", "/")), None), "/foo", "/"),
            (rw(None, Some(("/foo", "")), None), "/foo/bar", "/bar"),
            (rw(None, Some(("/foo", "")), None), "/foo/", "/"),
            (rw(None, Some(("/foo", "")), None), "/foo", "/"),
            // The conformance test HTTPRouteRewritePath.
            (
                rw(None, Some(("/prefix/one", "/one")), None),
                "/prefix/one/two",
                "/one/two",
            ),
            (
                rw(None, Some(("/strip-prefix", "/")), None),
                "/strip-prefix/three",
                "/three",
            ),
            (
                rw(None, Some(("/strip-prefix", "/")), None),
                "/strip-prefix",
                "/",
            ),
            (
                PathRewrite {
                    replace_full: Some("/one".into()),
                    ..PathRewrite::default()
                },
                "/full/one/two",
                "/one",
            ),
        ];
        for (r, input, want) in cases {
            assert_eq!(rewrite_path(&r, input), want, "input {input}");
        }
    }
}
