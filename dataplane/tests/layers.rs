//! The layer check: no module of `dataplane/src` imports from a layer above its own.
//!
//! The layer order is read from the list between `<!-- layers: begin -->` and
//! `<!-- layers: end -->` in `src/lib.rs` (written there once). Every `crate::…` path outside
//! comments and `#[cfg(test)]` modules counts as an import of the top-level module it names
//! (`crate::{a, b::c}` groups too). A module may import from its own top-level module (its
//! folder) and from lower layers; importing from a sibling of the same layer is allowed only for
//! the top layer's files, which depend on nothing that could import them back. A `crate::` name
//! that is not in the list (a lib.rs re-export of an old path) is refused too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level module name -> layer number, from the list in lib.rs's documentation.
fn layer_order(lib_rs: &str) -> Result<BTreeMap<String, u32>, String> {
    let begin = lib_rs
        .find("<!-- layers: begin -->")
        .ok_or("src/lib.rs has no `<!-- layers: begin -->` marker")?;
    let end = lib_rs
        .find("<!-- layers: end -->")
        .ok_or("src/lib.rs has no `<!-- layers: end -->` marker")?;
    let mut out = BTreeMap::new();
    for line in lib_rs[begin..end].lines() {
        // `//! - N `a` `b`: description`; continuation lines start with `//!   `.
        let Some(item) = line.trim().strip_prefix("//! - ") else {
            continue;
        };
        let (num, rest) = item
            .split_once(' ')
            .ok_or_else(|| format!("layer line without modules: {line}"))?;
        let layer: u32 = num
            .parse()
            .map_err(|_| format!("layer line does not start with a number: {line}"))?;
        let names = rest.split(':').next().unwrap_or_default();
        for name in names.split_whitespace() {
            let name = name.trim_matches('`');
            if out.insert(name.to_string(), layer).is_some() {
                return Err(format!("`{name}` is listed twice in the layer list"));
            }
        }
    }
    if out.is_empty() {
        return Err("the layer list in src/lib.rs is empty".into());
    }
    Ok(out)
}

/// `text` without `//` comments (doc comments included) and without `#[cfg(test)] mod … { … }`
/// blocks, which may import anything (a router test compiles a whole runtime).
fn strip_comments_and_tests(text: &str) -> String {
    let no_comments: String = text
        .lines()
        .map(|l| match l.find("//") {
            // `"http://…"` in a string literal is not a comment; literals never hold
            // `crate::` paths we care about, so keeping the rest of such a line is harmless.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::with_capacity(no_comments.len());
    let mut rest = no_comments.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        match (is_mod, after.find('{')) {
            (true, Some(open)) => {
                let mut depth = 0usize;
                let mut close = after.len();
                for (i, c) in after[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                close = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[close..];
            }
            // A test-only item that is not a module: skip just the attribute.
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// The top-level modules named by `crate::` paths in `code`, with the line of each.
fn imports(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // `crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
                let mut depth = 0usize;
                let mut item_start = true;
                let mut name = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && (c.is_alphanumeric() || c == '_') => name.push(c),
                        _ if item_start && !name.is_empty() => {
                            out.push((n + 1, std::mem::take(&mut name)));
                            item_start = false;
                        }
                        _ => {}
                    }
                }
                if !name.is_empty() {
                    out.push((n + 1, name));
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push((n + 1, name));
                }
            }
            rest = after;
        }
        if line.contains("super::super::") {
            out.push((n + 1, "super::super".into()));
        }
    }
    out
}

/// Every violation in `files` (path relative to src, source text) under `layers`.
fn violations(files: &[(PathBuf, String)], layers: &BTreeMap<String, u32>) -> Vec<String> {
    let top_layer = layers.values().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for (rel, text) in files {
        let first = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        // lib.rs declares the modules; main.rs and src/bin are binaries of their own crate.
        if first == "lib.rs" || first == "main.rs" || first == "bin" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let Some(&own) = layers.get(&module) else {
            out.push(format!(
                "src/{}: top-level module `{module}` is not in the layer list of src/lib.rs",
                rel.display()
            ));
            continue;
        };
        for (line, target) in imports(&strip_comments_and_tests(text)) {
            if target == "super::super" {
                out.push(format!(
                    "src/{}:{line}: `super::super::` path; name it with `crate::` so its layer is checked",
                    rel.display()
                ));
                continue;
            }
            if target == module {
                continue;
            }
            // Anything else at the crate root is a re-export of lib.rs (old paths kept for
            // tests and fuzz targets, e.g. `crate::router`); going through one would hide the
            // layer of what is imported, so the source must name the folder path.
            let Some(&theirs) = layers.get(&target) else {
                out.push(format!(
                    "src/{}:{line}: `crate::{target}` is not a layered module; name the folder path \
                     (e.g. `crate::route::router`)",
                    rel.display()
                ));
                continue;
            };
            if theirs > own || (theirs == own && own != top_layer) {
                out.push(format!(
                    "src/{}:{line}: `{module}` (layer {own}) imports `crate::{target}` (layer {theirs}); \
                     a module may only import from its own folder or a lower layer",
                    rel.display()
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let path = e.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, base, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let rel = path.strip_prefix(base).expect("under src").to_path_buf();
            out.push((rel, text));
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let layers = layer_order(&lib).unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src",
        files.len()
    );
    let bad = violations(&files, &layers);
    assert!(
        bad.is_empty(),
        "{} import(s) break the layer order of src/lib.rs:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The check itself catches what it is for: an upward import, in either path form, in a
/// folder file; a module missing from the list; and it ignores comments and test modules.
#[test]
fn the_check_flags_upward_imports() {
    let layers = layer_order(
        "//! <!-- layers: begin -->\n//! - 0 `http`: low\n//! - 1 `upstream`: mid\n\
         //!   more words\n//! - 2 `server` `admin`: top\n//! <!-- layers: end -->\n",
    )
    .expect("layer list");
    assert_eq!(layers.get("admin"), Some(&2));
    let file = |p: &str, t: &str| (PathBuf::from(p), t.to_string());
    let files = [
        file("http/reply.rs", "use crate::upstream::pool::Pool;\n"),
        file("http/conn.rs", "fn f() { crate::http::body::empty(); }\n"),
        file("upstream/pool.rs", "use crate::{http::body, server::Dataplane};\n"),
        file(
            "upstream/health.rs",
            "// crate::server in a comment\n#[cfg(test)]\nmod tests {\n    use crate::server::X;\n}\n",
        ),
        file("admin.rs", "use crate::server::Dataplane;\nuse crate::http::body;\n"),
        file("upstream/retry.rs", "use super::super::server::X;\n"),
        file("nowhere.rs", "\n"),
        file("upstream/balancer.rs", "use crate::router::Router;\n"),
    ];
    let bad = violations(&files, &layers);
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(bad[0].starts_with("src/http/reply.rs:1: `http` (layer 0) imports `crate::upstream`"));
    assert!(
        bad[1].starts_with("src/upstream/pool.rs:1: `upstream` (layer 1) imports `crate::server`")
    );
    assert!(bad[2].starts_with("src/upstream/retry.rs:1: `super::super::`"));
    assert!(bad[3].contains("`nowhere` is not in the layer list"));
    assert!(
        bad[4].starts_with("src/upstream/balancer.rs:1: `crate::router` is not a layered module")
    );
}
