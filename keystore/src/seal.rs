//! Sealing of stored records under the master key.
//!
//! # Keys
//! The master key is never used directly by a cipher or a MAC. Each use
//! has its own subkey, `HKDF-SHA256(ikm = master, salt = "kmsd master key
//! v2", info = purpose)`: record sealing, the backup MAC, the manifest MAC
//! (see [`Purpose`]). Every sealed record then has its own key,
//! `HKDF-SHA256(ikm = sealing subkey, salt = 32 random bytes stored with the
//! record, info = "kmsd record key v2")`, as the envelope derives a key per
//! message: a sealing key encrypts one record, so nonce reuse across the
//! many seals of a never-rotating master key is out of the question.
//!
//! # Sealed record, format 2 (written)
//! ```text
//! [0]      format = 2
//! [1..9]   master key id (first 8 bytes of HMAC-SHA256(master, "kmsd master key id v1"))
//! [9..41]  random salt of the record key
//! [41..53] random 96-bit nonce
//! [53..]   AES-256-GCM ciphertext || 128-bit tag
//! AAD = "kmsd record v2" || 0x00 || kind || u32-BE len(name) || name || bytes [0..41]
//! ```
//! # Sealed record, format 1 (read only, migrated at open)
//! ```text
//! [0] format = 1 | [1..9] key id | [9..21] nonce | [21..] ciphertext || tag, keyed by the master key itself
//! AAD = "kmsd record v1" || 0x00 || kind || u32-BE len(name) || name || bytes [0..9]
//! ```
//! Binding kind and name means a record copied to another name, or from
//! one kind to another, fails to open. The key id lets a store sealed
//! under several master keys (mid-rekey) be opened with the right one.
//! Replaying an older sealed record under its own name is caught by the
//! manifest ([`crate::manifest`]), not here.
use crate::aead::{self, NONCE_LEN};
use crate::error::Error;
use crate::secret::MasterKey;
use crate::store::RecordKind;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The legacy format: AES-GCM directly under the master key.
pub const FORMAT_V1: u8 = 1;
/// The current format: a per-record key from a sealing subkey.
pub const FORMAT_V2: u8 = 2;
const ID_LEN: usize = 8;
const V1_HEADER_LEN: usize = 1 + ID_LEN;
const SALT_LEN: usize = 32;
const V2_HEADER_LEN: usize = 1 + ID_LEN + SALT_LEN;
const AAD_LABEL_V1: &[u8] = b"kmsd record v1\0";
const AAD_LABEL_V2: &[u8] = b"kmsd record v2\0";
const SUBKEY_SALT: &[u8] = b"kmsd master key v2";
const RECORD_KEY_INFO: &[u8] = b"kmsd record key v2";

/// What a subkey of the master key is for; each has its own HKDF label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// Per-record sealing keys derive from it.
    Seal,
    /// The MAC of backup snapshots (format 2).
    BackupMac,
    /// The MAC of the integrity manifest's entries.
    ManifestMac,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Seal => b"kmsd subkey: record sealing v2",
            Purpose::BackupMac => b"kmsd subkey: backup mac v2",
            Purpose::ManifestMac => b"kmsd subkey: manifest mac v2",
        }
    }
}

/// A 256-bit subkey, zeroized on drop.
pub type Subkey = Zeroizing<[u8; 32]>;

/// One master key and what derives from it.
struct KeySet {
    master: MasterKey,
    id: [u8; ID_LEN],
    seal: Subkey,
}

impl KeySet {
    fn new(master: MasterKey) -> Self {
        let id = key_id(&master);
        let seal = subkey(&master, Purpose::Seal);
        KeySet { master, id, seal }
    }
}

fn subkey(master: &MasterKey, purpose: Purpose) -> Subkey {
    subkey_with_info(master, purpose.label())
}

fn subkey_with_info(master: &MasterKey, info: &[u8]) -> Subkey {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 255 × 32 limit: never fails.
    let _ = Hkdf::<Sha256>::new(Some(SUBKEY_SALT), master.expose_secret()).expand(info, out.as_mut());
    out
}

fn record_key(seal: &[u8; 32], salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let _ = Hkdf::<Sha256>::new(Some(salt), seal).expand(RECORD_KEY_INFO, out.as_mut());
    out
}

