//! The AES-256-GCM core: 256-bit key, 96-bit nonce, 128-bit tag.
//!
//! Everything that encrypts in kmsd (record sealing, the ciphertext
//! envelope) goes through these two functions, so one set of known-answer
//! tests (Wycheproof, and the start-up self-test) covers every use.
//! Backend: RustCrypto `aes-gcm` (with AES-NI/CLMUL detected at run time).
use aes_gcm::aead::{AeadInPlace, KeyInit};
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

/// Encrypts `buf` in place and appends the 16-byte tag.
pub fn seal(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    // Only fails for plaintexts over 64 GiB, far beyond any message limit.
    if let Ok(tag) = cipher.encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf) {
        buf.extend_from_slice(&tag);
    } else {
        buf.clear();
    }
}

/// Verifies and decrypts `buf` (ciphertext followed by the tag) in place,
/// leaving the plaintext. On failure `buf` is cleared.
pub fn open(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AuthError> {
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
    seal(&key, &iv, &aad, &mut buf);
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
        let mut b = vec![0u8; 15];
        assert_eq!(open(&[0; 32], &[0; 12], b"", &mut b), Err(AuthError));
    }
}
