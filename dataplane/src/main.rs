//! `weir-dataplane`: run the proxy, or `weir-dataplane check FILE` to validate a config.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use weir_dataplane::{admin, server::Dataplane};

/// mimalloc (v3, no transparent huge pages) instead of glibc malloc. A proxied HTTP/3 request
/// makes ~49 heap allocations, some above glibc's per-thread cache (1 KiB: the response
/// `HeaderMap`, the request task), which went through its bins and `malloc_consolidate`:
/// malloc/free were ~18% of the instructions and ~16% of the CPU time. Measured (BENCHMARKS.md,
/// "HTTP/3 at 4× Caddy"): HTTP/3 77.8k → 67.7k instructions per request, HTTP/1.1 −12%; idle
/// RSS +1 MiB (13.7 → 14.6 MiB, release), peak RSS over a 256 MiB HTTP/3 transfer +1 MiB, ~10%
/// more per idle QUIC connection.
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc through its plain entry points. The `mimalloc` crate's allocator calls
/// `mi_malloc_aligned` for every layout. mimalloc v3 serves that from its small-block fast path
/// only up to 1 KiB, and sends every larger block (the boxed request pipeline, the h2 stream's
/// future, grown header maps: ~4 per HTTP/2 request) through its over-allocating path, which
/// also marks the page as holding interior pointers. Measured with callgrind (BENCHMARKS.md,
/// "Issue #18, eighth pass"): instructions per request −1.5% on HTTP/1.1 (18,074 → 17,810),
/// ~−2% on HTTP/3, and on HTTP/2 −1.9% in a fresh process but −8.5% after other traffic
/// (40,264 → 36,836), where the aligned path kept taking fresh pages from the arena
/// (`mi_arenas_page_alloc_fresh`: 1,311 instructions per request).
struct Mimalloc;

/// The alignment mimalloc gives every block of at least this size: its size classes are whole
/// double words (`MI_ALIGN2W`, since `MI_MAX_ALIGN_SIZE` is 16), and `alloc.c` asserts
/// `block_size < MI_MAX_ALIGN_SIZE || aligned(block, MI_MAX_ALIGN_SIZE)`. Below it (8-byte
/// blocks) the word alignment is all, and a layout asking more than its size is not plain.
const PLAIN_ALIGN: usize = 16;

