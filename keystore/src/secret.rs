//! Secret types. Each wraps its bytes in a zeroizing `SecretBox`, has a
//! `Debug` that prints no bytes, and exposes them only through
//! `expose_secret()` at the places where a cipher is keyed. The daemon's
//! own secrets (officers' TOTP secrets, the audit MAC key) are used only
//! through methods here (a code, a keyed MAC, sealing), so the daemon never
//! holds their bytes.
use crate::store::RecordKind;
use crate::{Error, Sealer};
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

/// Secret key material of variable length: an HMAC key (32 or 64 bytes)
/// or a PKCS#8 DER private key (ECDSA P-256, RSA, Ed25519). Zeroized on
/// drop, no `Debug` bytes, and not `Clone`: the one copy the daemon makes
/// (into its in-memory ring cache) is the explicit
/// [`duplicate`](Self::duplicate).
pub struct SecretBytes(secrecy::SecretSlice<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes` (moved, not copied: nothing to zeroize
    /// behind).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        SecretBytes(secrecy::SecretSlice::from(bytes))
    }

    /// Copies `bytes` (the caller zeroizes its copy).
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::from_vec(bytes.to_vec())
    }

    /// The raw bytes, for keying a primitive.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.expose_secret().len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A second zeroizing copy.
    pub fn duplicate(&self) -> Self {
        Self::from_slice(self.expose_secret())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.len())
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

/// Length of an officer's TOTP secret (160 bits, RFC 4226's recommendation
/// for HMAC-SHA1).
pub const TOTP_SECRET_LEN: usize = 20;
/// TOTP step length, seconds (RFC 6238's default, what authenticator apps use).
pub const TOTP_STEP: i64 = 30;
/// TOTP code length, digits.
pub const TOTP_DIGITS: u32 = 6;

/// An officer's shared TOTP secret (RFC 6238, HMAC-SHA1). The daemon never
/// holds its bytes: it computes codes ([`hotp`](Self::hotp)), seals and
/// opens it, and shows it once at enrolment
/// ([`to_base32_for_enrolment`](Self::to_base32_for_enrolment),
/// [`otpauth_uri`](Self::otpauth_uri)). No `Debug` bytes; zeroized on drop.
pub struct TotpSecret(SecretBox<[u8; TOTP_SECRET_LEN]>);

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([REDACTED])")
    }
}

impl Clone for TotpSecret {
    fn clone(&self) -> Self {
        TotpSecret(SecretBox::new(Box::new(*self.0.expose_secret())))
    }
}

impl TotpSecret {
    /// A fresh secret from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut b = Box::new([0u8; TOTP_SECRET_LEN]);
        rand::rngs::OsRng.fill_bytes(b.as_mut());
        TotpSecret(SecretBox::new(b))
    }

    /// Wraps bytes of the right length (test vectors; `None` otherwise).
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; TOTP_SECRET_LEN] = bytes.try_into().ok()?;
        Some(TotpSecret(SecretBox::new(Box::new(arr))))
    }

    /// The HOTP value (RFC 4226) for `counter` with `digits` digits; TOTP
    /// is `counter = unix_time / 30`.
    pub fn hotp(&self, counter: u64, digits: u32) -> u32 {
        hotp(self.0.expose_secret(), counter, digits)
    }

    /// Seals the secret into the value of record `kind`/`name`, after a
    /// (non-secret) `header` the caller reads back with
    /// [`open_sealed`](Self::open_sealed).
    pub fn seal_with(&self, sealer: &Sealer, kind: RecordKind, name: &str, header: &[u8]) -> Result<Vec<u8>, Error> {
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(header.len() + TOTP_SECRET_LEN));
        plain.extend_from_slice(header);
        plain.extend_from_slice(self.0.expose_secret());
        sealer.seal(kind, name, &plain)
    }

    /// Opens a value sealed by [`seal_with`](Self::seal_with) with a
    /// header of `header_len` bytes: the header and the secret, or `None`
    /// when the record opens but does not hold one (the wrong length).
    pub fn open_sealed(
        sealer: &Sealer,
        kind: RecordKind,
        name: &str,
        sealed: &[u8],
        header_len: usize,
    ) -> Result<Option<(Vec<u8>, Self)>, Error> {
        let plain = sealer.open(kind, name, sealed)?;
        Ok(plain
            .split_at_checked(header_len)
            .and_then(|(header, raw)| Some((header.to_vec(), Self::from_slice(raw)?))))
    }

    /// RFC 4648 base32 (no padding), as authenticator apps expect: the
    /// secret itself, to show once to the officer who enrols.
    pub fn to_base32_for_enrolment(&self) -> String {
        base32(self.0.expose_secret())
    }

    /// The `otpauth://` URI for enrolment (contains the secret: show it
    /// once, to the officer).
    pub fn otpauth_uri(&self, account: &str) -> String {
        let label: String = account
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!(
            "otpauth://totp/kmsd:{label}?secret={}&issuer=kmsd&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}",
            self.to_base32_for_enrolment()
        )
    }
}

