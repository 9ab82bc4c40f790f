//! Access control for every call: who is calling (from the verified
//! certificate), whether the policy allows it, the officer's second
//! factor, dual control for destructive operations, and one audit record
//! per request.
//!
//! Order of checks, and why: the policy decides first (PERMISSION_DENIED,
//! before any key lookup, so a caller without rights learns nothing about
//! which keys exist); then an officer's TOTP code (UNAUTHENTICATED); then,
//! for administrative calls, a durable audit record of the intent — if it
//! cannot be written the call fails closed (UNAVAILABLE) and nothing is
//! done. Every call then ends with one audit record of its outcome
//! (administrative: durable before the answer; data path: group-committed).
use crate::audit::{AuditHandle, AuditKey, Event};
use crate::authz::{Op, Policy};
use crate::error::Error;
use crate::keys::Keys;
use crate::otp::{OfficerState, Outcome, TotpSecret, Verifier};
use crate::tls::PeerIdentity;
use arc_swap::ArcSwap;
use kmsd_keystore::{KeyStore, RecordKind, Sealer};
use rand::RngCore;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tonic::{Code, Request, Status};

/// Request metadata carrying an officer's one-time code.
pub const OTP_HEADER: &str = "x-kmsd-otp";
/// Response metadata naming a dual-control request.
pub const APPROVAL_HEADER: &str = "x-kmsd-approval-id";

/// Record name of an officer's sealed TOTP secret.
fn totp_record(identity: &str) -> String {
    format!("totp:{identity}")
}

/// Record name of a new TOTP secret waiting for its officer to claim it.
fn offer_record(identity: &str) -> String {
    format!("totp-offer:{identity}")
}

/// Record name of an officer's sealed replay and lock-out memory.
const TOTP_STATE_PREFIX: &str = "totp-state:";

/// One call in progress.
#[derive(Debug)]
pub struct Call {
    /// The caller.
    pub peer: Arc<PeerIdentity>,
    /// The operation.
    pub op: Op,
    /// The key named by the request, if any.
    pub key: Option<String>,
    /// Request id (the caller's `x-request-id`, or random).
    pub request_id: String,
    /// When the call arrived.
    pub started: Instant,
    /// Key version the call used, for the audit record.
    pub version: std::sync::atomic::AtomicU32,
    /// Short non-secret detail for the audit record (batch sizes).
    pub detail: Mutex<Option<String>>,
    /// A batch's items by key, version and result: one audit record each,
    /// so a batch does not hide which keys and versions it used.
    pub batch: Mutex<Vec<BatchPart>>,
    /// Set once the call is let through: its outcome record is owed. A call
    /// dropped before it is finished (the client cancelled, its stream
    /// failed, an early return) gets a CANCELLED record from `Drop`.
    pub owed: Mutex<Option<Arc<Access>>>,
}

/// Items of a batch that used one key and version with one result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPart {
    /// Key named by the items.
    pub key: String,
    /// Version used (none when the items failed).
    pub version: Option<u32>,
    /// Rewrap: the version the ciphertexts were under.
    pub from_version: Option<u32>,
    /// The items' result.
    pub code: Code,
    /// How many items.
    pub items: u64,
}

