//! The gRPC services. Each handler: take the caller's identity from the
//! verified certificate, run the operation, log one line (identity,
//! operation, key, result; never plaintext, ciphertext or key material),
//! and map errors through the one `From<Error> for Status`.
use crate::error::Error;
use crate::keys::{Keys, Usage};
use crate::metrics::Metrics;
use crate::proto;
use crate::tls::PeerIdentity;
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::{KeyRing, VersionState};
use rand::RngCore;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

/// The caller's identity, or `UNAUTHENTICATED` if the connection did not
/// come through the mTLS acceptor (it always does).
pub fn identity<T>(req: &Request<T>) -> Result<Arc<PeerIdentity>, Status> {
    req.extensions()
        .get::<Arc<PeerIdentity>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

/// State every service shares: the key rings (set once the store is
/// loaded; until then calls answer UNAVAILABLE and health NOT_SERVING)
/// and the metrics.
#[derive(Debug, Default)]
pub struct Shared {
    /// The key rings, once loaded.
    pub keys: std::sync::OnceLock<Arc<Keys>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// The key rings, or UNAVAILABLE while starting.
    pub fn keys(&self) -> Result<&Arc<Keys>, Status> {
        self.keys
            .get()
            .ok_or_else(|| Status::unavailable("kmsd is starting: the key store is not loaded yet"))
    }

    /// Logs the outcome of one request, records its metrics, and converts
    /// the error.
    pub fn finish<T>(
        &self,
        peer: &PeerIdentity,
        op: &'static str,
        key: &str,
        started: Instant,
        result: Result<T, Error>,
    ) -> Result<T, Status> {
        let elapsed = started.elapsed();
        let micros = elapsed.as_micros() as u64;
        match result {
            Ok(v) => {
                self.metrics.observe(op, tonic::Code::Ok, elapsed);
                tracing::info!(identity = peer.id(), peer = %peer.peer_addr, op, key, code = "OK", micros, "request");
                Ok(v)
            }
            Err(e) => {
                let status = Status::from(e);
                self.metrics.observe(op, status.code(), elapsed);
                tracing::info!(identity = peer.id(), peer = %peer.peer_addr, op, key, code = ?status.code(), error = status.message(), micros, "request");
                Err(status)
            }
        }
    }
}

/// Runs work that may touch the store (fsync) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(Error::StoreUnavailable))
}

/// `kmsd.v1.Crypto`.
#[derive(Debug, Clone)]
pub struct CryptoService {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Most items accepted in one batch call.
    pub max_batch_items: usize,
}

fn item_error(e: Error) -> proto::ItemError {
    let s = Status::from(e);
    proto::ItemError {
        code: s.code() as i32,
        message: s.message().to_owned(),
    }
}

impl CryptoService {
    fn check_batch(&self, n: usize) -> Result<(), Error> {
        if n > self.max_batch_items {
            return Err(Error::TooLarge(format!(
                "batch of {n} items exceeds the limit of {}",
                self.max_batch_items
            )));
        }
        Ok(())
    }

    fn rewrap_one(keys: &Arc<Keys>, r: &proto::RewrapRequest) -> Result<proto::RewrapResponse, Error> {
        let (plaintext, source) = keys.decrypt(&r.key, &r.ciphertext, &r.associated_data)?;
        let plaintext = Zeroizing::new(plaintext);
        let e = keys.encrypt(&r.key, &plaintext, &r.associated_data)?;
        Ok(proto::RewrapResponse {
            ciphertext: e.ciphertext,
            key_version: e.version,
            source_key_version: source,
        })
    }