/// Whether `mi_malloc` (and `mi_realloc` to `size`) already meets `align`.
#[inline(always)]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: each method forwards to the mimalloc function with the contract of the
// `GlobalAlloc` method (a block of at least `size` bytes aligned to `align`, or null), and takes
// the unaligned variant only where `plain` says mimalloc's own alignment meets `align`.
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { libmimalloc_sys::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size) as *mut u8 }
        } else {
            unsafe {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[derive(Parser)]
#[command(
    name = "weir-dataplane",
    version,
    about = "Weir dataplane: HTTP/1.1 + HTTP/2 reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file; prints every problem with its field path, exits 1 if any.
    Check { file: PathBuf },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Snapshot file (YAML or JSON) to serve; SIGHUP re-reads it. Without it the dataplane waits
    /// for `PUT /config`.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// A snapshot file served instead of `--config` when it exists and is valid: a sidecar's
    /// per-workload snapshot, mounted from an optional Secret the operator writes, so it is
    /// absent until the first write. Missing, empty or invalid: `--config` is served (a bad
    /// optional file must not keep the proxy down). SIGHUP re-reads the file chosen at start.
    #[arg(long, env = "WEIR_CONFIG_PREFERRED", requires = "config")]
    config_preferred: Option<PathBuf>,
    /// Admin API address.
    #[arg(long, env = "WEIR_ADMIN_ADDRESS", default_value = "127.0.0.1:9901")]
    admin_address: SocketAddr,
    /// File holding the admin bearer token (`WEIR_ADMIN_TOKEN` may hold the token itself).
    #[arg(long, env = "WEIR_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// How long in-flight requests may take to finish on SIGTERM/SIGINT.
    #[arg(long, env = "WEIR_DRAIN_TIMEOUT", default_value = "30s")]
    drain_timeout: weir_config::Duration,
    /// How often certificate files are checked for changes (they reload without a restart).
    #[arg(long, env = "WEIR_CERT_CHECK_INTERVAL", default_value = "2s")]
    cert_check_interval: weir_config::Duration,
    /// Log format.
    #[arg(long, env = "WEIR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Access logs (one line per request, target `weir::access`); also switchable at runtime
    /// with `PUT /logging?access=on|off`.
    #[arg(long, env = "WEIR_ACCESS_LOG", default_value = "on", value_parser = ["on", "off"])]
    access_log: String,
    /// Async runtime worker threads; 0 = `TOKIO_WORKER_THREADS`, else one per usable CPU. With
    /// 1, a single-threaded runtime (cheaper per request than a one-worker multi-thread one).
    #[arg(long, env = "WEIR_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// HTTP/1.1 upstream client for requests without a body: `codec` (Weir's own, no
    /// connection task; see `upstream/h1.rs`) or `hyper` (hyper's client, which always
    /// carries request bodies, upgrades and CONNECT).
    #[arg(long, env = "WEIR_UPSTREAM_H1", default_value = "codec", value_parser = ["codec", "hyper"])]
    upstream_h1: String,
    /// HTTP/1.1 server for client connections: Weir's codec (`codec`, plain and over TLS;
    /// h2c, upgrades and CONNECT are handed to hyper) or hyper's server for everything.
    #[arg(long, env = "WEIR_DOWNSTREAM_H1", default_value = "codec", value_parser = ["codec", "hyper"])]
    downstream_h1: String,
    /// Who serves HTTP/2 over TLS: the server on the `h2` crate (`h2`, listen/h2.rs) or
    /// hyper's server (`hyper`). h2c on plain listeners is always hyper's.
    #[arg(long, env = "WEIR_DOWNSTREAM_H2", default_value = "h2", value_parser = ["h2", "hyper"])]
    downstream_h2: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check { file }) = cli.command {
        return check(&file);
    }
    let logging = init_logging(&cli.run.log_format);
    let rt = match runtime_builder(cli.run.worker_threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        flavor = ?rt.handle().runtime_flavor(),
        workers = rt.metrics().num_workers(),
        "async runtime"
    );
    rt.block_on(run(cli.run, logging))
}

/// With one worker (one usable CPU, or `--worker-threads 1`) a current-thread runtime: a
/// multi-thread runtime with a single worker costs ~25% more CPU per proxied request
/// (BENCHMARKS.md, "Runtime flavour"). More: a multi-thread runtime, one worker per usable CPU
/// unless `--worker-threads` (or tokio's own `TOKIO_WORKER_THREADS`) says otherwise.
fn runtime_builder(worker_threads: usize) -> tokio::runtime::Builder {
    let workers = match worker_threads {
        0 => std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1),
        n => n,
    };
    if workers == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(workers);
    b
}

