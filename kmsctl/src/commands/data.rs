//! `kmsctl encrypt | decrypt | rewrap | datakey`: the data path.
use crate::cli::Cmd;
use crate::error::Error;
use crate::output::{fields, Out};
use base64::Engine as _;
use kmsd_client::{proto, Client};
use serde_json::json;
use std::io::{Read, Write};

/// Through the typed client: retried on `UNAVAILABLE`, failing over to the
/// next endpoint of `KMSD_ADDR`.
pub async fn run(cmd: &Cmd, crypto: &Client, out: Out) -> Result<(), Error> {
    match cmd {
        Cmd::Encrypt { key, aad, data } => {
            let r = crypto
                .encrypt(proto::EncryptRequest {
                    key: key.clone(),
                    plaintext: read_input(data)?,
                    associated_data: aad.clone().into_bytes(),
                })
                .await?;
            let ct = b64(&r.ciphertext);
            out.emit(&json!({"ciphertext": ct, "key_version": r.key_version}), || ct.clone());
        }
        Cmd::Decrypt { key, aad, data } => {
            let r = crypto
                .decrypt(proto::DecryptRequest {
                    key: key.clone(),
                    ciphertext: unb64(&read_input(data)?)?,
                    associated_data: aad.clone().into_bytes(),
                })
                .await?;
            if out.is_json() {
                println!(
                    "{}",
                    json!({"plaintext": b64(&r.plaintext), "key_version": r.key_version})
                );
            } else {
                // the plaintext bytes as they are (no newline added)
                std::io::stdout()
                    .write_all(&r.plaintext)
                    .and_then(|()| std::io::stdout().flush())
                    .map_err(Error::io("writing", "stdout"))?;
            }
        }
        Cmd::Rewrap { key, aad, data } => {
            let r = crypto
                .rewrap(proto::RewrapRequest {
                    key: key.clone(),
                    ciphertext: unb64(&read_input(data)?)?,
                    associated_data: aad.clone().into_bytes(),
                })
                .await?;
            let ct = b64(&r.ciphertext);
            out.emit(&json!({"ciphertext": ct, "key_version": r.key_version}), || ct.clone());
        }
        Cmd::Datakey {
            key,
            bits,
            aad,
            wrapped_only,
        } => {
            let req = proto::GenerateDataKeyRequest {
                key: key.clone(),
                bits: *bits,
                associated_data: aad.clone().into_bytes(),
            };
            let r = if *wrapped_only {
                crypto.generate_data_key_without_plaintext(req).await
            } else {
                crypto.generate_data_key(req).await
            }?;
            let mut value = json!({"ciphertext": b64(&r.ciphertext), "key_version": r.key_version});
            let mut rows = vec![
                ("ciphertext", b64(&r.ciphertext)),
                ("key_version", r.key_version.to_string()),
            ];
            if !wrapped_only {
                value["plaintext"] = json!(b64(&r.plaintext));
                rows.push(("plaintext", b64(&r.plaintext)));
            }
            out.emit(&value, || fields(&rows));
        }
        _ => {}
    }
    Ok(())
}

/// DATA as given, or stdin for `-`.
pub(crate) fn read_input(data: &str) -> Result<Vec<u8>, Error> {
    if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(Error::io("reading", "stdin"))?;
        Ok(buf)
    } else {
        Ok(data.as_bytes().to_vec())
    }
}

pub(crate) fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &[u8]) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(text).trim())
        .map_err(|_| Error::Input("the ciphertext is not valid base64".into()))
}
