//! The AES-256-GCM core: 256-bit key, 96-bit nonce, 128-bit tag.
//!
//! Everything that encrypts in kmsd (record sealing, the ciphertext
//! envelope) goes through [`seal`] and [`open`], so one set of known-answer
//! tests (Wycheproof, and the start-up self-test) covers every use.
//!
//! # Backend
//! Two implementations sit behind the small [`Aead`] trait, and the
//! Wycheproof suite runs against both:
//! - [`RingAead`] (the default): ring's BoringSSL-derived assembly, which
//!   fuses CTR and GHASH in one pass with AES-NI/AVX and, where present,
//!   VAES/VPCLMULQDQ, selected at run time. Measured here at 16 KiB:
//!   7.9 GB/s, 1.9x `openssl speed -evp aes-256-gcm` (4.1 GB/s) on the
//!   same machine (see BENCHMARKS.md).
//! - `RustCryptoAead` (feature `rustcrypto`: tests and benchmarks only):
//!   RustCrypto `aes-gcm` 0.10 (zeroize feature), two passes (CTR, then
//!   GHASH): 1.4 GB/s, 0.34x OpenSSL.
//!
//! The trade-off: ring does not zeroize its expanded key schedule on drop.
//! kmsd only ever keys the AEAD with short-lived per-message keys (derived,
//! used for one message, dropped on the stack) and the master key, the
//! process memory is locked against swapping where the limit allows, and
//! the process is non-dumpable; the long-lived secrets themselves
//! (version keys, master key) stay in zeroizing `secrecy` boxes.
#[cfg(feature = "rustcrypto")]
use aes_gcm::aead::{AeadInPlace, KeyInit};
#[cfg(feature = "rustcrypto")]
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Authentication failed: wrong key, nonce or associated data, or the
/// ciphertext or tag was modified. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AuthError;

/// Encryption failed (only above the backend's per-call size limit,
/// ~64 GiB, far beyond any kmsd message). The buffer holds nothing of the
/// plaintext afterwards. Carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES-256-GCM encryption failed")]
pub struct SealError;

/// An AES-256-GCM implementation.
pub trait Aead {
    /// Encrypts `buf` in place and appends the 16-byte tag. On failure
    /// `buf` is cleared (never left holding plaintext) and `SealError`
    /// returned, so a caller cannot mistake an empty buffer for output.
    fn seal(&self, key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), SealError>;
    /// Verifies and decrypts `buf` (ciphertext || tag) in place, leaving
    /// the plaintext; on failure `buf` is cleared.
    fn open(&self, key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AuthError>;
}

/// ring's AES-256-GCM (the default backend).
#[derive(Debug, Clone, Copy, Default)]
pub struct RingAead;

impl Aead for RingAead {
    fn seal(&self, key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), SealError> {
        use ring::aead::{Aad, LessSafeKey, Nonce as RNonce, UnboundKey, AES_256_GCM};
        // A 32-byte key is always valid for AES-256-GCM, and sealing only
        // fails above ring's per-call size limit (~64 GiB); either way the
        // buffer is cleared rather than left half-encrypted.
        let sealed = UnboundKey::new(&AES_256_GCM, key)
            .map(LessSafeKey::new)
            .and_then(|k| k.seal_in_place_append_tag(RNonce::assume_unique_for_key(*nonce), Aad::from(aad), buf));
        sealed.map_err(|_| {
            buf.fill(0);
            buf.clear();
            SealError
        })
    }

