//! `kmsd audit-verify`: check the audit log's chain and MACs offline,
//! against the head file, reading in pieces so memory stays bounded
//! whatever the log's size.
//!
//! Several nodes (issue 13): each kmsd node writes its own chain (its own
//! head file, sequence numbers and rotated files) under the one audit key
//! their shared store holds. Given one directory per node, each chain is
//! verified on its own and reported per node; one broken chain does not
//! hide the others' results.
use super::text;
use crate::audit::{AuditKey, Report};
use crate::config::Config;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// A log that verified.
#[derive(Debug)]
pub struct Verified(pub Report);

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.0;
        write!(f, "OK {} records (seq {}..{})", r.records, r.first_seq, r.last_seq)
    }
}

/// Every node's chain verified (see [`audit_verify_nodes`]).
#[derive(Debug)]
pub struct NodesVerified(pub Vec<(PathBuf, Report)>);

impl std::fmt::Display for NodesVerified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (dir, r) in &self.0 {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{}: {}", dir.display(), Verified(r.clone()))?;
        }
        Ok(())
    }
}

/// The audit key, from the store of `cfg`.
fn key(cfg: &Config) -> Result<AuditKey, String> {
    let rings = crate::server::open_rings(cfg).map_err(text)?;
    crate::authz::access::audit_key(rings.raw().as_ref(), rings.sealer()).map_err(text)
}

/// Verifies `files` in chain order; with none, every retained file of
/// `[audit] path` (the rotated files, oldest first, then the live log).
pub fn audit_verify(cfg: &Config, files: Vec<PathBuf>) -> Result<Verified, String> {
    let key = key(cfg)?;
    verify_chain(&key, &cfg.audit.path, files).map(Verified)
}

/// Verifies the chains of several nodes: each of `dirs` holds one node's
/// audit files, named as `[audit] path` names them (`audit.log.head`,
/// `audit.log.<first>-<last>`, `audit.log`). Every chain is verified, each
/// against its own head file; the result lists each node, and is an error
/// (still listing each node) when any chain is broken or missing.
pub fn audit_verify_nodes(cfg: &Config, dirs: &[PathBuf]) -> Result<NodesVerified, String> {
    let key = key(cfg)?;
    let name = cfg
        .audit
        .path
        .file_name()
        .ok_or_else(|| format!("audit.path {} names no file", cfg.audit.path.display()))?;
    let mut ok = Vec::new();
    let mut lines = Vec::new();
    let mut broken = 0usize;
    for dir in dirs {
        let log = dir.join(name);
        let result = if crate::audit::log_files(&log).is_empty() && !head_exists(&log) {
            Err(format!("no audit files ({}*) here", Path::new(name).display()))
        } else {
            verify_chain(&key, &log, Vec::new())
        };
        match result {
            Ok(r) => {
                lines.push(format!("{}: {}", dir.display(), Verified(r.clone())));
                ok.push((dir.clone(), r));
            }
            Err(e) => {
                broken += 1;
                lines.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    if broken > 0 {
        return Err(format!(
            "{broken} of {} node chains failed\n{}",
            dirs.len(),
            lines.join("\n")
        ));
    }
    Ok(NodesVerified(ok))
}

fn head_exists(log: &Path) -> bool {
    let mut head = log.as_os_str().to_owned();
    head.push(".head");
    Path::new(&head).exists()
}

/// Verifies one chain: `files` in chain order (none: every retained file
/// of the log `log`) against `log`'s head file.
fn verify_chain(key: &AuditKey, log: &Path, files: Vec<PathBuf>) -> Result<Report, String> {
    // the head first: the log read after it holds at least what it records
    let anchor = crate::audit::read_head(log, key)?;
    let files = if files.is_empty() {
        crate::audit::log_files(log)
    } else {
        files
    };
    let mut v = crate::audit::Verifier::new(key, anchor);
    let mut buf = vec![0u8; 1 << 20];
    let mut result = Ok(());
    'files: for f in &files {
        let mut file = std::fs::File::open(f).map_err(|e| format!("reading {}: {e}", f.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| format!("reading {}: {e}", f.display()))?;
            let Some(piece) = buf.get(..n).filter(|p| !p.is_empty()) else {
                break;
            };
            result = v.feed(piece);
            if result.is_err() {
                break 'files;
            }
        }
    }
    match result.and_then(|()| v.finish()) {
        Ok(r) => Ok(r),
        Err(b) => Err(format!("BROKEN: {b}")),
    }
}
