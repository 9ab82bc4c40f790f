//! The bodies of the fuzz targets, one function per target, shared by the
//! cargo-fuzz binaries in `fuzz_targets/` (nightly) and by the daemon's
//! `tests/fuzz_regressions.rs` (stable), which replays the seed corpus
//! (`corpus/<target>/`) and every input that once found a bug
//! (`regressions/<target>/`) through the very same code.
//!
//! A target fails by panicking: the parsers must return errors, never
//! panic, and the properties asserted here must hold for every input.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use kmsd::audit::{fuzzing, verify, Anchor, AuditKey};
use kmsd::authz::{glob, Op, Policy};
use kmsd::config::Config;
use kmsd::masking::{detokenize, tokenize, Kind};
use kmsd_keystore::{KeyName, KeyRing, MasterKey, RecordKind, Revision, Sealer};
use std::path::Path;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the directory names under `corpus/` and
/// `regressions/`), with its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("sealed_record", sealed_record),
    ("backup", backup),
    ("audit_verify", audit_verify),
    ("audit_recover", audit_recover),
    ("policy", policy),
    ("config", config),
    ("detokenize", detokenize_target),
    ("redact", redact),
    ("backup_records", backup_records),
    ("wrapped_key", wrapped_key),
];

/// The ciphertext envelope: header parsing and decryption.
pub fn envelope(data: &[u8]) {
    let key = kmsd_keystore::KeyMaterial::from_bytes(&[7; 32]);
    let _ = kmsd::crypto::parse_header(data);
    let _ = kmsd::crypto::decrypt(&key, "fuzz", data, b"");
}

/// Sealed store records, and a key ring record's decoding.
pub fn sealed_record(data: &[u8]) {
    let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
    let _ = sealer.open(RecordKind::KeyRing, "k", data);
    if let Ok(name) = KeyName::parse("k") {
        let _ = KeyRing::decode(&name, data, Revision(1));
    }
}

/// A whole backup snapshot as raw bytes (stops at the MAC unless valid).
pub fn backup(data: &[u8]) {
    let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
    let _ = kmsd_keystore::backup::read_snapshot(data, &sealer);
}

/// Backup snapshot records behind the MAC: the input is the body (record
/// count and records) of a snapshot framed with a valid MAC, so the record
/// parser is reached.
pub fn backup_records(data: &[u8]) {
    let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
    let framed = kmsd_keystore::backup::fuzz_frame_snapshot(data, &sealer);
    let _ = kmsd_keystore::backup::read_snapshot(&framed, &sealer);
}

/// The audit log verifier (`kmsd verify-audit`, the start-up check): any
/// text, with and without an anchor. Input: flags byte, 17 anchor bytes,
/// log text. Flag 1: the lines are re-MAC'd (flag 2: and re-chained), so
/// the sequence, chain and anchor checks behind the MAC are reached; flag
/// 4: verify against an anchor (seq, file_first_seq, index of the line
/// whose hash it records).
pub fn audit_verify(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (anchor_bytes, text) = rest.split_at(rest.len().min(17));
    let text = String::from_utf8_lossy(text);
    let key = AuditKey::from_bytes(&[3; 32]);
    let text = if flags & 1 != 0 {
        fuzzing::seal_lines(&text, &key, flags & 2 != 0)
    } else {
        text.into_owned()
    };
    let anchor = (flags & 4 != 0 && anchor_bytes.len() == 17).then(|| {
        let seq = u64::from_le_bytes(anchor_bytes[..8].try_into().unwrap());
        let file_first_seq = u64::from_le_bytes(anchor_bytes[8..16].try_into().unwrap());
        let lines: Vec<&str> = text.lines().collect();
        let hash = match lines.len() {
            0 => String::new(),
            n => fuzzing::line_hash(lines[usize::from(anchor_bytes[16]) % n]),
        };
        Anchor {
            seq,
            hash,
            file_first_seq,
            ..Anchor::default()
        }
    });
    if let Ok(report) = verify(&text, &key, anchor.as_ref()) {
        assert_eq!(report.records, text.lines().count() as u64, "verify skipped a line");
    }
}

thread_local! {
    /// A scratch directory per thread: `tests/fuzz_regressions.rs` replays
    /// the seeds and the regressions on two test threads at once, and two
    /// recoveries in one directory see each other's files.
    static DIR: tempfile::TempDir = tempfile::tempdir().expect("a scratch directory");
}

/// Audit tail recovery (the writer opening a log after a crash) over a log
/// file and a MAC'd head file in a scratch directory. Input: flags byte, 5
/// head bytes, log text. Flag 1: the lines are re-MAC'd and re-chained
/// (flag 2: and the last newline cut, a torn write); flag 4: a head file
/// (index of the line whose hash it records, u16 seq, u16 file_first_seq).
/// Property: a log that verifies against its head before recovery still
/// verifies, with the new head, after recovery and one more record.
pub fn audit_recover(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (head_bytes, log) = rest.split_at(rest.len().min(5));
    let key_bytes = [3; 32];
    let key = AuditKey::from_bytes(&key_bytes);
    let log: Vec<u8> = if flags & 1 != 0 {
        let mut sealed = fuzzing::seal_lines(&String::from_utf8_lossy(log), &key, true).into_bytes();
        if flags & 2 != 0 {
            sealed.pop();
        }
        sealed
    } else {
        log.to_vec()
    };
    let head = (flags & 4 != 0 && head_bytes.len() == 5).then(|| {
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        let at = if lines.is_empty() {
            0
        } else {
            usize::from(head_bytes[0]) % lines.len()
        };
        Anchor {
            seq: u64::from(u16::from_le_bytes([head_bytes[1], head_bytes[2]])),
            hash: lines.get(at).map(|l| fuzzing::line_hash(l)).unwrap_or_default(),
            file_first_seq: u64::from(u16::from_le_bytes([head_bytes[3], head_bytes[4]])),
            ..Anchor::default()
        }
    });
    let before = std::str::from_utf8(&log)
        .ok()
        .map(|t| verify(t, &key, head.as_ref()).is_ok());
    let recovered = DIR.with(|dir| fuzzing::recover_and_append(dir.path(), &log, head.as_ref(), &key_bytes));
    if let Ok((text, new_head)) = recovered {
        if before == Some(true) {
            if let Err(e) = verify(&text, &key, Some(&new_head)) {
                panic!("a log that verified no longer does after recovery: {e}\n{text}");
            }
        }
    }
}

