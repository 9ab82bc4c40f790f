//! Key material wrapped for transport: the `CKM_RSA_AES_KEY_WRAP` shape
//! (PKCS#11 v2.40 §2.1.21) that HSMs and the other KMSs use to import and
//! export keys, and that kmsd's import jobs and exports speak.
//!
//! A wrapped key is `RSA-OAEP(K) ‖ KWP_K(material)`:
//! - `K`, an ephemeral AES-256 key, encrypted with RSA-OAEP (SHA-256,
//!   MGF1-SHA-256, empty label) under an RSA-3072 wrapping key: 384 bytes;
//! - the material wrapped under `K` with AES key wrap with padding
//!   (RFC 5649): 8 bytes more than the material, rounded up to 8.
//!
//! # Crates
//! RSA is the `rsa` crate (RustCrypto): ring does no RSA decryption. Its
//! private-key operation is not constant time (RUSTSEC-2023-0071, the
//! Marvin attack); it is always called with blinding here, and the daemon
//! bounds who can reach it and how often (SECURITY.md, "Import jobs").
//! AES key wrap with padding is the `aes-kw` crate (RFC 5649), keyed by
//! the `aes` crate (zeroized on drop).
//!
//! # Never
//! The ephemeral key and unwrapped material live only in zeroizing
//! buffers; no error says which half of a blob failed to a caller (it
//! would be an oracle on the RSA half), and none carries any of its bytes.
use rand::rngs::OsRng;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// The wrapping method's name (`ImportJob.wrapping_method`).
pub const WRAPPING_METHOD: &str = "RSA_OAEP_3072_SHA256_AES_256";
/// Size of every wrapping key's modulus, in bits.
pub const RSA_BITS: usize = 3072;
/// Length of the RSA-OAEP half of a wrapped key.
pub const RSA_PART_LEN: usize = RSA_BITS / 8;
/// Length of the ephemeral AES key.
pub const EPHEMERAL_LEN: usize = 32;
/// Most bytes of material wrapped or unwrapped (an RSA-4096 PKCS#8 key is
/// about 2,400 bytes): every input has a bound.
pub const MAX_MATERIAL_LEN: usize = 8 * 1024;
/// Most bytes of a wrapped key (RSA half, KWP's 8-byte header, padding).
pub const MAX_WRAPPED_LEN: usize = RSA_PART_LEN + 8 + MAX_MATERIAL_LEN;
/// Most bytes of a wrapping public key's PEM text accepted.
pub const MAX_PUBLIC_PEM_LEN: usize = 4 * 1024;