/// HOTP (RFC 4226: HMAC-SHA1, dynamic truncation) over a secret the caller
/// holds: the authenticator's side (tests, tools). The daemon's own
/// secrets go through [`TotpSecret::hotp`].
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return 0;
    };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h.get(19).copied().unwrap_or(0) & 0x0f) as usize;
    let word = h
        .get(off..off + 4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        .unwrap_or(0);
    (word & 0x7fff_ffff) % 10u32.pow(digits)
}

fn base32(data: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A 256-bit HMAC-SHA256 key (the audit trail's MAC key). The daemon
/// holds only the keyed MAC ([`hmac`](Self::hmac)), never the bytes.
pub struct MacKey(SecretBox<[u8; KEY_LEN]>);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey([REDACTED])")
    }
}

impl MacKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut b = Box::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(b.as_mut());
        MacKey(SecretBox::new(b))
    }

    /// Wraps key bytes (tests and fixed vectors).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        MacKey(SecretBox::new(Box::new(*bytes)))
    }

    /// The keyed HMAC-SHA256, ready for data (`None` cannot happen: HMAC
    /// takes keys of any length).
    pub fn hmac(&self) -> Option<hmac::Hmac<sha2::Sha256>> {
        use hmac::Mac;
        hmac::Hmac::<sha2::Sha256>::new_from_slice(self.0.expose_secret()).ok()
    }

    /// Seals the key into the value of record `kind`/`name`.
    pub fn seal_with(&self, sealer: &Sealer, kind: RecordKind, name: &str) -> Result<Vec<u8>, Error> {
        sealer.seal(kind, name, self.0.expose_secret())
    }

    /// Opens a value sealed by [`seal_with`](Self::seal_with); `None` when
    /// the record opens but does not hold a key (the wrong length).
    pub fn open_sealed(sealer: &Sealer, kind: RecordKind, name: &str, sealed: &[u8]) -> Result<Option<Self>, Error> {
        let plain = sealer.open(kind, name, sealed)?;
        Ok(<&[u8; KEY_LEN]>::try_from(plain.as_slice()).ok().map(Self::from_bytes))
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

    #[test]
    fn hotp_rfc4226_vectors_and_base32() {
        // RFC 4226 appendix D
        let s = TotpSecret::from_slice(b"12345678901234567890").unwrap();
        let want = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (c, w) in want.iter().enumerate() {
            assert_eq!(s.hotp(c as u64, 6), *w, "counter {c}");
            assert_eq!(hotp(b"12345678901234567890", c as u64, 6), *w);
        }
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(s.to_base32_for_enrolment(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert!(!format!("{s:?}").contains("GEZ") && !format!("{s:?}").contains("49"));
        assert_eq!(format!("{:?}", MacKey::from_bytes(&[0xAB; 32])), "MacKey([REDACTED])");
    }

    #[test]
    fn totp_and_mac_keys_seal_and_open() {
        let sealer = crate::Sealer::new(MasterKey::from_bytes(&[5; 32]));
        let kind = RecordKind::Secret;
        let s = TotpSecret::generate();
        let sealed = s.seal_with(&sealer, kind, "t", &[1, 2]).unwrap();
        let (header, back) = TotpSecret::open_sealed(&sealer, kind, "t", &sealed, 2)
            .unwrap()
            .unwrap();
        assert_eq!((header, back.hotp(7, 8)), (vec![1, 2], s.hotp(7, 8)));
        assert!(TotpSecret::open_sealed(&sealer, kind, "t", &sealed, 3)
            .unwrap()
            .is_none());
        assert!(TotpSecret::open_sealed(&sealer, kind, "other", &sealed, 2).is_err());
        let m = MacKey::generate();
        let sealed = m.seal_with(&sealer, kind, "m").unwrap();
        let back = MacKey::open_sealed(&sealer, kind, "m", &sealed).unwrap().unwrap();
        use hmac::Mac;
        let tag = |k: &MacKey| k.hmac().unwrap().chain_update(b"x").finalize().into_bytes();
        assert_eq!(tag(&m), tag(&back));
        let short = sealer.seal(kind, "m", &[1; 31]).unwrap();
        assert!(MacKey::open_sealed(&sealer, kind, "m", &short).unwrap().is_none());
    }
}
