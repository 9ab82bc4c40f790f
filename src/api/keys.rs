//! `kmsd.v1.Keys`: key administration (create, read, list, rotate,
//! policy, version states, destruction and deletion, backup and restore).
//! Destructive changes go through dual control ([`crate::authz::dual`]);
//! the rings themselves are changed by [`crate::rings`].
use super::call::{blocking, Shared};
use super::convert::{algorithm_from_proto, key_info, policy_update, purpose_from_proto};
use crate::authz::{Call, Op, PendingOp};
use crate::error::{Error, Invalid, Limit, Precondition};
use crate::proto;
use crate::rings::Rings;
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::{KeyRing, VersionState};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `kmsd.v1.Keys`.
#[derive(Debug, Clone)]
pub struct KeysService {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Import jobs live at once (`limits.max_import_jobs`).
    pub max_import_jobs: usize,
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
        f: impl FnOnce(&Rings, &str) -> Result<KeyRing, Error> + Send + 'static,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let rings = self.shared.rings()?.clone();
        let name = call.key.clone().unwrap_or_default();
        let result = blocking(move || f(&rings, &name).map(|ring| key_info(&ring, &rings.usage(&name)))).await;
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    /// Dual control: creates the pending request (and answers with it), or
    /// lets DEV ONLY roles through.
    pub(super) fn dual(&self, call: &Call, op: PendingOp) -> Result<(), Status> {
        self.shared
            .access()?
            .dual_control(call, op)
            .map_err(|e| self.shared.fail(call, e))
    }
}

