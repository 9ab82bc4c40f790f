//! `kmsctl mac | verify-mac | sign | verify | public-key`: MACs and
//! signatures with keys that never leave kmsd.
use super::data::{b64, read_input};
use crate::cli::Cmd;
use crate::connection::Chan;
use crate::error::Error;
use crate::output::{fields, Out};
use base64::Engine as _;
use kmsd_client::proto::{self, crypto_client::CryptoClient};
use serde_json::json;

pub async fn run(cmd: &Cmd, channel: Chan, out: Out) -> Result<(), Error> {
    let mut c = CryptoClient::new(channel);
    match cmd {
        Cmd::Mac { key, key_version, data } => {
            let r = c
                .mac(proto::MacRequest {
                    key: key.clone(),
                    data: read_input(data)?,
                    key_version: *key_version,
                })
                .await?
                .into_inner();
            let mac = b64(&r.mac);
            out.emit(&json!({"mac": mac, "key_version": r.key_version}), || mac.clone());
        }
        Cmd::VerifyMac {
            key,
            mac,
            key_version,
            data,
        } => {
            let r = c
                .verify_mac(proto::VerifyMacRequest {
                    key: key.clone(),
                    data: read_input(data)?,
                    mac: unb64(mac, "MAC")?,
                    key_version: *key_version,
                })
                .await?
                .into_inner();
            return verdict(r.valid, r.key_version, "MAC", out);
        }
        Cmd::Sign {
            key,
            digest,
            encoding,
            out: file,
            data,
        } => {
            let data = read_input(data)?;
            let input = if *digest {
                proto::sign_request::Input::Digest(sha256(&data))
            } else {
                proto::sign_request::Input::Message(data)
            };
            let r = c
                .sign(proto::SignRequest {
                    key: key.clone(),
                    input: Some(input),
                    encoding: encoding_of(encoding) as i32,
                })
                .await?
                .into_inner();
            if let Some(f) = file {
                std::fs::write(f, &r.signature).map_err(Error::io("writing", f))?;
            }
            let sig = b64(&r.signature);
            let alg = proto::Algorithm::try_from(r.algorithm).map_or("UNKNOWN", |a| a.as_str_name());
            out.emit(
                &json!({"signature": sig, "key_version": r.key_version, "algorithm": alg}),
                || sig.clone(),
            );
        }
        Cmd::Verify {
            key,
            signature,
            signature_file,
            key_version,
            digest,
            encoding,
            data,
        } => {
            let signature = match (signature, signature_file) {
                (_, Some(f)) => std::fs::read(f).map_err(Error::io("reading", f))?,
                (Some(s), None) => unb64(s, "signature")?,
                (None, None) => return Err(Error::Input("give --signature or --signature-file".into())),
            };
            let data = read_input(data)?;
            let input = if *digest {
                proto::verify_request::Input::Digest(sha256(&data))
            } else {
                proto::verify_request::Input::Message(data)
            };
            let r = c
                .verify(proto::VerifyRequest {
                    key: key.clone(),
                    key_version: *key_version,
                    input: Some(input),
                    signature,
                    encoding: encoding_of(encoding) as i32,
                })
                .await?
                .into_inner();
            return verdict(r.valid, r.key_version, "signature", out);
        }
        Cmd::PublicKey {
            key,
            key_version,
            format,
        } => {
            let r = c
                .get_public_key(proto::GetPublicKeyRequest {
                    key: key.clone(),
                    key_version: *key_version,
                })
                .await?
                .into_inner();
            let alg = proto::Algorithm::try_from(r.algorithm).map_or("UNKNOWN", |a| a.as_str_name());
            let jwk: serde_json::Value = serde_json::from_str(&r.jwk).unwrap_or(serde_json::Value::Null);
            out.emit(
                &json!({"pem": r.pem, "jwk": jwk, "kid": r.kid, "key_version": r.key_version, "algorithm": alg}),
                || match format.as_str() {
                    "jwk" => r.jwk.clone(),
                    _ => r.pem.trim_end().to_owned(),
                },
            );
        }
        _ => {}
    }
    Ok(())
}

/// Prints whether it verified; a signature or MAC that does not is exit 1.
fn verdict(valid: bool, key_version: u32, what: &'static str, out: Out) -> Result<(), Error> {
    out.emit(&json!({"valid": valid, "key_version": key_version}), || {
        fields(&[("valid", valid.to_string()), ("key_version", key_version.to_string())])
    });
    if valid {
        Ok(())
    } else {
        Err(Error::NotValid(what))
    }
}

fn encoding_of(e: &str) -> proto::SignatureEncoding {
    match e {
        "p1363" => proto::SignatureEncoding::P1363,
        _ => proto::SignatureEncoding::Der,
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

fn unb64(text: &str, what: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| Error::Input(format!("the {what} is not valid base64")))
}
