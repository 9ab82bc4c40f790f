//! Secret types. Each wraps its bytes in a zeroizing `SecretBox`, has a
//! `Debug` that prints no bytes, and exposes them only through
//! `expose_secret()` at the places where a cipher is keyed.
use crate::Error;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// Length of every symmetric key kmsd holds (AES-256).
pub const KEY_LEN: usize = 32;

/// A 256-bit key version's material.
pub struct KeyMaterial(SecretBox<[u8; KEY_LEN]>);

impl KeyMaterial {
    /// Fresh material from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        KeyMaterial(SecretBox::new(bytes))
    }

    /// Wraps existing bytes (from a sealed record or a test vector). The
    /// caller zeroizes its copy.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        KeyMaterial(SecretBox::new(Box::new(*bytes)))
    }

    /// The raw key bytes, for keying a cipher.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

impl Clone for KeyMaterial {
    fn clone(&self) -> Self {
        KeyMaterial::from_bytes(self.expose_secret())
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial([REDACTED])")
    }
}

/// The master key that seals every stored record.
pub struct MasterKey(SecretBox<[u8; KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Self {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        MasterKey(SecretBox::new(bytes))
    }

    /// Wraps existing bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        MasterKey(SecretBox::new(Box::new(*bytes)))
    }

    /// Reads a master key file: exactly 32 raw bytes, or 64 hex digits with
    /// an optional trailing newline (convenient for `systemd-creds`).
    /// The error never contains the file's content.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let raw = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|e| Error::MasterKey(format!("cannot read {}: {e}", path.display())))?,
        );
        let mut bytes = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        if raw.len() == KEY_LEN {
            bytes.copy_from_slice(&raw);
        } else {
            let text = raw.trim_ascii_end();
            if text.len() != 2 * KEY_LEN || hex::decode_to_slice(text, bytes.as_mut()).is_err() {
                return Err(Error::MasterKey(format!(
                    "{} must hold exactly 32 bytes (or 64 hex digits), found {} bytes",
                    path.display(),
                    raw.len()
                )));
            }
        }
        Ok(MasterKey::from_bytes(&bytes))
    }

    /// Writes a new random master key to `path` (mode 0600, created, never
    /// overwriting an existing file) and returns it.
    pub fn create_file(path: &Path) -> Result<Self, Error> {
        let key = MasterKey::generate();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(path)
            .map_err(|e| Error::MasterKey(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(key.expose_secret())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::MasterKey(format!("cannot write {}: {e}", path.display())))?;
        Ok(key)
    }

    /// The raw key bytes, for keying the sealing cipher.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_bytes() {
        let k = KeyMaterial::from_bytes(&[0xAB; 32]);
        let d = format!("{k:?}");
        assert!(!d.contains("171") && !d.to_lowercase().contains("ab"), "{d}");
        let m = MasterKey::from_bytes(&[0xCD; 32]);
        let d = format!("{m:?}");
        assert!(!d.contains("205") && !d.to_lowercase().contains("cd"), "{d}");
    }

    #[test]
    fn master_key_file_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mk");
        let k = MasterKey::create_file(&p).unwrap();
        let again = MasterKey::load(&p).unwrap();
        assert_eq!(k.expose_secret(), again.expose_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(MasterKey::create_file(&p).is_err(), "never overwrites");
        let hexp = dir.path().join("hex");
        std::fs::write(&hexp, format!("{}\n", "11".repeat(32))).unwrap();
        assert_eq!(MasterKey::load(&hexp).unwrap().expose_secret(), &[0x11; 32]);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"short-secret").unwrap();
        let e = MasterKey::load(&bad).unwrap_err().to_string();
        assert!(!e.contains("short-secret"), "{e}");
    }
}
