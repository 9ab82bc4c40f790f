//! `kmsctl key ...`: key administration.
use crate::cli::KeyCmd;
use crate::connection::Chan;
use crate::error::Error;
use crate::output::{duration, fields, table, time, time_json, Out};
use kmsd_client::proto::{self, keys_client::KeysClient};
use serde_json::{json, Value};

pub async fn run(cmd: &KeyCmd, channel: Chan, out: Out) -> Result<(), Error> {
    let mut keys = KeysClient::new(channel);
    let secs = |d: &Option<std::time::Duration>| d.map_or(0, |d| d.as_secs());
    let info = match cmd {
        KeyCmd::Create {
            name,
            algorithm,
            exportable,
            policy,
        } => keys
            .create_key(proto::CreateKeyRequest {
                name: name.clone(),
                algorithm: proto::Algorithm::from_str_name(&algorithm.to_ascii_uppercase().replace('-', "_"))
                    .ok_or_else(|| Error::Input(format!("unknown algorithm {algorithm}")))?
                    as i32,
                policy: Some(policy.to_proto()),
                exportable: *exportable,
            })
            .await?
            .into_inner(),
        KeyCmd::Show { name } => keys
            .get_key(proto::GetKeyRequest { name: name.clone() })
            .await?
            .into_inner(),
        KeyCmd::Versions { name } => {
            let k = keys
                .get_key(proto::GetKeyRequest { name: name.clone() })
                .await?
                .into_inner();
            let rows: Vec<Value> = k.versions.iter().map(version_json).collect();
            out.emit(&json!({ "name": k.name, "versions": rows }), || versions_table(&k));
            return Ok(());
        }
        KeyCmd::Rotate { name } => keys
            .rotate_key(proto::RotateKeyRequest { name: name.clone() })
            .await?
            .into_inner(),
        KeyCmd::Policy { name, policy } => keys
            .update_key_policy(proto::UpdateKeyPolicyRequest {
                name: name.clone(),
                policy: Some(policy.to_proto()),
            })
            .await?
            .into_inner(),
        KeyCmd::SetState { name, version, state } => {
            let state = match state.to_ascii_lowercase().replace('_', "-").as_str() {
                "decrypt-only" => proto::VersionState::DecryptOnly,
                "disabled" => proto::VersionState::Disabled,
                _ => return Err(Error::Input("state must be decrypt-only or disabled".into())),
            };
            keys.set_version_state(proto::SetVersionStateRequest {
                name: name.clone(),
                version: *version,
                state: state as i32,
            })
            .await?
            .into_inner()
        }
        KeyCmd::DestroyVersion { name, version, wait } => keys
            .schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
                name: name.clone(),
                version: *version,
                waiting_period_seconds: secs(wait),
            })
            .await?
            .into_inner(),
        KeyCmd::CancelDestroy { name, version } => keys
            .cancel_version_destruction(proto::CancelVersionDestructionRequest {
                name: name.clone(),
                version: *version,
            })
            .await?
            .into_inner(),
        KeyCmd::Delete { name, wait } => keys
            .schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
                name: name.clone(),
                waiting_period_seconds: secs(wait),
            })
            .await?
            .into_inner(),
        KeyCmd::CancelDelete { name } => keys
            .cancel_key_deletion(proto::CancelKeyDeletionRequest { name: name.clone() })
            .await?
            .into_inner(),
        KeyCmd::List { prefix } => return list(&mut keys, prefix, out).await,
        // (kmsctl key import / export: commands/transfer.rs)
        KeyCmd::Import { .. } | KeyCmd::Export { .. } => return Ok(()),
    };
    out.emit(&key_json(&info), || key_text(&info));
    Ok(())
}

/// Every name, page by page: text prints as it goes, JSON at the end.
async fn list(keys: &mut KeysClient<Chan>, prefix: &str, out: Out) -> Result<(), Error> {
    let mut page_token = String::new();
    let mut all = Vec::new();
    loop {
        let r = keys
            .list_keys(proto::ListKeysRequest {
                page_size: 1000,
                page_token,
                prefix: prefix.to_owned(),
            })
            .await?
            .into_inner();
        if out.is_json() {
            all.extend(r.names);
        } else {
            for n in r.names {
                println!("{n}");
            }
        }
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    if out.is_json() {
        println!("{}", json!({ "names": all }));
    }
    Ok(())
}

fn state_name(s: i32) -> &'static str {
    proto::VersionState::try_from(s).map_or("UNKNOWN", |s| s.as_str_name())
}

fn purpose_name(p: &proto::KeyPolicy) -> &'static str {
    // (unset means encrypt/decrypt, the default purpose)
    match p.purpose.and_then(|p| proto::KeyPurpose::try_from(p).ok()) {
        Some(proto::KeyPurpose::Tokenize) => "TOKENIZE",
        Some(proto::KeyPurpose::Mac) => "MAC",
        Some(proto::KeyPurpose::SignVerify) => "SIGN_VERIFY",
        _ => "ENCRYPT_DECRYPT",
    }
}