    async fn data_key(
        &self,
        req: Request<proto::GenerateDataKeyRequest>,
        with_plaintext: bool,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let keys = self.shared.keys()?.clone();
        let (key, aad, bits) = (r.key.clone(), r.associated_data, r.bits);
        let result = blocking(move || {
            let len = match bits {
                0 | 256 => 32,
                192 => 24,
                128 => 16,
                _ => return Err(Error::InvalidArgument("bits must be 128, 192 or 256".into())),
            };
            let mut dk = Zeroizing::new(vec![0u8; len]);
            rand::rngs::OsRng.fill_bytes(&mut dk);
            let e = keys.encrypt(&key, &dk, &aad)?;
            Ok(proto::GenerateDataKeyResponse {
                plaintext: if with_plaintext { dk.to_vec() } else { Vec::new() },
                ciphertext: e.ciphertext,
                key_version: e.version,
            })
        })
        .await;
        Ok(Response::new(
            self.shared.finish(&peer, "datakey", &r.key, started, result)?,
        ))
    }
}

#[tonic::async_trait]
impl proto::crypto_server::Crypto for CryptoService {
    async fn encrypt(&self, req: Request<proto::EncryptRequest>) -> Result<Response<proto::EncryptResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let result = self.shared.keys()?.encrypt(&r.key, &r.plaintext, &r.associated_data);
        let e = self.shared.finish(&peer, "encrypt", &r.key, started, result)?;
        Ok(Response::new(proto::EncryptResponse {
            ciphertext: e.ciphertext,
            key_version: e.version,
        }))
    }

    async fn decrypt(&self, req: Request<proto::DecryptRequest>) -> Result<Response<proto::DecryptResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let result = self.shared.keys()?.decrypt(&r.key, &r.ciphertext, &r.associated_data);
        let (plaintext, key_version) = self.shared.finish(&peer, "decrypt", &r.key, started, result)?;
        Ok(Response::new(proto::DecryptResponse { plaintext, key_version }))
    }

    async fn rewrap(&self, req: Request<proto::RewrapRequest>) -> Result<Response<proto::RewrapResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let result = Self::rewrap_one(self.shared.keys()?, &r);
        Ok(Response::new(
            self.shared.finish(&peer, "rewrap", &r.key, started, result)?,
        ))
    }

    async fn encrypt_batch(
        &self,
        req: Request<proto::EncryptBatchRequest>,
    ) -> Result<Response<proto::EncryptBatchResponse>, Status> {
        use proto::encrypt_batch_item::Result as R;
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let keys = self.shared.keys()?;
        let result = self.check_batch(r.items.len()).map(|()| {
            r.items
                .iter()
                .map(|it| proto::EncryptBatchItem {
                    result: Some(match keys.encrypt(&it.key, &it.plaintext, &it.associated_data) {
                        Ok(e) => R::Ok(proto::EncryptResponse {
                            ciphertext: e.ciphertext,
                            key_version: e.version,
                        }),
                        Err(e) => R::Error(item_error(e)),
                    }),
                })
                .collect()
        });
        let items = self.shared.finish(&peer, "encrypt", "(batch)", started, result)?;
        Ok(Response::new(proto::EncryptBatchResponse { items }))
    }

    async fn decrypt_batch(
        &self,
        req: Request<proto::DecryptBatchRequest>,
    ) -> Result<Response<proto::DecryptBatchResponse>, Status> {
        use proto::decrypt_batch_item::Result as R;
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let keys = self.shared.keys()?;
        let result = self.check_batch(r.items.len()).map(|()| {
            r.items
                .iter()
                .map(|it| proto::DecryptBatchItem {
                    result: Some(match keys.decrypt(&it.key, &it.ciphertext, &it.associated_data) {
                        Ok((plaintext, key_version)) => R::Ok(proto::DecryptResponse { plaintext, key_version }),
                        Err(e) => R::Error(item_error(e)),
                    }),
                })
                .collect()
        });
        let items = self.shared.finish(&peer, "decrypt", "(batch)", started, result)?;
        Ok(Response::new(proto::DecryptBatchResponse { items }))
    }

    async fn rewrap_batch(
        &self,
        req: Request<proto::RewrapBatchRequest>,
    ) -> Result<Response<proto::RewrapBatchResponse>, Status> {
        use proto::rewrap_batch_item::Result as R;
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let keys = self.shared.keys()?;
        let result = self.check_batch(r.items.len()).map(|()| {
            r.items
                .iter()
                .map(|it| proto::RewrapBatchItem {
                    result: Some(match Self::rewrap_one(keys, it) {
                        Ok(ok) => R::Ok(ok),
                        Err(e) => R::Error(item_error(e)),
                    }),
                })
                .collect()
        });
        let items = self.shared.finish(&peer, "rewrap", "(batch)", started, result)?;
        Ok(Response::new(proto::RewrapBatchResponse { items }))
    }

    async fn generate_data_key(
        &self,
        req: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        self.data_key(req, true).await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        req: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        self.data_key(req, false).await
    }
}

