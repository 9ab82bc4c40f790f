//! `kmsd rekey`: re-seal every stored record under a new master key
//! (resumable: an interrupted run is finished by running it again with
//! `store.previous_master_key` set to the old key).
use super::{text, Progress};
use crate::config::{load_master_key, Config};
use kmsd_keystore::{RingStore, Sealer};
use std::path::Path;

/// What a completed rekey did.
#[derive(Debug)]
pub struct Rekeyed {
    /// Records re-sealed by this run.
    pub resealed: u64,
    /// Records already under the new key (a resumed run).
    pub current: u64,
    /// The old master key's id (hex).
    pub old_key_id: String,
    /// The new master key's id (hex).
    pub new_key_id: String,
}

impl std::fmt::Display for Rekeyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rekey complete: {} records re-sealed, {} already under the new key (old key id {}, new key id {}).",
            self.resealed, self.current, self.old_key_id, self.new_key_id
        )?;
        write!(
            f,
            "Point store.master_key at the new key and remove store.previous_master_key."
        )
    }
}

/// Re-seals every record of `cfg`'s store under the master key in the
/// file `new_key`.
pub fn rekey(cfg: &Config, new_key: &Path, progress: Progress<'_>) -> Result<Rekeyed, String> {
    let old = crate::server::sealer(cfg).map_err(text)?;
    let old_key = load_master_key(&cfg.master_key_path().map_err(text)?).map_err(text)?;
    let new = load_master_key(new_key).map_err(text)?;
    let mut sealer = Sealer::new(new).with_previous(old_key);
    if let Some(prev) = &cfg.store.previous_master_key {
        // resuming: the configured key may already be the new one
        sealer = sealer.with_previous(load_master_key(prev).map_err(text)?);
    }
    let rings = RingStore::open(crate::server::open_store(cfg).map_err(text)?, sealer).map_err(text)?;
    let sealer = rings.sealer();
    let (resealed, current) = kmsd_keystore::backup::rekey(rings.raw().as_ref(), sealer, progress).map_err(text)?;
    Ok(Rekeyed {
        resealed,
        current,
        old_key_id: old.key_id_hex(),
        new_key_id: sealer.key_id_hex(),
    })
}
