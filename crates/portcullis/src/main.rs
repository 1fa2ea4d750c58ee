//! # portcullis
//!
//! The binary: command line, signals and wiring. No policy logic lives here.
//!
//! * `portcullis run [--config FILE]` — serve (without `--config`: the built-in quickstart).
//! * `portcullis check FILE…` — validate configurations; every error with its path; exit 1.
//! * `portcullis schema` — the JSON Schema of the configuration file, for editors.
//! * `portcullis apikey` — a new API key and the hash to store.
//! * `portcullis keygen` / `portcullis token` — a signing key pair, and a JWT signed with it
//!   (demo issuers, tests).
//!
//! On start it prints one line per listener (`portcullis: listener NAME URL`), the admin
//! address and `portcullis: ready` to stdout; logs go to stderr.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use portcullis_admin::AdminSource;
use portcullis_audit::AuditSink;
use portcullis_config::{Config, ConfigErrors, UpstreamKind};
use portcullis_proxy::{Gateway, Runtime};
use portcullis_telemetry::{LogFormat, Metrics};
use tokio::sync::watch;

/// mimalloc: measurably faster than the system allocator for the request path's many small,
/// short-lived allocations (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The configuration `portcullis run` uses when no file is given.
const QUICKSTART: &str = include_str!("../../../examples/quickstart.yaml");