/// `kmsd.v1.Keys`.
#[derive(Debug, Clone)]
pub struct KeysService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

fn policy_to_proto(p: &KeyPolicy) -> proto::KeyPolicy {
    proto::KeyPolicy {
        rotation_period_seconds: Some(p.rotation_period_secs.unwrap_or(0)),
        max_encryptions_per_version: Some(p.max_encryptions_per_version.unwrap_or(0)),
        min_decryption_version: Some(p.min_decryption_version),
        min_encryption_version: Some(p.min_encryption_version),
        deletion_allowed: Some(p.deletion_allowed),
        manual_rotation_resets_schedule: Some(p.manual_rotation_resets_schedule),
    }
}

/// Applies the set fields of `update` to `base` (0 disables a limit).
pub fn merge_policy(mut base: KeyPolicy, update: Option<&proto::KeyPolicy>) -> KeyPolicy {
    let Some(u) = update else { return base };
    if let Some(s) = u.rotation_period_seconds {
        base.rotation_period_secs = (s > 0).then_some(s);
    }
    if let Some(n) = u.max_encryptions_per_version {
        base.max_encryptions_per_version = (n > 0).then_some(n);
    }
    if let Some(v) = u.min_decryption_version {
        base.min_decryption_version = v;
    }
    if let Some(v) = u.min_encryption_version {
        base.min_encryption_version = v;
    }
    if let Some(b) = u.deletion_allowed {
        base.deletion_allowed = b;
    }
    if let Some(b) = u.manual_rotation_resets_schedule {
        base.manual_rotation_resets_schedule = b;
    }
    base
}

/// Key metadata for the API: never material.
pub fn key_info(ring: &KeyRing, usage: &[Usage]) -> proto::KeyInfo {
    proto::KeyInfo {
        name: ring.name.to_string(),
        algorithm: proto::Algorithm::Aes256Gcm as i32,
        primary_version: ring.primary,
        created_at: ring.created_at,
        versions: ring
            .versions
            .iter()
            .map(|v| {
                let live = usage.get(v.version as usize - 1).copied();
                proto::KeyVersionInfo {
                    version: v.version,
                    state: version_state(v.state) as i32,
                    created_at: v.created_at,
                    destroy_at: v.destroy_at.unwrap_or(0),
                    encryptions: live.map_or(v.encryptions_reserved, |u| u.encryptions),
                    decryptions: live.map_or(0, |u| u.decryptions).max(v.decryptions),
                    last_used_at: live.map_or(0, |u| u.last_used_at).max(v.last_used_at.unwrap_or(0)),
                }
            })
            .collect(),
        policy: Some(policy_to_proto(&ring.policy)),
        next_rotation_at: ring.next_rotation_at.unwrap_or(0),
        rotations: ring
            .rotations
            .iter()
            .map(|e| proto::RotationEvent {
                at: e.at,
                from_version: e.from_version,
                to_version: e.to_version,
                reason: match e.reason {
                    RotationReason::Manual => proto::RotationReason::Manual,
                    RotationReason::Scheduled => proto::RotationReason::Scheduled,
                    RotationReason::Usage => proto::RotationReason::Usage,
                } as i32,
            })
            .collect(),
        delete_at: ring.delete_at.unwrap_or(0),
    }
}

