//! Start-up, reload and shutdown of the daemon.
//!
//! Order matters: the AEAD self-test runs first; then the listeners are
//! taken (from systemd socket activation, or bound from the config) and
//! gRPC is served with health NOT_SERVING; then the master key is loaded
//! and the store opened and loaded into memory; only then do health and
//! systemd hear READY. SIGHUP reloads the TLS files (new handshakes use
//! them; established connections keep theirs); a bad file is refused and
//! the old configuration stays. SIGTERM stops accepting, lets in-flight
//! calls finish within `limits.shutdown_timeout`, syncs the store and exits.
use crate::api::{CryptoService, KeysService, Shared};
use crate::config::{Backend, Config};
use crate::ops::metrics::{KeySnapshot, Metrics};
use crate::ops::notify::notify;
use crate::ops::os::PassedSocket;
use crate::proto;
use crate::rings::Rings;
use crate::tls::acceptor::{Acceptor, ConnLayer};
use crate::tls::{self, RawStream};
use kmsd_keystore::{KeyStore, RingStore, Sealer, SledStore, SystemClock};
use sd_notify::NotifyState;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;

/// A start-up failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn err(context: &str, e: impl std::fmt::Display) -> StartError {
    StartError(format!("{context}: {e}"))
}

/// The sealer for `config`: the master key, plus the previous one while a
/// rekey is incomplete.
pub fn sealer(config: &Config) -> Result<Sealer, StartError> {
    let mk_path = config.master_key_path().map_err(|e| err("master key", e))?;
    let mut sealer = Sealer::new(crate::config::load_master_key(&mk_path).map_err(|e| err("master key", e))?);
    if let Some(prev) = &config.store.previous_master_key {
        sealer = sealer.with_previous(crate::config::load_master_key(prev).map_err(|e| err("previous master key", e))?);
    }
    tracing::info!(key_id = %sealer.key_id_hex(), "master key loaded");
    Ok(sealer)
}

/// Opens the raw store of `config`: the sled directory, or the etcd
/// cluster.
pub fn open_store(config: &Config) -> Result<Arc<dyn KeyStore>, StartError> {
    Ok(open_backend(config)?.0)
}

/// The etcd store itself, when that is the backend.
type EtcdHandle = Arc<kmsd_etcd::EtcdStore>;

/// [`open_store`], plus the etcd store itself when that is the backend
/// (the daemon follows its watch: `crate::cluster`).
fn open_backend(config: &Config) -> Result<(Arc<dyn KeyStore>, Option<EtcdHandle>), StartError> {
    match config.store.backend {
        Backend::Sled => {
            let path = config.store.sled_path().map_err(|e| err("key store", e))?;
            Ok((Arc::new(SledStore::open(path).map_err(|e| err("key store", e))?), None))
        }
        Backend::Etcd => {
            let etcd = config.store.etcd.as_ref().ok_or_else(|| {
                StartError("key store: store.backend is \"etcd\" but there is no [store.etcd]".into())
            })?;
            let prefix = etcd.prefix();
            let store = kmsd_etcd::EtcdStore::open(&etcd_settings(etcd), &prefix)
                .map_err(|e| err(&format!("key store (etcd, prefix {prefix})"), e))?;
            let store = Arc::new(store);
            Ok((store.clone(), Some(store)))
        }
    }
}

/// What the etcd client is built from: `[store.etcd]` (checked by
/// [`Config::problems`]: https with a CA and a client certificate, or
/// plain http on loopback).
pub fn etcd_settings(etcd: &crate::config::Etcd) -> kmsd_etcd::Settings {
    let mut s = kmsd_etcd::Settings::new(etcd.endpoints.iter().map(|e| e.to_string()));
    s.connect_timeout = etcd.connect_timeout;
    s.request_timeout = etcd.request_timeout;
    s.tls = match (etcd.tls(), &etcd.ca) {
        (true, Some(ca)) => Some(kmsd_etcd::TlsSettings {
            ca: ca.clone(),
            cert: etcd.cert.clone(),
            key: etcd.key.clone(),
            server_name: None,
        }),
        _ => None,
    };
    s
}