/// What went wrong while wrapping or unwrapping. No variant carries any
/// byte of a key, a blob or the material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The blob cannot be a wrapped key, whatever the key: its length is
    /// wrong (static reason).
    #[error("wrapped key is malformed: {0}")]
    Malformed(&'static str),
    /// The blob does not unwrap under this wrapping key: tampered, or
    /// wrapped for another key. Deliberately one answer for both halves.
    #[error("wrapped key does not unwrap under this import job's key (tampered, or wrapped for another job)")]
    Unwrap,
    /// A wrapping public key that is not an RSA-3072 SubjectPublicKeyInfo
    /// PEM.
    #[error("wrapping public key: {0}")]
    PublicKey(&'static str),
    /// Material empty or longer than [`MAX_MATERIAL_LEN`].
    #[error("key material to wrap: {0}")]
    Material(&'static str),
    /// A stored wrapping key that does not decode, or an RSA operation
    /// that failed for a reason other than the input (static reason).
    #[error("wrapping key: {0}")]
    Key(&'static str),
}

/// An import job's RSA-3072 private key. No `Debug` that shows it; the
/// `rsa` crate zeroizes its numbers on drop.
pub struct WrappingKey(RsaPrivateKey);

impl fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WrappingKey([REDACTED])")
    }
}

impl WrappingKey {
    /// A fresh RSA-3072 key from the OS RNG (about a second in a release
    /// build; the `rsa` and bignum crates are optimised in dev builds too).
    pub fn generate() -> Result<Self, WrapError> {
        RsaPrivateKey::new(&mut OsRng, RSA_BITS)
            .map(WrappingKey)
            .map_err(|_| WrapError::Key("RSA key generation failed"))
    }

    /// The key from its PKCS#8 DER encoding (as sealed in the store, or a
    /// test vector). Refuses any size but 3072 bits.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, WrapError> {
        let key = RsaPrivateKey::from_pkcs8_der(der).map_err(|_| WrapError::Key("not an RSA PKCS#8 private key"))?;
        if key.n().bits() != RSA_BITS {
            return Err(WrapError::Key("not a 3072-bit RSA key"));
        }
        key.validate().map_err(|_| WrapError::Key("inconsistent RSA key"))?;
        Ok(WrappingKey(key))
    }

    /// PKCS#8 DER, in a zeroizing buffer: to be sealed, never stored bare.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        let doc = self
            .0
            .to_pkcs8_der()
            .map_err(|_| WrapError::Key("PKCS#8 encoding failed"))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The public half as SubjectPublicKeyInfo PEM (`ImportJob.public_key_pem`).
    pub fn public_key_pem(&self) -> Result<String, WrapError> {
        self.0
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| WrapError::Key("SPKI encoding failed"))
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) decryption with
    /// blinding: the RSA half alone (the wrapped-key format's first 384
    /// bytes; public for the known-answer vectors).
    pub fn oaep_decrypt(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        if ciphertext.len() != RSA_PART_LEN {
            return Err(WrapError::Malformed("the RSA-OAEP part must be 384 bytes"));
        }
        self.0
            .decrypt_blinded(&mut OsRng, Oaep::new::<Sha256>(), ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| WrapError::Unwrap)
    }

    /// Unwraps a wrapped key (`RSA-OAEP(K) ‖ KWP_K(material)`): the
    /// material, in a zeroizing buffer. Any failure past the lengths is
    /// [`WrapError::Unwrap`], whichever half failed.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        if wrapped.len() > MAX_WRAPPED_LEN {
            return Err(WrapError::Malformed(
                "longer than any wrapped key material kmsd accepts",
            ));
        }
        let (rsa_part, kwp_part) = wrapped
            .split_at_checked(RSA_PART_LEN)
            .ok_or(WrapError::Malformed("shorter than its 384-byte RSA-OAEP part"))?;
        if kwp_part.len() < 16 || kwp_part.len() % 8 != 0 {
            return Err(WrapError::Malformed(
                "the AES key wrap part must be a multiple of 8 bytes, at least 16",
            ));
        }
        let ephemeral = self.oaep_decrypt(rsa_part)?;
        let ephemeral: &[u8; EPHEMERAL_LEN] = ephemeral.as_slice().try_into().map_err(|_| {
            tracing::debug!("the RSA-OAEP part decrypts, but not to a 32-byte AES key");
            WrapError::Unwrap
        })?;
        kwp_unwrap(ephemeral, kwp_part)
    }
}

/// A destination's wrapping key (an import job's public half), parsed from
/// SubjectPublicKeyInfo PEM: exactly 3072 bits.
pub struct WrappingPublicKey(RsaPublicKey);

impl fmt::Debug for WrappingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappingPublicKey({} bits)", self.0.n().bits())
    }
}

impl WrappingPublicKey {
    /// Parses SPKI PEM; refuses anything but an RSA key of 3072 bits.
    pub fn from_pem(pem: &str) -> Result<Self, WrapError> {
        if pem.len() > MAX_PUBLIC_PEM_LEN {
            return Err(WrapError::PublicKey("PEM text too long"));
        }
        let key = RsaPublicKey::from_public_key_pem(pem.trim())
            .map_err(|_| WrapError::PublicKey("not an RSA SubjectPublicKeyInfo PEM (BEGIN PUBLIC KEY)"))?;
        if key.n().bits() != RSA_BITS {
            return Err(WrapError::PublicKey("not a 3072-bit RSA key"));
        }
        Ok(WrappingPublicKey(key))
    }

