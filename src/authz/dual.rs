//! Dual control: destructive or far-reaching operations (destroying a
//! version, deleting a key, restoring a snapshot, replacing another
//! officer's second factor, moving `min_decryption_version` across live
//! versions, exporting key material) wait, sealed in the key store and bounded
//! ([`super::pending`]), for a second officer who holds the same right;
//! then [`execute`] runs them. On a cluster the store is shared: a request
//! made on one node is listed, approved or rejected on any, and taken
//! exactly once.
use super::access::{lock, now, Access, Call};
use super::officer::offer_enrolment;
use super::pending::{Requests, Taken};
use super::policy::{Op, Policy};
use crate::error::{Error, Forbidden, Missing};
use crate::rings::{PolicyUpdate, Rings};
use rand::RngCore;
use std::sync::Arc;

/// Response metadata naming a dual-control request.
pub const APPROVAL_HEADER: &str = "x-kmsd-approval-id";

/// An operation waiting for a second officer (stored, sealed, as JSON in
/// the pending requests' record: renaming a variant or field changes the
/// stored format).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
        /// The snapshot's length in bytes.
        len: usize,
        /// The snapshot: stored apart from the list (sealed chunks), so
        /// empty in a listing and read back when the request is approved.
        #[serde(skip)]
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
        update: PolicyUpdate,
    },
    /// Export a version's material wrapped for another kmsd's import job
    /// (the wrapped key goes back in the approver's `ApproveResponse`).
    Export {
        /// Key.
        name: String,
        /// Version (resolved when requested: never 0).
        version: u32,
        /// The destination job's public wrapping key (SPKI PEM; public).
        wrapping_public_key_pem: String,
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
            PendingOp::Export { .. } => Op::Export,
        }
    }

    /// Bytes the pending request holds in the store (a restore's snapshot).
    pub fn held_bytes(&self) -> usize {
        match self {
            PendingOp::Restore { len, .. } => *len,
            _ => 0,
        }
    }

    /// The key concerned.
    pub fn key(&self) -> Option<&str> {
        match self {
            PendingOp::DestroyVersion { name, .. }
            | PendingOp::DeleteKey { name, .. }
            | PendingOp::SetPolicy { name, .. }
            | PendingOp::Export { name, .. } => Some(name),
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
            PendingOp::Restore { len, .. } => {
                format!("restore a {len}-byte backup snapshot into the (empty) key store")
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
            PendingOp::Export {
                name,
                version,
                wrapping_public_key_pem,
            } => format!(
                "export version {version} of key {name:?}: its material, wrapped for the import job whose public key \
                 has SHA-256 fingerprint {}, is handed to the approving officer",
                fingerprint(wrapping_public_key_pem)
            ),
        }
    }
}

/// A short fingerprint of a PEM text, for people comparing the request
/// with the destination job they expect (hex SHA-256 of the text, 16 digits).
fn fingerprint(pem: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(pem.trim().as_bytes());
    hex::encode(digest.get(..8).unwrap_or_default())
}

