//! Headless Chromium for the status-page tests (dataplane `/ui` here, the operator's page in
//! `operator/tests/e2e.rs`, which includes this file with `#[path]`).
//!
//! Each call starts a fresh browser with its own profile directory, lets the page's script run
//! for a virtual-time budget (timers fire at once; virtual time waits while fetches are
//! pending, so the page has its answers when the DOM is read), and exits. Only loopback URLs
//! are loaded, and the background-networking flags keep Chromium from calling Google hosts.
//!
//! A missing browser fails the test with instructions: it must never pass without having
//! looked at the page (`scripts/ensure-deps.sh` installs Debian's `chromium`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Virtual time the page's script gets before the DOM is read or the screenshot taken.
pub const BUDGET_MS: u32 = 6000;

/// The Chromium binary (`$WEIR_CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`).
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "headless Chromium is needed to test the status page and was not found on PATH; \
         install it with scripts/ensure-deps.sh (Debian package `chromium`) or point \
         WEIR_CHROMIUM at the binary"
    );
}

/// Runs Chromium headless on `url` with `extra` arguments; returns its stdout.
fn run(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1300,1500",
        &format!("--virtual-time-budget={BUDGET_MS}"),
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {}: {e}", chromium().display());
    });
    let pid = child.id();
    // Hang guard only (a run takes a few seconds): kill the browser if it never exits.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            // SAFETY: kill(2) on the pid of our own child; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let started = Instant::now();
    let out = child.wait_with_output().expect("wait for chromium");
    let _ = done_tx.send(());
    let _ = guard.join();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium exited with {} after {:?}; stderr:\n{}",
        out.status,
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The page's DOM after its script ran (`--dump-dom`).
pub fn dump_dom(url: &str) -> String {
    let dom = run(url, &["--dump-dom".to_string()]);
    assert!(
        dom.contains("</html>"),
        "chromium printed no DOM for {url}: {dom}"
    );
    dom
}

/// A PNG screenshot of the page after its script ran, written to `out`.
pub fn screenshot(url: &str, out: &Path) {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("create the screenshot directory");
    }
    let _ = std::fs::remove_file(out);
    run(url, &[format!("--screenshot={}", out.display())]);
    let png =
        std::fs::read(out).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", out.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a screenshot of a rendered page ({} bytes)",
        out.display(),
        png.len()
    );
}

/// The value of attribute `attr` on the element whose attribute `key` is `value`, in a DOM
/// dump (both in the same start tag).
pub fn attr_after(dom: &str, key: &str, value: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("{key}=\"{value}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let from = format!(" {attr}=\"");
    let i = tag.find(&from)? + from.len();
    let len = tag[i..].find('"')?;
    Some(tag[i..i + len].to_string())
}

/// A table row of a DOM dump, from its attribute `key="value"` to its `</tr>`.
pub fn row<'a>(dom: &'a str, key: &str, value: &str) -> Option<&'a str> {
    let i = dom.find(&format!("{key}=\"{value}\""))?;
    let end = dom[i..].find("</tr>").map_or(dom.len(), |e| i + e);
    Some(&dom[i..end])
}

/// Whether the element with `id` is present and not `hidden` in a DOM dump.
pub fn shown(dom: &str, tag: &str, id: &str) -> bool {
    let open = format!("<{tag} id=\"{id}\"");
    let Some(i) = dom.find(&open) else {
        return false;
    };
    let end = dom[i..].find('>').map_or(dom.len(), |e| i + e);
    !dom[i..end].contains("hidden")
}