    /// Wraps a key version's material for this key (an export): the raw
    /// key of AES and HMAC keys, the PKCS#8 DER of signing keys, exposed
    /// only here.
    pub fn wrap_material(&self, material: &crate::Material) -> Result<Vec<u8>, WrapError> {
        self.wrap(material.expose_secret())
    }

    /// Wraps `material` for this key under a fresh ephemeral AES-256 key.
    pub fn wrap(&self, material: &[u8]) -> Result<Vec<u8>, WrapError> {
        let mut ephemeral = Zeroizing::new([0u8; EPHEMERAL_LEN]);
        rand::RngCore::fill_bytes(&mut OsRng, ephemeral.as_mut());
        let mut out = self
            .0
            .encrypt(&mut OsRng, Oaep::new::<Sha256>(), ephemeral.as_ref())
            .map_err(|_| WrapError::Key("RSA-OAEP encryption failed"))?;
        out.extend_from_slice(&kwp_wrap(&ephemeral, material)?);
        Ok(out)
    }
}

/// AES-256 key wrap with padding (RFC 5649) of `material` under `kek`.
pub fn kwp_wrap(kek: &[u8; EPHEMERAL_LEN], material: &[u8]) -> Result<Vec<u8>, WrapError> {
    if material.is_empty() {
        return Err(WrapError::Material("empty"));
    }
    if material.len() > MAX_MATERIAL_LEN {
        return Err(WrapError::Material("longer than 8 KiB"));
    }
    aes_kw::KekAes256::from(*kek)
        .wrap_with_padding_vec(material)
        .map_err(|_| WrapError::Material("AES key wrap refused it"))
}

