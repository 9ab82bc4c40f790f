//! Access control for every call: who is calling (from the verified
//! certificate), whether the policy allows it, the officer's second
//! factor, and one audit record per request. Dual control is in
//! [`super::dual`], enrolment records in [`super::officer`].
//!
//! Order of checks, and why: the policy decides first (PERMISSION_DENIED,
//! before any key lookup, so a caller without rights learns nothing about
//! which keys exist); then an officer's TOTP code (UNAUTHENTICATED); then,
//! for administrative calls, a durable audit record of the intent — if it
//! cannot be written the call fails closed (UNAVAILABLE) and nothing is
//! done. Every call then ends with one audit record of its outcome
//! (administrative: durable before the answer; data path: group-committed).
use super::dual::PendingLimits;
use super::officer::{claim_enrolment, totp_record, TOTP_STATE_PREFIX};
use super::otp::{OfficerState, Outcome, TotpSecret, Verifier};
use super::policy::{Op, Policy, PolicyError};
use crate::audit::{AuditHandle, AuditKey, Event};
use crate::error::{code_name, Error};
use crate::rings::Rings;
use crate::tls::PeerIdentity;
use arc_swap::ArcSwap;
use kmsd_keystore::{KeyStore, MacKey, RecordKind, Sealer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tonic::Code;

/// Request metadata carrying an officer's one-time code.
pub const OTP_HEADER: &str = "x-kmsd-otp";

/// Why an officer's second factor was not accepted (UNAUTHENTICATED).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SecondFactorError {
    /// The officer has no TOTP secret enrolled.
    #[error("{op} needs a second factor, but officer {identity} has no TOTP secret enrolled (kmsctl officer enroll)")]
    NotEnrolled {
        /// The operation that needs it.
        op: &'static str,
        /// The officer.
        identity: String,
    },
    /// No code was sent.
    #[error("{op} needs a second factor: send a fresh TOTP code in the {header} metadata (kmsctl --otp)", header = OTP_HEADER)]
    Missing {
        /// The operation that needs it.
        op: &'static str,
    },
    /// The code is wrong (or outside the accepted window).
    #[error("invalid one-time code")]
    Invalid,
    /// The code was used already.
    #[error("one-time code already used; wait for the next one")]
    Replayed,
    /// Too many bad codes: the officer is locked out for a while.
    #[error("too many bad one-time codes: officer locked out until {until} (Unix time)")]
    LockedOut {
        /// Unix time the lock-out ends.
        until: i64,
    },
}

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

/// Access state shared by every service.
pub struct Access {
    pub(super) policy: ArcSwap<Policy>,
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
    /// Bounds of the pending dual-control requests (count, bytes held):
    /// they live in the store until approved, rejected or expired, a
    /// restore's whole snapshot included, so without a bound officers'
    /// requests could fill it. (Each node checks its own configured bounds
    /// against the requests of the whole cluster.)
    pub(super) pending_limits: Mutex<PendingLimits>,
    store: Arc<dyn KeyStore>,
    /// The key rings' store and sealer: officers' replay and lock-out
    /// memory is sealed into it like every other record.
    rings: Arc<Rings>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Access")
    }
}

/// Attempts at the compare-and-swap of an officer's replay and lock-out
/// memory while other nodes keep changing it, before failing closed.
const STATE_CAS_ATTEMPTS: usize = 16;

