//! The files of the chain: the MAC'd head file beside the live log
//! ([`Anchor`], [`read_head`]) and the rotated files
//! (`<log>.<first seq>-<last seq>`) that, oldest first and then the live
//! log, hold one unbroken chain.
use super::record::AuditKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) hash: String,
    /// First sequence number in the live file.
    pub(super) file_first_seq: u64,
    /// First sequence number of the oldest retained file: verify reports a
    /// log that starts later (its oldest files deleted). Absent in heads
    /// written before it existed (then found from the files on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) first_seq: Option<u64>,
    pub(super) mac: String,
}

impl Head {
    /// What the head's MAC covers (the old three-field form when the head
    /// predates `first_seq`, so old heads still verify).
    pub(super) fn mac_input(seq: u64, hash: &str, file_first_seq: u64, first_seq: Option<u64>) -> String {
        match first_seq {
            Some(f) => format!("{seq}:{hash}:{file_first_seq}:{f}"),
            None => format!("{seq}:{hash}:{file_first_seq}"),
        }
    }
}

/// `<log>.<first seq>-<last seq>`: the name a rotated log gets.
pub(super) fn rotated_path(log: &Path, first: u64, last: u64) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(format!(".{first:020}-{last:020}"));
    PathBuf::from(p)
}

/// A rotated file beside the live log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The file.
    pub path: PathBuf,
    /// Its first sequence number (from its name).
    pub first: u64,
    /// Its last sequence number (from its name).
    pub last: u64,
}

/// The rotated files of `log` (`<log>.<first seq>-<last seq>`), oldest
/// first. Side files (`.head`, `.torn`, `.unverified-…`) are not rotated
/// files.
pub fn rotated_files(log: &Path) -> Vec<Rotated> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Rotated> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name();
            let rest = file.to_str()?.strip_prefix(name)?.strip_prefix('.')?;
            let (a, b) = rest.split_once('-')?;
            let digits = |s: &str| s.len() == 20 && s.bytes().all(|c| c.is_ascii_digit());
            if !digits(a) || !digits(b) {
                return None;
            }
            Some(Rotated {
                path: log.with_file_name(&file),
                first: a.parse().ok()?,
                last: b.parse().ok()?,
            })
        })
        .collect();
    out.sort_by_key(|r| r.first);
    out
}

/// Every file of the log in chain order: the rotated files, oldest first,
/// then the live log (what `kmsd audit-verify` reads when given no files).
pub fn log_files(log: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = rotated_files(log).into_iter().map(|r| r.path).collect();
    // (none right after a rotation; a live log that should hold records
    // but is gone is a cut tail, which verify reports against the head)
    if log.exists() {
        files.push(log.to_owned());
    }
    files
}

pub(super) fn head_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

/// A point of the chain the log must reach: the writer's last durable
/// record (from the daemon, or from the MAC'd head file).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Anchor {
    /// Sequence number of the last durable record.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// First sequence number of the live file.
    pub file_first_seq: u64,
    /// First sequence number of the oldest retained file (0: unknown, not
    /// checked): a log given to verify must start there (or earlier).
    pub first_seq: u64,
}

/// Reads and checks the head file beside `log` (read it *before* the log,
/// so that the log read afterwards contains at least what it records).
pub fn read_head(log: &Path, key: &AuditKey) -> Result<Option<Anchor>, String> {
    let Ok(t) = std::fs::read_to_string(head_path(log)) else {
        return Ok(None);
    };
    let h: Head = serde_json::from_str(&t).map_err(|_| "the audit head file is malformed".to_string())?;
    if key.mac(Head::mac_input(h.seq, &h.hash, h.file_first_seq, h.first_seq).as_bytes()) != h.mac {
        return Err("the audit head file fails its MAC".into());
    }
    Ok(Some(Anchor {
        seq: h.seq,
        hash: h.hash,
        file_first_seq: h.file_first_seq,
        first_seq: h.first_seq.unwrap_or(0),
    }))
}