/// Opens the store of `config` behind its integrity manifest (migrating a
/// format-1 store): what every offline command reads and writes through.
pub fn open_rings(config: &Config) -> Result<RingStore, StartError> {
    RingStore::open(open_store(config)?, sealer(config)?).map_err(|e| err("key store", e))
}

/// Opens the store described by `config` and loads every key ring into the cache.
pub fn load_rings(config: &Config) -> Result<Arc<Rings>, StartError> {
    Ok(load_rings_backend(config)?.0)
}

/// [`load_rings`], plus the etcd store when that is the backend.
fn load_rings_backend(config: &Config) -> Result<(Arc<Rings>, Option<EtcdHandle>), StartError> {
    let t = std::time::Instant::now();
    let (raw, etcd) = open_backend(config)?;
    let store = RingStore::open(raw, sealer(config)?).map_err(|e| err("key store", e))?;
    let opened = t.elapsed();
    let rings = Rings::load(store, Arc::new(SystemClock), config.dev_mode).map_err(|e| err("loading key rings", e))?;
    tracing::info!(
        keys = rings.len(),
        open_ms = opened.as_millis() as u64,
        load_ms = (t.elapsed() - opened).as_millis() as u64,
        "key rings loaded (store and manifest opened, then every ring read into the cache)"
    );
    rings.set_max_rotations_per_call(config.limits.max_rotations_per_call);
    rings.set_reservation_block(config.limits.usage_reservation_block);
    Ok((Arc::new(rings), etcd))
}

