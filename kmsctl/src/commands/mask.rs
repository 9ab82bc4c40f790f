//! `kmsctl redact | mask` (offline, no daemon) and `tokenize |
//! detokenize` (through the daemon's `kmsd.v1.Mask`).
use crate::connection::Chan;
use crate::error::Error;
use crate::output::{fields, Out};
use kmsd_client::proto::{self, mask_client::MaskClient};
use kmsd_masking as masking;
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::Path;

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
/// apply, except to `--explain`, which prints one line (or JSON object) of
/// findings per input line instead: kind, byte span, rule; never a value.
pub fn redact(kinds: &[String], rules: Option<&Path>, explain: bool, how: Out) -> Result<(), Error> {
    let kinds = if kinds.is_empty() {
        None
    } else {
        Some(kinds.iter().map(|k| parse_kind(k)).collect::<Result<Vec<_>, _>>()?)
    };
    let rules = match rules {
        None => masking::Rules::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
            masking::rules::parse_toml(&text).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
        }
    };
    let opts = masking::RedactOptions { kinds };
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut line = Vec::with_capacity(4096);
    let mut number = 0usize;
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(Error::io("reading", "stdin"))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        let r = masking::redact_with(&text, &opts, &rules);
        let shown = if explain {
            explain_line(number, &r.findings, &rules, how.is_json())
        } else {
            r.text
        };
        out.write_all(shown.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(Error::io("writing", "stdout"))?;
        if input.buffer().is_empty() {
            out.flush().map_err(Error::io("writing", "stdout"))?;
        }
    }
    out.flush().map_err(Error::io("writing", "stdout"))
}

/// The explain-mode line for one input line: `N: KIND start..end rule, …`
/// (or `N: -` when nothing was found), or a JSON object. Only kinds,
/// offsets and rule names: the findings hold no values.
fn explain_line(number: usize, findings: &[masking::Finding], rules: &masking::Rules, json: bool) -> String {
    let described: Vec<(String, usize, usize, String)> = findings
        .iter()
        .map(|f| {
            let (kind, rule) = match (f.rule, rules.describe(f.rule)) {
                (_, Some((k, r))) => (k.to_owned(), r),
                (masking::Rule::Builtin(name), None) => (f.kind.as_str().to_owned(), name.to_owned()),
                (_, None) => (f.kind.as_str().to_owned(), "unknown".to_owned()),
            };
            (kind, f.start, f.end, rule)
        })
        .collect();
    if json {
        let items: Vec<serde_json::Value> = described
            .iter()
            .map(|(kind, start, end, rule)| json!({"kind": kind, "start": start, "end": end, "rule": rule}))
            .collect();
        return json!({"line": number, "findings": items}).to_string();
    }
    if described.is_empty() {
        return format!("{number}: -");
    }
    let parts: Vec<String> = described
        .iter()
        .map(|(kind, start, end, rule)| format!("{kind} {start}..{end} {rule}"))
        .collect();
    format!("{number}: {}", parts.join(", "))
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