fn check(file: &PathBuf) -> ExitCode {
    let result = std::fs::read(file)
        .map_err(|e| weir_config::ConfigError::single("", format!("cannot read file: {e}")))
        .and_then(|bytes| weir_config::load(&bytes))
        .and_then(|snap| weir_dataplane::runtime::compile(snap, None));
    match result {
        Ok(rt) => {
            println!(
                "{}: OK (version {}, {} listeners, {} routes, {} backends)",
                file.display(),
                rt.version,
                rt.listeners.len(),
                rt.snapshot.routes.len(),
                rt.backends.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {} error(s)", file.display(), e.errors.len());
            for err in &e.errors {
                eprintln!("  {err}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The filter in force at startup and how to replace it (`PUT /logging?level=`).
struct Logging {
    level: String,
    set: admin::SetLogFilter,
}

/// Level from `RUST_LOG`, else `LOG_LEVEL`, else `info`; the filter sits in a reload layer so
/// the admin API can change it without a restart.
fn init_logging(format: &str) -> Logging {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let wanted = ["RUST_LOG", "LOG_LEVEL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    let (filter, level) = match wanted.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => (f, wanted.unwrap_or_default()),
        Some(Err(e)) => {
            eprintln!("invalid log filter {wanted:?} ({e}); using info");
            (EnvFilter::new("info"), "info".to_string())
        }
        None => (EnvFilter::new("info"), "info".to_string()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry
            .with(fmt::layer().json().flatten_event(true))
            .init();
    } else {
        // Colours only for a terminal: escape codes are noise in collected logs, and writing
        // them was ~60% of the cost of an access log line.
        use std::io::IsTerminal;
        let ansi = std::io::stdout().is_terminal();
        registry.with(fmt::layer().with_ansi(ansi)).init();
    }
    let set: admin::SetLogFilter = Box::new(move |directive: &str| {
        let f = EnvFilter::try_new(directive).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    Logging { level, set }
}

fn admin_token() -> Result<Option<String>, String> {
    if let Ok(path) = std::env::var("WEIR_ADMIN_TOKEN_FILE") {
        return read_token(&PathBuf::from(path)).map(Some);
    }
    match std::env::var("WEIR_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        _ => Ok(None),
    }
}

fn read_token(path: &PathBuf) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read admin token file {}: {e}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(format!("admin token file {} is empty", path.display()));
    }
    Ok(t)
}

/// `--config-preferred` if it holds a snapshot the dataplane accepts, else `--config`.
fn boot_config(preferred: Option<&PathBuf>, config: Option<&PathBuf>) -> Option<PathBuf> {
    let Some(p) = preferred else {
        return config.cloned();
    };
    match std::fs::read(p) {
        Ok(bytes) if !bytes.is_empty() => {
            match weir_config::load(&bytes).and_then(|s| weir_dataplane::runtime::compile(s, None))
            {
                Ok(rt) => {
                    tracing::info!(path = %p.display(), version = %rt.version, "booting from the preferred snapshot");
                    return Some(p.clone());
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), "preferred snapshot rejected, booting from --config; {} error(s):\n{e}", e.errors.len())
                }
            }
        }
        Ok(_) => {
            tracing::info!(path = %p.display(), "preferred snapshot is empty: booting from --config")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(path = %p.display(), "no preferred snapshot (not written yet): booting from --config")
        }
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "cannot read the preferred snapshot: booting from --config")
        }
    }
    config.cloned()
}

async fn run(args: RunArgs, logging: Logging) -> ExitCode {
    let token = match &args.admin_token_file {
        Some(p) => read_token(p).map(Some),
        None => admin_token(),
    };
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if token.is_none() && !args.admin_address.ip().is_loopback() {
        tracing::error!(
            address = %args.admin_address,
            "refusing to serve the admin API on a non-loopback address without a token; set --admin-token-file or WEIR_ADMIN_TOKEN"
        );
        return ExitCode::from(2);
    }

    weir_dataplane::upstream::pool::use_codec(args.upstream_h1 == "codec");
    weir_dataplane::listen::h1::use_codec(args.downstream_h1 == "codec");
    weir_dataplane::listen::h2::use_direct(args.downstream_h2 == "h2");
    let telemetry = weir_dataplane::telemetry::hub::Telemetry::new(args.access_log == "on");
    let config = boot_config(args.config_preferred.as_ref(), args.config.as_ref());
    let dp = Dataplane::new(config.clone(), telemetry);
    if config.is_some() {
        if let Err(e) = dp.reload_from_file().await {
            tracing::error!("config rejected, {} error(s):\n{e}", e.errors.len());
            return ExitCode::FAILURE;
        }
    } else {
        tracing::info!("no --config given: waiting for PUT /config on the admin API");
    }

    let admin_listener = match tokio::net::TcpListener::bind(args.admin_address).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %args.admin_address, error = %e, "cannot bind the admin listener");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(address = %args.admin_address, auth = token.is_some(), "admin API listening");
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(admin::Admin {
            dataplane: dp.clone(),
            token,
            log_filter: Some(logging.set),
            log_level: std::sync::Mutex::new(logging.level),
        }),
        async {
            let _ = admin_stopped.await;
        },
        ADMIN_FINISH,
    ));

    let cert_watcher = dp.spawn_cert_watcher(args.cert_check_interval.get());
    let signals = wait_for_signals(&dp).await;
    cert_watcher.abort();
    if let Err(e) = signals {
        tracing::error!(error = %e, "cannot install signal handlers");
        return ExitCode::FAILURE;
    }
    dp.shutdown(args.drain_timeout.get()).await;
    // The app container's preStop hook is waiting on `/drained`: let its answer out.
    let _ = admin_stop.send(());
    let _ = admin_task.await;
    weir_dataplane::http::tls::remove_self_signed_file();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// How long the admin API may take, after the drain, to write the responses under way.
const ADMIN_FINISH: std::time::Duration = std::time::Duration::from_secs(2);

/// Handles SIGHUP (reload) until SIGTERM or SIGINT arrives.
async fn wait_for_signals(dp: &Arc<Dataplane>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match dp.reload_from_file().await {
                Ok(v) => tracing::info!(version = %v, "reloaded on SIGHUP"),
                Err(e) => tracing::error!("SIGHUP reload rejected, keeping the running config; {} error(s):\n{e}", e.errors.len()),
            },
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{boot_config, GLOBAL};
    use std::path::PathBuf;

    /// The sidecar's `--config-preferred` (its workload's Secret, optional): served when valid,
    /// else `--config`, so a missing, empty or bad file never keeps the proxy from starting.
    #[test]
    fn preferred_config_falls_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let boot = dir.path().join("boot.json");
        let pref = dir.path().join("preferred.json");
        let example = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/standalone.yaml"
        ))
        .expect("example");
        std::fs::write(&boot, &example).expect("write");
        let b = Some(&boot);
        assert_eq!(boot_config(None, b), Some(boot.clone()));
        assert_eq!(boot_config(Some(&pref), b), Some(boot.clone()), "missing");
        std::fs::write(&pref, b"").expect("write");
        assert_eq!(boot_config(Some(&pref), b), Some(boot.clone()), "empty");
        std::fs::write(&pref, b"listeners: [{name: x}]").expect("write");
        assert_eq!(boot_config(Some(&pref), b), Some(boot.clone()), "invalid");
        std::fs::write(&pref, &example).expect("write");
        assert_eq!(boot_config(Some(&pref), b), Some(pref.clone()), "valid");
        let none: Option<&PathBuf> = None;
        assert_eq!(boot_config(None, none), None);
    }

    /// Every (size, alignment) comes back aligned, through both the plain and the aligned
    /// mimalloc calls: allocated, zero-allocated (and zeroed), grown and shrunk with the bytes
    /// kept. Blocks stay alive across sizes so later ones come from pages already in use.
    #[test]
    fn allocator_meets_every_alignment() {
        use std::alloc::{GlobalAlloc, Layout};
        let mut kept = Vec::new();
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1, 3, 7, 8, 9, 15, 16, 17, 24, 40, 48, 1000, 1025, 4100, 8200, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                let at = |p: *mut u8, what: &str, n: usize| {
                    assert!(!p.is_null(), "{what} {n} returned null");
                    assert_eq!(
                        p as usize % align,
                        0,
                        "{what} {n} bytes not aligned to {align}"
                    );
                };
                // SAFETY: non-zero sizes; every block is written and read within its size and
                // freed once with the layout it has at that point.
                unsafe {
                    let z = GLOBAL.alloc_zeroed(layout);
                    at(z, "alloc_zeroed", size);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    GLOBAL.dealloc(z, layout);

                    let p = GLOBAL.alloc(layout);
                    at(p, "alloc", size);
                    p.write_bytes(0xa5, size);
                    let grown = GLOBAL.realloc(p, layout, size * 3);
                    at(grown, "realloc up to", size * 3);
                    let grown_layout = Layout::from_size_align(size * 3, align).expect("layout");
                    let small = size / 2 + 1;
                    let shrunk = GLOBAL.realloc(grown, grown_layout, small);
                    at(shrunk, "realloc down to", small);
                    assert!(std::slice::from_raw_parts(shrunk, small)
                        .iter()
                        .all(|&b| b == 0xa5));
                    kept.push((
                        shrunk,
                        Layout::from_size_align(small, align).expect("layout"),
                    ));
                }
            }
        }
        for (p, layout) in kept {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { GLOBAL.dealloc(p, layout) };
        }
    }
}