fn algorithm_name(a: i32) -> &'static str {
    match proto::Algorithm::try_from(a) {
        Ok(proto::Algorithm::Unspecified) => "AES_256_GCM",
        Ok(a) => a.as_str_name(),
        Err(_) => "UNKNOWN",
    }
}

fn origin_name(o: i32) -> &'static str {
    match proto::KeyOrigin::try_from(o) {
        Ok(proto::KeyOrigin::Imported) => "IMPORTED",
        _ => "GENERATED",
    }
}

fn reason_name(r: i32) -> &'static str {
    proto::RotationReason::try_from(r).map_or("UNKNOWN", |r| r.as_str_name())
}

fn version_json(v: &proto::KeyVersionInfo) -> Value {
    json!({
        "version": v.version,
        "state": state_name(v.state),
        "origin": origin_name(v.origin),
        "encryptions": v.encryptions,
        "decryptions": v.decryptions,
        "last_used_at": time_json(v.last_used_at),
        "created_at": time_json(v.created_at),
        "destroy_at": time_json(v.destroy_at),
    })
}

/// A key's metadata as JSON (never material).
pub fn key_json(k: &proto::KeyInfo) -> Value {
    let p = k.policy.unwrap_or_default();
    json!({
        "name": k.name,
        "algorithm": algorithm_name(k.algorithm),
        "exportable": k.exportable,
        "primary_version": k.primary_version,
        "created_at": time_json(k.created_at),
        "next_rotation_at": time_json(k.next_rotation_at),
        "delete_at": time_json(k.delete_at),
        "policy": {
            "purpose": purpose_name(&p),
            "rotation_period_seconds": p.rotation_period_seconds.unwrap_or(0),
            "max_encryptions_per_version": p.max_encryptions_per_version.unwrap_or(0),
            "min_decryption_version": p.min_decryption_version.unwrap_or(0),
            "min_encryption_version": p.min_encryption_version.unwrap_or(0),
            "deletion_allowed": p.deletion_allowed.unwrap_or(false),
            "manual_rotation_resets_schedule": p.manual_rotation_resets_schedule.unwrap_or(false),
            "allow_token_rotation": p.allow_token_rotation.unwrap_or(false),
            "allow_generated_rotation": p.allow_generated_rotation.unwrap_or(false),
        },
        "versions": k.versions.iter().map(version_json).collect::<Vec<_>>(),
        "rotations": k.rotations.iter().map(|e| json!({
            "at": time_json(e.at),
            "from_version": e.from_version,
            "to_version": e.to_version,
            "reason": reason_name(e.reason),
        })).collect::<Vec<_>>(),
    })
}

pub fn key_text(k: &proto::KeyInfo) -> String {
    let p = k.policy.unwrap_or_default();
    let mut rows = vec![
        ("name", k.name.clone()),
        ("algorithm", algorithm_name(k.algorithm).to_owned()),
        ("exportable", k.exportable.to_string()),
        ("primary_version", k.primary_version.to_string()),
        ("created_at", time(k.created_at)),
        ("next_rotation_at", time(k.next_rotation_at)),
    ];
    if k.delete_at > 0 {
        rows.push(("delete_at", time(k.delete_at)));
    }
    rows.extend([
        ("purpose", purpose_name(&p).to_owned()),
        ("rotation_period", duration(p.rotation_period_seconds.unwrap_or(0))),
        (
            "max_encryptions_per_version",
            p.max_encryptions_per_version
                .filter(|n| *n > 0)
                .map_or("-".into(), |n| n.to_string()),
        ),
        (
            "min_decryption_version",
            p.min_decryption_version.unwrap_or(0).to_string(),
        ),
        (
            "min_encryption_version",
            p.min_encryption_version.unwrap_or(0).to_string(),
        ),
        ("deletion_allowed", p.deletion_allowed.unwrap_or(false).to_string()),
        (
            "manual_rotation_resets_schedule",
            p.manual_rotation_resets_schedule.unwrap_or(false).to_string(),
        ),
    ]);
    let mut text = fields(&rows);
    text.push_str("\n\n");
    text.push_str(&versions_table(k));
    if !k.rotations.is_empty() {
        let rows: Vec<Vec<String>> = k
            .rotations
            .iter()
            .map(|e| {
                vec![
                    time(e.at),
                    e.from_version.to_string(),
                    e.to_version.to_string(),
                    reason_name(e.reason).to_owned(),
                ]
            })
            .collect();
        text.push_str("\n\n");
        text.push_str(&table(&["ROTATED_AT", "FROM", "TO", "REASON"], &rows));
    }
    text
}

fn versions_table(k: &proto::KeyInfo) -> String {
    let rows: Vec<Vec<String>> = k
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                state_name(v.state).to_owned(),
                origin_name(v.origin).to_owned(),
                v.encryptions.to_string(),
                v.decryptions.to_string(),
                time(v.last_used_at),
                time(v.created_at),
                time(v.destroy_at),
            ]
        })
        .collect();
    table(
        &[
            "VERSION",
            "STATE",
            "ORIGIN",
            "ENCRYPTIONS",
            "DECRYPTIONS",
            "LAST_USED",
            "CREATED",
            "DESTROY_AT",
        ],
        &rows,
    )
}
