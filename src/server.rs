//! Start-up and shutdown of the daemon.
//!
//! Order matters: the AEAD self-test runs first, then the master key is
//! loaded and the store opened and loaded into memory, and only then do
//! listeners accept connections. Shutdown stops accepting, lets in-flight
//! calls finish, and syncs the store.
use crate::config::Config;
use crate::keys::Keys;
use crate::proto;
use crate::service::{CryptoService, KeysService};
use crate::tls::{self, Acceptor, RawStream};
use kmsd_keystore::{KeyStore, MasterKey, RingStore, Sealer, SledStore, SystemClock};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

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
    let mut sealer = Sealer::new(MasterKey::load(&mk_path).map_err(|e| err("master key", e))?);
    if let Some(prev) = &config.store.previous_master_key {
        sealer = sealer.with_previous(MasterKey::load(prev).map_err(|e| err("previous master key", e))?);
    }
    tracing::info!(key_id = %sealer.key_id_hex(), "master key loaded");
    Ok(sealer)
}

/// Opens the raw store of `config`.
pub fn open_store(config: &Config) -> Result<Arc<dyn KeyStore>, StartError> {
    Ok(Arc::new(
        SledStore::open(&config.store.path).map_err(|e| err("key store", e))?,
    ))
}

/// Opens the store described by `config` and loads every key ring.
pub fn open_keys(config: &Config) -> Result<Arc<Keys>, StartError> {
    let sealer = sealer(config)?;
    let rings = RingStore::open(open_store(config)?, sealer).map_err(|e| err("key store", e))?;
    let keys = Keys::load(rings, Arc::new(SystemClock), config.dev_mode).map_err(|e| err("loading key rings", e))?;
    Ok(Arc::new(keys))
}

/// Binds the configured Unix socket, replacing a stale socket file but
/// never one a running daemon still answers on.
fn bind_unix(path: &Path) -> Result<UnixListener, StartError> {
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
    {
        use std::os::unix::fs::PermissionsExt;
        // Owner and group only: clients are admitted by group membership
        // (and, always, by their certificate).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| err(&format!("chmod {}", path.display()), e))?;
    }
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

/// Runs the daemon until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    kmsd_keystore::aead::self_test()
        .map_err(|e| StartError(format!("AEAD self-test failed, refusing to start: {e}")))?;
    tracing::info!("AEAD self-test passed");
    let keys = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_keys(&config))
            .await
            .map_err(|e| err("start-up", e))??
    };
    tracing::info!(keys = keys.len(), store = %config.store.path.display(), "key store opened");
    let tls_config = tls::server_config(&config.tls).map_err(|e| err("TLS", e))?;

    let (conn_tx, conn_rx) = mpsc::channel(128);
    let acceptor = Acceptor {
        config: Arc::new(RwLock::new(tls_config)),
        permits: Arc::new(Semaphore::new(config.limits.max_connections)),
        limits: config.limits.clone(),
        out: conn_tx,
    };
    let (stop_tx, stop_rx) = watch::channel(false);

    if let Some(path) = &config.listen.unix {
        let listener = bind_unix(path)?;
        tracing::info!(socket = %path.display(), "listening (unix, mTLS)");
        let acceptor = acceptor.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    r = listener.accept() => match r {
                        Ok((s, _)) => acceptor.admit(RawStream::Unix(s), "unix".into()).await,
                        Err(e) => { tracing::warn!(error = %e, "accept failed"); tokio::time::sleep(std::time::Duration::from_millis(50)).await; }
                    }
                }
            }
        });
    }
    for addr in &config.listen.tcp {
        crate::config::check_internal(addr).map_err(|e| err("listen", e))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| err(&format!("binding {addr}"), e))?;
        tracing::info!(%addr, "listening (tcp, mTLS)");
        let acceptor = acceptor.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    r = listener.accept() => match r {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            acceptor.admit(RawStream::Tcp(s), peer.to_string()).await
                        }
                        Err(e) => { tracing::warn!(error = %e, "accept failed"); tokio::time::sleep(std::time::Duration::from_millis(50)).await; }
                    }
                }
            }
        });
    }
    drop(acceptor);

    let max = config.limits.max_message_bytes;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::crypto_server::CryptoServer<CryptoService>>()
        .await;
    health_reporter
        .set_serving::<proto::keys_server::KeysServer<KeysService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| err("reflection", e))?;

    let server = tonic::transport::Server::builder()
        .timeout(config.limits.request_timeout)
        .max_concurrent_streams(config.limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .layer(tower::util::MapResponseLayer::new(map_size_status))
        .add_service(
            proto::crypto_server::CryptoServer::new(CryptoService {
                keys: keys.clone(),
                max_batch_items: config.limits.max_batch_items,
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max.saturating_add(crate::crypto::OVERHEAD + 64)),
        )
        .add_service(
            proto::keys_server::KeysServer::new(KeysService { keys: keys.clone() })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(health_service)
        .add_service(reflection);

    tokio::spawn(scheduler(keys.clone(), stop_rx.clone()));
    tokio::spawn(usage_flusher(keys.clone(), stop_rx.clone()));

    tracing::info!("kmsd ready");
    let result = server
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>), async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing in-flight calls");
            let _ = stop_tx.send(true);
        })
        .await;
    if let Some(path) = &config.listen.unix {
        let _ = std::fs::remove_file(path);
    }
    let sync = tokio::task::spawn_blocking(move || keys.sync()).await;
    if !matches!(sync, Ok(Ok(()))) {
        tracing::error!("final store sync failed");
    }
    result.map_err(|e| err("gRPC server", e))?;
    tracing::info!("stopped");
    Ok(())
}

use tokio_stream::StreamExt as _;

/// Runs scheduled rotations and destructions at their second: sleeps
/// until the earliest deadline (woken early when an earlier one appears),
/// never longer than `MAX_SLEEP`, so a wall-clock jump is noticed soon.
async fn scheduler(keys: Arc<Keys>, mut stop: watch::Receiver<bool>) {
    const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(30);
    loop {
        let now = keys.now();
        let k = keys.clone();
        match tokio::task::spawn_blocking(move || k.run_due(now)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(changed = n, "scheduled key maintenance ran"),
            Ok(Err(e)) => tracing::error!(error = %e, "scheduler"),
            _ => {}
        }
        let wait = match keys.next_deadline() {
            Some(t) => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let ms = (t.saturating_mul(1000) - now_ms).max(0) as u64;
                std::time::Duration::from_millis(ms).min(MAX_SLEEP)
            }
            None => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = keys.schedule_changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Persists decryption counts and last-use times every minute.
async fn usage_flusher(keys: Arc<Keys>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
        let k = keys.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || k.flush_usage()).await {
            tracing::warn!(error = %e, "persisting usage counters failed");
        }
    }
}
