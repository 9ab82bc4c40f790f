//! `kmsctl jws sign | verify`: JWS through the library's
//! `Client::sign_jws` / `Client::verify_jws` (`kmsd_client::jws`).
use crate::cli::JwsCmd;
use crate::error::Error;
use crate::output::Out;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use kmsd_client::{Client, JwsOptions};
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;

/// Largest payload or JWS read (ES256 and PS256 send only a digest; this
/// bounds memory).
const MAX_INPUT: u64 = 64 * 1024 * 1024;

fn read_input(path: &Path) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    let n = if path == Path::new("-") {
        std::io::stdin().take(MAX_INPUT + 1).read_to_end(&mut buf)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_INPUT + 1).read_to_end(&mut buf))
    }
    .map_err(Error::io("reading", path))?;
    if n as u64 > MAX_INPUT {
        return Err(Error::Input(format!(
            "{}: over {} MiB",
            path.display(),
            MAX_INPUT >> 20
        )));
    }
    Ok(buf)
}

/// `NAME=VALUE`: VALUE as JSON when it parses, else as a string.
fn parse_header(arg: &str) -> Result<(String, Value), Error> {
    let (name, value) = arg
        .split_once('=')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| Error::Input(format!("--header {arg:?}: expected NAME=VALUE")))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((name.to_owned(), value))
}

/// Runs `kmsctl jws ...`.
pub async fn run(cmd: &JwsCmd, client: &Client, out: Out) -> Result<(), Error> {
    match cmd {
        JwsCmd::Sign {
            key,
            detached,
            typ,
            header,
            file,
        } => {
            let mut opts = JwsOptions::default().detached(*detached);
            opts.typ = typ.clone();
            for h in header {
                let (n, v) = parse_header(h)?;
                opts = opts.header(n, v);
            }
            let payload = read_input(file)?;
            let signed = client.sign_jws(key, &payload, &opts).await?;
            out.emit(
                &json!({"jws": signed.jws, "kid": signed.kid, "key_version": signed.key_version, "alg": signed.alg}),
                || signed.jws.clone(),
            );
            Ok(())
        }
        JwsCmd::Verify {
            payload,
            accept_crit,
            jws,
        } => {
            let text = if jws == "-" {
                String::from_utf8(read_input(Path::new("-"))?)
                    .map_err(|_| Error::Input("the JWS on stdin is not text".into()))?
            } else {
                jws.clone()
            };
            let detached = payload.as_deref().map(read_input).transpose()?;
            let crit: Vec<&str> = accept_crit.iter().map(String::as_str).collect();
            let v = client.verify_jws(&text, detached.as_deref(), &crit).await?;
            let alg = v
                .header
                .get("alg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            out.emit(
                &json!({
                    "valid": true,
                    "kid": format!("{}/{}", v.key, v.key_version),
                    "header": Value::Object(v.header.clone()),
                    "payload": B64.encode(&v.payload),
                }),
                || format!("valid: signed by {}/{} ({alg})", v.key, v.key_version),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_json_when_they_parse() {
        assert_eq!(
            parse_header("http://openbanking.org.uk/iat=1700000000").unwrap(),
            ("http://openbanking.org.uk/iat".into(), json!(1_700_000_000))
        );
        assert_eq!(
            parse_header("http://openbanking.org.uk/iss=0015800001041RHAAY")
                .unwrap()
                .1,
            json!("0015800001041RHAAY")
        );
        assert_eq!(parse_header(r#"crit=["a","b"]"#).unwrap().1, json!(["a", "b"]));
        assert_eq!(parse_header(r#"n="123""#).unwrap().1, json!("123"));
        assert_eq!(parse_header("e=").unwrap().1, json!(""));
        assert!(parse_header("noequals").is_err());
        assert!(parse_header("=v").is_err());
    }
}
