//! The ciphertext envelope, format 1.
//!
//! ```text
//! [0]       format = 0x01
//! [1]       algorithm = 0x01 (AES-256-GCM, HKDF-SHA256 per-message key)
//! [2..6]    key version, u32 big-endian
//! [6..22]   salt, 128 bits, random
//! [22..34]  nonce, 96 bits, random
//! [34..]    AES-256-GCM ciphertext || 128-bit tag
//! ```
//! Each message is encrypted under its own key,
//! `HKDF-SHA256(ikm = version key, salt = salt, info = "kmsd v1 aes-256-gcm message key")`,
//! so a version key is never itself used for AES-GCM and no key
//! approaches the 2^32 random-nonce bound of NIST SP 800-38D (the
//! construction KES, AWS KMS and X-AES-GCM use). The AEAD's associated data
//! is `"kmsd ciphertext v1\0" || bytes[0..6] || u32-BE len(key name) ||
//! key name || caller's associated data`: a ciphertext moved to another
//! key, version or context fails to authenticate.
use crate::error::Error;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use kmsd_keystore::aead::{self, NONCE_LEN, TAG_LEN};
use kmsd_keystore::KeyMaterial;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Envelope format byte.
pub const FORMAT_V1: u8 = 1;
/// Algorithm byte for AES-256-GCM with HKDF-SHA256 message keys.
pub const ALG_AES256GCM_HKDF: u8 = 1;
/// Salt length.
pub const SALT_LEN: usize = 16;
/// Header length (format, algorithm, version).
pub const HEADER_LEN: usize = 6;
/// Bytes an envelope adds to the plaintext.
pub const OVERHEAD: usize = HEADER_LEN + SALT_LEN + NONCE_LEN + TAG_LEN;

const KDF_INFO: &[u8] = b"kmsd v1 aes-256-gcm message key";
const AAD_LABEL: &[u8] = b"kmsd ciphertext v1\0";

/// The parsed, not yet authenticated, header of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The key version named by the envelope.
    pub version: u32,
}

/// Reads the header, rejecting anything that is not a format-1 envelope.
pub fn parse_header(ciphertext: &[u8]) -> Result<Header, Error> {
    let Some(&format) = ciphertext.first() else {
        return Err(Error::MalformedCiphertext("empty"));
    };
    if format != FORMAT_V1 {
        return Err(Error::MalformedCiphertext("unknown format version"));
    }
    if ciphertext.len() < OVERHEAD {
        return Err(Error::MalformedCiphertext("truncated"));
    }
    if ciphertext.get(1) != Some(&ALG_AES256GCM_HKDF) {
        return Err(Error::MalformedCiphertext("unknown algorithm"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&ciphertext[2..6]);
    let version = u32::from_be_bytes(v);
    if version == 0 {
        return Err(Error::MalformedCiphertext("key version 0"));
    }
    Ok(Header { version })
}

fn message_key(key: &KeyMaterial, salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    let _ = Hkdf::<Sha256>::new(Some(salt), key.expose_secret()).expand(KDF_INFO, okm.as_mut());
    okm
}

/// A key version as a tokenization key ([`kmsd_masking::TokenKey`]): the
/// masking crate derives its subkeys through `HMAC-SHA256(material, label)`
/// here and never receives the material. No `Debug`: it refers to key
/// material.
pub struct TokenPrf<'a>(&'a KeyMaterial);

impl<'a> TokenPrf<'a> {
    /// Tokenization under `key`.
    pub fn new(key: &'a KeyMaterial) -> Self {
        TokenPrf(key)
    }
}

impl kmsd_masking::TokenKey for TokenPrf<'_> {
    fn hmac_sha256(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        // HMAC accepts keys of any length, so this cannot fail.
        if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.0.expose_secret()) {
            mac.update(label);
            out.copy_from_slice(&mac.finalize().into_bytes());
        }
        out
    }
}

fn aad(header: &[u8], key_name: &str, associated_data: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_LABEL.len() + HEADER_LEN + 4 + key_name.len() + associated_data.len());
    a.extend_from_slice(AAD_LABEL);
    a.extend_from_slice(header);
    a.extend_from_slice(&(key_name.len() as u32).to_be_bytes());
    a.extend_from_slice(key_name.as_bytes());
    a.extend_from_slice(associated_data);
    a
}

/// Bytes of fresh randomness one message takes (salt and nonce).
pub const FRESH_LEN: usize = SALT_LEN + NONCE_LEN;