/// Binds the configured Unix socket, replacing a stale socket file but
/// never one a running daemon still answers on.
fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, StartError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError(format!("{} is in use by another process", path.display())));
        }
        std::fs::remove_file(path).map_err(|e| err(&format!("removing stale socket {}", path.display()), e))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&format!("creating {}", dir.display()), e))?;
    }
    let l = UnixListener::bind(path).map_err(|e| err(&format!("binding {}", path.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(&format!("chmod {}", path.display()), e))?;
    Ok(l)
}

/// Rewrites tonic's "message too large" (OUT_OF_RANGE) into
/// RESOURCE_EXHAUSTED, the code gRPC specifies for exceeded size limits.
fn map_size_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let is_size = resp.headers().get("grpc-status").map(|v| v.as_bytes()) == Some(b"11")
        && resp
            .headers()
            .get("grpc-message")
            .map(|m| String::from_utf8_lossy(m.as_bytes()).contains("length%20too%20large"))
            .unwrap_or(false);
    if is_size {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

/// Asks the kernel to hold TCP connections until they send data (see
/// [`crate::ops::os::defer_accept`]), for up to the handshake timeout.
fn defer_accept(l: &std::net::TcpListener, config: &Config) {
    use std::os::fd::AsFd;
    let secs = u32::try_from(config.limits.handshake_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    if let Err(e) = crate::ops::os::defer_accept(l.as_fd(), secs) {
        tracing::warn!(error = %e, "TCP_DEFER_ACCEPT not set; silent connections reach the handshake budget");
    }
}

/// A listener the gRPC server accepts from.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// Takes listeners from systemd socket activation (`passed`, taken in
/// `main` before the runtime started), or binds the configured ones. TCP
/// addresses are checked to be internal either way.
fn listeners(config: &Config, passed: Vec<PassedSocket>) -> Result<Vec<Listener>, StartError> {
    let mut out = Vec::new();
    if !passed.is_empty() {
        for p in passed {
            if p.unix {
                let std_l = std::os::unix::net::UnixListener::from(p.fd);
                std_l.set_nonblocking(true).map_err(|e| err("socket activation", e))?;
                let l = UnixListener::from_std(std_l).map_err(|e| err("socket activation", e))?;
                tracing::info!(name = %p.name, "listening on socket-activated Unix socket (mTLS)");
                out.push(Listener::Unix(l));
            } else {
                let std_l = std::net::TcpListener::from(p.fd);
                let addr = std_l.local_addr().map_err(|e| err("socket activation", e))?;
                crate::config::check_internal(&addr).map_err(|e| err("socket activation", e))?;
                defer_accept(&std_l, config);
                std_l.set_nonblocking(true).map_err(|e| err("socket activation", e))?;
                let l = TcpListener::from_std(std_l).map_err(|e| err("socket activation", e))?;
                tracing::info!(%addr, name = %p.name, "listening on socket-activated TCP socket (mTLS)");
                out.push(Listener::Tcp(l));
            }
        }
        return Ok(out);
    }
    if let Some(path) = &config.listen.unix {
        out.push(Listener::Unix(bind_unix(path, 0o660)?));
        tracing::info!(socket = %path.display(), "listening (unix, mTLS)");
    }
    for addr in &config.listen.tcp {
        crate::config::check_internal(addr).map_err(|e| err("listen", e))?;
        let std_l = std::net::TcpListener::bind(addr).map_err(|e| err(&format!("binding {addr}"), e))?;
        defer_accept(&std_l, config);
        std_l.set_nonblocking(true).map_err(|e| err("listen", e))?;
        out.push(Listener::Tcp(
            TcpListener::from_std(std_l).map_err(|e| err("listen", e))?,
        ));
        tracing::info!(%addr, "listening (tcp, mTLS)");
    }
    Ok(out)
}

fn spawn_accept_loop(listener: Listener, acceptor: Acceptor, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => break,
                r = async {
                    match &listener {
                        Listener::Unix(l) => l.accept().await.map(|(s, _)| (RawStream::Unix(s), "unix".to_string())),
                        Listener::Tcp(l) => l.accept().await.map(|(s, peer)| {
                            let _ = s.set_nodelay(true);
                            (RawStream::Tcp(s), peer.to_string())
                        }),
                    }
                } => r,
            };
            match accepted {
                Ok((s, peer)) => acceptor.admit(s, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Signals the daemon reacts to.
pub struct Signals {
    /// Completes on SIGTERM/SIGINT.
    pub shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Yields on SIGHUP.
    pub reload: mpsc::Receiver<()>,
}

impl Signals {
    /// SIGTERM/SIGINT and SIGHUP from the OS.
    pub fn from_os() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = mpsc::channel(4);
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if tx.send(()).await.is_err() {
                        break;
                    }
                }
            });
        }
        let shutdown = async {
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        Signals {
            shutdown: Box::pin(shutdown),
            reload: rx,
        }
    }
}

/// Runs the daemon until the shutdown signal. `passed` are the sockets
/// systemd passed ([`crate::ops::os::take_listen_fds`], called in `main` before
/// any thread started); empty means bind the configured listeners.
pub async fn run(config: Config, passed: Vec<PassedSocket>, signals: Signals) -> Result<(), StartError> {
    notify(&[NotifyState::Status("self-test")]);
    kmsd_keystore::aead::self_test()
        .map_err(|e| StartError(format!("AEAD self-test failed, refusing to start: {e}")))?;
    tracing::info!("AEAD self-test passed");
    let tls_config = Arc::new(RwLock::new(
        tls::server_config(&config.tls.server_tls()).map_err(|e| err("TLS", e))?,
    ));
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        rings: std::sync::OnceLock::new(),
        access: std::sync::OnceLock::new(),
        metrics: metrics.clone(),
    });

    let (conn_tx, conn_rx) = mpsc::channel(128);
    let acceptor = Acceptor::new(
        tls_config.clone(),
        config.tls.identity_rules(),
        config.limits.admission(),
        metrics.clone(),
        conn_tx,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    for l in listeners(&config, passed)? {
        spawn_accept_loop(l, acceptor.clone(), stop_rx.clone());
    }
    drop(acceptor);
    if let Some(m) = &config.metrics.listen {
        let (shared, key_labels) = (shared.clone(), config.metrics.key_labels);
        let render = Arc::new(move || {
            let snapshot = shared.rings.get().map(|k| key_snapshot(k, key_labels));
            shared.metrics.render(snapshot.as_ref())
        });
        crate::ops::metrics_endpoint::serve(m, render, stop_rx.clone())
            .await
            .map_err(|e| err("metrics listener", e))?;
    }

    let max = config.limits.max_message_bytes;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::NotServing).await;
    // Both reflection versions: grpcurl and Postman speak v1, older tools
    // (grpc_cli, Evans, grpcurl before 1.8.8) v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().map_err(|e| err("reflection", e))?;
    let reflection_alpha = reflection_builder().build_v1alpha().map_err(|e| err("reflection", e))?;
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // HTTP/2 abuse limits, set explicitly (today's hyper/h2 defaults) so
        // a dependency update cannot loosen them: a header block over 16 KiB
        // is refused, which also caps its CONTINUATION frames (h2 sends
        // GOAWAY ENHANCE_YOUR_CALM after max(5, 1.25 x 16 KiB / frame size));
        // more than 20 streams reset by the client before they were accepted
        // (rapid reset, CVE-2023-44487) or 1024 streams the server had to
        // reset end the connection with GOAWAY ENHANCE_YOUR_CALM.
        // tests/floods.rs: rapid_reset_leaves_other_clients_served,
        // a_continuation_flood_is_cut_off_and_leaves_other_clients_served.
        .http2_max_header_list_size(16 * 1024)
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_max_local_error_reset_streams(Some(1024))
        .layer(ConnLayer)
        .layer(crate::deadline::DeadlineLayer(config.limits.request_timeout))
        .layer(crate::ops::metrics::InFlightLayer(metrics.clone()))
        .layer(tower::util::MapResponseLayer::new(map_size_status))
        .add_service(
            proto::crypto_server::CryptoServer::new(CryptoService {
                shared: shared.clone(),
                max_batch_items: config.limits.max_batch_items,
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max.saturating_add(crate::crypto::OVERHEAD + 64)),
        )
        .add_service(
            proto::keys_server::KeysServer::new(KeysService {
                shared: shared.clone(),
                max_import_jobs: config.limits.max_import_jobs,
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(proto::admin_server::AdminServer::new(crate::api::AdminService {
            shared: shared.clone(),
        }))
        .add_service(
            proto::mask_server::MaskServer::new(crate::api::mask::MaskService {
                shared: shared.clone(),
                limits: Arc::new(crate::api::mask::RedactionLimits::new(&config.limits)),
                rules: Arc::new(config.redaction.compile().map_err(|e| err("redaction rules", e))?),
                tokenize_limit: Arc::new(crate::rate::RateLimiter::new(
                    config.limits.tokenize_rate,
                    config.limits.tokenize_burst,
                )),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max.saturating_mul(2)),
        )
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha);

    let (graceful_tx, graceful_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>), async move {
                let _ = graceful_rx.await;
            })
            .await
    });

    // Load the store while health says NOT_SERVING.
    notify(&[NotifyState::Status("loading the key store")]);
    if config.dev_mode {
        if let Some(ms) = std::env::var("KMSD_DANGER_DEV_STARTUP_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }
    let loading = std::time::Instant::now();
    let (rings, etcd) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || load_rings_backend(&config))
            .await
            .map_err(|e| err("start-up", e))??
    };
    if let (Some(etcd), Some(settings)) = (etcd, config.store.etcd.as_ref()) {
        // Several nodes share this store: follow its changes, and bound
        // how stale the cache may be when serving.
        let fresh = Arc::new(crate::rings::Freshness::new(settings.max_staleness));
        rings.set_freshness(fresh.clone());
        tokio::spawn(crate::cluster::follow(
            rings.clone(),
            etcd.clone(),
            fresh,
            stop_rx.clone(),
        ));
        // and only the elected leader runs scheduled work, fenced
        let lead = Arc::new(crate::rings::Leadership::new());
        rings.set_leadership(lead.clone());
        tokio::spawn(crate::leader::campaign(
            lead,
            etcd,
            settings.leader_lease_ttl,
            stop_rx.clone(),
        ));
    }
    tracing::info!(
        keys = rings.len(),
        store = %config.store.describe(),
        ms = loading.elapsed().as_millis() as u64,
        "key store opened"
    );
    let access = {
        let (rings, metrics, config) = (rings.clone(), metrics.clone(), config.clone());
        tokio::task::spawn_blocking(move || {
            crate::authz::Access::new(
                config.policy.clone(),
                config.audit.path.clone(),
                config.audit.options(),
                &rings,
                metrics,
            )
        })
        .await
        .map_err(|e| err("start-up", e))?
        .map_err(|e| StartError(format!("access control: {e}")))?
    };
    tracing::info!(
        ms = loading.elapsed().as_millis() as u64,
        "access control ready (time since the store began loading)"
    );
    access.set_pending_limits(crate::authz::PendingLimits {
        count: config.limits.max_pending_approvals,
        bytes: config.limits.max_pending_bytes,
    });
    let access = Arc::new(access);
    let _ = shared.access.set(access.clone());
    let _ = shared.rings.set(rings.clone());
    tokio::spawn(scheduler(rings.clone(), stop_rx.clone()));
    tokio::spawn(usage_flusher(rings.clone(), stop_rx.clone()));
    set_health(&health, tonic_health::ServingStatus::Serving).await;
    let status = format!("serving {} keys", rings.len());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if let Some(interval) = crate::ops::notify::watchdog_interval() {
        tokio::spawn(watchdog(interval / 2, stop_rx.clone()));
    }
    tracing::info!("kmsd ready");

    let Signals { shutdown, mut reload } = signals;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(()) = reload.recv() => {
                notify(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
                match tls::server_config(&config.tls.server_tls()) {
                    Ok(new) => {
                        if let Ok(mut cur) = tls_config.write() {
                            *cur = new;
                        }
                        metrics.reloads_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!("reloaded TLS certificate, key, client CA and CRLs");
                    }
                    Err(e) => {
                        metrics.reloads_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(error = %e, "reload refused; the previous TLS configuration stays in force");
                    }
                }
                match access.reload_policy() {
                    Ok(()) => tracing::info!("reloaded the policy"),
                    Err(e) => {
                        metrics.reloads_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
                    }
                }
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
        }
    }

    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    tracing::info!("shutting down: no new connections; finishing in-flight calls");
    set_health(&health, tonic_health::ServingStatus::NotServing).await;
    let _ = stop_tx.send(true);
    let _ = graceful_tx.send(());
    let result = match tokio::time::timeout(config.limits.shutdown_timeout, serving).await {
        Ok(Ok(r)) => r.map_err(|e| err("gRPC server", e)),
        Ok(Err(e)) => Err(err("gRPC server task", e)),
        Err(_) => {
            tracing::warn!(timeout = ?config.limits.shutdown_timeout, "in-flight calls did not finish in time; closing");
            Ok(())
        }
    };
    if let Some(path) = &config.listen.unix {
        if crate::ops::os::listen_fds_were_passed() {
            // systemd owns the socket file
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
    match tokio::task::spawn_blocking(move || rings.sync()).await {
        Ok(Ok(())) => tracing::info!("store synced"),
        _ => tracing::error!("final store sync failed"),
    }
    // The last data-path records are group-committed: durable before exit.
    match tokio::task::spawn_blocking(move || access.audit.flush()).await {
        Ok(Ok(())) => tracing::info!("audit log synced"),
        Ok(Err(e)) => tracing::error!(error = %e, "final audit sync failed"),
        Err(_) => tracing::error!("final audit sync failed"),
    }
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// Every service name health answers for ("" is the whole server).
const SERVICES: [&str; 5] = ["", "kmsd.v1.Crypto", "kmsd.v1.Keys", "kmsd.v1.Admin", "kmsd.v1.Mask"];

async fn set_health(h: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    for name in SERVICES {
        h.set_service_status(name, status).await;
    }
}

/// What the metrics show of the key rings (each key's deadline only with
/// `metrics.key_labels`).
fn key_snapshot(rings: &Rings, per_key: bool) -> KeySnapshot {
    let s = rings.stats();
    KeySnapshot {
        keys: s.keys,
        versions_by_state: s.versions_by_state,
        rotations_by_reason: s.rotations_by_reason,
        version_miss_reads: s.version_miss_reads,
        scheduler_leader: s.scheduler_leader,
        fenced_writes: s.fenced_writes,
        now: rings.now(),
        next_deadline: rings.next_deadline(),
        scheduled: if per_key { rings.scheduled() } else { Vec::new() },
    }
}

/// Pings the systemd watchdog.
async fn watchdog(every: std::time::Duration, mut stop: watch::Receiver<bool>) {
    loop {
        notify(&[NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs scheduled rotations and destructions at their second: sleeps
/// until the earliest deadline (woken early when an earlier one appears),
/// never longer than `MAX_SLEEP`, so a wall-clock jump is noticed soon.
async fn scheduler(rings: Arc<Rings>, mut stop: watch::Receiver<bool>) {
    const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(30);
    // A deadline still due right after a run is one whose write failed (a
    // storage fault): retry after 1 s, doubling up to MAX_SLEEP, rather
    // than at once in a loop that would spin a core and flood the log.
    let mut backoff = std::time::Duration::ZERO;
    loop {
        // On a shared store, only the leader schedules: a follower waits
        // for its election (crate::leader) instead of deadlines.
        if let Some(lead) = rings.leadership() {
            if !lead.is_leader() {
                let mut term = lead.subscribe();
                tokio::select! {
                    // a term already past its lease's certain life is no
                    // term: wait for the next change, not spin on it
                    _ = term.wait_for(|t| matches!(t, crate::rings::Term::Leader { until, .. } if *until > std::time::Instant::now())) => {}
                    _ = stop.changed() => return,
                }
                backoff = std::time::Duration::ZERO;
                continue;
            }
        }
        let now = rings.now();
        let k = rings.clone();
        match tokio::task::spawn_blocking(move || k.run_due(now)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(changed = n, "scheduled key maintenance ran"),
            Ok(Err(crate::error::Error::Fenced)) => continue, // no longer the leader: logged, counted
            Ok(Err(e)) => tracing::error!(error = %e, "scheduler"),
            _ => {}
        }
        if rings.leadership().is_some_and(|l| !l.is_leader()) {
            continue;
        }
        let wait = match rings.next_deadline() {
            Some(t) => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let ms = (t.saturating_mul(1000) - now_ms).max(0) as u64;
                if t <= now {
                    backoff = (backoff * 2).clamp(std::time::Duration::from_secs(1), MAX_SLEEP);
                    backoff
                } else {
                    backoff = std::time::Duration::ZERO;
                    std::time::Duration::from_millis(ms).min(MAX_SLEEP)
                }
            }
            None => {
                backoff = std::time::Duration::ZERO;
                MAX_SLEEP
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = rings.schedule_changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Persists decryption counts and last-use times every minute.
async fn usage_flusher(rings: Arc<Rings>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
        let k = rings.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || k.flush_usage()).await {
            tracing::warn!(error = %e, "persisting usage counters failed");
        }
    }
}