/// Seals and opens records under the master key(s).
pub struct Sealer {
    /// The key new records are sealed under.
    current: KeySet,
    /// Older keys still accepted for opening (during a rekey, and to
    /// verify backups made before one).
    previous: Vec<KeySet>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(key id {})", hex::encode(self.current.id))
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
        Sealer {
            current: KeySet::new(current),
            previous: Vec::new(),
        }
    }

    /// Also accepts records sealed under `older` when opening.
    pub fn with_previous(mut self, older: MasterKey) -> Self {
        self.previous.push(KeySet::new(older));
        self
    }

    /// The current master key's public id, hex.
    pub fn key_id_hex(&self) -> String {
        hex::encode(self.current.id)
    }

    /// The current master key's public id.
    pub fn key_id(&self) -> [u8; 8] {
        self.current.id
    }

    /// The `purpose` subkey of the current master key.
    pub fn subkey(&self, purpose: Purpose) -> Subkey {
        subkey(&self.current.master, purpose)
    }

    /// A subkey of the current master key for a purpose outside this
    /// crate (page tokens): HKDF-SHA256 with `label` as info. Labels must
    /// be distinct per purpose and never start with `kmsd subkey:` (the
    /// prefix of [`Purpose`]'s labels).
    pub fn derive_subkey(&self, label: &[u8]) -> Subkey {
        if label.starts_with(b"kmsd subkey:") {
            // A caller reusing a reserved label gets an unrelated key, never
            // the sealing or MAC subkey.
            return subkey_with_info(&self.current.master, &[b"kmsd external: ", label].concat());
        }
        subkey_with_info(&self.current.master, label)
    }

    /// The `purpose` subkey of the master key with id `id` (current or
    /// previous), if this sealer holds it.
    pub fn subkey_of(&self, id: &[u8; 8], purpose: Purpose) -> Option<Subkey> {
        self.keys().find(|k| k.id == *id).map(|k| subkey(&k.master, purpose))
    }

    /// `purpose` subkeys of every master key held, the current one first.
    pub fn subkeys(&self, purpose: Purpose) -> Vec<Subkey> {
        self.keys().map(|k| subkey(&k.master, purpose)).collect()
    }

    /// Format 1 backup MAC keys (HMAC-SHA256(master, "kmsd backup mac
    /// v1")) of every master key held, to verify backups written before
    /// subkeys were derived with HKDF.
    pub fn legacy_backup_mac_keys(&self) -> Vec<Subkey> {
        self.keys()
            .map(|k| {
                let mut out = Zeroizing::new([0u8; 32]);
                if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(k.master.expose_secret()) {
                    mac.update(b"kmsd backup mac v1");
                    out.copy_from_slice(&mac.finalize().into_bytes());
                }
                out
            })
            .collect()
    }

    fn keys(&self) -> impl Iterator<Item = &KeySet> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    /// Whether `sealed` is in the current format under the current master
    /// key (nothing for a rekey or a migration to do).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        sealed.first() == Some(&FORMAT_V2) && sealed.get(1..V1_HEADER_LEN) == Some(&self.current.id[..])
    }

    /// The id of the master key `sealed` claims to be sealed under.
    pub fn sealed_key_id(sealed: &[u8]) -> Option<[u8; 8]> {
        sealed.get(1..V1_HEADER_LEN)?.try_into().ok()
    }

    fn aad(label: &[u8], kind: RecordKind, name: &str, header: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(label.len() + 5 + name.len() + header.len());
        aad.extend_from_slice(label);
        aad.push(kind.tag());
        aad.extend_from_slice(&(name.len() as u32).to_be_bytes());
        aad.extend_from_slice(name.as_bytes());
        aad.extend_from_slice(header);
        aad
    }

    /// Seals `plaintext` as the record (`kind`, `name`), format 2. Fails
    /// (and returns nothing of the plaintext) only if the AEAD refuses.
    pub fn seal(&self, kind: RecordKind, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(V2_HEADER_LEN + NONCE_LEN + plaintext.len() + aead::TAG_LEN);
        out.push(FORMAT_V2);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&salt);
        let aad = Self::aad(AAD_LABEL_V2, kind, name, &out);
        out.extend_from_slice(&nonce);
        let key = record_key(&self.current.seal, &salt);
        let mut body = Zeroizing::new(Vec::with_capacity(plaintext.len() + aead::TAG_LEN));
        body.extend_from_slice(plaintext);
        aead::seal(&key, &nonce, &aad, &mut body).map_err(|_| Error::Seal {
            kind,
            name: name.to_owned(),
        })?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens the record (`kind`, `name`), format 2 or 1; any mismatch is
    /// `Corrupt`.
    pub fn open(&self, kind: RecordKind, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let corrupt = |reason| Error::Corrupt {
            kind,
            name: name.to_owned(),
            reason,
        };
        let (format, header_len) = match sealed.first() {
            Some(&FORMAT_V1) => (FORMAT_V1, V1_HEADER_LEN),
            Some(&FORMAT_V2) => (FORMAT_V2, V2_HEADER_LEN),
            _ => return Err(corrupt("unknown sealed record format")),
        };
        if sealed.len() < header_len + NONCE_LEN + aead::TAG_LEN {
            return Err(corrupt("sealed record is truncated"));
        }
        let (header, rest) = sealed.split_at(header_len);
        let id = &header[1..V1_HEADER_LEN];
        let Some(keys) = self.keys().find(|k| k.id[..] == *id) else {
            return Err(corrupt("sealed under an unknown master key"));
        };
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let mut nonce_arr = [0u8; NONCE_LEN];
        nonce_arr.copy_from_slice(nonce);
        let mut buf = Zeroizing::new(body.to_vec());
        let opened = if format == FORMAT_V1 {
            let aad = Self::aad(AAD_LABEL_V1, kind, name, header);
            aead::open(keys.master.expose_secret(), &nonce_arr, &aad, &mut buf)
        } else {
            let aad = Self::aad(AAD_LABEL_V2, kind, name, header);
            let key = record_key(&keys.seal, &header[V1_HEADER_LEN..]);
            aead::open(&key, &nonce_arr, &aad, &mut buf)
        };
        opened.map_err(|_| corrupt("integrity check failed (tampered, moved, or wrong master key)"))?;
        Ok(buf)
    }

    /// Seals `plaintext` in the legacy format 1 (tests of the migration
    /// only: nothing writes format 1 any more).
    #[doc(hidden)]
    pub fn danger_seal_v1(&self, kind: RecordKind, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = vec![FORMAT_V1];
        out.extend_from_slice(&self.current.id);
        let aad = Self::aad(AAD_LABEL_V1, kind, name, &out);
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(plaintext.to_vec());
        aead::seal(self.current.master.expose_secret(), &nonce, &aad, &mut body).map_err(|_| Error::Seal {
            kind,
            name: name.to_owned(),
        })?;
        out.extend_from_slice(&body);
        Ok(out)
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
        // format 1 still opens, under the master key itself
        let legacy = s.danger_seal_v1(RecordKind::KeyRing, "a", b"old").unwrap();
        assert_eq!(legacy[0], FORMAT_V1);
        assert!(!s.is_current(&legacy));
        assert_eq!(&s.open(RecordKind::KeyRing, "a", &legacy).unwrap()[..], b"old");
        assert!(s.open(RecordKind::KeyRing, "b", &legacy).is_err());
        assert_eq!(sealed[0], FORMAT_V2);
        assert!(s.is_current(&sealed));
    }

    #[test]
    fn subkeys_differ_per_purpose_and_records_never_share_a_key() {
        let mk = MasterKey::from_bytes(&[7; 32]);
        let s = Sealer::new(MasterKey::from_bytes(&[7; 32]));
        let all = [Purpose::Seal, Purpose::BackupMac, Purpose::ManifestMac].map(|p| *s.subkey(p));
        assert_ne!(
            *s.derive_subkey(b"kmsd subkey: record sealing v2"),
            all[0],
            "reserved labels stay reserved"
        );
        assert_ne!(*s.derive_subkey(b"page tokens"), all[0]);
        for (i, a) in all.iter().enumerate() {
            assert_ne!(a, mk.expose_secret(), "a subkey is never the master key");
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // the same plaintext sealed twice: different salts, so different keys
        let a = s.seal(RecordKind::KeyRing, "a", b"same").unwrap();
        let b = s.seal(RecordKind::KeyRing, "a", b"same").unwrap();
        assert_ne!(a[9..41], b[9..41]);
        assert_ne!(a, b);
        // the record is not sealed under the master key or the subkey itself
        let mut body = a[53..].to_vec();
        let nonce: [u8; 12] = a[41..53].try_into().unwrap();
        let aad = Sealer::aad(AAD_LABEL_V2, RecordKind::KeyRing, "a", &a[..41]);
        assert!(aead::open(mk.expose_secret(), &nonce, &aad, &mut body.clone()).is_err());
        assert!(aead::open(&s.subkey(Purpose::Seal), &nonce, &aad, &mut body).is_err());
    }
}