/// Most messages whose salts and nonces are drawn in one `getrandom`.
const MAX_DRAW_MESSAGES: usize = 1024;

/// Salts and nonces for the messages of **one call**, from the OS CSPRNG.
///
/// Why per call and not per thread: a pool that outlives the call (the
/// per-thread pool kmsd had before) is copied when a running VM is
/// snapshotted and the snapshot started twice; both clones then hand out
/// the same (salt, nonce) pairs for *different* later messages, which
/// repeats the per-message key and nonce of AES-GCM. The kernel's
/// `getrandom` is reseeded on VM fork (vmgenid), so what matters is that
/// no drawn bytes survive the call that drew them. A single message draws
/// its 28 bytes when it is sealed; a batch draws for up to 1,024 of its
/// messages in one system call, and a clone that resumes a batch in flight
/// can only repeat the same items of the same request (same key, same
/// plaintext, same ciphertext). Each byte is handed out once and zeroed.
#[derive(Debug)]
pub struct Fresh {
    buf: Vec<u8>,
    pos: usize,
    /// Messages this call may still seal that have not been drawn for.
    undrawn: usize,
}

impl Fresh {
    /// For a call that seals at most `messages` messages (1 for a unary
    /// call: one `getrandom` of 28 bytes, when the message is sealed).
    pub fn for_messages(messages: usize) -> Self {
        Fresh {
            buf: Vec::new(),
            pos: 0,
            undrawn: messages,
        }
    }

    /// The next message's salt and nonce.
    fn take(&mut self) -> ([u8; SALT_LEN], [u8; NONCE_LEN]) {
        if self.pos + FRESH_LEN > self.buf.len() {
            // drawn lazily, for at most what the call still needs
            let n = self.undrawn.clamp(1, MAX_DRAW_MESSAGES);
            self.undrawn = self.undrawn.saturating_sub(n);
            self.buf.clear();
            self.buf.resize(n * FRESH_LEN, 0);
            rand::rngs::OsRng.fill_bytes(&mut self.buf);
            self.pos = 0;
        }
        let (mut salt, mut nonce) = ([0u8; SALT_LEN], [0u8; NONCE_LEN]);
        if let Some(chunk) = self.buf.get_mut(self.pos..self.pos + FRESH_LEN) {
            salt.copy_from_slice(&chunk[..SALT_LEN]);
            nonce.copy_from_slice(&chunk[SALT_LEN..]);
            chunk.fill(0); // never hand the same bytes out twice
        } else {
            rand::rngs::OsRng.fill_bytes(&mut salt);
            rand::rngs::OsRng.fill_bytes(&mut nonce);
        }
        self.pos += FRESH_LEN;
        (salt, nonce)
    }

