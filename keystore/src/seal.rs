//! Sealing of stored records under the master key.
//!
//! Sealed record, format 1:
//! ```text
//! [0]      format = 1
//! [1..9]   master key id (first 8 bytes of HMAC-SHA256(master, "kmsd master key id v1"))
//! [9..21]  random 96-bit nonce
//! [21..]   AES-256-GCM ciphertext || 128-bit tag
//! AAD = "kmsd record v1" || 0x00 || kind || u32-BE len(name) || name || bytes [0..9]
//! ```
//! Binding kind and name means a record copied to another name, or from
//! one kind to another, fails to open. The key id lets a store sealed
//! under several master keys (mid-rekey) be opened with the right one.
//! Random nonces are safe here: record writes are admin operations, many
//! orders of magnitude below the 2^32 random-nonce bound of SP 800-38D.
use crate::aead::{self, NONCE_LEN};
use crate::error::Error;
use crate::secret::MasterKey;
use crate::store::RecordKind;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 8;
const AAD_LABEL: &[u8] = b"kmsd record v1\0";

/// Seals and opens records under the master key(s).
pub struct Sealer {
    /// The key new records are sealed under.
    current: MasterKey,
    current_id: [u8; 8],
    /// Older keys still accepted for opening (during a rekey).
    previous: Vec<(MasterKey, [u8; 8])>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(key id {})", hex::encode(self.current_id))
    }
}

/// The public identifier of a master key (safe to log).
pub fn key_id(key: &MasterKey) -> [u8; 8] {
    let mut id = [0u8; 8];
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose_secret()) {
        mac.update(b"kmsd master key id v1");
        let out = mac.finalize().into_bytes();
        id.copy_from_slice(&out[..8]);
    }
    id
}

impl Sealer {
    /// A sealer using `current` for new records.
    pub fn new(current: MasterKey) -> Self {
        let current_id = key_id(&current);
        Sealer {
            current,
            current_id,
            previous: Vec::new(),
        }
    }

    /// Also accepts records sealed under `older` when opening.
    pub fn with_previous(mut self, older: MasterKey) -> Self {
        let id = key_id(&older);
        self.previous.push((older, id));
        self
    }

    /// The current master key's public id, hex.
    pub fn key_id_hex(&self) -> String {
        hex::encode(self.current_id)
    }

    /// A 32-byte subkey of the current master key for another purpose
    /// (HMAC-SHA256(master, label)); labels must be distinct per purpose.
    pub fn derive_subkey(&self, label: &[u8]) -> zeroize::Zeroizing<[u8; 32]> {
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.current.expose_secret()) {
            mac.update(label);
            out.copy_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    /// Whether `sealed` was sealed under the current master key.
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        sealed.get(1..HEADER_LEN) == Some(&self.current_id[..])
    }

    fn aad(kind: RecordKind, name: &str, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_LABEL.len() + 5 + name.len() + HEADER_LEN);
        aad.extend_from_slice(AAD_LABEL);
        aad.push(kind.tag());
        aad.extend_from_slice(&(name.len() as u32).to_be_bytes());
        aad.extend_from_slice(name.as_bytes());
        aad.extend_from_slice(header);
        aad
    }

    /// Seals `plaintext` as the record (`kind`, `name`). Fails (and
    /// returns nothing of the plaintext) only if the AEAD refuses.
    pub fn seal(&self, kind: RecordKind, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + aead::TAG_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.current_id);
        let aad = Self::aad(kind, name, &out);
        out.extend_from_slice(&nonce);
        let mut body = Vec::with_capacity(plaintext.len() + aead::TAG_LEN);
        body.extend_from_slice(plaintext);
        aead::seal(self.current.expose_secret(), &nonce, &aad, &mut body).map_err(|_| Error::Seal {
            kind,
            name: name.to_owned(),
        })?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens the record (`kind`, `name`); any mismatch is `Corrupt`.
    pub fn open(&self, kind: RecordKind, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let corrupt = |reason| Error::Corrupt {
            kind,
            name: name.to_owned(),
            reason,
        };
        if sealed.len() < HEADER_LEN + NONCE_LEN + aead::TAG_LEN {
            return Err(corrupt("sealed record is truncated"));
        }
        let (header, rest) = sealed.split_at(HEADER_LEN);
        if header[0] != FORMAT_V1 {
            return Err(corrupt("unknown sealed record format"));
        }
        let id = &header[1..];
        let key = if id == self.current_id {
            &self.current
        } else if let Some((k, _)) = self.previous.iter().find(|(_, pid)| pid[..] == *id) {
            k
        } else {
            return Err(corrupt("sealed under an unknown master key"));
        };
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let mut nonce_arr = [0u8; NONCE_LEN];
        nonce_arr.copy_from_slice(nonce);
        let mut buf = Zeroizing::new(body.to_vec());
        aead::open(
            key.expose_secret(),
            &nonce_arr,
            &Self::aad(kind, name, header),
            &mut buf,
        )
        .map_err(|_| corrupt("integrity check failed (tampered, moved, or wrong master key)"))?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_bindings() {
        let s = Sealer::new(MasterKey::from_bytes(&[7; 32]));
        let sealed = s.seal(RecordKind::KeyRing, "a", b"hello").unwrap();
        assert_eq!(&s.open(RecordKind::KeyRing, "a", &sealed).unwrap()[..], b"hello");
        assert!(matches!(
            s.open(RecordKind::KeyRing, "b", &sealed),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            s.open(RecordKind::Meta, "a", &sealed),
            Err(Error::Corrupt { .. })
        ));
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 0x40;
            assert!(s.open(RecordKind::KeyRing, "a", &t).is_err(), "flip at {i}");
        }
        for n in 0..sealed.len() {
            assert!(s.open(RecordKind::KeyRing, "a", &sealed[..n]).is_err());
        }
        let other = Sealer::new(MasterKey::from_bytes(&[8; 32]));
        assert!(other.open(RecordKind::KeyRing, "a", &sealed).is_err());
        let both = Sealer::new(MasterKey::from_bytes(&[8; 32])).with_previous(MasterKey::from_bytes(&[7; 32]));
        assert!(both.open(RecordKind::KeyRing, "a", &sealed).is_ok());
        assert!(!both.is_current(&sealed));
    }
}