    fn open(&self, key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AuthError> {
        use ring::aead::{Aad, LessSafeKey, Nonce as RNonce, UnboundKey, AES_256_GCM};
        let opened = UnboundKey::new(&AES_256_GCM, key).map(LessSafeKey::new).and_then(|k| {
            k.open_in_place(RNonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
                .map(|p| p.len())
        });
        match opened {
            Ok(len) => {
                buf.truncate(len);
                Ok(())
            }
            Err(_) => {
                buf.clear();
                Err(AuthError)
            }
        }
    }
}

/// RustCrypto `aes-gcm` 0.10 (kept as a second, independent
/// implementation; checked by the same vectors). Feature `rustcrypto`
/// only: tests and benchmarks, never the daemon.
#[cfg(feature = "rustcrypto")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCryptoAead;

#[cfg(feature = "rustcrypto")]
impl Aead for RustCryptoAead {
    fn seal(&self, key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), SealError> {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        // Only fails for plaintexts over 64 GiB, far beyond any message limit.
        match cipher.encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf) {
            Ok(tag) => {
                buf.extend_from_slice(&tag);
                Ok(())
            }
            Err(_) => {
                buf.fill(0);
                buf.clear();
                Err(SealError)
            }
        }
    }

    fn open(&self, key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AuthError> {
        let Some(ct_len) = buf.len().checked_sub(TAG_LEN) else {
            buf.clear();
            return Err(AuthError);
        };
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        let tag = *Tag::from_slice(&buf[ct_len..]);
        buf.truncate(ct_len);
        match cipher.decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, &tag) {
            Ok(()) => Ok(()),
            Err(_) => {
                buf.clear();
                Err(AuthError)
            }
        }
    }
}

/// Encrypts `buf` in place and appends the 16-byte tag (default backend).
/// On failure `buf` is cleared and `SealError` returned.
pub fn seal(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), SealError> {
    RingAead.seal(key, nonce, aad, buf)
}

/// Encrypts `in_out` in place and returns the 16-byte tag (default
/// backend), so a caller can encrypt inside a larger buffer without a
/// copy. On the (only above ~64 GiB) failure, `in_out` is zeroed and
/// `SealError` returned.
pub fn seal_detached(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; TAG_LEN], SealError> {
    use ring::aead::{Aad, LessSafeKey, Nonce as RNonce, UnboundKey, AES_256_GCM};
    let sealed = UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .and_then(|k| k.seal_in_place_separate_tag(RNonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out));
    match sealed {
        Ok(tag) => {
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag.as_ref());
            Ok(t)
        }
        Err(_) => {
            in_out.fill(0);
            Err(SealError)
        }
    }
}

/// Verifies and decrypts `buf` (ciphertext followed by the tag) in place,
/// leaving the plaintext. On failure `buf` is cleared (default backend).
pub fn open(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AuthError> {
    RingAead.open(key, nonce, aad, buf)
}

/// A known-answer test of the AEAD (the AES-256 case of the GCM
/// specification, test case 16 of McGrew & Viega), run by the daemon
/// before it accepts connections.
pub fn self_test() -> Result<(), &'static str> {
    const KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const IV: &str = "cafebabefacedbaddecaf888";
    const PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    const AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const CT: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
    const TAG: &str = "76fc6ece0f4e1768cddf8853bb2d551b";
    let dec = |s: &str| hex::decode(s).map_err(|_| "self-test vector is not hex");
    let key: [u8; 32] = dec(KEY)?.try_into().map_err(|_| "bad key length")?;
    let iv: [u8; 12] = dec(IV)?.try_into().map_err(|_| "bad iv length")?;
    let aad = dec(AAD)?;
    let mut buf = dec(PT)?;
    seal(&key, &iv, &aad, &mut buf).map_err(|_| "AES-256-GCM known-answer test failed to encrypt")?;
    let mut want = dec(CT)?;
    want.extend(dec(TAG)?);
    if buf != want {
        return Err("AES-256-GCM known-answer test produced the wrong ciphertext");
    }
    open(&key, &iv, &aad, &mut buf).map_err(|_| "AES-256-GCM known-answer test failed to decrypt")?;
    if buf != dec(PT)? {
        return Err("AES-256-GCM known-answer test decrypted to the wrong plaintext");
    }
    let mut tampered = want.clone();
    if let Some(b) = tampered.last_mut() {
        *b ^= 1;
    }
    if open(&key, &iv, &aad, &mut tampered).is_ok() {
        return Err("AES-256-GCM known-answer test accepted a forged tag");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_test_passes() {
        self_test().unwrap();
    }

    #[test]
    fn short_input_is_rejected() {
        for backend in [&RingAead as &dyn Aead, &RustCryptoAead] {
            let mut b = vec![0u8; 15];
            assert_eq!(backend.open(&[0; 32], &[0; 12], b"", &mut b), Err(AuthError));
            assert!(b.is_empty());
        }
    }

    #[test]
    fn backends_agree() {
        for len in [0usize, 1, 15, 16, 17, 64, 1000, 16384] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (mut a, mut b) = (pt.clone(), pt.clone());
            RingAead.seal(&[9; 32], &[3; 12], b"aad", &mut a).unwrap();
            RustCryptoAead.seal(&[9; 32], &[3; 12], b"aad", &mut b).unwrap();
            assert_eq!(a, b, "len {len}");
            RustCryptoAead.open(&[9; 32], &[3; 12], b"aad", &mut a).unwrap();
            assert_eq!(a, pt);
        }
    }
}