    /// Bytes drawn and not yet handed out (for tests).
    pub fn unused(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

/// Encrypts under `key` (version `version` of ring `key_name`) with a
/// fresh random salt and nonce from the OS CSPRNG. Fails only if the AEAD
/// refuses ([`Error::Internal`]); never returns plaintext or an empty
/// "ciphertext".
pub fn encrypt(
    key: &KeyMaterial,
    key_name: &str,
    version: u32,
    plaintext: &[u8],
    associated_data: &[u8],
) -> Result<Vec<u8>, Error> {
    encrypt_fresh(
        &mut Fresh::for_messages(1),
        key,
        key_name,
        version,
        plaintext,
        associated_data,
    )
}

/// [`encrypt`] with the salt and nonce taken from the call's [`Fresh`].
pub fn encrypt_fresh(
    fresh: &mut Fresh,
    key: &KeyMaterial,
    key_name: &str,
    version: u32,
    plaintext: &[u8],
    associated_data: &[u8],
) -> Result<Vec<u8>, Error> {
    let (salt, nonce) = fresh.take();
    encrypt_with(key, key_name, version, plaintext, associated_data, &salt, &nonce)
}

/// Encrypts with a given salt and nonce. Only for known-answer tests and
/// golden files: reusing a salt and nonce pair is catastrophic.
#[doc(hidden)]
pub fn encrypt_with(
    key: &KeyMaterial,
    key_name: &str,
    version: u32,
    plaintext: &[u8],
    associated_data: &[u8],
    salt: &[u8; SALT_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, Error> {
    seal_envelope(
        key,
        key_name,
        version,
        plaintext,
        associated_data,
        salt,
        nonce,
        aead::seal_detached,
    )
}

/// The AEAD call of the envelope, a parameter so that the failure path
/// is tested (the real one fails only above ~64 GiB).
type SealFn = fn(&[u8; 32], &[u8; NONCE_LEN], &[u8], &mut [u8]) -> Result<[u8; TAG_LEN], aead::SealError>;

#[allow(clippy::too_many_arguments)]
fn seal_envelope(
    key: &KeyMaterial,
    key_name: &str,
    version: u32,
    plaintext: &[u8],
    associated_data: &[u8],
    salt: &[u8; SALT_LEN],
    nonce: &[u8; NONCE_LEN],
    seal: SealFn,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(FORMAT_V1);
    out.push(ALG_AES256GCM_HKDF);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(nonce);
    let aad = aad(&out[..HEADER_LEN], key_name, associated_data);
    let mk = message_key(key, salt);
    let body_start = out.len();
    out.extend_from_slice(plaintext);
    match seal(&mk, nonce, &aad, &mut out[body_start..]) {
        Ok(tag) => {
            out.extend_from_slice(&tag);
            Ok(out)
        }
        Err(aead::SealError) => {
            // never hand back plaintext (the body was zeroed by the AEAD)
            out.fill(0);
            tracing::error!(key = key_name, version, "AES-256-GCM refused to encrypt");
            Err(Error::Internal("encryption failed"))
        }
    }
}

/// Decrypts an envelope whose header was already parsed and whose version
/// key is `key`.
pub fn decrypt(key: &KeyMaterial, key_name: &str, ciphertext: &[u8], associated_data: &[u8]) -> Result<Vec<u8>, Error> {
    parse_header(ciphertext)?;
    let (header, rest) = ciphertext.split_at(HEADER_LEN);
    let (salt, rest) = rest.split_at(SALT_LEN);
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    let mk = message_key(key, salt);
    let mut buf = body.to_vec();
    aead::open(&mk, &n, &aad(header, key_name, associated_data), &mut buf).map_err(|_| Error::DecryptionFailed)?;
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Tokens made through a key version (the daemon's path) are byte for
    /// byte those of the same 32 bytes as a raw key, pinned by
    /// `kmsd_masking::token::tests::known_answer_tokens`.
    #[test]
    fn tokens_through_a_key_version_match_the_pinned_tokens() {
        use kmsd_masking::{detokenize, tokenize, Kind};
        let raw: [u8; 32] = core::array::from_fn(|i| i as u8);
        let material = KeyMaterial::from_bytes(&raw);
        let key = TokenPrf::new(&material);
        for (value, tweak, kind, token) in [
            (
                "4111 1111 1111 1111",
                &b"tenant-a"[..],
                Kind::Pan,
                "7494 5906 5436 1111",
            ),
            ("+44 (0)20 7946 0018", b"", Kind::Phone, "+25 (1)42 7849 2047"),
            (
                "jane.doe@example.com",
                b"tenant-a",
                Kind::Email,
                "tok_AY8keeuxNRhFrAeZous-ClyEobQhRIGiR-3penUWdB1H7m7W4t33dCslUBDga9ACMA",
            ),
        ] {
            assert_eq!(tokenize(&key, tweak, value, kind).unwrap(), token);
            assert_eq!(detokenize(&key, tweak, token, kind).unwrap(), value);
        }
        for kind in Kind::ALL {
            let value = match kind {
                Kind::Pan => "6304000000000000000",
                Kind::Iban => "GB82 WEST 1234 5698 7654 32",
                Kind::UkSortCode => "72-97-08",
                Kind::UkAccountNumber => "44234785",
                Kind::Phone => "07812 567022",
                _ => "jane.doe@example.com",
            };
            assert_eq!(
                tokenize(&key, b"t", value, kind).unwrap(),
                tokenize(&raw, b"t", value, kind).unwrap(),
                "{kind}"
            );
        }
    }

    #[test]
    fn salts_and_nonces_are_drawn_per_call_and_never_repeat() {
        let k = KeyMaterial::from_bytes(&[9; 32]);
        let mut seen = std::collections::HashSet::new();
        // a batch of 3,000 spans several draws of at most 1,024 messages
        let mut fresh = Fresh::for_messages(3000);
        for i in 0..3000 {
            let ct = encrypt_fresh(&mut fresh, &k, "k", 1, b"x", b"").unwrap();
            let pair = ct[HEADER_LEN..HEADER_LEN + FRESH_LEN].to_vec();
            assert_ne!(pair, vec![0u8; FRESH_LEN]);
            assert!(seen.insert(pair), "a salt/nonce pair repeated");
            assert_eq!(decrypt(&k, "k", &ct, b"").unwrap(), b"x");
            // never more drawn than the call still needs: nothing outlives it
            assert!(fresh.unused() <= (3000 - i - 1) * FRESH_LEN);
        }
        assert_eq!(fresh.unused(), 0);
        // a unary call draws exactly one pair, when it seals
        let mut one = Fresh::for_messages(1);
        assert_eq!(one.unused(), 0);
        let ct = encrypt_fresh(&mut one, &k, "k", 1, b"x", b"").unwrap();
        assert_eq!(one.unused(), 0);
        assert!(seen.insert(ct[HEADER_LEN..HEADER_LEN + FRESH_LEN].to_vec()));
        // a call that seals more than it announced still gets fresh pairs
        let mut short = Fresh::for_messages(1);
        for _ in 0..3 {
            let ct = encrypt_fresh(&mut short, &k, "k", 1, b"x", b"").unwrap();
            assert!(seen.insert(ct[HEADER_LEN..HEADER_LEN + FRESH_LEN].to_vec()));
        }
    }

    #[test]
    fn a_failing_aead_is_an_internal_error_and_returns_nothing() {
        fn refuse(
            _: &[u8; 32],
            _: &[u8; NONCE_LEN],
            _: &[u8],
            body: &mut [u8],
        ) -> Result<[u8; TAG_LEN], aead::SealError> {
            body.fill(0);
            Err(aead::SealError)
        }
        let k = KeyMaterial::from_bytes(&[3; 32]);
        let r = seal_envelope(
            &k,
            "a",
            1,
            b"4111111111111111",
            b"",
            &[1; SALT_LEN],
            &[2; NONCE_LEN],
            refuse,
        );
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("4111"), "{}", status.message());
        // the real AEAD succeeds and the result opens
        let ct = encrypt_with(&k, "a", 1, b"x", b"", &[1; SALT_LEN], &[2; NONCE_LEN]).unwrap();
        assert_eq!(decrypt(&k, "a", &ct, b"").unwrap(), b"x");
    }

    #[test]
    fn round_trip_and_bindings() {
        let k = KeyMaterial::from_bytes(&[3; 32]);
        let ct = encrypt(&k, "a", 2, b"secret", b"ctx").unwrap();
        assert_eq!(ct.len(), OVERHEAD + 6);
        assert_eq!(parse_header(&ct).unwrap().version, 2);
        assert_eq!(decrypt(&k, "a", &ct, b"ctx").unwrap(), b"secret");
        assert!(matches!(decrypt(&k, "b", &ct, b"ctx"), Err(Error::DecryptionFailed)));
        assert!(matches!(decrypt(&k, "a", &ct, b"other"), Err(Error::DecryptionFailed)));
        assert!(matches!(
            decrypt(&KeyMaterial::from_bytes(&[4; 32]), "a", &ct, b"ctx"),
            Err(Error::DecryptionFailed)
        ));
        let mut moved = ct.clone();
        moved[5] = 3; // claims another version
        assert!(matches!(decrypt(&k, "a", &moved, b"ctx"), Err(Error::DecryptionFailed)));
        for i in HEADER_LEN..ct.len() {
            let mut t = ct.clone();
            t[i] ^= 0x80;
            assert!(
                matches!(decrypt(&k, "a", &t, b"ctx"), Err(Error::DecryptionFailed)),
                "flip at {i}"
            );
        }
        for n in 0..OVERHEAD {
            assert!(matches!(
                decrypt(&k, "a", &ct[..n], b"ctx"),
                Err(Error::MalformedCiphertext(_))
            ));
        }
        let mut fmt = ct.clone();
        fmt[0] = 2;
        assert!(matches!(
            parse_header(&fmt),
            Err(Error::MalformedCiphertext("unknown format version"))
        ));
    }

    #[test]
    fn fresh_salt_and_nonce_each_time() {
        let k = KeyMaterial::from_bytes(&[3; 32]);
        let a = encrypt(&k, "a", 1, b"same", b"").unwrap();
        let b = encrypt(&k, "a", 1, b"same", b"").unwrap();
        assert_ne!(
            a[HEADER_LEN..HEADER_LEN + SALT_LEN],
            b[HEADER_LEN..HEADER_LEN + SALT_LEN]
        );
        assert_ne!(a, b);
    }
}