/// Unwraps RFC 5649 `data` under `kek` into a zeroizing buffer; a failed
/// integrity check (wrong key, tampering, bad padding) is
/// [`WrapError::Unwrap`].
pub fn kwp_unwrap(kek: &[u8; EPHEMERAL_LEN], data: &[u8]) -> Result<Zeroizing<Vec<u8>>, WrapError> {
    if data.len() < 16 || data.len() % 8 != 0 {
        return Err(WrapError::Malformed(
            "the AES key wrap part must be a multiple of 8 bytes, at least 16",
        ));
    }
    if data.len() > MAX_MATERIAL_LEN + 8 {
        return Err(WrapError::Malformed(
            "longer than any wrapped key material kmsd accepts",
        ));
    }
    // Unwrapped (and, until checked, unverified) bytes only ever land in
    // this zeroizing buffer.
    let mut out = Zeroizing::new(vec![0u8; data.len() - 8]);
    let len = aes_kw::KekAes256::from(*kek)
        .unwrap_with_padding(data, &mut out)
        .map_err(|_| WrapError::Unwrap)?
        .len();
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
    use super::*;
    use std::sync::OnceLock;

    /// One generated key for the module's tests (generation is the slow part).
    fn key() -> &'static WrappingKey {
        static KEY: OnceLock<WrappingKey> = OnceLock::new();
        KEY.get_or_init(|| WrappingKey::generate().unwrap())
    }

    fn public() -> WrappingPublicKey {
        WrappingPublicKey::from_pem(&key().public_key_pem().unwrap()).unwrap()
    }

    /// RFC 5649 §6's two vectors use a 192-bit KEK; checked through the
    /// same crate and type family, so the padding logic kmsd relies on is
    /// the RFC's (the AES-256 cases are Wycheproof's, in keystore/tests).
    #[test]
    fn rfc5649_vectors() {
        let kek = aes_kw::KekAes192::from(
            <[u8; 24]>::try_from(hex::decode("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8").unwrap()).unwrap(),
        );
        for (key, wrapped) in [
            (
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ] {
            let (key, wrapped) = (hex::decode(key).unwrap(), hex::decode(wrapped).unwrap());
            assert_eq!(kek.wrap_with_padding_vec(&key).unwrap(), wrapped);
            assert_eq!(kek.unwrap_with_padding_vec(&wrapped).unwrap(), key);
        }
    }

    #[test]
    fn round_trips_every_material_length() {
        let (k, p) = (key(), public());
        for len in [1, 7, 8, 9, 32, 64, 138, 1217, 2400, MAX_MATERIAL_LEN] {
            let material: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let wrapped = p.wrap(&material).unwrap();
            assert_eq!(wrapped.len(), RSA_PART_LEN + 8 + len.div_ceil(8) * 8);
            assert_eq!(k.unwrap(&wrapped).unwrap().as_slice(), material.as_slice());
        }
    }

    #[test]
    fn each_wrap_uses_a_fresh_ephemeral_key() {
        let p = public();
        assert_ne!(p.wrap(&[1; 32]).unwrap(), p.wrap(&[1; 32]).unwrap());
    }

    #[test]
    fn tampering_anywhere_is_one_coarse_error() {
        let (k, p) = (key(), public());
        let wrapped = p.wrap(&[9u8; 32]).unwrap();
        for i in [
            0,
            1,
            200,
            RSA_PART_LEN - 1,
            RSA_PART_LEN,
            RSA_PART_LEN + 8,
            wrapped.len() - 1,
        ] {
            let mut t = wrapped.clone();
            t[i] ^= 0x01;
            assert_eq!(k.unwrap(&t).unwrap_err(), WrapError::Unwrap, "flip at byte {i}");
        }
        // the two halves of two different wraps do not combine
        let other = p.wrap(&[9u8; 32]).unwrap();
        let mut spliced = wrapped[..RSA_PART_LEN].to_vec();
        spliced.extend_from_slice(&other[RSA_PART_LEN..]);
        assert_eq!(k.unwrap(&spliced).unwrap_err(), WrapError::Unwrap);
    }

    #[test]
    fn another_jobs_key_does_not_unwrap() {
        let other = WrappingKey::generate().unwrap();
        let wrapped = public().wrap(&[5u8; 32]).unwrap();
        assert_eq!(other.unwrap(&wrapped).unwrap_err(), WrapError::Unwrap);
    }

    #[test]
    fn bad_lengths_are_errors_not_panics() {
        let k = key();
        for len in [
            0,
            1,
            383,
            384,
            384 + 8,
            384 + 15,
            384 + 17,
            384 + 23,
            MAX_WRAPPED_LEN + 8,
        ] {
            assert!(
                matches!(k.unwrap(&vec![0u8; len]), Err(WrapError::Malformed(_))),
                "length {len}"
            );
        }
        assert!(matches!(k.unwrap(&vec![0u8; 384 + 16]), Err(WrapError::Unwrap)));
        assert!(matches!(kwp_wrap(&[0; 32], &[]), Err(WrapError::Material(_))));
        assert!(matches!(
            kwp_wrap(&[0; 32], &vec![0; MAX_MATERIAL_LEN + 1]),
            Err(WrapError::Material(_))
        ));
        assert!(matches!(kwp_unwrap(&[0; 32], &[0; 8]), Err(WrapError::Malformed(_))));
    }

    #[test]
    fn public_keys_other_than_rsa_3072_are_refused() {
        assert!(WrappingPublicKey::from_pem("").is_err());
        assert!(WrappingPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
        let small = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let pem = small.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        assert_eq!(
            WrappingPublicKey::from_pem(&pem).unwrap_err(),
            WrapError::PublicKey("not a 3072-bit RSA key")
        );
        let der = small.to_pkcs8_der().unwrap();
        assert!(WrappingKey::from_pkcs8_der(der.as_bytes()).is_err());
        assert!(WrappingPublicKey::from_pem(&"A".repeat(MAX_PUBLIC_PEM_LEN + 1)).is_err());
    }

    #[test]
    fn the_private_key_survives_pkcs8_and_prints_nothing() {
        let k = key();
        let again = WrappingKey::from_pkcs8_der(&k.to_pkcs8_der().unwrap()).unwrap();
        let wrapped = public().wrap(b"material").unwrap();
        assert_eq!(again.unwrap(&wrapped).unwrap().as_slice(), b"material");
        assert_eq!(format!("{k:?}"), "WrappingKey([REDACTED])");
        assert!(!format!("{:?}", public()).contains("BEGIN"));
    }
}