impl Call {
    /// Notes the key version used.
    pub fn used_version(&self, v: u32) {
        self.version.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// The call was let through: from now on it ends with an outcome
    /// record, whichever way it ends.
    pub fn owe_outcome(&self, access: Arc<Access>) {
        *lock(&self.owed) = Some(access);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let owed = match self.owed.get_mut() {
            Ok(o) => o.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(access) = owed {
            access.record_abandoned(self);
        }
    }
}

/// An operation waiting for a second officer.
#[derive(Debug, Clone)]
pub enum PendingOp {
    /// Schedule a version's destruction.
    DestroyVersion {
        /// Key.
        name: String,
        /// Version.
        version: u32,
        /// Waiting period (seconds, 0 = default).
        wait: u64,
    },
    /// Schedule the whole key's deletion.
    DeleteKey {
        /// Key.
        name: String,
        /// Waiting period (seconds, 0 = default).
        wait: u64,
    },
    /// Restore a snapshot.
    Restore {
        /// The snapshot.
        bytes: Arc<Vec<u8>>,
    },
    /// Replace another officer's second factor. The new secret then waits,
    /// sealed, for that officer alone to claim it.
    ReplaceOfficer {
        /// The officer whose enrolment is replaced.
        identity: String,
        /// How long the new secret waits to be claimed (seconds).
        claim_ttl: i64,
    },
    /// A policy change that moves `min_decryption_version` across versions
    /// that still have material (raising strands their ciphertexts,
    /// lowering revives retired versions).
    SetPolicy {
        /// Key.
        name: String,
        /// Only the fields the requester set: applied on top of the key's
        /// policy *at approval*, and checked again then, so changes made
        /// meanwhile are kept.
        update: crate::proto::KeyPolicy,
    },
}

impl PendingOp {
    /// The operation, for policy and audit.
    pub fn op(&self) -> Op {
        match self {
            PendingOp::DestroyVersion { .. } | PendingOp::DeleteKey { .. } => Op::KeyDestroy,
            PendingOp::Restore { .. } => Op::Restore,
            PendingOp::SetPolicy { .. } => Op::KeyPolicy,
            PendingOp::ReplaceOfficer { .. } => Op::OfficerEnroll,
        }
    }

    /// Bytes the pending request holds in memory (a restore's snapshot).
    pub fn held_bytes(&self) -> usize {
        match self {
            PendingOp::Restore { bytes } => bytes.len(),
            _ => 0,
        }
    }

    /// The key concerned.
    pub fn key(&self) -> Option<&str> {
        match self {
            PendingOp::DestroyVersion { name, .. }
            | PendingOp::DeleteKey { name, .. }
            | PendingOp::SetPolicy { name, .. } => Some(name),
            PendingOp::Restore { .. } | PendingOp::ReplaceOfficer { .. } => None,
        }
    }

    /// Exactly what will happen, in words.
    pub fn describe(&self) -> String {
        let wait = |w: u64| {
            if w == 0 {
                "the default 30 days".to_owned()
            } else {
                format!("{w} seconds")
            }
        };
        match self {
            PendingOp::DestroyVersion { name, version, wait: w } => format!(
                "schedule destruction of version {version} of key {name:?} after {}; its material is then erased",
                wait(*w)
            ),
            PendingOp::DeleteKey { name, wait: w } => {
                format!("schedule deletion of every version of key {name:?} after {}", wait(*w))
            }
            PendingOp::Restore { bytes } => {
                format!(
                    "restore a {}-byte backup snapshot into the (empty) key store",
                    bytes.len()
                )
            }
            PendingOp::ReplaceOfficer { identity, claim_ttl } => format!(
                "replace the second factor (TOTP secret) of officer {identity:?}: the new secret waits {claim_ttl} \
                 seconds for {identity:?} alone to claim it with its own certificate (kmsctl officer claim); \
                 the current secret stays valid until then"
            ),
            PendingOp::SetPolicy { name, update } => format!(
                "change the policy of key {name:?}: {} (min_decryption_version decides which versions may decrypt: \
                 raising it makes ciphertexts of the versions below undecryptable, lowering it lets retired versions \
                 decrypt again)",
                describe_update(update)
            ),
        }
    }
}

/// The fields a policy update sets, in words (`0` disables a limit).
fn describe_update(u: &crate::proto::KeyPolicy) -> String {
    let mut parts = Vec::new();
    let mut add = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    add(
        "rotation_period_seconds",
        u.rotation_period_seconds.map(|v| v.to_string()),
    );
    add(
        "max_encryptions_per_version",
        u.max_encryptions_per_version.map(|v| v.to_string()),
    );
    add(
        "min_decryption_version",
        u.min_decryption_version.map(|v| v.to_string()),
    );
    add(
        "min_encryption_version",
        u.min_encryption_version.map(|v| v.to_string()),
    );
    add("deletion_allowed", u.deletion_allowed.map(|v| v.to_string()));
    add(
        "manual_rotation_resets_schedule",
        u.manual_rotation_resets_schedule.map(|v| v.to_string()),
    );
    if parts.is_empty() {
        "no change".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A dual-control request.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Id.
    pub id: String,
    /// Who asked.
    pub requester: String,
    /// What.
    pub op: PendingOp,
    /// Unix time it expires unapproved.
    pub expires_at: i64,
    /// Unix time it was made.
    pub created_at: i64,
}

/// Access state shared by every service.
pub struct Access {
    policy: ArcSwap<Policy>,
    policy_path: PathBuf,
    /// The configuration's dev_mode: DEV ONLY roles are refused without it,
    /// on every reload as at start.
    dev_mode: bool,
    /// The audit trail.
    pub audit: AuditHandle,
    audit_key: AuditKey,
    /// The live audit log path.
    pub audit_path: PathBuf,
    verifier: Mutex<Verifier>,
    totp: Mutex<HashMap<String, Arc<TotpSecret>>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// Bounds of `pending` (count, bytes held): pending requests live in
    /// memory until approved or expired, a restore's whole snapshot
    /// included, so without a bound officers' requests could fill memory.
    pending_limits: Mutex<PendingLimits>,
    store: Arc<dyn KeyStore>,
    /// The key rings' store and sealer: officers' replay and lock-out
    /// memory is sealed into it like every other record.
    keys: Arc<Keys>,
}

/// Bounds of the pending dual-control requests (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct PendingLimits {
    /// Requests pending at once (`max_pending_approvals`).
    pub count: usize,
    /// Bytes they may hold together (`max_pending_bytes`): restore snapshots.
    pub bytes: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            count: 64,
            bytes: 256 << 20,
        }
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Access")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> i64 {
    kmsd_keystore::Clock::now(&kmsd_keystore::SystemClock)
}

/// The audit key, created (and sealed into the store) on first use.
pub fn audit_key(store: &dyn KeyStore, sealer: &Sealer) -> Result<AuditKey, Error> {
    for _ in 0..2 {
        if let Some(e) = store.get(RecordKind::Secret, "audit-key")? {
            let plain = sealer.open(RecordKind::Secret, "audit-key", &e.value)?;
            let bytes: [u8; 32] = plain
                .as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt("audit-key".into()))?;
            return Ok(AuditKey::from_bytes(&bytes));
        }
        let mut fresh = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(fresh.as_mut());
        match store.put(
            RecordKind::Secret,
            "audit-key",
            None,
            &sealer.seal(RecordKind::Secret, "audit-key", fresh.as_ref())?,
        ) {
            Ok(_) | Err(kmsd_keystore::Error::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::StoreUnavailable)
}

/// Enrols (or re-enrols) an officer: a fresh TOTP secret sealed into the store.
pub fn enroll(store: &dyn KeyStore, sealer: &Sealer, identity: &str, replace: bool) -> Result<TotpSecret, Error> {
    let name = totp_record(identity);
    let secret = TotpSecret::generate();
    let sealed = sealer.seal(RecordKind::Secret, &name, secret.expose_secret())?;
    let expected = match store.get(RecordKind::Secret, &name)? {
        Some(_) if !replace => return Err(Error::KeyExists(format!("officer {identity}"))),
        Some(e) => Some(e.revision),
        None => None,
    };
    store.put(RecordKind::Secret, &name, expected, &sealed)?;
    Ok(secret)
}

/// Seals a new TOTP secret for `identity` to claim (once, with its own
/// certificate) until `claim_by`; an offer not yet claimed is replaced.
/// Refused if the identity is enrolled and `replace` is not set.
pub fn offer_enrolment(
    store: &dyn KeyStore,
    sealer: &Sealer,
    identity: &str,
    replace: bool,
    claim_by: i64,
) -> Result<(), Error> {
    if !replace && store.get(RecordKind::Secret, &totp_record(identity))?.is_some() {
        return Err(Error::KeyExists(format!("officer {identity}")));
    }
    let name = offer_record(identity);
    let secret = TotpSecret::generate();
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(28));
    plain.extend_from_slice(&claim_by.to_be_bytes());
    plain.extend_from_slice(secret.expose_secret());
    let sealed = sealer.seal(RecordKind::Secret, &name, &plain)?;
    let expected = store.get(RecordKind::Secret, &name)?.map(|e| e.revision);
    store.put(RecordKind::Secret, &name, expected, &sealed)?;
    Ok(())
}

/// Takes the secret waiting for `identity` (once: the offer is deleted
/// first) and makes it the officer's enrolment.
pub fn claim_enrolment(store: &dyn KeyStore, sealer: &Sealer, identity: &str, now: i64) -> Result<TotpSecret, Error> {
    let name = offer_record(identity);
    let nothing = || {
        Error::NotFound(format!(
            "no officer enrolment waits for {identity} (none, claimed or expired)"
        ))
    };
    let entry = store.get(RecordKind::Secret, &name)?.ok_or_else(nothing)?;
    let plain = sealer.open(RecordKind::Secret, &name, &entry.value)?;
    store.delete(RecordKind::Secret, &name, entry.revision)?;
    let (claim_by, raw) = plain.split_at_checked(8).ok_or_else(|| Error::Corrupt(name.clone()))?;
    let claim_by = i64::from_be_bytes(claim_by.try_into().map_err(|_| Error::Corrupt(name.clone()))?);
    let secret = TotpSecret::from_slice(raw).ok_or_else(|| Error::Corrupt(name.clone()))?;
    if claim_by <= now {
        return Err(nothing());
    }
    let record = totp_record(identity);
    let expected = store.get(RecordKind::Secret, &record)?.map(|e| e.revision);
    store.put(
        RecordKind::Secret,
        &record,
        expected,
        &sealer.seal(RecordKind::Secret, &record, secret.expose_secret())?,
    )?;
    Ok(secret)
}

impl Access {
    /// Sets up access control: loads the policy, the audit key and every
    /// officer's TOTP secret, and starts the audit writer.
    pub fn new(
        policy_path: PathBuf,
        audit_path: PathBuf,
        audit_options: crate::audit::Options,
        keys: &Arc<Keys>,
        metrics: Arc<crate::ops::metrics::Metrics>,
    ) -> Result<Self, String> {
        let policy = Policy::load(&policy_path).map_err(|e| e.to_string())?;
        let dev_mode = keys.dev_mode();
        policy
            .check_mode(dev_mode)
            .map_err(|e| format!("{}: {e}", policy_path.display()))?;
        if policy.has_dev_roles() {
            tracing::warn!(policy = %policy_path.display(), "the policy has DEV ONLY roles (dev_no_second_factor): never in production");
        }
        let rings = keys.ring_store();
        let store = rings.raw().clone();
        let key = audit_key(store.as_ref(), rings.sealer()).map_err(|e| format!("audit key: {e}"))?;
        let key_copy = audit_key(store.as_ref(), rings.sealer()).map_err(|e| format!("audit key: {e}"))?;
        let audit = crate::audit::spawn(&audit_path, key_copy, audit_options, metrics).map_err(|e| e.to_string())?;
        let mut totp = HashMap::new();
        let mut states = Vec::new();
        store
            .for_each(RecordKind::Secret, &mut |name, entry| {
                if let Some(id) = name.strip_prefix("totp:") {
                    let plain = rings.sealer().open(RecordKind::Secret, name, &entry.value)?;
                    if let Some(s) = TotpSecret::from_slice(&plain) {
                        totp.insert(id.to_owned(), Arc::new(s));
                    }
                } else if let Some(id) = name.strip_prefix(TOTP_STATE_PREFIX) {
                    let plain = rings.sealer().open(RecordKind::Secret, name, &entry.value)?;
                    let state = OfficerState::decode(&plain).ok_or_else(|| kmsd_keystore::Error::Corrupt {
                        kind: RecordKind::Secret,
                        name: name.to_owned(),
                        reason: "not an officer state (version 1)",
                    })?;
                    states.push((id.to_owned(), state));
                }
                Ok(())
            })
            .map_err(|e| format!("officer secrets: {e}"))?;
        let s = &policy.settings;
        let mut verifier = Verifier::new(
            s.otp_max_failures,
            s.otp_lockout.as_secs() as i64,
            s.otp_lockout_max.as_secs() as i64,
        );
        for (id, state) in states {
            verifier.restore(&id, state);
        }
        Ok(Access {
            policy: ArcSwap::from_pointee(policy),
            policy_path,
            dev_mode,
            audit,
            audit_key: key,
            audit_path,
            verifier: Mutex::new(verifier),
            totp: Mutex::new(totp),
            pending: Mutex::new(HashMap::new()),
            pending_limits: Mutex::new(PendingLimits::default()),
            store,
            keys: keys.clone(),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Re-reads the policy file; a bad file is refused and the old policy
    /// stays in force.
    pub fn reload_policy(&self) -> Result<(), String> {
        let p = Policy::load(&self.policy_path).map_err(|e| e.to_string())?;
        p.check_mode(self.dev_mode)
            .map_err(|e| format!("{}: {e}", self.policy_path.display()))?;
        {
            let mut v = lock(&self.verifier);
            v.max_failures = p.settings.otp_max_failures.max(1);
            v.lockout_secs = p.settings.otp_lockout.as_secs() as i64;
            v.max_lockout_secs = p.settings.otp_lockout_max.as_secs() as i64;
        }
        self.policy.store(Arc::new(p));
        Ok(())
    }

    /// The caller takes the TOTP secret waiting for it (see
    /// [`offer_enrolment`]); from then on it is the caller's second factor.
    pub fn claim(&self, identity: &str) -> Result<TotpSecret, Error> {
        let rings = self.keys.ring_store();
        let secret = claim_enrolment(self.store.as_ref(), rings.sealer(), identity, now())?;
        if let Some(copy) = TotpSecret::from_slice(secret.expose_secret()) {
            self.remember_officer(identity, copy);
        }
        Ok(secret)
    }

    /// Sets the bounds of pending dual-control requests.
    pub fn set_pending_limits(&self, limits: PendingLimits) {
        *lock(&self.pending_limits) = limits;
    }

    /// The most bytes a snapshot from `identity` may have: a caller that
    /// goes through dual control can only park it within the pending
    /// bytes budget, so a larger upload is refused while it streams.
    pub fn restore_upload_cap(&self, identity: &str) -> Option<usize> {
        if self.policy.load().dev_bypass(identity) {
            return None;
        }
        Some(lock(&self.pending_limits).bytes)
    }

    /// Remembers a freshly enrolled officer's secret.
    pub fn remember_officer(&self, identity: &str, secret: TotpSecret) {
        lock(&self.totp).insert(identity.to_owned(), Arc::new(secret));
    }

    /// The audit key (to verify logs).
    pub fn audit_key(&self) -> &AuditKey {
        &self.audit_key
    }

    /// The raw store (officer enrolment).
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    fn event(&self, call: &Call, result: &'static str, detail: Option<String>) -> Event {
        let v = call.version.load(std::sync::atomic::Ordering::Relaxed);
        Event {
            request_id: call.request_id.clone(),
            identity: call.peer.id_shared(),
            op: call.op.as_str(),
            key: call.key.clone(),
            key_version: (v > 0).then_some(v),
            result,
            detail,
            peer: call.peer.peer_addr.clone(),
            latency_us: call.started.elapsed().as_micros() as u64,
        }
    }

    /// Checks policy and second factor for `call` and, for administrative
    /// operations, writes the durable intent record.
    pub fn authorize(&self, call: &Call, otp: Option<&str>) -> Result<(), Status> {
        // (`on_failure = "fail"` and the log cannot be written: no call
        // runs, since none could be audited)
        if let Some(e) = self.audit.unavailable() {
            return Err(Status::unavailable(format!("{e}; the call was not performed")));
        }
        let policy = self.policy.load();
        let id = call.peer.id();
        if let Err(denied) = policy.check(id, call.op, call.key.as_deref()) {
            let _ = self.audit.record(self.event(call, "PERMISSION_DENIED", None));
            return Err(Status::permission_denied(denied.to_string()));
        }
        if policy.needs_second_factor(id, call.op) {
            self.second_factor(call, otp)?;
        }
        if call.op.is_admin() || call.op == Op::AdminReload {
            if let Err(e) = self.durable(|| self.audit.record_durable(self.event(call, "STARTED", None))) {
                tracing::error!(error = %e, "administrative call refused: its audit record cannot be written");
                // (the STARTED record may reach the log later, when the
                // writer retries: it must not stay without an outcome)
                self.audit.record_anyway(self.event(
                    call,
                    "UNAVAILABLE",
                    Some("not performed: its audit record could not be written".into()),
                ));
                return Err(Status::unavailable(format!("{e}; the operation was not performed")));
            }
        }
        Ok(())
    }

    fn durable<T>(&self, f: impl FnOnce() -> T) -> T {
        // The handlers run on a multi-threaded runtime (or on a blocking
        // thread): block_in_place keeps the other tasks moving while the
        // audit record is fsynced.
        crate::audit::blocking_section(f)
    }

    fn second_factor(&self, call: &Call, otp: Option<&str>) -> Result<(), Status> {
        let id = call.peer.id();
        let Some(secret) = lock(&self.totp).get(id).cloned() else {
            let _ = self
                .audit
                .record(self.event(call, "UNAUTHENTICATED", Some("officer not enrolled".into())));
            return Err(Status::unauthenticated(format!(
                "{} needs a second factor, but officer {id} has no TOTP secret enrolled (kmsctl officer enroll)",
                call.op.as_str()
            )));
        };
        // The state is persisted (durably, sealed) before the answer, under
        // the verifier's lock so writes stay in order: a code used once
        // stays used, and a lock-out stays, across restarts. If an accepted
        // code cannot be recorded, the call fails closed.
        let (outcome, persisted) = {
            let mut v = lock(&self.verifier);
            let outcome = v.verify(id, &secret, otp, now());
            let persisted = match (outcome, v.state(id)) {
                (Outcome::Missing | Outcome::Replayed, _) | (_, None) => Ok(()),
                (_, Some(state)) => self.durable(|| self.persist_officer_state(id, state)),
            };
            (outcome, persisted)
        };
        if let Err(e) = &persisted {
            tracing::error!(identity = id, error = %e, "officer one-time code state could not be stored");
        }
        let (msg, detail) = match outcome {
            Outcome::Ok if persisted.is_ok() => return Ok(()),
            Outcome::Ok => {
                let _ = self.audit.record(self.event(
                    call,
                    "UNAVAILABLE",
                    Some("one-time code could not be recorded".into()),
                ));
                return Err(Status::unavailable(
                    "the one-time code could not be recorded as used; the operation was not performed",
                ));
            }
            Outcome::Missing => (
                format!(
                    "{} needs a second factor: send a fresh TOTP code in the {OTP_HEADER} metadata (kmsctl --otp)",
                    call.op.as_str()
                ),
                "second factor missing",
            ),
            Outcome::Invalid => ("invalid one-time code".to_owned(), "invalid one-time code"),
            Outcome::Replayed => (
                "one-time code already used; wait for the next one".to_owned(),
                "replayed one-time code",
            ),
            Outcome::LockedOut { until } => {
                tracing::warn!(
                    identity = id,
                    until,
                    "officer locked out after repeated bad one-time codes"
                );
                (
                    format!("too many bad one-time codes: officer locked out until {until} (Unix time)"),
                    "officer locked out",
                )
            }
        };
        let _ = self
            .audit
            .record(self.event(call, "UNAUTHENTICATED", Some(detail.into())));
        let mut status = Status::unauthenticated(msg);
        if outcome == Outcome::Missing {
            // a client asks its officer for a code on this mark, not on the message text
            status.metadata_mut().insert(
                crate::client::metadata::SECOND_FACTOR,
                tonic::metadata::MetadataValue::from_static("required"),
            );
        }
        Err(status)
    }

    /// Seals an officer's replay and lock-out memory into the store.
    fn persist_officer_state(&self, identity: &str, state: &OfficerState) -> Result<(), Error> {
        let name = format!("{TOTP_STATE_PREFIX}{identity}");
        let sealed = self
            .keys
            .ring_store()
            .sealer()
            .seal(RecordKind::Secret, &name, &state.encode())?;
        let expected = self.store.get(RecordKind::Secret, &name)?.map(|e| e.revision);
        self.store.put(RecordKind::Secret, &name, expected, &sealed)?;
        Ok(())
    }

    /// Ends a call: the outcome record (durable for administrative
    /// calls), after one record per key, version and result of a batch's
    /// items. An error means the record could not be written (with
    /// `on_failure = "fail"`): the caller must not be given the result.
    pub fn record_outcome(&self, call: &Call, code: Code) -> Result<(), crate::audit::AuditError> {
        drop(lock(&call.owed).take());
        let parts = std::mem::take(&mut *lock(&call.batch));
        for p in parts {
            let mut detail = format!("batch part items={}", p.items);
            if let Some(v) = p.from_version {
                detail.push_str(&format!(" from_version={v}"));
            }
            let ev = Event {
                key: Some(p.key),
                key_version: p.version,
                ..self.event(call, code_name(p.code), Some(detail))
            };
            if let Err(e) = self.audit.record(ev) {
                return Err(self.refused(call, e));
            }
        }
        let detail = lock(&call.detail).clone();
        let ev = self.event(call, code_name(code), detail);
        if call.op.is_admin() {
            let r = self.durable(|| self.audit.record_durable(ev));
            if self.audit.on_failure() == crate::audit::OnFailure::LogAndContinue {
                if let Err(e) = r {
                    tracing::error!(error = %e, "the outcome of an administrative call could not be audited");
                }
                return Ok(());
            }
            r.map_err(|e| {
                tracing::error!(error = %e, "the outcome of an administrative call could not be audited");
                crate::audit::AuditError(format!(
                    "{}: the operation was performed, but its outcome could not be written to the audit log",
                    e.0
                ))
            })
        } else {
            self.audit.record(ev).map_err(|e| self.refused(call, e))
        }
    }

    /// A call refused because its record could not be queued: say so in
    /// the log, and queue what can be (its own outcome, UNAVAILABLE).
    fn refused(&self, call: &Call, e: crate::audit::AuditError) -> crate::audit::AuditError {
        tracing::warn!(error = %e, op = call.op.as_str(), "call refused: its audit record could not be written");
        self.audit.record_anyway(self.event(
            call,
            "UNAVAILABLE",
            Some("refused: its audit record could not be written".into()),
        ));
        e
    }

    /// The outcome of a call dropped before it finished (client
    /// cancelled, stream error, early return): CANCELLED.
    fn record_abandoned(&self, call: &Call) {
        let detail = Some("the call ended before its outcome (cancelled by the client, or its stream failed)".into());
        self.audit
            .record_anyway(self.event(call, code_name(Code::Cancelled), detail));
    }

    /// Whether `call` must go through a second officer: always, except
    /// for DEV ONLY roles. A non-officer cannot start one.
    pub fn dual_control(&self, call: &Call, op: PendingOp) -> Result<(), Status> {
        let policy = self.policy.load();
        let id = call.peer.id();
        if policy.dev_bypass(id) {
            return Ok(());
        }
        if !policy.is_officer(id) {
            return Err(Status::permission_denied(format!(
                "{} needs dual control: it must be requested by an officer and approved by another",
                call.op.as_str()
            )));
        }
        let mut raw = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let p = Pending {
            id: hex::encode(raw),
            requester: id.to_owned(),
            expires_at: now() + policy.settings.approval_ttl.as_secs() as i64,
            created_at: now(),
            op,
        };
        let msg = format!(
            "dual control: request {} created; a second officer must approve it before it runs \
             (kmsctl approvals approve {}); expires at {} (Unix time): {}",
            p.id,
            p.id,
            p.expires_at,
            p.op.describe()
        );
        let limits = *lock(&self.pending_limits);
        {
            let mut m = lock(&self.pending);
            let t = now();
            m.retain(|_, p| p.expires_at > t);
            if m.len() >= limits.count {
                return Err(Status::resource_exhausted(format!(
                    "dual control: {} requests are already pending, the most allowed (limits.max_pending_approvals); \
                     approve, reject or let some expire first",
                    m.len()
                )));
            }
            let held: usize = m.values().map(|p| p.op.held_bytes()).sum();
            if held.saturating_add(p.op.held_bytes()) > limits.bytes {
                return Err(Status::resource_exhausted(format!(
                    "dual control: this request would hold {} bytes in memory while pending, and pending requests \
                     already hold {held}; the most allowed is {} (limits.max_pending_bytes)",
                    p.op.held_bytes(),
                    limits.bytes
                )));
            }
            *lock(&call.detail) = Some(format!("approval request {} created", p.id));
            m.insert(p.id.clone(), p.clone());
        }
        let mut status = Status::failed_precondition(msg);
        if let Ok(v) = p.id.parse() {
            status.metadata_mut().insert(APPROVAL_HEADER, v);
        }
        Err(status)
    }

    /// Pending requests (expired ones are dropped).
    pub fn pending(&self) -> Vec<Pending> {
        let mut m = lock(&self.pending);
        let t = now();
        m.retain(|_, p| p.expires_at > t);
        let mut v: Vec<Pending> = m.values().cloned().collect();
        v.sort_by_key(|p| p.created_at);
        v
    }

    /// Takes a pending request for approval by `approver`, who must be an
    /// officer other than the requester.
    pub fn take_for_approval(&self, id: &str, approver: &str) -> Result<Pending, Status> {
        let mut m = lock(&self.pending);
        let t = now();
        m.retain(|_, p| p.expires_at > t);
        let Some(p) = m.get(id) else {
            return Err(Status::not_found(format!(
                "no pending approval request {id} (unknown or expired)"
            )));
        };
        if p.requester == approver {
            return Err(Status::permission_denied(
                "dual control: the requester cannot approve their own request",
            ));
        }
        let policy = self.policy.load();
        if !policy.is_officer(approver) {
            return Err(Status::permission_denied("dual control: only an officer can approve"));
        }
        Self::may_decide(&policy, p, approver)?;
        m.remove(id).ok_or_else(|| Status::not_found("request vanished"))
    }

    /// The second officer must hold, in their own right, the operation they
    /// approve or reject on its key: the `approval` right alone lets an
    /// officer decide only within their own remit.
    fn may_decide(policy: &Policy, p: &Pending, officer: &str) -> Result<(), Status> {
        policy.check(officer, p.op.op(), p.op.key()).map_err(|d| {
            Status::permission_denied(format!(
                "dual control: approving or rejecting needs the right it decides on: {d}"
            ))
        })
    }

    /// Rejects (drops) a pending request; `officer` needs the request's
    /// own right, as an approver does.
    pub fn reject(&self, id: &str, officer: &str) -> Result<Pending, Status> {
        let mut m = lock(&self.pending);
        let Some(p) = m.get(id) else {
            return Err(Status::not_found(format!("no pending approval request {id}")));
        };
        Self::may_decide(&self.policy.load(), p, officer)?;
        m.remove(id).ok_or_else(|| Status::not_found("request vanished"))
    }
}

/// The canonical name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A request id: the caller's `x-request-id` if it is short and plain,
/// else a random one.
pub fn request_id<T>(req: &Request<T>) -> String {
    static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    if let Some(v) = req.metadata().as_ref().get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
        if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
            return v.to_owned();
        }
    }
    // A per-process random prefix and a counter: unique, and no system
    // call on the data path.
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| rand::rngs::OsRng.next_u32());
    format!(
        "{prefix:08x}-{:x}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Executes an approved dual-control operation.
pub fn execute(keys: &Keys, op: &PendingOp) -> Result<String, Error> {
    match op {
        PendingOp::DestroyVersion { name, version, wait } => {
            let at = keys.destruction_time(*wait)?;
            let v = *version;
            keys.modify(name, |r| r.schedule_destruction(v, at))?;
            Ok(format!("version {v} of key {name:?} will be destroyed at {at}"))
        }
        PendingOp::DeleteKey { name, wait } => {
            let at = keys.destruction_time(*wait)?;
            keys.modify(name, |r| r.schedule_deletion(at))?;
            Ok(format!("key {name:?} will be deleted at {at}"))
        }
        PendingOp::Restore { bytes } => {
            let (records, rings) = keys.restore(bytes)?;
            Ok(format!("restored {records} records ({rings} keys)"))
        }
        PendingOp::ReplaceOfficer { identity, claim_ttl } => {
            let rings = keys.ring_store();
            let claim_by = now().saturating_add(*claim_ttl);
            offer_enrolment(rings.raw().as_ref(), rings.sealer(), identity, true, claim_by)?;
            Ok(format!(
                "a new second factor waits for officer {identity:?} to claim it (kmsctl officer claim, with its own \
                 certificate) until {claim_by} (Unix time)"
            ))
        }
        PendingOp::SetPolicy { name, update } => {
            let ring = keys.update_policy(name, |p| crate::service::merge_policy(p, Some(update)))?;
            Ok(format!(
                "policy of key {name:?} updated: {} (min_decryption_version now {})",
                describe_update(update),
                ring.policy.min_decryption_version
            ))
        }
    }
}