/// Verifies `otp` against the officer's replay and lock-out memory as
/// stored, and stores the new memory by compare-and-swap on the
/// record's revision; when another node changed it in between, verifies
/// again against its state (so a code accepted there is a replay
/// here). `Err`: the state could not be read; the inner `Err`: the new
/// state could not be stored.
pub(super) fn verify_shared(
    store: &dyn KeyStore,
    sealer: &Sealer,
    v: &mut Verifier,
    identity: &str,
    secret: &TotpSecret,
    otp: Option<&str>,
    at: i64,
) -> Result<(Outcome, Result<(), Error>), Error> {
    let name = format!("{TOTP_STATE_PREFIX}{identity}");
    let mut outcome = Outcome::Missing;
    for _ in 0..STATE_CAS_ATTEMPTS {
        let entry = store.get(RecordKind::Secret, &name)?;
        let before = match &entry {
            Some(e) => OfficerState::decode(&sealer.open(RecordKind::Secret, &name, &e.value)?)
                .ok_or_else(|| Error::Corrupt(name.clone()))?,
            None => OfficerState::default(),
        };
        v.restore(identity, before.clone());
        outcome = v.verify(identity, secret, otp, at);
        let after = v.state(identity).cloned().unwrap_or_default();
        if after == before {
            return Ok((outcome, Ok(())));
        }
        let sealed = match sealer.seal(RecordKind::Secret, &name, &after.encode()) {
            Ok(s) => s,
            Err(e) => return Ok((outcome, Err(e.into()))),
        };
        match store.put(RecordKind::Secret, &name, entry.map(|e| e.revision), &sealed) {
            Ok(_) => return Ok((outcome, Ok(()))),
            Err(kmsd_keystore::Error::Conflict { .. } | kmsd_keystore::Error::NotFound { .. }) => {
                tracing::debug!(identity, "officer state changed by another node; verifying again");
            }
            Err(e) => return Ok((outcome, Err(e.into()))),
        }
    }
    Ok((outcome, Err(Error::CodeNotRecorded)))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn now() -> i64 {
    kmsd_keystore::Clock::now(&kmsd_keystore::SystemClock)
}

/// The audit key, created (and sealed into the store) on first use.
pub fn audit_key(store: &dyn KeyStore, sealer: &Sealer) -> Result<AuditKey, Error> {
    for _ in 0..2 {
        if let Some(e) = store.get(RecordKind::Secret, "audit-key")? {
            let key = MacKey::open_sealed(sealer, RecordKind::Secret, "audit-key", &e.value)?
                .ok_or_else(|| Error::Corrupt("audit-key".into()))?;
            return Ok(AuditKey::new(key));
        }
        let fresh = MacKey::generate();
        match store.put(
            RecordKind::Secret,
            "audit-key",
            None,
            &fresh.seal_with(sealer, RecordKind::Secret, "audit-key")?,
        ) {
            Ok(_) | Err(kmsd_keystore::Error::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::StoreUnavailable)
}

/// Why access control could not be set up at start (the daemon does not
/// start; `server` reports it as "access control: …").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The policy file does not load or parse.
    #[error("{0}")]
    Policy(#[source] PolicyError),
    /// The policy is not allowed in this mode (DEV ONLY roles outside dev
    /// mode).
    #[error("{}: {source}", path.display())]
    PolicyMode {
        /// The policy file.
        path: PathBuf,
        /// What the mode refuses.
        source: PolicyError,
    },
    /// The audit key could not be read or created.
    #[error("audit key: {0}")]
    AuditKey(#[source] Error),
    /// The audit log could not be opened or recovered.
    #[error("{0}")]
    AuditLog(#[source] crate::audit::AuditError),
    /// Officers' sealed secrets or states could not be read.
    #[error("officer secrets: {0}")]
    OfficerSecrets(#[source] kmsd_keystore::Error),
}

impl Access {
    /// Sets up access control: loads the policy, the audit key and every
    /// officer's TOTP secret, and starts the audit writer.
    pub fn new(
        policy_path: PathBuf,
        audit_path: PathBuf,
        audit_options: crate::audit::Options,
        rings: &Arc<Rings>,
        metrics: Arc<crate::ops::metrics::Metrics>,
    ) -> Result<Self, AccessError> {
        let policy = Policy::load(&policy_path).map_err(AccessError::Policy)?;
        let dev_mode = rings.dev_mode();
        policy.check_mode(dev_mode).map_err(|source| AccessError::PolicyMode {
            path: policy_path.clone(),
            source,
        })?;
        if policy.has_dev_roles() {
            tracing::warn!(policy = %policy_path.display(), "the policy has DEV ONLY roles (dev_no_second_factor): never in production");
        }
        let ring_store = rings.ring_store();
        let store = ring_store.raw().clone();
        let key = audit_key(store.as_ref(), ring_store.sealer()).map_err(AccessError::AuditKey)?;
        let key_copy = audit_key(store.as_ref(), ring_store.sealer()).map_err(AccessError::AuditKey)?;
        let audit =
            crate::audit::spawn(&audit_path, key_copy, audit_options, metrics).map_err(AccessError::AuditLog)?;
        let mut totp = HashMap::new();
        let mut states = Vec::new();
        store
            .for_each(RecordKind::Secret, &mut |name, entry| {
                if let Some(id) = name.strip_prefix("totp:") {
                    let opened =
                        TotpSecret::open_sealed(ring_store.sealer(), RecordKind::Secret, name, &entry.value, 0)?;
                    if let Some((_, s)) = opened {
                        totp.insert(id.to_owned(), Arc::new(s));
                    }
                } else if let Some(id) = name.strip_prefix(TOTP_STATE_PREFIX) {
                    let plain = ring_store.sealer().open(RecordKind::Secret, name, &entry.value)?;
                    let state = OfficerState::decode(&plain).ok_or_else(|| kmsd_keystore::Error::Corrupt {
                        kind: RecordKind::Secret,
                        name: name.to_owned(),
                        reason: "not an officer state (version 1)",
                    })?;
                    states.push((id.to_owned(), state));
                }
                Ok(())
            })
            .map_err(AccessError::OfficerSecrets)?;
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
            pending_limits: Mutex::new(PendingLimits::default()),
            store,
            rings: rings.clone(),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Re-reads the policy file; a bad file is refused and the old policy
    /// stays in force.
    pub fn reload_policy(&self) -> Result<(), PolicyError> {
        let p = Policy::load(&self.policy_path)?;
        p.check_mode(self.dev_mode)
            .map_err(|e| PolicyError(format!("{}: {e}", self.policy_path.display())))?;
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
    /// [`super::officer::offer_enrolment`]); from then on it is the caller's second factor.
    pub fn claim(&self, identity: &str) -> Result<TotpSecret, Error> {
        let ring_store = self.rings.ring_store();
        let secret = claim_enrolment(self.store.as_ref(), ring_store.sealer(), identity, now())?;
        self.remember_officer(identity, secret.clone());
        Ok(secret)
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

    /// The sealer of the store's records (pending requests).
    pub(super) fn sealer(&self) -> &Sealer {
        self.rings.ring_store().sealer()
    }

    pub(super) fn event(&self, call: &Call, result: &'static str, detail: Option<String>) -> Event {
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
    pub fn authorize(&self, call: &Call, otp: Option<&str>) -> Result<(), Error> {
        // (`on_failure = "fail"` and the log cannot be written: no call
        // runs, since none could be audited)
        if let Some(source) = self.audit.unavailable() {
            return Err(Error::AuditRefused { source, what: "call" });
        }
        let policy = self.policy.load();
        let id = call.peer.id();
        if let Err(denied) = policy.check(id, call.op, call.key.as_deref()) {
            let _ = self
                .audit
                .record(self.event(call, code_name(Code::PermissionDenied), None));
            return Err(denied.into());
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
                    code_name(Code::Unavailable),
                    Some("not performed: its audit record could not be written".into()),
                ));
                return Err(Error::AuditRefused {
                    source: e,
                    what: "operation",
                });
            }
        }
        Ok(())
    }

    pub(super) fn durable<T>(&self, f: impl FnOnce() -> T) -> T {
        // The handlers run on a multi-threaded runtime (or on a blocking
        // thread): block_in_place keeps the other tasks moving while the
        // audit record is fsynced.
        crate::audit::blocking_section(f)
    }

    fn second_factor(&self, call: &Call, otp: Option<&str>) -> Result<(), Error> {
        let id = call.peer.id();
        // The store is the authority on an officer's secret and replay and
        // lock-out memory (several nodes may share it): both are read from
        // it at each verification, and the state is updated by
        // compare-and-swap, durably and sealed, before the answer, under
        // the verifier's lock so this node's writes stay in order. A code
        // used once stays used, and a lock-out stays, across restarts and
        // across the nodes of a cluster. If the state cannot be read, or an
        // accepted code cannot be recorded, the call fails closed.
        let secret = match self.durable(|| self.officer_secret(id)) {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                let _ = self.audit.record(self.event(
                    call,
                    code_name(Code::Unauthenticated),
                    Some("officer not enrolled".into()),
                ));
                return Err(SecondFactorError::NotEnrolled {
                    op: call.op.as_str(),
                    identity: id.to_owned(),
                }
                .into());
            }
            Err(e) => {
                tracing::error!(identity = id, error = %e, "officer one-time code secret could not be read");
                let _ = self.audit.record(self.event(
                    call,
                    code_name(Code::Unavailable),
                    Some("officer secret could not be read".into()),
                ));
                return Err(Error::CodeNotRecorded);
            }
        };
        let (outcome, persisted) = {
            let mut v = lock(&self.verifier);
            let sealer = self.rings.ring_store().sealer();
            match self.durable(|| verify_shared(self.store.as_ref(), sealer, &mut v, id, &secret, otp, now())) {
                Ok(r) => r,
                Err(e) => (Outcome::Ok, Err(e)),
            }
        };
        if let Err(e) = &persisted {
            tracing::error!(identity = id, error = %e, "officer one-time code state could not be stored");
        }
        let (refusal, detail) = match outcome {
            Outcome::Ok if persisted.is_ok() => return Ok(()),
            Outcome::Ok => {
                let _ = self.audit.record(self.event(
                    call,
                    code_name(Code::Unavailable),
                    Some("one-time code could not be recorded".into()),
                ));
                return Err(Error::CodeNotRecorded);
            }
            Outcome::Missing => (
                SecondFactorError::Missing { op: call.op.as_str() },
                "second factor missing",
            ),
            Outcome::Invalid => (SecondFactorError::Invalid, "invalid one-time code"),
            Outcome::Replayed => (SecondFactorError::Replayed, "replayed one-time code"),
            Outcome::LockedOut { until } => {
                tracing::warn!(
                    identity = id,
                    until,
                    "officer locked out after repeated bad one-time codes"
                );
                (SecondFactorError::LockedOut { until }, "officer locked out")
            }
        };
        let _ = self
            .audit
            .record(self.event(call, code_name(Code::Unauthenticated), Some(detail.into())));
        Err(refusal.into())
    }

    /// The officer's TOTP secret, read from the store (an officer enrolled
    /// or re-enrolled through another node is followed); `None` if not
    /// enrolled.
    fn officer_secret(&self, identity: &str) -> Result<Option<Arc<TotpSecret>>, Error> {
        let name = totp_record(identity);
        let Some(entry) = self.store.get(RecordKind::Secret, &name)? else {
            return Ok(None);
        };
        let sealer = self.rings.ring_store().sealer();
        let (_, secret) = TotpSecret::open_sealed(sealer, RecordKind::Secret, &name, &entry.value, 0)?
            .ok_or_else(|| Error::Corrupt(name.clone()))?;
        let secret = Arc::new(secret);
        lock(&self.totp).insert(identity.to_owned(), secret.clone());
        Ok(Some(secret))
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
            code_name(Code::Unavailable),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::otp::{step_counter, STEP};
    use kmsd_keystore::{MasterKey, MemoryStore};

    /// Two nodes: each its own verifier (its memory), one shared store.
    fn nodes() -> (Arc<dyn KeyStore>, Arc<Sealer>, TotpSecret) {
        let store: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
        let sealer = Arc::new(Sealer::new(MasterKey::from_bytes(&[3; 32])));
        (store, sealer, TotpSecret::from_slice(&[5; 20]).unwrap())
    }

    fn code(s: &TotpSecret, t: i64) -> String {
        format!("{:06}", s.hotp(step_counter(t.div_euclid(STEP)), 6))
    }

    #[test]
    fn a_code_used_on_one_node_is_a_replay_on_another_and_a_lock_out_holds_on_both() {
        let (store, _, _) = nodes();
        replay_and_lock_out_shared([store.clone(), store]);
    }

    /// The same on a real etcd, each node with its own connection.
    #[test]
    fn on_etcd_a_code_used_on_one_node_is_a_replay_on_another_and_a_lock_out_holds_on_both() {
        let cluster = kmsd_etcd::testing::Cluster::start(1).unwrap();
        let open = || -> Arc<dyn KeyStore> {
            Arc::new(kmsd_etcd::EtcdStore::open(&cluster.settings(), "/kmsd/officers/").unwrap())
        };
        replay_and_lock_out_shared([open(), open()]);
    }

    fn replay_and_lock_out_shared([store_a, store_b]: [Arc<dyn KeyStore>; 2]) {
        let (_, sealer, s) = nodes();
        let (mut a, mut b) = (Verifier::new(2, 300, 1000), Verifier::new(2, 300, 1000));
        let t = 1_800_000_000;
        let verify = |v: &mut Verifier, on: &Arc<dyn KeyStore>, otp: &str, at: i64| {
            let (outcome, stored) = verify_shared(on.as_ref(), &sealer, v, "o", &s, Some(otp), at).unwrap();
            stored.unwrap();
            outcome
        };
        assert_eq!(verify(&mut a, &store_a, &code(&s, t), t), Outcome::Ok);
        assert_eq!(
            verify(&mut b, &store_b, &code(&s, t), t + 1),
            Outcome::Replayed,
            "used on A"
        );
        assert_eq!(verify(&mut b, &store_b, &code(&s, t + STEP), t + STEP), Outcome::Ok);
        assert_eq!(
            verify(&mut a, &store_a, &code(&s, t + STEP), t + STEP),
            Outcome::Replayed,
            "used on B"
        );
        // two bad codes, one on each node, lock the officer out on both
        let bad = |t: i64| format!("{:06}", (s.hotp(step_counter(t.div_euclid(STEP)), 6) + 1) % 1_000_000);
        let t2 = t + 4 * STEP;
        assert_eq!(verify(&mut a, &store_a, &bad(t2), t2), Outcome::Invalid);
        assert!(
            matches!(verify(&mut b, &store_b, &bad(t2), t2), Outcome::LockedOut { .. }),
            "failures add up across nodes"
        );
        assert!(
            matches!(
                verify(&mut a, &store_a, &code(&s, t2), t2 + 1),
                Outcome::LockedOut { .. }
            ),
            "locked out on A"
        );
        assert!(
            matches!(
                verify(&mut b, &store_b, &code(&s, t2), t2 + 1),
                Outcome::LockedOut { .. }
            ),
            "and on B"
        );
        // and the stored state is what a restarted node loads
        let name = format!("{TOTP_STATE_PREFIX}o");
        let e = store_a.get(RecordKind::Secret, &name).unwrap().unwrap();
        let st = OfficerState::decode(&sealer.open(RecordKind::Secret, &name, &e.value).unwrap()).unwrap();
        assert!(st.locked_until > t2 && st.lockouts == 1);
    }

    #[test]
    fn a_code_presented_on_two_nodes_at_once_is_accepted_once() {
        let (store, sealer, s) = nodes();
        let t0 = 1_800_000_000;
        let rounds = 50;
        let barrier = std::sync::Barrier::new(2);
        let accepted: Vec<usize> = std::thread::scope(|scope| {
            let node = || {
                scope.spawn(|| {
                    let mut v = Verifier::new(1000, 300, 1000);
                    let mut ok = 0;
                    for r in 0..rounds {
                        let at = t0 + r * STEP;
                        barrier.wait();
                        let (outcome, stored) =
                            verify_shared(store.as_ref(), &sealer, &mut v, "o", &s, Some(&code(&s, at)), at).unwrap();
                        stored.unwrap();
                        match outcome {
                            Outcome::Ok => ok += 1,
                            other => assert_eq!(other, Outcome::Replayed),
                        }
                    }
                    ok
                })
            };
            let (a, b) = (node(), node());
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert_eq!(accepted.iter().sum::<usize>(), rounds as usize, "{accepted:?}");
    }
}
