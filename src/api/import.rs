//! The import and export calls of `kmsd.v1.Keys` (issue 17, bring your own
//! key): import jobs, `ImportKeyVersion`, `ExportKeyVersion`. The jobs
//! themselves are [`crate::import`]; wrapping is `kmsd_keystore::wrap`.
//! `keys.rs` routes the calls here.
use super::call::blocking;
use super::convert::{algorithm_from_proto, algorithm_to_proto, key_info, policy_update, purpose_from_proto};
use super::keys::KeysService;
use crate::authz::{Op, PendingOp};
use crate::error::{Error, Invalid, Precondition, Transfer};
use crate::import::{self, Jobs};
use crate::proto;
use crate::rings::{NewKey, Rings};
use kmsd_keystore::keyring::KeyPolicy;
use kmsd_keystore::wrap::{WrapError, WrappingPublicKey};
use kmsd_keystore::KeyName;
use tonic::{Request, Response, Status};

/// The import jobs of the rings' store.
pub(crate) fn jobs(rings: &Rings) -> Jobs<'_> {
    let store = rings.ring_store();
    Jobs {
        store: store.raw().as_ref(),
        sealer: store.sealer(),
    }
}

impl KeysService {
    /// `CreateImportJob`: policy `import` on the key (officers with their
    /// second factor), a fresh RSA-3072 key sealed in the store.
    pub(super) async fn create_import_job_call(
        &self,
        req: Request<proto::CreateImportJobRequest>,
    ) -> Result<Response<proto::ImportJob>, Status> {
        let call = self.shared.begin(&req, Op::Import, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?.clone();
        let (creator, max) = (call.peer.id().to_owned(), self.max_import_jobs);
        let result = blocking(move || {
            KeyName::parse(&r.key)?;
            let ttl = import::ttl(r.ttl_seconds)?;
            let now = rings.now();
            jobs(&rings).create(&r.key, ttl, &creator, now, max)
        })
        .await;
        if let Ok(info) = &result {
            *call.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                "import job {} created, expires at {}",
                info.id, info.expires_at
            ));
        }
        let info = self.shared.finish(&call, result)?;
        Ok(Response::new(info.to_proto()))
    }

    /// `GetImportJob`: read-only (a public key and times), so no second
    /// factor; the caller needs `import` on the job's key.
    pub(super) async fn get_import_job_call(
        &self,
        req: Request<proto::GetImportJobRequest>,
    ) -> Result<Response<proto::ImportJob>, Status> {
        let call = self.shared.begin_unchecked(&req, Op::Import, "get import job")?;
        let access = self.shared.access()?.clone();
        if let Err(d) = access.policy().allows_somewhere(call.peer.id(), Op::Import) {
            return Err(self.shared.fail(&call, d.into()));
        }
        let rings = self.shared.rings()?.clone();
        let id = req.into_inner().id;
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("get import job {}", id.escape_debug()));
        let identity = call.peer.id().to_owned();
        let result = blocking(move || {
            let job = jobs(&rings).get(&id, rings.now())?;
            access.policy().check(&identity, Op::Import, Some(&job.info.key))?;
            Ok(job.info.to_proto())
        })
        .await;
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    /// `ImportKeyVersion`: policy `import` on the key (and `key.create`
    /// when the key does not exist yet); the blob is unwrapped under the
    /// job's key, checked against the algorithm and stored as the new
    /// primary (origin IMPORTED). A blob that does not unwrap counts
    /// against the job (retired after `import::MAX_UNWRAP_FAILURES`).
    pub(super) async fn import_key_version_call(
        &self,
        req: Request<proto::ImportKeyVersionRequest>,
    ) -> Result<Response<proto::KeyInfo>, Status> {
        let call = self.shared.begin(&req, Op::Import, Some(&req.get_ref().key))?;
        let access = self.shared.access()?.clone();
        let rings = self.shared.rings()?.clone();
        let r = req.into_inner();
        let identity = call.peer.id().to_owned();
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("import with job {}", r.import_job.escape_debug()));
        let result = blocking(move || {
            let algorithm = algorithm_from_proto(r.algorithm)?;
            KeyName::parse(&r.key)?;
            let jobs = jobs(&rings);
            let now = rings.now();
            let job = jobs.get(&r.import_job, now)?;
            if job.info.key != r.key {
                return Err(Error::Transfer(Transfer::JobForAnotherKey {
                    id: job.info.id.clone(),
                    job_key: job.info.key.clone(),
                    key: r.key.clone(),
                }));
            }
            let new = match rings.algorithm_of(&r.key)? {
                Some(a) if a != algorithm => {
                    return Err(Error::Transfer(Transfer::AlgorithmMismatch {
                        key: r.key.clone(),
                        key_algorithm: a.as_str(),
                        requested: algorithm.as_str(),
                    }))
                }
                Some(_) => None,
                None => {
                    // creating the key: the caller needs key.create as well
                    access.policy().check(&identity, Op::KeyCreate, Some(&r.key))?;
                    Some(NewKey {
                        policy: policy_update(r.policy.as_ref()).apply(KeyPolicy::default()),
                        purpose: purpose_from_proto(r.policy.as_ref(), algorithm)?,
                        exportable: r.exportable,
                    })
                }
            };
            let material = match job.wrapping_key()?.unwrap(&r.wrapped_key) {
                Ok(m) => m,
                Err(e @ WrapError::Malformed(_)) => return Err(Error::Transfer(Transfer::Wrap(e))),
                Err(e) => {
                    tracing::info!(job = %job.info.id, key = %r.key, error = %e, "a wrapped key did not unwrap under its import job");
                    return Err(jobs.record_failure(job, now, Error::Transfer(Transfer::Wrap(e))));
                }
            };
            let ring = rings.import(&r.key, algorithm, &material, new)?;
            Ok((key_info(&ring, &rings.usage(&r.key)), job.info.id))
        })
        .await;
        if let Ok((info, job)) = &result {
            *call.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                "imported version {} of key {:?} with job {job} (origin IMPORTED)",
                info.primary_version, info.name
            ));
        }
        let (info, _) = self.shared.finish(&call, result)?;
        Ok(Response::new(info))
    }

    /// `ExportKeyVersion`: policy `export`, a key created exportable, and
    /// always a second officer (`Approve` hands the wrapped key back in
    /// its payload); only DEV ONLY roles get it at once.
    pub(super) async fn export_key_version_call(
        &self,
        req: Request<proto::ExportKeyVersionRequest>,
    ) -> Result<Response<proto::ExportKeyVersionResponse>, Status> {
        let call = self.shared.begin(&req, Op::Export, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?.clone();
        // Checked before a request waits for a second officer (and again
        // when it runs): a request that cannot succeed is refused now.
        let checked = blocking({
            let (rings, r) = (rings.clone(), r.clone());
            move || {
                let wrapping = WrappingPublicKey::from_pem(&r.wrapping_public_key_pem)
                    .map_err(|e| Error::Transfer(Transfer::Wrap(e)))?;
                let ring = rings.get(&r.key)?;
                if !ring.exportable {
                    return Err(Error::Transfer(Transfer::NotExportable { key: r.key.clone() }));
                }
                let version = if r.version == 0 { ring.primary } else { r.version };
                match ring.version(version) {
                    None => {
                        return Err(Error::InvalidArgument(Invalid::NoSuchVersion {
                            key: r.key.clone(),
                            version,
                        }))
                    }
                    Some(v) if v.material.is_none() => {
                        return Err(Error::FailedPrecondition(Precondition::Ring(
                            kmsd_keystore::Error::Precondition(format!(
                                "key {:?} version {version} is {}: its material is gone",
                                r.key,
                                v.state.as_str()
                            )),
                        )))
                    }
                    Some(_) => {}
                }
                Ok((wrapping, version))
            }
        })
        .await;
        let (wrapping, version) = match checked {
            Ok(c) => c,
            Err(e) => return Err(self.shared.fail(&call, e)),
        };
        self.dual(
            &call,
            PendingOp::Export {
                name: r.key.clone(),
                version,
                wrapping_public_key_pem: r.wrapping_public_key_pem.clone(),
            },
        )?;
        let name = r.key.clone();
        let result = blocking(move || rings.export(&name, version, &wrapping)).await;
        let (wrapped_key, algorithm, version) = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::ExportKeyVersionResponse {
            wrapped_key,
            algorithm: algorithm_to_proto(algorithm) as i32,
            version,
        }))
    }
}
