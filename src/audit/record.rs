//! One audit record: the key that MACs it, what a caller supplies
//! ([`Event`]), the line the writer builds by hand ([`LineWriter`]) and
//! how a line splits back into its body and MAC, and its chain hash.
//! No I/O.
use hmac::{Hmac, Mac};
use kmsd_keystore::MacKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The audit HMAC key (a keystore [`MacKey`]: the daemon holds the keyed
/// MAC, never the bytes).
pub struct AuditKey(MacKey);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

impl AuditKey {
    /// The audit key held in `key`.
    pub fn new(key: MacKey) -> Self {
        AuditKey(key)
    }

    /// Wraps key bytes (tests).
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        AuditKey(MacKey::from_bytes(b))
    }

    /// The keyed HMAC, ready for data.
    pub(super) fn hmac(&self) -> Option<Hmac<Sha256>> {
        self.0.hmac()
    }

    pub(super) fn mac(&self, data: &[u8]) -> String {
        match self.hmac().ok_or(()) {
            Ok(mut m) => {
                m.update(data);
                hex::encode(m.finalize().into_bytes())
            }
            Err(_) => String::new(),
        }
    }
}

/// What a caller supplies for one record.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// Request id.
    pub request_id: String,
    /// Caller identity.
    pub identity: std::sync::Arc<str>,
    /// Operation name.
    pub op: &'static str,
    /// Key name, if any.
    pub key: Option<String>,
    /// Key version, if any.
    pub key_version: Option<u32>,
    /// gRPC code name (or STARTED for the intent record of an admin call).
    pub result: &'static str,
    /// Short, never secret, detail.
    pub detail: Option<String>,
    /// Peer address.
    pub peer: std::sync::Arc<str>,
    /// Latency in microseconds.
    pub latency_us: u64,
}

/// A record as parsed by `verify` (the writer builds lines by hand in the
/// same field order, see [`LineWriter`]).
#[derive(Serialize, Deserialize)]
pub(super) struct Body<'a> {
    pub(super) seq: u64,
    pub(super) time: String,
    pub(super) request_id: std::borrow::Cow<'a, str>,
    pub(super) identity: std::borrow::Cow<'a, str>,
    pub(super) op: std::borrow::Cow<'a, str>,
    pub(super) key: Option<std::borrow::Cow<'a, str>>,
    pub(super) key_version: Option<u32>,
    pub(super) result: std::borrow::Cow<'a, str>,
    pub(super) detail: Option<std::borrow::Cow<'a, str>>,
    pub(super) peer: std::borrow::Cow<'a, str>,
    pub(super) latency_us: u64,
    pub(super) prev: String,
}

pub(super) fn chain_start() -> String {
    hex::encode(Sha256::digest(b"kmsd audit chain v1"))
}

/// Appends `s` as a JSON string literal.
pub(super) fn json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends lower-case hex of `bytes`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// Lower-case hex of `bytes` (what `hex::encode` gives, without its
/// per-character iterator).
pub(super) fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// The writer's hot path: builds MAC'd lines into one reusable buffer,
/// with the HMAC key schedule computed once and the timestamp's seconds
/// formatted once per second.
pub(super) struct LineWriter {
    pub(super) mac: Option<Hmac<Sha256>>,
    pub(super) second: u64,
    pub(super) second_text: String,
}

impl LineWriter {
    pub(super) fn new(key: &AuditKey) -> Self {
        LineWriter {
            mac: key.hmac(),
            second: u64::MAX,
            second_text: String::new(),
        }
    }

    fn time(&mut self, out: &mut String) {
        use std::fmt::Write as _;
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if d.as_secs() != self.second {
            self.second = d.as_secs();
            self.second_text =
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.second))
                    .to_string()
                    .trim_end_matches('Z')
                    .to_owned();
        }
        let _ = write!(out, "\"{}.{:03}Z\"", self.second_text, d.subsec_millis());
    }

    /// Appends the record's line (without newline) to `out`; returns its hash.
    pub(super) fn line(&mut self, out: &mut String, seq: u64, e: &Event, prev: &str) -> String {
        use std::fmt::Write as _;
        let start = out.len();
        let _ = write!(out, "{{\"seq\":{seq},\"time\":");
        self.time(out);
        out.push_str(",\"request_id\":");
        json_str(out, &e.request_id);
        out.push_str(",\"identity\":");
        json_str(out, &e.identity);
        out.push_str(",\"op\":");
        json_str(out, e.op);
        out.push_str(",\"key\":");
        match &e.key {
            Some(k) => json_str(out, k),
            None => out.push_str("null"),
        }
        match e.key_version {
            Some(v) => {
                let _ = write!(out, ",\"key_version\":{v}");
            }
            None => out.push_str(",\"key_version\":null"),
        }
        out.push_str(",\"result\":");
        json_str(out, e.result);
        out.push_str(",\"detail\":");
        match &e.detail {
            Some(d) => json_str(out, d),
            None => out.push_str("null"),
        }
        out.push_str(",\"peer\":");
        json_str(out, &e.peer);
        let _ = write!(out, ",\"latency_us\":{},\"prev\":\"{prev}\"}}", e.latency_us);
        let tag = self.mac.as_ref().map(|m| {
            let mut m = m.clone();
            m.update(&out.as_bytes()[start..]);
            m.finalize().into_bytes()
        });
        out.pop(); // the closing brace
        out.push_str(",\"mac\":\"");
        if let Some(tag) = tag {
            push_hex(out, &tag);
        }
        out.push_str("\"}");
        line_hash(&out.as_bytes()[start..])
    }
}

/// Splits a line into (its body JSON, its MAC) if it has the record shape.
pub(super) fn split_line(line: &str) -> Option<(String, &str)> {
    let idx = line.rfind(",\"mac\":\"")?;
    let mac = line.get(idx + 8..)?.strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..idx]), mac))
}

/// The chain hash of a record line (without its newline).
pub(super) fn line_hash(line: &[u8]) -> String {
    to_hex(&Sha256::digest(line))
}