#[derive(Parser)]
#[command(name = "portcullis", version, about = "An API security gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file. Without it, the built-in quickstart configuration is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format (overrides logging.format).
        #[arg(long, value_enum)]
        log_format: Option<Format>,
        /// Log filter such as `info` or `portcullis=debug` (overrides logging.level).
        #[arg(long)]
        log_level: Option<String>,
        /// Do not reload when the configuration file changes (SIGHUP and the admin API still do).
        #[arg(long)]
        no_watch: bool,
        /// Worker threads (default: one per CPU core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate configuration files and report every error.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the configuration file.
    Schema,
    /// Generate an API key: prints the key (give it to the client) and the hash to store in
    /// `auth.api_keys.keys[].hash` or in Redis.
    Apikey,
    /// Generate a signing key pair for a demo or internal issuer: writes `<name>.private.pem`
    /// (PKCS#8) and `<name>.jwks.json` (the public half) into a folder.
    Keygen {
        /// `EdDSA` or `ES256`.
        #[arg(long, default_value = "EdDSA")]
        alg: String,
        /// The key id (`kid`), also the file names' stem.
        #[arg(long, default_value = "demo")]
        kid: String,
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Mint a signed JWT with a private key from `keygen` (for demos and tests).
    Token {
        /// PKCS#8 PEM private key (EdDSA or ES256).
        #[arg(long)]
        key: PathBuf,
        /// The key id; default: the key file's stem before `.private.pem`.
        #[arg(long)]
        kid: Option<String>,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        audience: Option<String>,
        #[arg(long, default_value = "demo-user")]
        subject: String,
        /// Space-separated scopes.
        #[arg(long, default_value = "")]
        scope: String,
        /// Lifetime such as `15m`, `1h`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Extra claims as `name=value` (a JSON value, or a string).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// The `typ` header. Default `at+jwt` (RFC 9068).
        #[arg(long, default_value = "at+jwt")]
        typ: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Pretty,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Apikey => match portcullis_authn::apikey::generate() {
            Ok((key, hash)) => {
                println!("key:  {key}");
                println!("hash: {hash}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("portcullis: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Keygen { alg, kid, out_dir } => report(keygen(&alg, &kid, &out_dir)),
        Command::Token {
            key,
            kid,
            issuer,
            audience,
            subject,
            scope,
            ttl,
            claims,
            typ,
        } => report(mint(
            &key, kid, &issuer, audience, &subject, &scope, &ttl, &claims, &typ,
        )),
        Command::Schema => {
            let s = serde_json::to_string_pretty(&portcullis_config::schema()).unwrap_or_default();
            println!("{s}");
            std::process::ExitCode::SUCCESS
        }
        Command::Run {
            config,
            log_format,
            log_level,
            no_watch,
            threads,
        } => {
            // One thread: a single-threaded scheduler, with no work-stealing machinery to pay for.
            let mut builder = if threads == Some(1) {
                tokio::runtime::Builder::new_current_thread()
            } else {
                tokio::runtime::Builder::new_multi_thread()
            };
            if let Some(n) = threads.filter(|n| *n > 1) {
                builder.worker_threads(n);
            }
            let rt = match builder.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portcullis: cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(config, log_format, log_level, no_watch)) {
                Ok(gw) => {
                    // Past the drain: what still runs is cut off. Dropping the runtime drops
                    // every task left (requests included, each audited as interrupted); the
                    // audit writer is a thread of its own and writes their events after.
                    gw.interrupt();
                    rt.shutdown_timeout(Duration::from_secs(1));
                    if !gw.audit.flush(Duration::from_secs(5)) {
                        tracing::warn!("some audit events could not be written before stopping");
                    }
                    tracing::info!("portcullis stopped");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn report(r: Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn keygen(alg: &str, kid: &str, out_dir: &Path) -> Result<()> {
    let alg =
        portcullis_jose::Alg::from_name(alg).with_context(|| format!("unknown algorithm {alg}"))?;
    let signer = portcullis_jose::Signer::generate(alg, kid.to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(out_dir)?;
    let private = out_dir.join(format!("{kid}.private.pem"));
    let public = out_dir.join(format!("{kid}.jwks.json"));
    std::fs::write(&private, signer.to_pkcs8_pem())?;
    let jwks = serde_json::json!({ "keys": [signer.public_jwk()] });
    std::fs::write(&public, serde_json::to_string_pretty(&jwks)? + "\n")?;
    println!("private key: {}", private.display());
    println!("public JWKS: {}", public.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn mint(
    key: &Path,
    kid: Option<String>,
    issuer: &str,
    audience: Option<String>,
    subject: &str,
    scope: &str,
    ttl: &str,
    claims: &[String],
    typ: &str,
) -> Result<()> {
    let pem = std::fs::read_to_string(key).with_context(|| format!("{}", key.display()))?;
    let kid = kid.unwrap_or_else(|| {
        key.file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(".private.pem").to_string())
            .unwrap_or_default()
    });
    let signer =
        portcullis_jose::Signer::from_pkcs8_pem(&pem, kid).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ttl = portcullis_core::units::parse_duration(ttl).map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut c = serde_json::Map::new();
    c.insert("iss".into(), issuer.into());
    c.insert("sub".into(), subject.into());
    if let Some(a) = audience {
        c.insert("aud".into(), a.into());
    }
    if !scope.is_empty() {
        c.insert("scope".into(), scope.into());
    }
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), (now + ttl.as_secs()).into());
    c.insert(
        "jti".into(),
        portcullis_core::RequestId::generate().as_str().into(),
    );
    for kv in claims {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--claim {kv}: write name=value"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
        c.insert(k.to_string(), v);
    }
    let token = signer.sign(typ, &c).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{token}");
    Ok(())
}

fn print_errors(source: &str, errors: &ConfigErrors) {
    for e in errors.iter() {
        eprintln!("{source}: {e}");
    }
}

/// Compiles a file the way `run` would, short of binding sockets.
fn check_one(path: &Path) -> Result<Config, ConfigErrors> {
    let config = portcullis_config::load_file(path)?;
    let config = Arc::new(config);
    // Build the runtime too: TLS keys, upstream TLS roots … are checked there.
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            let mut errs = ConfigErrors::new();
            errs.push("", e.to_string());
            errs
        })?
        .block_on(async {
            Runtime::build(
                config.clone(),
                false,
                &portcullis_pipeline::Shared::new(),
                None,
            )
            .map(|_| ())
        });
    built?;
    Arc::try_unwrap(config).map_err(|_| ConfigErrors::new())
}

fn check(files: &[PathBuf]) -> std::process::ExitCode {
    let mut failed = false;
    for f in files {
        let name = f.display().to_string();
        match tracing::dispatcher::with_default(&portcullis_telemetry::load_logger(), || {
            check_one(f)
        }) {
            Ok(c) => println!(
                "{name}: ok ({} routes, {} upstreams, {} listeners)",
                c.routes.len(),
                c.upstreams.len(),
                c.listeners.len()
            ),
            Err(e) => {
                failed = true;
                print_errors(&name, &e);
                eprintln!("{name}: {} error(s)", e.len());
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => portcullis_config::load_file(p),
        None => portcullis_config::load_str(QUICKSTART, Path::new(".")),
    }
}

/// Runs the gateway until it is told to stop and its drain is over (or its deadline passed);
/// returns it for the rest of the stop (see `main`).
async fn run(
    path: Option<PathBuf>,
    log_format: Option<Format>,
    log_level: Option<String>,
    no_watch: bool,
) -> Result<Arc<Gateway>> {
    let source = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in quickstart".into());
    // Logging is set up from the configuration: what its load warns of goes to stderr.
    let loaded = tracing::dispatcher::with_default(&portcullis_telemetry::load_logger(), || {
        load(path.as_deref())
    });
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            print_errors(&source, &e);
            bail!("{source}: the configuration has {} error(s)", e.len());
        }
    };
    let format = match log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Pretty) => LogFormat::Pretty,
        None => match config.logging.format {
            portcullis_config::LogFormat::Json => LogFormat::Json,
            portcullis_config::LogFormat::Pretty => LogFormat::Pretty,
        },
    };
    let level = log_level.unwrap_or_else(|| config.logging.level.clone());
    portcullis_telemetry::init_logging(format, &level).map_err(anyhow::Error::msg)?;

    let audit = AuditSink::from_config(&config.audit).map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    let config = Arc::new(config);
    let shared = portcullis_pipeline::Shared::new();
    let runtime = Runtime::build(config.clone(), true, &shared, Some(&metrics)).map_err(|e| {
        print_errors(&source, &e);
        anyhow::anyhow!("{source}: the configuration has {} error(s)", e.len())
    })?;
    let gw = Gateway::new(runtime, shared, metrics, audit).map_err(|e| {
        print_errors(&source, &e);
        anyhow::anyhow!("{source}: the configuration has {} error(s)", e.len())
    })?;

    let listeners = portcullis_proxy::server::bind(&gw, &config)
        .await
        .map_err(anyhow::Error::msg)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // A second stop signal during the drain: what is still in flight is cut off at once.
    let (cut_tx, cut_rx) = watch::channel(false);

    let mut out = std::io::stdout().lock();
    for l in &listeners {
        writeln!(out, "portcullis: listener {} {}", l.name, l.url())?;
    }
    if config.admin.enabled {
        let admin = tokio::net::TcpListener::bind(config.admin.address)
            .await
            .with_context(|| format!("admin: cannot bind {}", config.admin.address))?;
        writeln!(out, "portcullis: admin http://{}", admin.local_addr()?)?;
        let view: Arc<dyn AdminSource> = Arc::new(AdminView {
            gw: gw.clone(),
            path: path.clone(),
        });
        let mut stop = stop_rx.clone();
        tokio::spawn(portcullis_admin::serve(admin, view, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    if listeners.is_empty() {
        tracing::warn!("no client listener is configured: nothing will be proxied");
    }
    // What the watched files hold now, read before announcing readiness: an edit made right
    // after "ready" is then a change, never the baseline.
    let watched = match (&path, no_watch) {
        (Some(p), false) => {
            let files = watched_files(&gw, p, false);
            let contents = read_all(&files).await;
            Some((p.clone(), files, contents))
        }
        _ => None,
    };
    // Signal handlers too are in place before "ready": a SIGHUP or SIGTERM sent the moment the
    // gateway says it is ready must reload or stop it, not hit the default action.
    let handlers = SignalHandlers::install();
    writeln!(out, "portcullis: ready")?;
    out.flush()?;
    drop(out);
    tracing::info!(config = %source, routes = config.routes.len(), upstreams = config.upstreams.len(), "portcullis started");

    tokio::spawn(resolve_upstreams(gw.clone()));
    if let Some((p, files, contents)) = watched {
        tokio::spawn(watch_file(gw.clone(), p, (files, contents)));
    }
    tokio::spawn(signals(handlers, gw.clone(), path, stop_tx, cut_tx));
    portcullis_proxy::server::serve(gw.clone(), listeners, stop_rx, cut_rx).await;
    Ok(gw)
}

/// Readiness: every upstream target host resolves. Retried until it does.
async fn resolve_upstreams(gw: Arc<Gateway>) {
    loop {
        let rt = gw.runtime();
        let mut failures = Vec::new();
        for u in rt
            .config()
            .upstreams
            .iter()
            .filter(|u| u.kind == UpstreamKind::Proxy)
        {
            for t in &u.targets {
                let ok = match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::lookup_host(t.authority.as_str()),
                )
                .await
                {
                    Ok(Ok(mut addrs)) => addrs.next().is_some(),
                    _ => false,
                };
                if !ok {
                    failures.push(format!("{}: {} does not resolve", u.name, t.authority));
                }
            }
        }
        if failures.is_empty() {
            gw.set_ready(Ok(()));
            return;
        }
        tracing::warn!(problems = ?failures, "upstream hosts not resolved; not ready");
        gw.set_ready(Err(failures.join("; ")));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// SIGHUP, SIGTERM and SIGINT, caught from the moment this is made.
#[cfg(unix)]
struct SignalHandlers(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

#[cfg(unix)]
impl SignalHandlers {
    fn install() -> SignalHandlers {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(hup), Ok(term), Ok(int)) => SignalHandlers(Some((hup, term, int))),
            _ => {
                tracing::error!("cannot install signal handlers");
                SignalHandlers(None)
            }
        }
    }
}

#[cfg(unix)]
async fn signals(
    handlers: SignalHandlers,
    gw: Arc<Gateway>,
    path: Option<PathBuf>,
    stop: watch::Sender<bool>,
    cut: watch::Sender<bool>,
) {
    let Some((mut hup, mut term, mut int)) = handlers.0 else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // A burst of signals makes one reload (besides one already reading): a reload
                // not yet started will read the file after every one of them.
                if RELOADS.queue() {
                    tokio::spawn(reload_off_path(gw.clone(), path.clone(), "SIGHUP"));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Not ready from now on; with a stop delay, still accepting and serving meanwhile, so
    // that load balancers can take the instance out before its listeners close.
    gw.begin_stop();
    let delay = gw.runtime().config().server.stop_delay;
    if !delay.is_zero() {
        tracing::info!(stop_delay = ?delay, "stopping: not ready; serving on for the stop delay (a second SIGTERM or SIGINT drains at once)");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    tracing::info!("stopping: draining connections (a second SIGTERM or SIGINT stops at once)");
    let _ = stop.send(true);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("stopping at once: the requests still in flight are cut off");
    let _ = cut.send(true);
}

#[cfg(not(unix))]
struct SignalHandlers;

#[cfg(not(unix))]
impl SignalHandlers {
    fn install() -> SignalHandlers {
        SignalHandlers
    }
}

#[cfg(not(unix))]
async fn signals(
    _handlers: SignalHandlers,
    gw: Arc<Gateway>,
    _path: Option<PathBuf>,
    stop: watch::Sender<bool>,
    cut: watch::Sender<bool>,
) {
    let _ = tokio::signal::ctrl_c().await;
    gw.begin_stop();
    let delay = gw.runtime().config().server.stop_delay;
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop.send(true);
    let _ = tokio::signal::ctrl_c().await;
    let _ = cut.send(true);
}

/// [`reload`] on a blocking thread: building a configuration (WAF rules, Rego, OpenAPI
/// documents) takes tens to hundreds of milliseconds, which on a runtime worker would hold up
/// the requests queued there — every request with `--threads 1`.
async fn reload_off_path(
    gw: Arc<Gateway>,
    path: Option<PathBuf>,
    why: &'static str,
) -> Result<(), ConfigErrors> {
    tokio::task::spawn_blocking(move || reload(&gw, path.as_deref(), why))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(trigger = why, error = %e, "reload failed");
            let mut errors = ConfigErrors::new();
            errors.push("", format!("the reload failed: {e}"));
            Err(errors)
        })
}

/// Reloads run one at a time from the file's read to the new configuration in force, so the
/// one applied last is the one that read the file last (two compiled side by side could finish
/// in either order, an older read winning); triggers that come while one waits are one.
struct Reloads {
    turn: std::sync::Mutex<()>,
    /// A reload is waiting for its turn and has not read the file yet.
    queued: std::sync::atomic::AtomicBool,
}

static RELOADS: Reloads = Reloads {
    turn: std::sync::Mutex::new(()),
    queued: std::sync::atomic::AtomicBool::new(false),
};

impl Reloads {
    /// Whether a trigger needs a reload of its own: false while one is queued that has not
    /// read the file yet (it will read what this trigger saw).
    fn queue(&self) -> bool {
        !self.queued.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Waits for the turn; from then on a new trigger queues another reload.
    fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        let turn = self
            .turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.queued
            .store(false, std::sync::atomic::Ordering::Release);
        turn
    }
}

/// Re-reads the file and applies it; every error is logged with its path and returned.
fn reload(gw: &Gateway, path: Option<&Path>, why: &str) -> Result<(), ConfigErrors> {
    let _turn = RELOADS.turn();
    let Some(path) = path else {
        let mut e = ConfigErrors::new();
        e.push("", "the built-in configuration has no file to reload");
        tracing::warn!(
            trigger = why,
            "reload asked, but the built-in configuration has no file to reload"
        );
        return Err(e);
    };
    let result = match portcullis_config::load_file(path) {
        Ok(c) => gw.reload(c),
        Err(e) => {
            // `Gateway::reload` counts its own outcomes; a file that does not compile counts here.
            gw.metrics.config_reload(false);
            Err(e)
        }
    };
    match &result {
        Ok(()) => tracing::info!(config = %path.display(), trigger = why, "configuration reloaded"),
        Err(errors) => {
            for e in errors.iter() {
                tracing::error!(config = %path.display(), path = %e.path, "{}", e.message);
            }
            tracing::error!(config = %path.display(), trigger = why, errors = errors.len(), "reload refused; the running configuration stays");
        }
    }
    result
}

/// The files a running configuration is made of — the configuration file, the Rego modules and
/// data it names (paths relative to the configuration file's folder), the listeners'
/// certificates and keys, the upstreams' CA bundles, and its OpenAPI documents
/// with every file they reference — and those the file on disk names now, if it
/// reads: after a refused reload, a Rego module or document new in it (the one that was
/// broken, say) is watched too, so that saving it fixed reloads.
///
/// `after_refusal`: the last reload was refused — the documents the file on disk names are then
/// read for the files they reference (missing or broken ones included), so that creating or
/// fixing the one that made it fail reloads.
fn watched_files(gw: &Gateway, path: &Path, after_refusal: bool) -> Vec<PathBuf> {
    let rt = gw.runtime();
    let base = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_path_buf()];
    let named = |raw: &portcullis_config::RawConfig, files: &mut Vec<PathBuf>| {
        let rego = &raw.authz.rego;
        let specs = raw
            .routes
            .iter()
            .filter_map(|r| r.openapi.as_ref().map(|o| &o.spec));
        // Certificates and keys: a rotation on disk (cert-manager, a Kubernetes Secret)
        // reaches new handshakes without a signal, and a reload refused mid-rotation (a key
        // that does not match its certificate yet) is tried again once it is whole. Not the
        // client CAs and SPIFFE bundles: a change there ends every open mTLS connection's
        // standing (421 `client_auth_changed`), which a bundle rotated ahead of time (a CA
        // added) must not do unasked — that reload is the operator's (SIGHUP, `POST /reload`).
        let listener_files = raw
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| {
                t.certificates
                    .iter()
                    .flat_map(|c| [&c.cert_file, &c.key_file])
            });
        let upstream_cas = raw
            .upstreams
            .values()
            .filter_map(|u| u.tls.ca_file.as_ref());
        for f in rego
            .files
            .iter()
            .chain(rego.data_file.iter())
            .chain(specs)
            .chain(listener_files)
            .chain(upstream_cas)
        {
            let f = portcullis_core::resolve_path(base, f);
            if !files.contains(&f) {
                files.push(f);
            }
        }
    };
    named(&rt.config().raw, &mut files);
    for f in &rt.config().files {
        if !files.contains(f) {
            files.push(f.clone());
        }
    }
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(raw) = portcullis_config::parse_raw(&text)
    {
        named(&raw, &mut files);
        if after_refusal {
            // A reload refused for a client CA or SPIFFE bundle caught half written (during a
            // certificate rotation, say) is tried again once it is whole.
            for t in raw.listeners.iter().filter_map(|l| l.tls.as_ref()) {
                for f in t
                    .client_auth
                    .iter()
                    .flat_map(|a| std::iter::once(&a.ca_file).chain(a.spiffe_bundles.values()))
                {
                    let f = portcullis_core::resolve_path(base, f);
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
            for spec in raw
                .routes
                .iter()
                .filter_map(|r| r.openapi.as_ref().map(|o| &o.spec))
            {
                let spec = portcullis_core::resolve_path(base, spec);
                for f in portcullis_config::openapi_files_named(&spec) {
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
        }
    }
    files
}

/// [`watched_files`] on a blocking thread (it reads and parses the configuration file).
async fn watched_now(gw: &Arc<Gateway>, path: &Path, after_refusal: bool) -> Vec<PathBuf> {
    let (gw, p) = (Arc::clone(gw), path.to_path_buf());
    tokio::task::spawn_blocking(move || watched_files(&gw, &p, after_refusal))
        .await
        .unwrap_or_else(|_| vec![path.to_path_buf()])
}

async fn read_all(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        out.push(tokio::fs::read(f).await.ok());
    }
    out
}

/// Reloads when the configuration file's content — or that of a policy file or OpenAPI document
/// it names — changes from `last` (read before the gateway said it was ready), once it has been
/// stable for a moment (editors write in several steps).
async fn watch_file(
    gw: Arc<Gateway>,
    path: PathBuf,
    mut last: (Vec<PathBuf>, Vec<Option<Vec<u8>>>),
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut refused = false;
    loop {
        tick.tick().await;
        let files = watched_now(&gw, &path, refused).await;
        let now = read_all(&files).await;
        if now.first().is_none_or(Option::is_none) || (&files, &now) == (&last.0, &last.1) {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let settled = read_all(&files).await;
        if settled != now {
            continue; // still being written; look again next tick
        }
        refused = reload_off_path(gw.clone(), Some(path.clone()), "file change")
            .await
            .is_err();
        // What the (possibly new) configuration is made of now, each file as it was read for
        // this reload: one changed while the reload ran differs from that, and is applied at
        // the next look instead of being taken for the state already loaded. A file new to the
        // watch (one a new document references) was read by the reload itself, at a moment
        // not known here: it is taken as unread, so its content as found next time reloads
        // once more rather than an edit made meanwhile being taken for what was loaded.
        let new_files = watched_now(&gw, &path, refused).await;
        let mut contents = Vec::with_capacity(new_files.len());
        for f in &new_files {
            match files.iter().position(|g| g == f) {
                Some(i) => contents.push(settled.get(i).cloned().flatten()),
                None => contents.push(None),
            }
        }
        last = (new_files, contents);
    }
}

struct AdminView {
    gw: Arc<Gateway>,
    path: Option<PathBuf>,
}

impl AdminSource for AdminView {
    fn token(&self) -> Option<Vec<u8>> {
        let rt = self.gw.runtime();
        rt.config()
            .admin
            .token
            .as_ref()
            .map(|t| t.expose().as_bytes().to_vec())
    }

    fn read_token(&self) -> Option<Vec<u8>> {
        let rt = self.gw.runtime();
        rt.config()
            .admin
            .read_token
            .as_ref()
            .map(|t| t.expose().as_bytes().to_vec())
    }

    fn ready(&self) -> Result<(), String> {
        self.gw.readiness()
    }

    fn config(&self) -> serde_json::Value {
        let rt = self.gw.runtime();
        portcullis_config::shown(&rt.config().raw)
    }

    fn metrics(&self) -> String {
        self.gw.refresh_metrics();
        self.gw.metrics.encode()
    }

    fn reload(&self) -> Result<(), Vec<String>> {
        reload(&self.gw, self.path.as_deref(), "admin API")
            .map_err(|e| e.iter().map(|e| e.to_string()).collect())
    }

    fn auth(&self) -> serde_json::Value {
        self.gw.shared.authn.status()
    }

    fn jwks(&self) -> serde_json::Value {
        self.gw.shared.authn.public_jwks()
    }

    fn ratelimit(&self) -> serde_json::Value {
        self.gw.runtime().snapshot.pipeline.ratelimit.status()
    }

    fn bans(&self) -> serde_json::Value {
        let bans = &self.gw.shared.bans;
        let mut out = serde_json::json!({ "bans": bans.list(std::time::Instant::now()) });
        if let Some(shared) = bans.sharing_status() {
            out["shared"] = serde_json::json!(shared);
        }
        out
    }

    fn ban(&self, request: serde_json::Value) -> Result<serde_json::Value, String> {
        let address = request
            .get("address")
            .and_then(|v| v.as_str())
            .ok_or("write {\"address\": \"<IP>\", \"for\": \"<duration>\"}")?;
        let ip: std::net::IpAddr = address
            .parse()
            .map_err(|_| format!("\"{address}\" is not an IP address"))?;
        let ban_for = request
            .get("for")
            .and_then(|v| v.as_str())
            .ok_or("for: a duration, e.g. \"1h\"")
            .and_then(|t| {
                portcullis_core::units::parse_duration(t)
                    .map_err(|_| "for: a duration, e.g. \"1h\"")
            })?;
        if ban_for.is_zero() {
            return Err("for: must be longer than 0s".into());
        }
        let rt = self.gw.runtime();
        let key = self.gw.shared.bans.ban(
            &rt.config().bans,
            ip,
            ban_for,
            "admin",
            std::time::Instant::now(),
        )?;
        tracing::warn!(address = %key, seconds = ban_for.as_secs(), "client address banned through the admin API");
        Ok(serde_json::json!({"banned": key.to_string(), "for_secs": ban_for.as_secs()}))
    }

    fn lift_ban(&self, address: &str) -> Result<bool, String> {
        let ip: std::net::IpAddr = address
            .parse()
            .map_err(|_| format!("\"{address}\" is not an IP address"))?;
        let rt = self.gw.runtime();
        let lifted = self
            .gw
            .shared
            .bans
            .lift(&rt.config().bans, ip, std::time::Instant::now());
        if lifted {
            tracing::info!(%ip, "ban lifted through the admin API");
        }
        Ok(lifted)
    }

    fn revoke(&self, request: serde_json::Value) -> portcullis_admin::RevokeFuture<'_> {
        Box::pin(async move {
            let revs = &self.gw.shared.authn.revocations;
            let field = |k: &str| request.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let until = match request.get("until") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(portcullis_authn::revocation::parse_until(v)?),
            };
            let jti = field("token_id").filter(|j| !j.is_empty());
            if until.is_some() && jti.is_none() {
                return Err("until applies to token ids: an API key's revocation does not end (its own expires does)".to_string());
            }
            let (what, shared) = if let Some(jti) = jti {
                let what = match until {
                    Some(t) => format!("token_id {jti} until {t}"),
                    None => format!("token_id {jti}"),
                };
                (what, revs.revoke_jti(&jti, until).await)
            } else if let Some(key) = field("api_key").filter(|k| !k.is_empty()) {
                let hash = portcullis_authn::cache::digest(key.as_bytes());
                (
                    format!("api_key {}", portcullis_authn::apikey::key_id(&hash)),
                    revs.revoke_key(hash).await,
                )
            } else if let Some(h) = field("api_key_hash") {
                let hash = portcullis_authn::config::parse_key_hash(&h)?;
                (
                    format!("api_key {}", portcullis_authn::apikey::key_id(&hash)),
                    revs.revoke_key(hash).await,
                )
            } else if let Some(fp) = field("certificate_sha256") {
                let fp = portcullis_authn::config::parse_cert_fingerprint(&fp)?;
                (
                    format!(
                        "certificate sha256:{}",
                        portcullis_authn::revocation::hex(&fp)
                    ),
                    revs.revoke_cert(fp).await,
                )
            } else {
                return Err(
                    "write {\"token_id\": …} (optionally with \"until\"), {\"api_key\": …}, {\"api_key_hash\": \"sha256:…\"} or {\"certificate_sha256\": \"sha256:…\"}"
                        .to_string(),
                );
            };
            tracing::info!(revoked = %what, "revocation added through the admin API");
            Ok(match shared {
                Ok(()) => serde_json::json!({"revoked": what, "shared": revs.status().shared}),
                Err(e) => {
                    tracing::warn!(error = %e, "revocation not shared; refused on this instance only");
                    serde_json::json!({"revoked": what, "shared": false, "error": e})
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Reloads;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    fn reloads() -> Reloads {
        Reloads {
            turn: Mutex::new(()),
            queued: AtomicBool::new(false),
        }
    }

    /// Triggers while a reload waits make no other; one after it began reading makes one.
    #[test]
    fn triggers_while_a_reload_waits_are_one() {
        let r = reloads();
        assert!(r.queue());
        assert!(!r.queue());
        assert!(!r.queue());
        let turn = r.turn();
        // The queued reload has its turn and reads now: a later change needs another.
        assert!(r.queue());
        assert!(!r.queue());
        drop(turn);
        drop(r.turn());
        assert!(r.queue());
    }
}