fn version_state(s: VersionState) -> proto::VersionState {
    match s {
        VersionState::Active => proto::VersionState::Active,
        VersionState::DecryptOnly => proto::VersionState::DecryptOnly,
        VersionState::Disabled => proto::VersionState::Disabled,
        VersionState::ScheduledForDestruction => proto::VersionState::ScheduledForDestruction,
        VersionState::Destroyed => proto::VersionState::Destroyed,
    }
}

/// Default and largest page of `ListKeys`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

impl KeysService {
    /// Runs a ring-changing admin operation and answers with the new metadata.
    async fn admin(
        &self,
        peer: &PeerIdentity,
        op: &'static str,
        name: String,
        f: impl FnOnce(&Keys, &str) -> Result<KeyRing, Error> + Send + 'static,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let started = Instant::now();
        let keys = self.shared.keys()?.clone();
        let n = name.clone();
        let result = blocking(move || f(&keys, &n).map(|ring| key_info(&ring, &keys.usage(&n)))).await;
        Ok(Response::new(self.shared.finish(peer, op, &name, started, result)?))
    }
}

#[tonic::async_trait]
impl proto::keys_server::Keys for KeysService {
    async fn create_key(&self, req: Request<proto::CreateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        let r = req.into_inner();
        let algorithm = r.algorithm;
        let policy = merge_policy(KeyPolicy::default(), r.policy.as_ref());
        self.admin(&peer, "key.create", r.name, move |keys, name| {
            if algorithm != proto::Algorithm::Unspecified as i32 && algorithm != proto::Algorithm::Aes256Gcm as i32 {
                return Err(Error::InvalidArgument("unsupported algorithm; only AES_256_GCM".into()));
            }
            keys.create(name, policy)
        })
        .await
    }

    async fn get_key(&self, req: Request<proto::GetKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        self.admin(&peer, "key.read", req.into_inner().name, |keys, name| keys.get(name))
            .await
    }

    async fn list_keys(
        &self,
        req: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = if r.page_token.is_empty() {
            Ok(None)
        } else {
            hex::decode(&r.page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(Some)
                .ok_or_else(|| Error::InvalidArgument("invalid page_token".into()))
        };
        let keys = self.shared.keys()?.clone();
        let prefix = r.prefix.clone();
        let result = match after {
            Ok(after) => blocking(move || keys.list(&prefix, after.as_deref(), limit)).await,
            Err(e) => Err(e),
        };
        let names = self.shared.finish(&peer, "key.read", &r.prefix, started, result)?;
        let next_page_token = match names.last() {
            Some(last) if names.len() == limit => hex::encode(last),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListKeysResponse { names, next_page_token }))
    }

    async fn rotate_key(&self, req: Request<proto::RotateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        self.admin(&peer, "key.rotate", req.into_inner().name, |keys, name| {
            keys.rotate(name, RotationReason::Manual)
        })
        .await
    }

    async fn update_key_policy(
        &self,
        req: Request<proto::UpdateKeyPolicyRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        let r = req.into_inner();
        let update = r.policy;
        self.admin(&peer, "key.policy", r.name, move |keys, name| {
            let current = keys.get(name)?;
            keys.set_policy(name, merge_policy(current.policy.clone(), update.as_ref()))
        })
        .await
    }

    async fn set_version_state(
        &self,
        req: Request<proto::SetVersionStateRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        let r = req.into_inner();
        let (version, state) = (r.version, r.state);
        self.admin(&peer, "key.version_state", r.name, move |keys, name| {
            let state = match proto::VersionState::try_from(state) {
                Ok(proto::VersionState::DecryptOnly) => VersionState::DecryptOnly,
                Ok(proto::VersionState::Disabled) => VersionState::Disabled,
                _ => return Err(Error::InvalidArgument("state must be DECRYPT_ONLY or DISABLED".into())),
            };
            Ok(keys.modify(name, |r| r.set_version_state(version, state))?.0)
        })
        .await
    }

