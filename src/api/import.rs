//! The import and export calls of `kmsd.v1.Keys` (issue 17, bring your own
//! key): import jobs, `ImportKeyVersion`, `ExportKeyVersion`. The jobs
//! themselves are [`crate::import`]; wrapping is `kmsd_keystore::wrap`.
//! `keys.rs` routes the calls here.
use super::call::blocking;
use super::keys::KeysService;
use crate::authz::Op;
use crate::import::{self, Jobs};
use crate::proto;
use crate::rings::Rings;
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
}
