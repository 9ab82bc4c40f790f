//! `kmsd.v1.Admin`: status, policy reload, officer enrolment, dual-control
//! approvals and audit-log verification.
use super::call::{blocking, Shared};
use crate::authz::{Op, PendingOp};
use crate::error::{Error, Invalid};
use crate::proto;
use std::sync::Arc;
use tonic::{Request, Response, Status};

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
        if let Some(rings) = self.shared.rings.get() {
            let s = rings.stats();
            resp.serving = true;
            resp.keys = s.keys;
            resp.versions_by_state = s.versions_by_state.to_vec();
            resp.next_scheduled_at = rings.next_deadline().unwrap_or(0);
            resp.scheduler_leader = s.scheduler_leader;
            resp.fenced_writes = s.fenced_writes;
            // a shared store is etcd's: the only backend nodes share
            resp.backend = if rings.freshness().is_some() { "etcd" } else { "sled" }.to_owned();
            if let Some(f) = rings.freshness() {
                resp.cache_age_ms = u64::try_from(f.age().as_millis()).unwrap_or(u64::MAX);
                resp.max_staleness_ms = u64::try_from(f.max().as_millis()).unwrap_or(u64::MAX);
            }
            if let Some(l) = rings.leadership() {
                resp.leader_terms_won = l.terms();
                if let Some(o) = l.observed() {
                    resp.leader = o.name;
                    resp.leader_term = i64::try_from(o.term.0).unwrap_or(i64::MAX);
                }
            }
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
            Error::PolicyRefused(e)
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
        let rings = self.shared.rings()?.clone();
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("officer {}", r.identity));
        if r.identity.is_empty() || r.identity.len() > 512 {
            let e = Error::InvalidArgument(Invalid::OfficerIdentity);
            return Err(self.shared.fail(&call, e));
        }
        let to_self = r.identity == call.peer.id();
        let claim_ttl = access.policy().settings.enrolment_claim_ttl.as_secs() as i64;
        if r.replace && !to_self {
            let op = PendingOp::ReplaceOfficer {
                identity: r.identity.clone(),
                claim_ttl,
            };
            if let Err(e) = access.dual_control(&call, op) {
                return Err(self.shared.fail(&call, e));
            }
        }
        let id = r.identity.clone();
        let result = blocking(move || {
            let ring_store = rings.ring_store();
            if to_self {
                let secret =
                    crate::authz::officer::enroll(ring_store.raw().as_ref(), ring_store.sealer(), &id, r.replace)?;
                let resp = proto::EnrollOfficerResponse {
                    otpauth_uri: secret.otpauth_uri(&id),
                    secret_base32: secret.to_base32_for_enrolment(),
                    claim_by: 0,
                };
                access.remember_officer(&id, secret);
                return Ok(resp);
            }
            let claim_by = kmsd_keystore::Clock::now(&kmsd_keystore::SystemClock).saturating_add(claim_ttl);
            crate::authz::officer::offer_enrolment(
                ring_store.raw().as_ref(),
                ring_store.sealer(),
                &id,
                r.replace,
                claim_by,
            )?;
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
                secret_base32: secret.to_base32_for_enrolment(),
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
            return Err(self.shared.fail(&call, d.into()));
        }
        let pending = match access.pending() {
            Ok(p) => p,
            Err(e) => return Err(self.shared.fail(&call, e)),
        };
        let approvals = pending
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
            Err(e) => return Err(self.shared.fail(&call, e)),
        };
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
            "approved request {} by {} for {}: {}",
            pending.id,
            call.peer.id(),
            pending.requester,
            pending.op.op().as_str()
        ));
        let rings = self.shared.rings()?.clone();
        let op = pending.op.clone();
        let result = blocking(move || crate::authz::dual::execute(&rings, &op)).await;
        tracing::info!(id = %pending.id, requester = %pending.requester, approver = call.peer.id(), ok = result.is_ok(), "dual-control request approved");
        let executed = self.shared.finish(&call, result)?;
        Ok(Response::new(proto::ApproveResponse {
            result: executed.result,
            payload: executed.payload,
        }))
    }

    async fn reject(&self, req: Request<proto::RejectRequest>) -> Result<Response<proto::RejectResponse>, Status> {
        let call = self.shared.begin(&req, Op::Approval, None)?;
        let access = self.shared.access()?.clone();
        let result = access
            .reject(&req.get_ref().id, call.peer.id())
            .map(|_| ())
            .map_err(|e| match e {
                // (the answer's wording since the first release)
                Error::NotFound(m) => Error::KeyNotFound(format!("approval {}: {m}", req.get_ref().id)),
                e => e,
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
            .map_err(|_| self.shared.fail(&call, Error::Internal("audit verification stopped")))?;
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