/// The fields a policy update sets, in words (`0` disables a limit).
fn describe_update(u: &PolicyUpdate) -> String {
    let mut parts = Vec::new();
    let mut add = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    add("rotation_period_seconds", u.rotation_period_secs.map(|v| v.to_string()));
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

impl Access {
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

    /// Whether `call` must go through a second officer: always, except
    /// for DEV ONLY roles. A non-officer cannot start one.
    pub fn dual_control(&self, call: &Call, op: PendingOp) -> Result<(), Error> {
        let policy = self.policy.load();
        let id = call.peer.id();
        if policy.dev_bypass(id) {
            return Ok(());
        }
        if !policy.is_officer(id) {
            return Err(Error::PermissionDenied(Forbidden::DualControlRequester {
                op: call.op.as_str(),
            }));
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
        let limits = *lock(&self.pending_limits);
        self.durable(|| self.requests().create(&p, limits, now()))?;
        *lock(&call.detail) = Some(format!("approval request {} created", p.id));
        Err(Error::ApprovalPending {
            description: p.op.describe(),
            id: p.id,
            expires_at: p.expires_at,
        })
    }

    /// The pending requests in the store, not yet expired, oldest first
    /// (a restore's snapshot is not read: `bytes` is empty).
    pub fn pending(&self) -> Result<Vec<Pending>, Error> {
        self.durable(|| self.requests().live(now()))
    }

    /// Takes a pending request for approval by `approver`, who must be an
    /// officer other than the requester: removed from the store by
    /// compare-and-swap, so on a cluster one approval alone takes it.
    pub fn take_for_approval(&self, id: &str, approver: &str) -> Result<Pending, Error> {
        let policy = self.policy.load();
        let taken = self.durable(|| {
            self.requests().take(id, now(), true, |p| {
                if p.requester == approver {
                    return Err(Error::PermissionDenied(Forbidden::OwnRequest));
                }
                if !policy.is_officer(approver) {
                    return Err(Error::PermissionDenied(Forbidden::NotAnOfficer));
                }
                Self::may_decide(&policy, p, approver)
            })
        })?;
        match taken {
            Taken::Done(p) => Ok(p),
            Taken::Missing => Err(Error::NotFound(Missing::Approval { id: id.to_owned() })),
        }
    }

    /// The second officer must hold, in their own right, the operation they
    /// approve or reject on its key: the `approval` right alone lets an
    /// officer decide only within their own remit.
    fn may_decide(policy: &Policy, p: &Pending, officer: &str) -> Result<(), Error> {
        policy
            .check(officer, p.op.op(), p.op.key())
            .map_err(|d| Error::PermissionDenied(Forbidden::DecisionOutsideRights(d)))
    }

    /// Rejects (drops) a pending request; `officer` needs the request's
    /// own right, as an approver does.
    pub fn reject(&self, id: &str, officer: &str) -> Result<Pending, Error> {
        let policy = self.policy.load();
        let taken = self.durable(|| {
            self.requests()
                .take(id, now(), false, |p| Self::may_decide(&policy, p, officer))
        })?;
        match taken {
            Taken::Done(p) => Ok(p),
            Taken::Missing => Err(Error::NotFound(Missing::Rejection { id: id.to_owned() })),
        }
    }

    /// The pending requests of this node's store.
    fn requests(&self) -> Requests<'_> {
        Requests {
            store: self.store().as_ref(),
            sealer: self.sealer(),
        }
    }
}

/// What an approved operation did: in words, and what it hands back
/// (`ApproveResponse.payload`: an export's `ExportKeyVersionResponse`,
/// encoded; empty for the others).
#[derive(Default)]
pub struct Executed {
    /// In words.
    pub result: String,
    /// Handed back to the approver.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Executed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executed")
            .field("result", &self.result)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Executes an approved dual-control operation.
pub fn execute(rings: &Rings, op: &PendingOp) -> Result<Executed, Error> {
    if let PendingOp::Export {
        name,
        version,
        wrapping_public_key_pem,
    } = op
    {
        use prost::Message as _;
        let wrapping = kmsd_keystore::wrap::WrappingPublicKey::from_pem(wrapping_public_key_pem)
            .map_err(|e| Error::Transfer(crate::error::Transfer::Wrap(e)))?;
        let (wrapped_key, algorithm, version) = rings.export(name, *version, &wrapping)?;
        let response = crate::proto::ExportKeyVersionResponse {
            wrapped_key,
            algorithm: crate::api::convert::algorithm_to_proto(algorithm) as i32,
            version,
        };
        return Ok(Executed {
            result: format!(
                "version {version} of key {name:?} exported (wrapped for the destination's import job; in this \
                 response's payload)"
            ),
            payload: response.encode_to_vec(),
        });
    }
    execute_change(rings, op).map(|result| Executed {
        result,
        payload: Vec::new(),
    })
}

/// Executes an approved operation that changes the store.
fn execute_change(rings: &Rings, op: &PendingOp) -> Result<String, Error> {
    match op {
        PendingOp::Export { .. } => Err(Error::Internal("an export changes nothing")),
        PendingOp::DestroyVersion { name, version, wait } => {
            let at = rings.destruction_time(*wait)?;
            let v = *version;
            rings.modify(name, |r| r.schedule_destruction(v, at))?;
            Ok(format!("version {v} of key {name:?} will be destroyed at {at}"))
        }
        PendingOp::DeleteKey { name, wait } => {
            let at = rings.destruction_time(*wait)?;
            rings.modify(name, |r| r.schedule_deletion(at))?;
            Ok(format!("key {name:?} will be deleted at {at}"))
        }
        PendingOp::Restore { bytes, .. } => {
            let (records, restored) = rings.restore(bytes)?;
            Ok(format!("restored {records} records ({restored} keys)"))
        }
        PendingOp::ReplaceOfficer { identity, claim_ttl } => {
            let ring_store = rings.ring_store();
            let claim_by = now().saturating_add(*claim_ttl);
            offer_enrolment(ring_store.raw().as_ref(), ring_store.sealer(), identity, true, claim_by)?;
            Ok(format!(
                "a new second factor waits for officer {identity:?} to claim it (kmsctl officer claim, with its own \
                 certificate) until {claim_by} (Unix time)"
            ))
        }
        PendingOp::SetPolicy { name, update } => {
            let ring = rings.update_policy(name, |p| update.apply(p))?;
            Ok(format!(
                "policy of key {name:?} updated: {} (min_decryption_version now {})",
                describe_update(update),
                ring.policy.min_decryption_version
            ))
        }
    }
}
