//! `kmsd restore`: load a snapshot written by `kmsctl backup` into an empty
//! store sealed under the same master key.
use super::{text, Progress};
use crate::config::Config;
use std::path::{Path, PathBuf};

/// What a completed restore did.
#[derive(Debug)]
pub struct Restored {
    /// Records written.
    pub records: u64,
    /// The snapshot they came from.
    pub file: PathBuf,
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "restored {} records from {}", self.records, self.file.display())
    }
}

/// Restores the snapshot `file` into `cfg`'s store.
pub fn restore(cfg: &Config, file: &Path, progress: Progress<'_>) -> Result<Restored, String> {
    let rings = crate::server::open_rings(cfg).map_err(text)?;
    let bytes = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let records =
        kmsd_keystore::backup::read_snapshot(&bytes, rings.sealer()).map_err(|e| format!("backup rejected: {e}"))?;
    let total = records.len() as u64;
    progress(0, total);
    let n = kmsd_keystore::backup::restore_snapshot(&rings, &records, &mut |done, _| progress(done, total))
        .map_err(text)?;
    Ok(Restored {
        records: n,
        file: file.to_owned(),
    })
}