    async fn schedule_version_destruction(
        &self,
        req: Request<proto::ScheduleVersionDestructionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        let r = req.into_inner();
        let (version, wait) = (r.version, r.waiting_period_seconds);
        self.admin(&peer, "key.destroy", r.name, move |keys, name| {
            let at = keys.destruction_time(wait)?;
            Ok(keys.modify(name, |r| r.schedule_destruction(version, at))?.0)
        })
        .await
    }

    async fn cancel_version_destruction(
        &self,
        req: Request<proto::CancelVersionDestructionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        let r = req.into_inner();
        let version = r.version;
        self.admin(&peer, "key.version_state", r.name, move |keys, name| {
            Ok(keys.modify(name, |r| r.cancel_destruction(version))?.0)
        })
        .await
    }

    async fn schedule_key_deletion(
        &self,
        req: Request<proto::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        let r = req.into_inner();
        let wait = r.waiting_period_seconds;
        self.admin(&peer, "key.destroy", r.name, move |keys, name| {
            let at = keys.destruction_time(wait)?;
            Ok(keys.modify(name, |r| r.schedule_deletion(at))?.0)
        })
        .await
    }

    async fn cancel_key_deletion(
        &self,
        req: Request<proto::CancelKeyDeletionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let peer = identity(&req)?;
        self.admin(&peer, "key.version_state", req.into_inner().name, |keys, name| {
            Ok(keys.modify(name, |r| r.cancel_deletion())?.0)
        })
        .await
    }

    type BackupStream = tokio_stream::Iter<std::vec::IntoIter<Result<proto::BackupChunk, Status>>>;

    async fn backup(&self, req: Request<proto::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let keys = self.shared.keys()?.clone();
        let result = blocking(move || {
            keys.flush_usage()?;
            let rings = keys.ring_store();
            let mut buf = Vec::new();
            let total =
                kmsd_keystore::backup::write_snapshot(rings.raw().as_ref(), rings.sealer(), &mut buf, &mut |_, _| {})?;
            Ok((buf, total))
        })
        .await;
        let (buf, total) = self.shared.finish(&peer, "backup", "", started, result)?;
        const CHUNK: usize = 1 << 20;
        let chunks: Vec<Result<proto::BackupChunk, Status>> = buf
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, c)| {
                Ok(proto::BackupChunk {
                    data: c.to_vec(),
                    total_records: if i == 0 { total } else { 0 },
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(chunks)))
    }

    async fn restore(
        &self,
        req: Request<tonic::Streaming<proto::RestoreChunk>>,
    ) -> Result<Response<proto::RestoreResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let mut stream = req.into_inner();
        let mut bytes = Vec::new();
        let mut too_large = false;
        while let Some(chunk) = stream.message().await? {
            if bytes.len() + chunk.data.len() > MAX_RESTORE_BYTES {
                too_large = true;
                break;
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let keys = self.shared.keys()?.clone();
        let result = if too_large {
            Err(Error::TooLarge(format!("backup larger than {MAX_RESTORE_BYTES} bytes")))
        } else {
            blocking(move || keys.restore(&bytes)).await
        };
        let (records, keys) = self.shared.finish(&peer, "restore", "", started, result)?;
        Ok(Response::new(proto::RestoreResponse { records, keys }))
    }
}

/// Largest snapshot accepted by `Restore` (1 GiB).
const MAX_RESTORE_BYTES: usize = 1 << 30;

/// `kmsd.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn status(&self, req: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let m = &self.shared.metrics;
        let now = kmsd_keystore::Clock::now(&kmsd_keystore::SystemClock);
        let mut resp = proto::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: m.started_at,
            uptime_seconds: (now - m.started_at).max(0) as u64,
            ..Default::default()
        };
        if let Some(keys) = self.shared.keys.get() {
            let s = keys.stats();
            resp.serving = true;
            resp.keys = s.keys;
            resp.versions_by_state = s.versions_by_state.to_vec();
            resp.next_scheduled_at = keys.next_deadline().unwrap_or(0);
        }
        Ok(Response::new(self.shared.finish(
            &peer,
            "key.read",
            "",
            started,
            Ok(resp),
        )?))
    }
}
