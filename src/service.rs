//! The gRPC services. Every handler goes through [`Shared::begin`]
//! (identity from the verified certificate, policy, second factor, durable
//! intent record for administrative calls) and ends in
//! [`Shared::finish`] (metrics, one log line and one audit record —
//! identity, operation, key, result; never plaintext, ciphertext, tokens,
//! codes or key material — and the one `From<Error> for Status`).
use crate::access::{Access, Call, PendingOp};
use crate::authz::Op;
use crate::error::Error;
use crate::keys::{EncryptCall, Keys, Usage};
use crate::ops::metrics::Metrics;
use crate::proto;
use crate::tls::PeerIdentity;
use kmsd_keystore::keyring::{KeyPolicy, KeyPurpose, RotationReason};
use kmsd_keystore::{KeyRing, VersionState};
use rand::RngCore;
use std::sync::{Arc, Mutex, OnceLock};
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

/// State every service shares: the key rings and access control (set
/// once the store is loaded; until then calls answer UNAVAILABLE and
/// health NOT_SERVING) and the metrics.
#[derive(Debug, Default)]
pub struct Shared {
    /// The key rings, once loaded.
    pub keys: OnceLock<Arc<Keys>>,
    /// Policy, second factor, dual control, audit; once loaded.
    pub access: OnceLock<Arc<Access>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Batches larger than this run in `block_in_place`.
const BLOCK_IN_PLACE_ITEMS: usize = 256;

const STARTING: &str = "kmsd is starting: the key store is not loaded yet";

impl Shared {
    /// The key rings, or UNAVAILABLE while starting.
    pub fn keys(&self) -> Result<&Arc<Keys>, Status> {
        self.keys.get().ok_or_else(|| Status::unavailable(STARTING))
    }

    /// Access control, or UNAVAILABLE while starting.
    pub fn access(&self) -> Result<&Arc<Access>, Status> {
        self.access.get().ok_or_else(|| Status::unavailable(STARTING))
    }

    /// Starts a call: identity, policy, second factor, and (administrative
    /// calls) the durable intent record. Refusals are audited.
    pub fn begin<T>(&self, req: &Request<T>, op: Op, key: Option<&str>) -> Result<Call, Status> {
        let peer = identity(req)?;
        let call = Call {
            peer,
            op,
            key: key.map(str::to_owned),
            request_id: crate::access::request_id(req),
            started: Instant::now(),
            version: Default::default(),
            detail: Mutex::new(None),
            batch: Default::default(),
            owed: Default::default(),
        };
        let access = self.access()?;
        // (a pre-parsed header name: no per-call parsing of the name)
        static OTP: http::HeaderName = http::HeaderName::from_static(crate::access::OTP_HEADER);
        let otp = req.metadata().as_ref().get(&OTP).and_then(|v| v.to_str().ok());
        if let Err(status) = access.authorize(&call, otp) {
            self.observe(&call, Some(&status));
            return Err(status);
        }
        call.owe_outcome(access.clone());
        Ok(call)
    }

    fn observe(&self, call: &Call, status: Option<&Status>) {
        let elapsed = call.started.elapsed();
        let code = status.map_or(tonic::Code::Ok, Status::code);
        self.metrics.observe(call.op.as_str(), code, elapsed);
        let (id, op, key) = (call.peer.id(), call.op.as_str(), call.key.as_deref().unwrap_or(""));
        let micros = elapsed.as_micros() as u64;
        match status {
            Some(s) => {
                tracing::info!(identity = id, peer = %call.peer.peer_addr, request_id = %call.request_id, op, key, code = ?s.code(), error = s.message(), micros, "request")
            }
            None if call.op.is_admin() => {
                tracing::info!(identity = id, peer = %call.peer.peer_addr, request_id = %call.request_id, op, key, code = "OK", micros, "request")
            }
            None => {
                tracing::debug!(identity = id, peer = %call.peer.peer_addr, request_id = %call.request_id, op, key, code = "OK", micros, "request")
            }
        }
    }

    /// Ends a call: metrics, log line, audit record; converts the error.
    pub fn finish<T>(&self, call: &Call, result: Result<T, Error>) -> Result<T, Status> {
        self.finish_status(call, result.map_err(Status::from))
    }

    /// [`Shared::finish`] for a call that ends with a status already (a
    /// failed request stream). A result whose audit record cannot be
    /// written (`on_failure = "fail"`) is not given out: UNAVAILABLE.
    pub fn finish_status<T>(&self, call: &Call, mut result: Result<T, Status>) -> Result<T, Status> {
        let code = result.as_ref().map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code());
        if let Some(access) = self.access.get() {
            if let Err(e) = access.record_outcome(call, code) {
                if result.is_ok() {
                    result = Err(Status::unavailable(e.to_string()));
                }
            }
        }
        self.observe(call, result.as_ref().err());
        result
    }

