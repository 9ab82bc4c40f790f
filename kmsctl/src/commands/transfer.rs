//! `kmsctl import-job ...`, `kmsctl key import`, `kmsctl key export`, and
//! the wrapped key an approved export hands back: key material wrapped
//! for transport (CKM_RSA_AES_KEY_WRAP).
use crate::cli::{ImportJobCmd, KeyCmd};
use crate::connection::Chan;
use crate::error::Error;
use crate::output::{fields, time, time_json, Out};
use kmsd_client::proto::{self, keys_client::KeysClient};
use kmsd_keystore::wrap::WrappingPublicKey;
use serde_json::json;
use std::path::Path;
use zeroize::Zeroizing;

pub async fn import_job(cmd: &ImportJobCmd, channel: Chan, out: Out) -> Result<(), Error> {
    let mut keys = KeysClient::new(channel);
    let (job, pem_out) = match cmd {
        ImportJobCmd::Create {
            key,
            ttl,
            public_key_out,
        } => (
            keys.create_import_job(proto::CreateImportJobRequest {
                key: key.clone(),
                ttl_seconds: ttl.map_or(0, |d| d.as_secs()),
            })
            .await?
            .into_inner(),
            public_key_out,
        ),
        ImportJobCmd::Show { id, public_key_out } => (
            keys.get_import_job(proto::GetImportJobRequest { id: id.clone() })
                .await?
                .into_inner(),
            public_key_out,
        ),
    };
    if let Some(file) = pem_out {
        std::fs::write(file, job.public_key_pem.as_bytes()).map_err(Error::io("writing", file))?;
    }
    out.emit(
        &json!({
            "id": job.id,
            "key": job.key,
            "wrapping_method": job.wrapping_method,
            "created_at": time_json(job.created_at),
            "expires_at": time_json(job.expires_at),
            "public_key_pem": job.public_key_pem,
        }),
        || {
            let mut text = fields(&[
                ("id", job.id.clone()),
                ("key", job.key.clone()),
                ("wrapping_method", job.wrapping_method.clone()),
                ("created_at", time(job.created_at)),
                ("expires_at", time(job.expires_at)),
            ]);
            text.push_str("\n\n");
            text.push_str(job.public_key_pem.trim_end());
            text
        },
    );
    Ok(())
}

/// The API's algorithm from a name such as `aes-256-gcm` or `HMAC_SHA256`.
fn algorithm(name: &str) -> Result<proto::Algorithm, Error> {
    proto::Algorithm::from_str_name(&name.to_ascii_uppercase().replace('-', "_"))
        .filter(|a| *a != proto::Algorithm::Unspecified)
        .ok_or_else(|| {
            Error::Input(format!(
                "unknown algorithm {name:?} (aes-256-gcm, hmac-sha256, hmac-sha512, ecdsa-p256-sha256, \
                 rsa-pss-3072-sha256, rsa-pss-4096-sha256, ed25519)"
            ))
        })
}

pub async fn key(cmd: &KeyCmd, channel: Chan, out: Out) -> Result<(), Error> {
    let mut keys = KeysClient::new(channel);
    match cmd {
        KeyCmd::Import {
            name,
            job,
            wrapped,
            material,
            algorithm: alg,
            exportable,
            policy,
        } => {
            let algorithm = algorithm(alg)?;
            let wrapped_key = match (wrapped, material) {
                (Some(file), _) => std::fs::read(file).map_err(Error::io("reading", file))?,
                (None, Some(file)) => {
                    let material = Zeroizing::new(std::fs::read(file).map_err(Error::io("reading", file))?);
                    let j = keys
                        .get_import_job(proto::GetImportJobRequest { id: job.clone() })
                        .await?
                        .into_inner();
                    WrappingPublicKey::from_pem(&j.public_key_pem)
                        .and_then(|k| k.wrap(&material))
                        .map_err(|e| Error::Input(format!("wrapping {}: {e}", file.display())))?
                }
                (None, None) => return Err(Error::Input("--wrapped FILE or --material FILE is required".into())),
            };
            let info = keys
                .import_key_version(proto::ImportKeyVersionRequest {
                    key: name.clone(),
                    import_job: job.clone(),
                    wrapped_key,
                    algorithm: algorithm as i32,
                    policy: Some(policy.to_proto()),
                    exportable: *exportable,
                })
                .await?
                .into_inner();
            out.emit(&super::key::key_json(&info), || super::key::key_text(&info));
        }
        KeyCmd::Export {
            name,
            version,
            wrapping_key,
        } => {
            let pem = std::fs::read_to_string(wrapping_key).map_err(Error::io("reading", wrapping_key))?;
            // Without a second officer's approval this ends in a pending
            // request (printed with its id by main); a DEV ONLY role gets
            // the wrapped key at once.
            let r = keys
                .export_key_version(proto::ExportKeyVersionRequest {
                    key: name.clone(),
                    version: *version,
                    wrapping_public_key_pem: pem,
                })
                .await?
                .into_inner();
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&r.wrapped_key);
            out.emit(&json!({"key": name, "version": r.version, "wrapped_key": b64}), || {
                b64.clone()
            });
        }
        _ => {}
    }
    Ok(())
}

/// Writes the wrapped key of an approved export's payload to `file`
/// (created, mode 0600).
pub fn write_export_payload(payload: &[u8], file: &Path) -> Result<(), Error> {
    use prost::Message as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    if payload.is_empty() {
        return Err(Error::Input(
            "the approved request hands nothing back (only an export does): nothing written".into(),
        ));
    }
    let r = proto::ExportKeyVersionResponse::decode(payload)
        .map_err(|_| Error::Input("the approval's payload is not an export".into()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(Error::io("creating", file))?;
    f.write_all(&r.wrapped_key).map_err(Error::io("writing", file))?;
    f.sync_all().map_err(Error::io("syncing", file))?;
    eprintln!(
        "wrapped key of version {} ({}) written to {}",
        r.version,
        proto::Algorithm::try_from(r.algorithm).map_or("UNKNOWN", |a| a.as_str_name()),
        file.display()
    );
    Ok(())
}
