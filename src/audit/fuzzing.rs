//! Entry points for the fuzz targets in `fuzz/` and their stable replay in
//! `tests/fuzz_regressions.rs`: they reach the code behind the MAC and the
//! hash chain, which random bytes never pass. Not an API.
use super::chain::{head_path, read_head, Anchor, Head};
use super::record::{self, chain_start, split_line, AuditKey, Body, Event};
use super::writer::{Options, Writer};
use super::AuditError;
use std::path::Path;

/// Rewrites every line of `text` that has the record shape with a valid
/// MAC under `key` (and, with `chain`, a `prev` that continues the chain
/// from its start), so that what follows the MAC check is exercised.
/// Other lines are kept as they are. Every line ends with `\n`.
pub fn seal_lines(text: &str, key: &AuditKey, chain: bool) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut prev = chain_start();
    for line in text.lines() {
        let sealed = seal_line(line, key, chain.then_some(prev.as_str()));
        prev = record::line_hash(sealed.as_bytes());
        out.push_str(&sealed);
        out.push('\n');
    }
    out
}

fn seal_line(line: &str, key: &AuditKey, prev: Option<&str>) -> String {
    let Some((mut body_json, _)) = split_line(line) else {
        return line.to_owned();
    };
    if let Some(p) = prev {
        if let Ok(mut b) = serde_json::from_str::<Body<'_>>(&body_json) {
            p.clone_into(&mut b.prev);
            if let Ok(j) = serde_json::to_string(&b) {
                body_json = j;
            }
        }
    }
    let Some(open) = body_json.strip_suffix('}') else {
        return line.to_owned();
    };
    format!("{open},\"mac\":\"{}\"}}", key.mac(body_json.as_bytes()))
}

/// The chain hash of a line, as a head file records it.
pub fn line_hash(line: &str) -> String {
    record::line_hash(line.as_bytes())
}

/// Puts `log` (and, if given, a head file MAC'd under `key` recording
/// `head`) at `dir/audit.log`, opens the writer on it (tail recovery),
/// appends one durable record and returns the log's text and its head
/// afterwards.
pub fn recover_and_append(
    dir: &Path,
    log: &[u8],
    head: Option<&Anchor>,
    key: &[u8; 32],
) -> Result<(String, Anchor), AuditError> {
    let io = |e: std::io::Error| AuditError(e.to_string());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let path = dir.join("audit.log");
    std::fs::write(&path, log).map_err(io)?;
    if let Some(h) = head {
        let k = AuditKey::from_bytes(key);
        let head = Head {
            seq: h.seq,
            hash: h.hash.clone(),
            file_first_seq: h.file_first_seq,
            first_seq: None,
            mac: k.mac(Head::mac_input(h.seq, &h.hash, h.file_first_seq, None).as_bytes()),
        };
        let text = serde_json::to_string(&head).map_err(|e| AuditError(e.to_string()))?;
        std::fs::write(head_path(&path), text).map_err(io)?;
    }
    let opts = Options {
        rotate_bytes: u64::MAX,
        ..Options::default()
    };
    let mut w = Writer::open_with(&path, AuditKey::from_bytes(key), &opts)?;
    let ev = Event {
        request_id: "fuzz".into(),
        identity: "fuzz".into(),
        op: "encrypt",
        result: "OK",
        peer: "unix".into(),
        ..Event::default()
    };
    w.write_batch(&[&ev], true).map_err(|e| e.error().clone())?;
    let text = std::fs::read_to_string(&path).map_err(io)?;
    let head = read_head(&path, &AuditKey::from_bytes(key))
        .map_err(AuditError)?
        .ok_or_else(|| AuditError("no head after a durable write".into()))?;
    Ok((text, head))
}