    /// A request stream that failed mid-call (reset by the client, the
    /// connection lost): the call ends CANCELLED in the audit trail, with
    /// the stream's error as detail; the caller gets the stream's status.
    pub fn stream_failed(&self, call: &Call, status: Status) -> Status {
        let why: String = status.message().chars().take(200).collect();
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("request stream failed ({:?}): {why}", status.code()));
        let _ = self.finish_status::<()>(call, Err(Status::cancelled("the request stream failed")));
        status
    }

    /// A call whose policy decision is made per item (batches, listings):
    /// still logged, measured and audited by `finish`.
    pub fn begin_unchecked<T>(&self, req: &Request<T>, op: Op, detail: &str) -> Result<Call, Status> {
        let call = Call {
            peer: identity(req)?,
            op,
            key: None,
            request_id: crate::access::request_id(req),
            started: Instant::now(),
            version: Default::default(),
            detail: Mutex::new(Some(detail.to_owned())),
            batch: Default::default(),
            owed: Default::default(),
        };
        if let Some(access) = self.access.get() {
            if let Some(e) = access.audit.unavailable() {
                let status = Status::unavailable(format!("{e}; the call was not performed"));
                self.observe(&call, Some(&status));
                return Err(status);
            }
            call.owe_outcome(access.clone());
        }
        Ok(call)
    }

    /// Whether the caller may do `op` on `key` (batch items, list filtering).
    pub fn allowed(&self, call: &Call, op: Op, key: &str) -> bool {
        self.access
            .get()
            .is_some_and(|a| a.policy().check(call.peer.id(), op, Some(key)).is_ok())
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

fn item_denied(op: Op, key: &str) -> proto::ItemError {
    proto::ItemError {
        code: tonic::Code::PermissionDenied as i32,
        message: format!("permission denied: may not {} on key {key:?}", op.as_str()),
    }
}

/// Counts a batch's items per key, version (and source version) and
/// result, in the order each combination first appears.
fn batch_parts<I, O>(
    items: &[I],
    out: &[Result<O, proto::ItemError>],
    key_of: impl Fn(&I) -> &str,
    version_of: impl Fn(&O) -> (u32, Option<u32>),
) -> Vec<crate::access::BatchPart> {
    let mut parts: Vec<crate::access::BatchPart> = Vec::new();
    // (key, version, source version, code) -> its part
    type Group<'a> = (&'a str, Option<u32>, Option<u32>, i32);
    let mut index: std::collections::HashMap<Group<'_>, usize> = Default::default();
    for (it, r) in items.iter().zip(out) {
        let (version, from, code) = match r {
            Ok(o) => {
                let (v, from) = version_of(o);
                (Some(v), from, tonic::Code::Ok)
            }
            Err(e) => (None, None, tonic::Code::from_i32(e.code)),
        };
        let key = key_of(it);
        let slot = *index.entry((key, version, from, code as i32)).or_insert_with(|| {
            parts.push(crate::access::BatchPart {
                key: key.to_owned(),
                version,
                from_version: from,
                code,
                items: 0,
            });
            parts.len() - 1
        });
        if let Some(p) = parts.get_mut(slot) {
            p.items += 1;
        }
    }
    parts
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

    fn rewrap_one(
        keys: &Arc<Keys>,
        enc: &mut EncryptCall,
        r: &proto::RewrapRequest,
    ) -> Result<proto::RewrapResponse, Error> {
        let (plaintext, source) = keys.decrypt(&r.key, &r.ciphertext, &r.associated_data)?;
        let plaintext = Zeroizing::new(plaintext);
        let e = keys.encrypt_in(enc, &r.key, &plaintext, &r.associated_data)?;
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
        let call = self.shared.begin(&req, Op::Datakey, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let keys = self.shared.keys()?.clone();
        let (key, aad, bits) = (r.key, r.associated_data, r.bits);
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
        if let Ok(r) = &result {
            call.used_version(r.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    /// Runs a batch: the size limit for the whole call, then each item on
    /// its own, checked against the policy (a denied or failing item gets
    /// its own error; one bad item never fails the batch).
    ///
    /// The audit trail gets one record per key, version and result of the
    /// items (`version_of`: the version an item used and, for rewrap, the
    /// one it came from), besides the call's own record.
    fn run_batch<I, O>(
        &self,
        call: &Call,
        items: &[I],
        key_of: impl Fn(&I) -> &str,
        mut f: impl FnMut(&I) -> Result<O, Error>,
        version_of: impl Fn(&O) -> (u32, Option<u32>),
    ) -> Result<Vec<Result<O, proto::ItemError>>, Error> {
        self.check_batch(items.len())?;
        let mut run = || -> Vec<Result<O, proto::ItemError>> {
            items
                .iter()
                .map(|it| {
                    let key = key_of(it);
                    if self.shared.allowed(call, call.op, key) {
                        f(it).map_err(item_error)
                    } else {
                        Err(item_denied(call.op, key))
                    }
                })
                .collect()
        };
        // A large batch is milliseconds of CPU: hand this worker's other
        // tasks (health, metrics, other callers) to another thread first.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let out = if items.len() > BLOCK_IN_PLACE_ITEMS && multi_thread {
            tokio::task::block_in_place(run)
        } else {
            run()
        };
        let errors = out.iter().filter(|r| r.is_err()).count();
        if let Ok(mut d) = call.detail.lock() {
            *d = Some(format!("batch items={} errors={errors}", items.len()));
        }
        *call.batch.lock().unwrap_or_else(|p| p.into_inner()) = batch_parts(items, &out, key_of, version_of);
        Ok(out)
    }
}

#[tonic::async_trait]
impl proto::crypto_server::Crypto for CryptoService {
    async fn encrypt(&self, req: Request<proto::EncryptRequest>) -> Result<Response<proto::EncryptResponse>, Status> {
        let call = self.shared.begin(&req, Op::Encrypt, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let result = self.shared.keys()?.encrypt(&r.key, &r.plaintext, &r.associated_data);
        if let Ok(e) = &result {
            call.used_version(e.version);
        }
        let e = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::EncryptResponse {
            ciphertext: e.ciphertext,
            key_version: e.version,
        }))
    }

    async fn decrypt(&self, req: Request<proto::DecryptRequest>) -> Result<Response<proto::DecryptResponse>, Status> {
        let call = self.shared.begin(&req, Op::Decrypt, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let result = self.shared.keys()?.decrypt(&r.key, &r.ciphertext, &r.associated_data);
        if let Ok((_, v)) = &result {
            call.used_version(*v);
        }
        let (plaintext, key_version) = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::DecryptResponse { plaintext, key_version }))
    }

    async fn rewrap(&self, req: Request<proto::RewrapRequest>) -> Result<Response<proto::RewrapResponse>, Status> {
        let call = self.shared.begin(&req, Op::Rewrap, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let keys = self.shared.keys()?;
        let result = Self::rewrap_one(keys, &mut keys.call(1), &r);
        if let Ok(ok) = &result {
            call.used_version(ok.key_version);
        }
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn encrypt_batch(
        &self,
        req: Request<proto::EncryptBatchRequest>,
    ) -> Result<Response<proto::EncryptBatchResponse>, Status> {
        use proto::encrypt_batch_item::Result as R;
        let call = self.batch_call(&req, Op::Encrypt)?;
        let keys = self.shared.keys()?;
        let r = req.into_inner();
        let mut enc = keys.call(r.items.len());
        let items = self.run_batch(
            &call,
            &r.items,
            |it| &it.key,
            |it| {
                keys.encrypt_in(&mut enc, &it.key, &it.plaintext, &it.associated_data)
                    .map(|e| proto::EncryptResponse {
                        ciphertext: e.ciphertext,
                        key_version: e.version,
                    })
            },
            |o| (o.key_version, None),
        );
        let items = self.shared.finish(&call, items)?;
        let items = items
            .into_iter()
            .map(|res| proto::EncryptBatchItem {
                result: Some(res.map_or_else(R::Error, R::Ok)),
            })
            .collect();
        Ok(Response::new(proto::EncryptBatchResponse { items }))
    }

    async fn decrypt_batch(
        &self,
        req: Request<proto::DecryptBatchRequest>,
    ) -> Result<Response<proto::DecryptBatchResponse>, Status> {
        use proto::decrypt_batch_item::Result as R;
        let call = self.batch_call(&req, Op::Decrypt)?;
        let keys = self.shared.keys()?;
        let r = req.into_inner();
        let items = self.run_batch(
            &call,
            &r.items,
            |it| &it.key,
            |it| {
                keys.decrypt(&it.key, &it.ciphertext, &it.associated_data)
                    .map(|(plaintext, key_version)| proto::DecryptResponse { plaintext, key_version })
            },
            |o| (o.key_version, None),
        );
        let items = self.shared.finish(&call, items)?;
        let items = items
            .into_iter()
            .map(|res| proto::DecryptBatchItem {
                result: Some(res.map_or_else(R::Error, R::Ok)),
            })
            .collect();
        Ok(Response::new(proto::DecryptBatchResponse { items }))
    }

    async fn rewrap_batch(
        &self,
        req: Request<proto::RewrapBatchRequest>,
    ) -> Result<Response<proto::RewrapBatchResponse>, Status> {
        use proto::rewrap_batch_item::Result as R;
        let call = self.batch_call(&req, Op::Rewrap)?;
        let keys = self.shared.keys()?;
        let r = req.into_inner();
        let mut enc = keys.call(r.items.len());
        let items = self.run_batch(
            &call,
            &r.items,
            |it| &it.key,
            |it| Self::rewrap_one(keys, &mut enc, it),
            |o| (o.key_version, Some(o.source_key_version)),
        );
        let items = self.shared.finish(&call, items)?;
        let items = items
            .into_iter()
            .map(|res| proto::RewrapBatchItem {
                result: Some(res.map_or_else(R::Error, R::Ok)),
            })
            .collect();
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

impl CryptoService {
    /// A batch names its keys per item: the call itself only needs the
    /// caller to be known (each item is then checked against the policy).
    fn batch_call<T>(&self, req: &Request<T>, op: Op) -> Result<Call, Status> {
        self.shared.access()?;
        let mut call = self.shared.begin_unchecked(req, op, "batch")?;
        call.key = Some("(batch)".into());
        Ok(call)
    }
}

/// `kmsd.v1.Keys`.
#[derive(Debug, Clone)]
pub struct KeysService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

fn policy_to_proto(p: &KeyPolicy, purpose: KeyPurpose) -> proto::KeyPolicy {
    proto::KeyPolicy {
        purpose: Some(match purpose {
            KeyPurpose::EncryptDecrypt => proto::KeyPurpose::EncryptDecrypt,
            KeyPurpose::Tokenize => proto::KeyPurpose::Tokenize,
        } as i32),
        allow_token_rotation: Some(p.allow_token_rotation),
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
    if let Some(b) = u.allow_token_rotation {
        base.allow_token_rotation = b;
    }
    base
}

/// Whether moving `ring`'s `min_decryption_version` to `new_min` changes
/// whether some version that still has material (any state but DESTROYED)
/// may decrypt.
fn min_decryption_change_is_guarded(ring: &KeyRing, new_min: u32) -> bool {
    let old = ring.policy.min_decryption_version;
    let (low, high) = (old.min(new_min), old.max(new_min));
    ring.versions
        .iter()
        .any(|v| v.version >= low && v.version < high && v.state != VersionState::Destroyed)
}

/// The purpose named by a policy message (unset = encrypt/decrypt).
pub fn purpose_from_proto(update: Option<&proto::KeyPolicy>) -> Result<KeyPurpose, Error> {
    match update.and_then(|u| u.purpose).map(proto::KeyPurpose::try_from) {
        None | Some(Ok(proto::KeyPurpose::Unspecified | proto::KeyPurpose::EncryptDecrypt)) => {
            Ok(KeyPurpose::EncryptDecrypt)
        }
        Some(Ok(proto::KeyPurpose::Tokenize)) => Ok(KeyPurpose::Tokenize),
        Some(Err(_)) => Err(Error::InvalidArgument("unknown key purpose".into())),
    }
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
        policy: Some(policy_to_proto(&ring.policy, ring.purpose)),
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

/// Largest snapshot accepted by `Restore` (1 GiB).
const MAX_RESTORE_BYTES: usize = 1 << 30;

impl KeysService {
    /// Runs a ring-changing administrative operation off the async
    /// workers and answers with the new metadata.
    async fn admin(
        &self,
        call: Call,
        f: impl FnOnce(&Keys, &str) -> Result<KeyRing, Error> + Send + 'static,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let keys = self.shared.keys()?.clone();
        let name = call.key.clone().unwrap_or_default();
        let result = blocking(move || f(&keys, &name).map(|ring| key_info(&ring, &keys.usage(&name)))).await;
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    /// Dual control: creates the pending request (and answers with it), or
    /// lets DEV ONLY roles through.
    fn dual(&self, call: &Call, op: PendingOp) -> Result<(), Status> {
        match self.shared.access()?.dual_control(call, op) {
            Ok(()) => Ok(()),
            Err(status) => {
                let e = match status.code() {
                    tonic::Code::ResourceExhausted => Error::TooLarge(status.message().to_owned()),
                    tonic::Code::PermissionDenied => Error::PermissionDenied(status.message().to_owned()),
                    _ => Error::FailedPrecondition(status.message().to_owned()),
                };
                let _ = self.shared.finish::<()>(call, Err(e));
                Err(status)
            }
        }
    }
}

#[tonic::async_trait]
impl proto::keys_server::Keys for KeysService {
    async fn create_key(&self, req: Request<proto::CreateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyCreate, Some(&req.get_ref().name))?;
        let r = req.into_inner();
        let algorithm = r.algorithm;
        let policy = merge_policy(KeyPolicy::default(), r.policy.as_ref());
        let purpose = purpose_from_proto(r.policy.as_ref());
        self.admin(call, move |keys, name| {
            if algorithm != proto::Algorithm::Unspecified as i32 && algorithm != proto::Algorithm::Aes256Gcm as i32 {
                return Err(Error::InvalidArgument("unsupported algorithm; only AES_256_GCM".into()));
            }
            keys.create_for(name, policy, purpose?)
        })
        .await
    }

    async fn get_key(&self, req: Request<proto::GetKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyRead, Some(&req.get_ref().name))?;
        self.admin(call, |keys, name| keys.get(name)).await
    }

    async fn list_keys(
        &self,
        req: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        // Listing needs key.read on at least something; the names are then
        // filtered one by one, and the page token names only the last name
        // shown (sealed), so a caller learns nothing of the names it may
        // not read: not even that there are more.
        let call = self.shared.begin_unchecked(&req, Op::KeyRead, "list")?;
        let access = self.shared.access()?.clone();
        if let Err(d) = access.policy().allows_somewhere(call.peer.id(), Op::KeyRead) {
            let e = Error::PermissionDenied(d.to_string());
            return Err(self.shared.finish::<()>(&call, Err(e)).unwrap_err_status());
        }
        let r = req.into_inner();
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let keys = self.shared.keys()?.clone();
        let identity = call.peer.id().to_owned();
        let result = blocking(move || {
            let token_key = keys
                .ring_store()
                .sealer()
                .derive_subkey(crate::page_token::SUBKEY_LABEL);
            let mut after = if r.page_token.is_empty() {
                None
            } else {
                Some(crate::page_token::open(
                    &token_key,
                    &identity,
                    &r.prefix,
                    &r.page_token,
                )?)
            };
            let policy = access.policy();
            // One visible name more than the page, to know whether there
            // is a next page without revealing unseen names.
            let mut names = Vec::with_capacity(limit + 1);
            'scan: loop {
                let raw = keys.list(&r.prefix, after.as_deref(), MAX_PAGE)?;
                let exhausted = raw.len() < MAX_PAGE;
                for n in raw {
                    if policy.check(&identity, Op::KeyRead, Some(&n)).is_ok() {
                        names.push(n.clone());
                        if names.len() > limit {
                            break 'scan;
                        }
                    }
                    after = Some(n);
                }
                if exhausted {
                    break;
                }
            }
            let next_page_token = if names.len() > limit {
                names.truncate(limit);
                match names.last() {
                    Some(last) => crate::page_token::seal(&token_key, &identity, &r.prefix, last)?,
                    None => String::new(),
                }
            } else {
                String::new()
            };
            Ok(proto::ListKeysResponse { names, next_page_token })
        })
        .await;
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn rotate_key(&self, req: Request<proto::RotateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyRotate, Some(&req.get_ref().name))?;
        self.admin(call, |keys, name| keys.rotate(name, RotationReason::Manual))
            .await
    }

    async fn update_key_policy(
        &self,
        req: Request<proto::UpdateKeyPolicyRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyPolicy, Some(&req.get_ref().name))?;
        let r = req.into_inner();
        let keys = self.shared.keys()?.clone();
        // Moving the minimum decryption version across versions that still
        // have material, in either direction and whatever their states
        // (disable, raise, re-enable would otherwise get around it), needs
        // dual control: raising strands ciphertexts, lowering revives
        // retired versions.
        let current = match blocking({
            let (keys, name) = (keys.clone(), r.name.clone());
            move || keys.get(&name)
        })
        .await
        {
            Ok(c) => c,
            Err(e) => return Err(self.shared.finish::<()>(&call, Err(e)).unwrap_err_status()),
        };
        if r.policy.as_ref().is_some_and(|p| p.purpose.is_some())
            && purpose_from_proto(r.policy.as_ref()).ok() != Some(current.purpose)
        {
            let e = Error::InvalidArgument("a key's purpose is fixed at creation".into());
            return Err(self.shared.finish::<()>(&call, Err(e)).unwrap_err_status());
        }
        let new = merge_policy(current.policy.clone(), r.policy.as_ref());
        if min_decryption_change_is_guarded(&current, new.min_decryption_version) {
            self.dual(
                &call,
                PendingOp::SetPolicy {
                    name: r.name.clone(),
                    update: r.policy.unwrap_or_default(),
                },
            )?;
        }
        self.admin(call, move |keys, name| keys.set_policy(name, new)).await
    }

    async fn set_version_state(
        &self,
        req: Request<proto::SetVersionStateRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self
            .shared
            .begin(&req, Op::KeyVersionState, Some(&req.get_ref().name))?;
        let r = req.into_inner();
        let (version, state) = (r.version, r.state);
        self.admin(call, move |keys, name| {
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
        let call = self.shared.begin(&req, Op::KeyDestroy, Some(&req.get_ref().name))?;
        let r = req.into_inner();
        let (version, wait) = (r.version, r.waiting_period_seconds);
        self.shared.keys()?.destruction_time(wait).map_err(Status::from)?;
        self.dual(
            &call,
            PendingOp::DestroyVersion {
                name: r.name.clone(),
                version,
                wait,
            },
        )?;
        self.admin(call, move |keys, name| {
            let at = keys.destruction_time(wait)?;
            Ok(keys.modify(name, |r| r.schedule_destruction(version, at))?.0)
        })
        .await
    }

    async fn cancel_version_destruction(
        &self,
        req: Request<proto::CancelVersionDestructionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self
            .shared
            .begin(&req, Op::KeyVersionState, Some(&req.get_ref().name))?;
        let version = req.get_ref().version;
        self.admin(call, move |keys, name| {
            Ok(keys.modify(name, |r| r.cancel_destruction(version))?.0)
        })
        .await
    }

    async fn schedule_key_deletion(
        &self,
        req: Request<proto::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyDestroy, Some(&req.get_ref().name))?;
        let r = req.into_inner();
        let wait = r.waiting_period_seconds;
        self.shared.keys()?.destruction_time(wait).map_err(Status::from)?;
        let current = self.shared.keys()?.get(&r.name).map_err(Status::from)?;
        if !current.policy.deletion_allowed {
            let e = Error::FailedPrecondition(format!(
                "key {:?} does not allow deletion (policy deletion_allowed is false)",
                r.name
            ));
            return Err(self.shared.finish::<()>(&call, Err(e)).unwrap_err_status());
        }
        self.dual(
            &call,
            PendingOp::DeleteKey {
                name: r.name.clone(),
                wait,
            },
        )?;
        self.admin(call, move |keys, name| {
            let at = keys.destruction_time(wait)?;
            Ok(keys.modify(name, |r| r.schedule_deletion(at))?.0)
        })
        .await
    }

    async fn cancel_key_deletion(
        &self,
        req: Request<proto::CancelKeyDeletionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self
            .shared
            .begin(&req, Op::KeyVersionState, Some(&req.get_ref().name))?;
        self.admin(call, |keys, name| Ok(keys.modify(name, |r| r.cancel_deletion())?.0))
            .await
    }

    type BackupStream = tokio_stream::Iter<std::vec::IntoIter<Result<proto::BackupChunk, Status>>>;

    async fn backup(&self, req: Request<proto::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let call = self.shared.begin(&req, Op::Backup, None)?;
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
        let (buf, total) = self.shared.finish(&call, result)?;
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
        let call = self.shared.begin(&req, Op::Restore, None)?;
        // A snapshot that must wait for a second officer is held in memory
        // until then: refuse one larger than the pending budget while it
        // streams, not after buffering it.
        let (cap, what) = match self.shared.access()?.restore_upload_cap(call.peer.id()) {
            Some(c) if c < MAX_RESTORE_BYTES => (c, "the pending dual-control budget (limits.max_pending_bytes)"),
            _ => (MAX_RESTORE_BYTES, "the restore limit"),
        };
        let mut stream = req.into_inner();
        let mut bytes = Vec::new();
        let mut too_large = false;
        loop {
            let chunk = match stream.message().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(status) => return Err(self.shared.stream_failed(&call, status)),
            };
            if bytes.len() + chunk.data.len() > cap {
                too_large = true;
                break;
            }
            bytes.extend_from_slice(&chunk.data);
        }
        if too_large {
            let e = Error::TooLarge(format!("backup larger than {cap} bytes, {what}"));
            return Err(self.shared.finish::<()>(&call, Err(e)).unwrap_err_status());
        }
        let bytes = Arc::new(bytes);
        self.dual(&call, PendingOp::Restore { bytes: bytes.clone() })?;
        let keys = self.shared.keys()?.clone();
        let result = blocking(move || keys.restore(&bytes)).await;
        let (records, keys) = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::RestoreResponse { records, keys }))
    }
}

/// `Err(status)` of a finished call as a plain `Status`.
trait ErrStatus {
    fn unwrap_err_status(self) -> Status;
}

impl ErrStatus for Result<(), Status> {
    fn unwrap_err_status(self) -> Status {
        match self {
            Ok(()) => Status::internal("unexpected success"),
            Err(s) => s,
        }
    }
}

/// `kmsd.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn status(&self, req: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        // Key counts and the next deadline are not for every certificate:
        // the `status` right (health and reflection stay open). While the
        // policy is not loaded yet this answers UNAVAILABLE, as the other
        // calls do; health says NOT_SERVING meanwhile.
        let call = self.shared.begin(&req, Op::Status, None)?;
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
        Ok(Response::new(self.shared.finish(&call, Ok(resp))?))
    }

    async fn reload_policy(
        &self,
        req: Request<proto::ReloadPolicyRequest>,
    ) -> Result<Response<proto::ReloadPolicyResponse>, Status> {
        let call = self.shared.begin(&req, Op::AdminReload, None)?;
        let access = self.shared.access()?.clone();
        let result = access.reload_policy().map_err(|e| {
            tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
            Error::FailedPrecondition(format!(
                "policy reload refused (the previous policy stays in force): {e}"
            ))
        });
        self.shared.finish(&call, result)?;
        tracing::info!("policy reloaded");
        Ok(Response::new(proto::ReloadPolicyResponse {}))
    }

    async fn enroll_officer(
        &self,
        req: Request<proto::EnrollOfficerRequest>,
    ) -> Result<Response<proto::EnrollOfficerResponse>, Status> {
        // The secret goes only to the enrolled identity: to the caller when
        // it enrols (or re-enrols) itself, else it waits sealed in the store
        // until that identity claims it (ClaimOfficerSecret). Replacing
        // someone else's enrolment also needs a second officer.
        let call = self.shared.begin(&req, Op::OfficerEnroll, None)?;
        let r = req.into_inner();
        let access = self.shared.access()?.clone();
        let keys = self.shared.keys()?.clone();
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("officer {}", r.identity));
        if r.identity.is_empty() || r.identity.len() > 512 {
            let e = Error::InvalidArgument("identity must be 1-512 characters".into());
            return Err(self.shared.finish::<()>(&call, Err(e)).unwrap_err_status());
        }
        let to_self = r.identity == call.peer.id();
        let claim_ttl = access.policy().settings.enrolment_claim_ttl.as_secs() as i64;
        if r.replace && !to_self {
            let op = PendingOp::ReplaceOfficer {
                identity: r.identity.clone(),
                claim_ttl,
            };
            if let Err(status) = access.dual_control(&call, op) {
                let e = Error::FailedPrecondition(status.message().to_owned());
                let _ = self.shared.finish::<()>(&call, Err(e));
                return Err(status);
            }
        }
        let id = r.identity.clone();
        let result = blocking(move || {
            let rings = keys.ring_store();
            if to_self {
                let secret = crate::access::enroll(rings.raw().as_ref(), rings.sealer(), &id, r.replace)?;
                let resp = proto::EnrollOfficerResponse {
                    otpauth_uri: secret.otpauth_uri(&id),
                    secret_base32: secret.base32(),
                    claim_by: 0,
                };
                access.remember_officer(&id, secret);
                return Ok(resp);
            }
            let claim_by = kmsd_keystore::Clock::now(&kmsd_keystore::SystemClock).saturating_add(claim_ttl);
            crate::access::offer_enrolment(rings.raw().as_ref(), rings.sealer(), &id, r.replace, claim_by)?;
            Ok(proto::EnrollOfficerResponse {
                claim_by,
                ..Default::default()
            })
        })
        .await;
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn claim_officer_secret(
        &self,
        req: Request<proto::ClaimOfficerSecretRequest>,
    ) -> Result<Response<proto::EnrollOfficerResponse>, Status> {
        // No policy right: the certificate is the proof, and only a secret
        // enrolled for this very identity can be taken.
        let call = self.shared.begin_unchecked(&req, Op::OfficerEnroll, "claim")?;
        let access = self.shared.access()?.clone();
        let id = call.peer.id().to_owned();
        let result = blocking(move || {
            let secret = access.claim(&id)?;
            Ok(proto::EnrollOfficerResponse {
                otpauth_uri: secret.otpauth_uri(&id),
                secret_base32: secret.base32(),
                claim_by: 0,
            })
        })
        .await;
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn list_approvals(
        &self,
        req: Request<proto::ListApprovalsRequest>,
    ) -> Result<Response<proto::ListApprovalsResponse>, Status> {
        let call = self.shared.begin_unchecked(&req, Op::Approval, "list")?;
        let access = self.shared.access()?.clone();
        // Listing needs the approval right, without a second factor.
        if let Err(d) = access.policy().check(call.peer.id(), Op::Approval, None) {
            return Err(self
                .shared
                .finish::<()>(&call, Err(Error::PermissionDenied(d.to_string())))
                .unwrap_err_status());
        }
        let approvals = access
            .pending()
            .into_iter()
            .map(|p| proto::Approval {
                id: p.id.clone(),
                operation: p.op.op().as_str().to_owned(),
                key: p.op.key().unwrap_or_default().to_owned(),
                requester: p.requester.clone(),
                description: p.op.describe(),
                created_at: p.created_at,
                expires_at: p.expires_at,
            })
            .collect();
        let resp = self
            .shared
            .finish(&call, Ok(proto::ListApprovalsResponse { approvals }))?;
        Ok(Response::new(resp))
    }

    async fn approve(&self, req: Request<proto::ApproveRequest>) -> Result<Response<proto::ApproveResponse>, Status> {
        let call = self.shared.begin(&req, Op::Approval, None)?;
        let access = self.shared.access()?.clone();
        let pending = match access.take_for_approval(&req.get_ref().id, call.peer.id()) {
            Ok(p) => p,
            Err(status) => {
                let code_err = match status.code() {
                    tonic::Code::NotFound => Error::KeyNotFound(format!("approval {}", req.get_ref().id)),
                    tonic::Code::PermissionDenied => Error::PermissionDenied(status.message().to_owned()),
                    _ => Error::FailedPrecondition(status.message().to_owned()),
                };
                let _ = self.shared.finish::<()>(&call, Err(code_err));
                return Err(status);
            }
        };
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "approved request {} by {} for {}: {}",
            pending.id,
            call.peer.id(),
            pending.requester,
            pending.op.op().as_str()
        ));
        let keys = self.shared.keys()?.clone();
        let op = pending.op.clone();
        let result = blocking(move || crate::access::execute(&keys, &op)).await;
        tracing::info!(id = %pending.id, requester = %pending.requester, approver = call.peer.id(), ok = result.is_ok(), "dual-control request approved");
        let result = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::ApproveResponse { result }))
    }

    async fn reject(&self, req: Request<proto::RejectRequest>) -> Result<Response<proto::RejectResponse>, Status> {
        let call = self.shared.begin(&req, Op::Approval, None)?;
        let access = self.shared.access()?.clone();
        let result = access
            .reject(&req.get_ref().id, call.peer.id())
            .map(|_| ())
            .map_err(|s| match s.code() {
                tonic::Code::PermissionDenied => Error::PermissionDenied(s.message().to_owned()),
                _ => Error::KeyNotFound(format!("approval {}: {}", req.get_ref().id, s.message())),
            });
        self.shared.finish(&call, result)?;
        Ok(Response::new(proto::RejectResponse {}))
    }

    async fn audit_head(
        &self,
        req: Request<proto::AuditHeadRequest>,
    ) -> Result<Response<proto::AuditHeadResponse>, Status> {
        let call = self.shared.begin(&req, Op::AuditRead, None)?;
        let h = self.shared.access()?.audit.head();
        let resp = proto::AuditHeadResponse {
            seq: h.seq,
            hash: h.hash,
            file_first_seq: h.file_first_seq,
            first_seq: h.first_seq,
        };
        Ok(Response::new(self.shared.finish(&call, Ok(resp))?))
    }

    async fn verify_audit(
        &self,
        req: Request<tonic::Streaming<proto::AuditChunk>>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        let call = self.shared.begin(&req, Op::AuditRead, None)?;
        let access = self.shared.access()?.clone();
        let mut stream = req.into_inner();
        // Verified chunk by chunk as it arrives: memory is one chunk (at
        // most the message limit) plus one partial line, whatever the
        // log's size; the request timeout bounds the time.
        let mut verifier: Option<crate::audit::Verifier> = None;
        let mut broken = None;
        loop {
            let c = match stream.message().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(status) => return Err(self.shared.stream_failed(&call, status)),
            };
            let mut v = match verifier.take() {
                Some(v) => v,
                None => crate::audit::Verifier::new(
                    access.audit_key(),
                    c.head.map(|h| crate::audit::Anchor {
                        seq: h.seq,
                        hash: h.hash,
                        file_first_seq: h.file_first_seq,
                        first_seq: h.first_seq,
                    }),
                ),
            };
            if broken.is_some() {
                verifier = Some(v);
                continue; // (drain the stream; the answer is known)
            }
            let data = c.data;
            let (v, r) = tokio::task::spawn_blocking(move || {
                let r = v.feed(&data);
                (v, r)
            })
            .await
            .map_err(|_| Status::internal("audit verification stopped"))?;
            if let Err(b) = r {
                broken = Some(b);
            }
            verifier = Some(v);
        }
        let v = verifier.unwrap_or_else(|| crate::audit::Verifier::new(access.audit_key(), None));
        let result = blocking(move || {
            Ok(match v.finish() {
                Ok(r) => proto::VerifyAuditResponse {
                    ok: true,
                    records: r.records,
                    first_seq: r.first_seq,
                    last_seq: r.last_seq,
                    ..Default::default()
                },
                Err(b) => proto::VerifyAuditResponse {
                    ok: false,
                    broken_line: b.line,
                    broken_seq: b.seq.unwrap_or(0),
                    reason: b.reason,
                    ..Default::default()
                },
            })
        })
        .await;
        Ok(Response::new(self.shared.finish(&call, result)?))
    }
}