#[tonic::async_trait]
impl proto::keys_server::Keys for KeysService {
    async fn create_key(&self, req: Request<proto::CreateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyCreate, Some(&req.get_ref().name))?;
        let r = req.into_inner();
        let algorithm = algorithm_from_proto(r.algorithm);
        let policy = policy_update(r.policy.as_ref()).apply(KeyPolicy::default());
        let policy_msg = r.policy;
        let exportable = r.exportable;
        self.admin(call, move |rings, name| {
            let algorithm = algorithm?;
            let purpose = purpose_from_proto(policy_msg.as_ref(), algorithm)?;
            // (an RSA key takes a while: this runs off the async workers)
            rings.create_key(name, algorithm, policy, purpose, exportable)
        })
        .await
    }

    async fn get_key(&self, req: Request<proto::GetKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyRead, Some(&req.get_ref().name))?;
        self.admin(call, |rings, name| rings.get(name)).await
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
            let e = Error::from(d);
            return Err(self.shared.fail(&call, e));
        }
        let r = req.into_inner();
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let rings = self.shared.rings()?.clone();
        let identity = call.peer.id().to_owned();
        let result = blocking(move || {
            let token_key = rings
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
                let raw = rings.list(&r.prefix, after.as_deref(), MAX_PAGE)?;
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
        self.admin(call, |rings, name| rings.rotate(name, RotationReason::Manual))
            .await
    }

    async fn update_key_policy(
        &self,
        req: Request<proto::UpdateKeyPolicyRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::KeyPolicy, Some(&req.get_ref().name))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?.clone();
        // Moving the minimum decryption version across versions that still
        // have material, in either direction and whatever their states
        // (disable, raise, re-enable would otherwise get around it), needs
        // dual control: raising strands ciphertexts, lowering revives
        // retired versions.
        let current = match blocking({
            let (rings, name) = (rings.clone(), r.name.clone());
            move || rings.get(&name)
        })
        .await
        {
            Ok(c) => c,
            Err(e) => return Err(self.shared.fail(&call, e)),
        };
        if r.policy.as_ref().is_some_and(|p| p.purpose.is_some())
            && purpose_from_proto(r.policy.as_ref(), current.algorithm).ok() != Some(current.purpose)
        {
            let e = Error::InvalidArgument(Invalid::PurposeFixed);
            return Err(self.shared.fail(&call, e));
        }
        let update = policy_update(r.policy.as_ref());
        let new = update.apply(current.policy.clone());
        if min_decryption_change_is_guarded(&current, new.min_decryption_version) {
            self.dual(
                &call,
                PendingOp::SetPolicy {
                    name: r.name.clone(),
                    update,
                },
            )?;
        }
        self.admin(call, move |rings, name| rings.set_policy(name, new)).await
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
        self.admin(call, move |rings, name| {
            let state = match proto::VersionState::try_from(state) {
                Ok(proto::VersionState::DecryptOnly) => VersionState::DecryptOnly,
                Ok(proto::VersionState::Disabled) => VersionState::Disabled,
                _ => return Err(Error::InvalidArgument(Invalid::VersionState)),
            };
            Ok(rings.modify(name, |r| r.set_version_state(version, state))?.0)
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
        if let Err(e) = self.shared.rings()?.destruction_time(wait) {
            return Err(self.shared.fail(&call, e));
        }
        self.dual(
            &call,
            PendingOp::DestroyVersion {
                name: r.name.clone(),
                version,
                wait,
            },
        )?;
        self.admin(call, move |rings, name| {
            let at = rings.destruction_time(wait)?;
            Ok(rings.modify(name, |r| r.schedule_destruction(version, at))?.0)
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
        self.admin(call, move |rings, name| {
            Ok(rings.modify(name, |r| r.cancel_destruction(version))?.0)
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
        let rings = self.shared.rings()?;
        let current = match rings.destruction_time(wait).and_then(|_| rings.get(&r.name)) {
            Ok(c) => c,
            Err(e) => return Err(self.shared.fail(&call, e)),
        };
        if !current.policy.deletion_allowed {
            let e = Error::FailedPrecondition(Precondition::DeletionNotAllowed { key: r.name.clone() });
            return Err(self.shared.fail(&call, e));
        }
        self.dual(
            &call,
            PendingOp::DeleteKey {
                name: r.name.clone(),
                wait,
            },
        )?;
        self.admin(call, move |rings, name| {
            let at = rings.destruction_time(wait)?;
            Ok(rings.modify(name, |r| r.schedule_deletion(at))?.0)
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
        self.admin(call, |rings, name| Ok(rings.modify(name, |r| r.cancel_deletion())?.0))
            .await
    }

    type BackupStream = tokio_stream::Iter<std::vec::IntoIter<Result<proto::BackupChunk, Status>>>;

    async fn backup(&self, req: Request<proto::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let call = self.shared.begin(&req, Op::Backup, None)?;
        let rings = self.shared.rings()?.clone();
        let result = blocking(move || {
            rings.flush_usage()?;
            let ring_store = rings.ring_store();
            let mut buf = Vec::new();
            let total = kmsd_keystore::backup::write_snapshot(
                ring_store.raw().as_ref(),
                ring_store.sealer(),
                &mut buf,
                &mut |_, _| {},
            )?;
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
            let e = Error::TooLarge(Limit::Backup { cap, what });
            return Err(self.shared.fail(&call, e));
        }
        let bytes = Arc::new(bytes);
        self.dual(
            &call,
            PendingOp::Restore {
                len: bytes.len(),
                bytes: bytes.clone(),
            },
        )?;
        let rings = self.shared.rings()?.clone();
        let result = blocking(move || rings.restore(&bytes)).await;
        let (records, keys) = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::RestoreResponse { records, keys }))
    }

    // Import and export (issue 17): in api/import.rs.
    async fn create_import_job(
        &self,
        req: Request<proto::CreateImportJobRequest>,
    ) -> Result<Response<proto::ImportJob>, Status> {
        self.create_import_job_call(req).await
    }

    async fn get_import_job(
        &self,
        req: Request<proto::GetImportJobRequest>,
    ) -> Result<Response<proto::ImportJob>, Status> {
        self.get_import_job_call(req).await
    }

    async fn import_key_version(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        self.import_key_version_call(req).await
    }

    async fn export_key_version(
        &self,
        req: Request<proto::ExportKeyVersionRequest>,
    ) -> Result<Response<proto::ExportKeyVersionResponse>, Status> {
        self.export_key_version_call(req).await
    }
}
