//! `kmsd audit-verify`: check the audit log's chain and MACs offline,
//! against the head file, reading in pieces so memory stays bounded
//! whatever the log's size.
use super::text;
use crate::config::Config;
use std::io::Read as _;
use std::path::PathBuf;

/// A log that verified.
#[derive(Debug)]
pub struct Verified(pub crate::audit::Report);

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.0;
        write!(f, "OK {} records (seq {}..{})", r.records, r.first_seq, r.last_seq)
    }
}

/// Verifies `files` in chain order; with none, every retained file of
/// `[audit] path` (the rotated files, oldest first, then the live log).
pub fn audit_verify(cfg: &Config, files: Vec<PathBuf>) -> Result<Verified, String> {
    let rings = crate::server::open_rings(cfg).map_err(text)?;
    let key = crate::authz::access::audit_key(rings.raw().as_ref(), rings.sealer()).map_err(text)?;
    // the head first: the log read after it holds at least what it records
    let anchor = crate::audit::read_head(&cfg.audit.path, &key)?;
    let files = if files.is_empty() {
        crate::audit::log_files(&cfg.audit.path)
    } else {
        files
    };
    let mut v = crate::audit::Verifier::new(&key, anchor);
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
        Ok(r) => Ok(Verified(r)),
        Err(b) => Err(format!("BROKEN: {b}")),
    }
}
