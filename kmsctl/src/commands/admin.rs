//! `kmsctl status | reload-policy | officer ... | approvals ...`: the
//! daemon's administration.
use crate::cli::{ApprovalsCmd, OfficerCmd};
use crate::connection::Chan;
use crate::error::Error;
use crate::output::{duration, fields, table, time, time_json, Out};
use kmsd_client::proto::{self, admin_client::AdminClient};
use serde_json::json;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

/// The order of `StatusResponse.versions_by_state`.
const STATES: [&str; 5] = [
    "ACTIVE",
    "DECRYPT_ONLY",
    "DISABLED",
    "SCHEDULED_FOR_DESTRUCTION",
    "DESTROYED",
];

/// Health, version, uptime, key count, next scheduled event; fails
/// (after printing) when the daemon is not serving.
pub async fn status(channel: Chan, out: Out) -> Result<(), Error> {
    let h = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await?
        .into_inner();
    let health = ServingStatus::try_from(h.status).map_or("UNKNOWN", |s| s.as_str_name());
    let s = AdminClient::new(channel)
        .status(proto::StatusRequest {})
        .await?
        .into_inner();
    let by_state: serde_json::Map<String, serde_json::Value> = STATES
        .iter()
        .zip(&s.versions_by_state)
        .map(|(n, c)| ((*n).to_owned(), json!(c)))
        .collect();
    let value = json!({
        "health": health,
        "version": s.version,
        "started_at": time_json(s.started_at),
        "uptime_seconds": s.uptime_seconds,
        "keys": s.keys,
        "versions_by_state": by_state,
        "next_scheduled_at": time_json(s.next_scheduled_at),
        "backend": s.backend,
        "scheduler_leader": s.scheduler_leader,
        "leader": s.leader,
        "leader_term": s.leader_term,
        "leader_terms_won": s.leader_terms_won,
        "fenced_writes": s.fenced_writes,
        "cache_age_ms": s.cache_age_ms,
        "max_staleness_ms": s.max_staleness_ms,
    });
    out.emit(&value, || {
        let versions: Vec<String> = STATES
            .iter()
            .zip(&s.versions_by_state)
            .map(|(n, c)| format!("{n}={c}"))
            .collect();
        let mut rows = vec![
            ("health", health.to_owned()),
            ("version", s.version.clone()),
            ("uptime", duration(s.uptime_seconds)),
            ("keys", s.keys.to_string()),
            ("versions", versions.join(" ")),
            ("next_scheduled_at", time(s.next_scheduled_at)),
            ("backend", s.backend.clone()),
            (
                "scheduler_leader",
                if s.scheduler_leader { "yes" } else { "no" }.to_owned(),
            ),
        ];
        if s.backend == "etcd" {
            rows.push((
                "leader",
                if s.leader.is_empty() {
                    "unknown".to_owned()
                } else {
                    format!("{} (term {})", s.leader, s.leader_term)
                },
            ));
            rows.push((
                "terms",
                format!("{} won here, {} fenced writes", s.leader_terms_won, s.fenced_writes),
            ));
            rows.push((
                "cache_age",
                format!("{} ms (serves up to {} ms)", s.cache_age_ms, s.max_staleness_ms),
            ));
        }
        fields(&rows)
    });
    if health != "SERVING" {
        return Err(Error::NotServing(health.to_owned()));
    }
    Ok(())
}

pub async fn reload_policy(channel: Chan, out: Out) -> Result<(), Error> {
    AdminClient::new(channel)
        .reload_policy(proto::ReloadPolicyRequest {})
        .await?;
    out.message(&json!({"reloaded": true}), "policy reloaded");
    Ok(())
}

pub async fn officer(cmd: &OfficerCmd, channel: Chan, out: Out) -> Result<(), Error> {
    let mut admin = AdminClient::new(channel);
    match cmd {
        OfficerCmd::Enroll { identity, replace } => {
            let r = admin
                .enroll_officer(proto::EnrollOfficerRequest {
                    identity: identity.clone(),
                    replace: *replace,
                })
                .await?
                .into_inner();
            if r.otpauth_uri.is_empty() {
                out.message(
                    &json!({"identity": identity, "claim_by": time_json(r.claim_by)}),
                    &format!(
                        "the second factor of officer {identity} waits until {}: that officer runs \
                         `kmsctl officer claim` with its own certificate to take it (once)",
                        time(r.claim_by)
                    ),
                );
            } else {
                enrolment(&r, out, &format!("officer {identity} enrolled"), identity);
            }
        }
        OfficerCmd::Claim => {
            let r = admin
                .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
                .await?
                .into_inner();
            enrolment(&r, out, "second factor claimed", "");
        }
    }
    Ok(())
}

/// An officer's new TOTP secret: URI, base32 and (text) a QR code.
fn enrolment(r: &proto::EnrollOfficerResponse, out: Out, what: &str, identity: &str) {
    let value = json!({
        "identity": identity,
        "otpauth_uri": r.otpauth_uri,
        "secret_base32": r.secret_base32,
    });
    out.emit(&value, || {
        let mut text = format!(
            "{what}. Add this to your authenticator app, then discard it:\n{}\nsecret (base32): {}",
            r.otpauth_uri, r.secret_base32
        );
        match qrcode::QrCode::new(r.otpauth_uri.as_bytes()) {
            Ok(code) => {
                text.push('\n');
                text.push_str(
                    &code
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build(),
                );
            }
            Err(e) => eprintln!("kmsctl: no QR code: {e}"),
        }
        text
    });
}

pub async fn approvals(cmd: &ApprovalsCmd, channel: Chan, out: Out) -> Result<(), Error> {
    let mut admin = AdminClient::new(channel);
    match cmd {
        ApprovalsCmd::List => {
            let r = admin.list_approvals(proto::ListApprovalsRequest {}).await?.into_inner();
            let value = json!({"approvals": r.approvals.iter().map(|a| json!({
                "id": a.id,
                "operation": a.operation,
                "key": a.key,
                "requester": a.requester,
                "description": a.description,
                "created_at": time_json(a.created_at),
                "expires_at": time_json(a.expires_at),
            })).collect::<Vec<_>>()});
            out.emit(&value, || {
                if r.approvals.is_empty() {
                    return "no pending requests".to_owned();
                }
                let rows: Vec<Vec<String>> = r
                    .approvals
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.operation.clone(),
                            a.requester.clone(),
                            time(a.expires_at),
                            a.description.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "OPERATION", "REQUESTER", "EXPIRES_AT", "DESCRIPTION"], &rows)
            });
        }
        ApprovalsCmd::Approve { id, out: file } => {
            let r = admin
                .approve(proto::ApproveRequest { id: id.clone() })
                .await?
                .into_inner();
            if let Some(file) = file {
                super::transfer::write_export_payload(&r.payload, file)?;
            }
            out.message(
                &json!({"id": id, "approved": true, "result": r.result}),
                &format!("approved {id}: {}", r.result),
            );
        }
        ApprovalsCmd::Reject { id } => {
            admin.reject(proto::RejectRequest { id: id.clone() }).await?;
            out.message(&json!({"id": id, "rejected": true}), &format!("rejected {id}"));
        }
    }
    Ok(())
}
