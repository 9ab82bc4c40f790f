//! `kmsctl redact | mask` (offline, no daemon) and `tokenize |
//! detokenize` (through the daemon's `kmsd.v1.Mask`).
use crate::connection::Chan;
use crate::error::Error;
use crate::output::{fields, Out};
use kmsd_client::proto::{self, mask_client::MaskClient};
use kmsd_masking as masking;
use serde_json::json;
use std::io::{BufRead, Write};

fn parse_kind(s: &str) -> Result<masking::Kind, Error> {
    s.to_ascii_uppercase()
        .replace('-', "_")
        .parse()
        .map_err(|_| Error::Input(format!("unknown kind {s:?}")))
}

fn proto_kind(s: &str) -> Result<i32, Error> {
    let k = parse_kind(s)?;
    proto::DataKind::from_str_name(k.as_str())
        .map(|k| k as i32)
        .ok_or_else(|| Error::Input(format!("unknown kind {s:?}")))
}

/// One line in, one line out, bytes preserved except the findings (a
/// line that is not UTF-8 is read lossily). A filter: `--output` does not
/// apply.
pub fn redact(kinds: &[String]) -> Result<(), Error> {
    let kinds = if kinds.is_empty() {
        None
    } else {
        Some(kinds.iter().map(|k| parse_kind(k)).collect::<Result<Vec<_>, _>>()?)
    };
    let opts = masking::RedactOptions { kinds };
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(Error::io("reading", "stdin"))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        let r = masking::redact(&text, &opts);
        out.write_all(r.text.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(Error::io("writing", "stdout"))?;
        if input.buffer().is_empty() {
            out.flush().map_err(Error::io("writing", "stdout"))?;
        }
    }
    out.flush().map_err(Error::io("writing", "stdout"))
}

pub fn mask(kind: &str, keep_bin: Option<u8>, value: &str, out: Out) -> Result<(), Error> {
    let m = masking::mask(
        value,
        parse_kind(kind)?,
        &masking::MaskOptions { pan_keep_bin: keep_bin },
    )
    .map_err(|e| Error::Input(e.to_string()))?;
    out.emit(&json!({"masked": m.masked, "valid": m.valid}), || m.masked.clone());
    if !m.valid && !out.is_json() {
        eprintln!("kmsctl: note: the value did not pass its {kind} validator");
    }
    Ok(())
}

pub async fn tokenize(channel: Chan, key: &str, kind: &str, value: &str, out: Out) -> Result<(), Error> {
    let r = MaskClient::new(channel)
        .tokenize(proto::TokenizeRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            kind: proto_kind(kind)?,
        })
        .await?
        .into_inner();
    out.emit(&json!({"token": r.token, "key_version": r.key_version}), || {
        fields(&[("token", r.token.clone()), ("key_version", r.key_version.to_string())])
    });
    Ok(())
}

pub async fn detokenize(
    channel: Chan,
    (key, kind, key_version, token): (&str, &str, u32, &str),
    out: Out,
) -> Result<(), Error> {
    let r = MaskClient::new(channel)
        .detokenize(proto::DetokenizeRequest {
            key: key.to_owned(),
            token: token.to_owned(),
            kind: proto_kind(kind)?,
            key_version,
        })
        .await?
        .into_inner();
    out.emit(&json!({"value": r.value}), || r.value.clone());
    Ok(())
}