/// The access policy (TOML): parsing, then every check for an identity and
/// key name from the input; and the glob matcher on its own. Input: policy
/// text, NUL, identity, NUL, key name, NUL, glob pattern.
pub fn policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let policy = parts.next().unwrap_or_default();
    let identity = parts.next().unwrap_or("spiffe://example.org/app");
    let key = parts.next().unwrap_or("k");
    let pattern = parts.next().unwrap_or("*");
    let _ = glob(pattern, key);
    if let Ok(p) = Policy::parse(policy) {
        for op in Op::ALL {
            let _ = p.check(identity, op, Some(key));
            let _ = p.check(identity, op, None);
            let _ = p.allows_somewhere(identity, op);
            let _ = p.needs_second_factor(identity, op);
        }
        let _ = p.has_dev_roles();
    }
}

/// The daemon's configuration (TOML): parsing with error recovery (the
/// `check-config` path), path resolution and the semantic checks.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let (cfg, _problems) = Config::parse_reporting(text, Path::new("/etc/kmsd/kmsd.toml"));
    if let Some(mut cfg) = cfg {
        cfg.resolve(Path::new("/etc/kmsd"));
        let _ = cfg.problems();
    }
}

/// Detokenization (FF1 numeric tokens, PAN tokens, `tok_` AES-GCM-SIV
/// tokens) of any string, and the round trip both ways: a token that opens
/// tokenizes back to itself, a value that tokenizes comes back. Input: kind
/// byte, tweak length byte, tweak, token / value.
pub fn detokenize_target(data: &[u8]) {
    let [kind, tlen, rest @ ..] = data else { return };
    let kind = Kind::ALL[usize::from(*kind) % Kind::ALL.len()];
    let (tweak, s) = rest.split_at(usize::from(*tlen).min(rest.len()));
    let Ok(s) = std::str::from_utf8(s) else { return };
    let key = [9u8; 32];
    if let Ok(value) = detokenize(&key, tweak, s, kind) {
        let again = tokenize(&key, tweak, &value, kind);
        assert_eq!(again.as_deref(), Ok(s), "{kind:?}: token {s:?} opened to {value:?}");
    }
    if let Ok(token) = tokenize(&key, tweak, s, kind) {
        let back = detokenize(&key, tweak, &token, kind);
        assert_eq!(back.as_deref(), Ok(s), "{kind:?}: value {s:?} tokenized to {token:?}");
    }
}

/// The redaction scanner, as `fuzz_targets/redact.rs` checks it (that
/// target also asserts a time budget on an amplified input, which this
/// stable replay leaves out: a debug build on a loaded machine is no clock).
pub fn redact(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let r = kmsd::masking::redact(&text, &kmsd::masking::RedactOptions::default());
    let mut last = 0;
    for f in &r.findings {
        assert!(
            f.start >= last && f.start < f.end && f.end <= text.len(),
            "finding out of order or bounds"
        );
        assert!(
            text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
            "finding not on a char boundary"
        );
        last = f.end;
    }
    if r.findings.is_empty() {
        assert_eq!(r.text, text, "text without findings changed");
    }
}

/// Key material wrapped for an import job (`ImportKeyVersion`'s
/// `wrapped_key`): any blob through a job's unwrap, any text as a
/// destination's wrapping public key (`ExportKeyVersion`), never a panic;
/// and what wraps, unwraps to the same bytes.
pub fn wrapped_key(data: &[u8]) {
    use kmsd_keystore::wrap::{WrappingKey, WrappingPublicKey};
    // One fixed RSA-3072 key for the whole run, made once with `openssl
    // genpkey` and used by nothing but fuzzing: generating one here took
    // longer than libFuzzer's per-input timeout in an instrumented build.
    static KEY: std::sync::OnceLock<(WrappingKey, WrappingPublicKey)> = std::sync::OnceLock::new();
    let (key, public) = KEY.get_or_init(|| {
        let key = WrappingKey::from_pkcs8_der(include_bytes!("../wrapping-key-fuzz-only.der")).unwrap();
        let public = WrappingPublicKey::from_pem(&key.public_key_pem().unwrap()).unwrap();
        (key, public)
    });
    let _ = key.unwrap(data);
    let _ = WrappingPublicKey::from_pem(&String::from_utf8_lossy(data));
    if !data.is_empty() && data.len() <= 256 {
        let wrapped = public.wrap(data).unwrap();
        assert_eq!(key.unwrap(&wrapped).unwrap().as_slice(), data, "a wrap did not unwrap");
    }
}
