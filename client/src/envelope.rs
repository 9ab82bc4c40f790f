//! The envelope format, version 1 (`0xE1`, `docs/formats.md` §2): one
//! message sealed locally under a data key that the daemon generated and
//! wrapped under a named kmsd key.
//!
//! This module is the pure format: it parses and bounds a header, seals
//! and opens given a data key. It never calls the daemon, caches nothing
//! and reads no clock; the client's `seal` and `open` add the data-key
//! calls and the caches.
//!
//! ```text
//! 0xE1 | 0x01 | n | key name (n) | w (u16) | wrapped data key (w) | message id (32) | nonce (12) | ciphertext | tag (16)
//! message key = HKDF-SHA256(ikm = data key, salt = message id, info = "kmsd envelope v1 message key")
//! GCM aad     = "kmsd envelope v1" || 0x00 || header || caller's associated data
//! ```
use crate::format::{aead_key, open_in_place, put_key_fields, random, seal_in_place, Reader, NONCE_LEN, TAG_LEN};
pub use crate::format::{DataKey, FormatError};

/// The first byte of an envelope.
pub const FORMAT: u8 = 0xE1;
/// AES-256-GCM with an HKDF-SHA256 per-message key.
pub const ALGORITHM: u8 = 0x01;
/// Length of the random message id (the per-message key's HKDF salt).
pub const MESSAGE_ID_LEN: usize = 32;
const INFO: &[u8] = b"kmsd envelope v1 message key";
const AAD_LABEL: &[u8] = b"kmsd envelope v1\x00";

/// A parsed envelope: its header fields, bounded, and the sealed bytes.
/// Parsing authenticates nothing; [`Envelope::open`] does.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    blob: &'a [u8],
    key_name: &'a str,
    wrapped_key: &'a [u8],
    message_id: [u8; MESSAGE_ID_LEN],
    nonce: [u8; NONCE_LEN],
    /// Header length *H*: everything before the ciphertext.
    header_len: usize,
}

impl<'a> Envelope<'a> {
    /// Parses and bounds the header (fields in order; the first failure
    /// decides): anything [`FORMAT`]-shaped but out of range is
    /// [`FormatError::Malformed`], anything too short is
    /// [`FormatError::Truncated`] (including no room for the tag).
    pub fn parse(blob: &'a [u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(blob);
        if r.u8("format byte")? != FORMAT {
            return Err(FormatError::Malformed("not an envelope (format byte is not 0xE1)"));
        }
        if r.u8("algorithm byte")? != ALGORITHM {
            return Err(FormatError::Malformed("unknown envelope algorithm"));
        }
        let key_name = r.key_name()?;
        let wrapped_key = r.wrapped_key()?;
        let message_id = r.array("message id")?;
        let nonce = r.array("nonce")?;
        let header_len = r.pos();
        r.take(TAG_LEN, "tag")?;
        Ok(Envelope {
            blob,
            key_name,
            wrapped_key,
            message_id,
            nonce,
            header_len,
        })
    }

    /// The kmsd key the data key is wrapped under.
    pub fn key_name(&self) -> &'a str {
        self.key_name
    }

    /// The wrapped data key (a kmsd format-1 ciphertext, associated data
    /// [`crate::format::DATA_KEY_AAD`]).
    pub fn wrapped_key(&self) -> &'a [u8] {
        self.wrapped_key
    }

    /// Verifies and decrypts with the unwrapped data key.
    pub fn open(&self, data_key: &DataKey, aad: &[u8]) -> Result<Vec<u8>, FormatError> {
        let (header, sealed) = self.blob.split_at(self.header_len);
        let key = aead_key(data_key.derive(&self.message_id, INFO)?)?;
        let mut buf = sealed.to_vec();
        let len = open_in_place(&key, self.nonce, &gcm_aad(header, aad), &mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }
}

/// Seals `plaintext` with a fresh random message id and nonce.
pub fn seal(
    data_key: &DataKey,
    key_name: &str,
    wrapped_key: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut message_id = [0u8; MESSAGE_ID_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    random(&mut message_id)?;
    random(&mut nonce)?;
    seal_with(data_key, key_name, wrapped_key, message_id, nonce, plaintext, aad)
}

/// Seals with the given message id and nonce: for the test vectors only
/// (a repeated message id under one data key repeats the message key).
#[doc(hidden)]
pub fn seal_with(
    data_key: &DataKey,
    key_name: &str,
    wrapped_key: &[u8],
    message_id: [u8; MESSAGE_ID_LEN],
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(49 + key_name.len() + wrapped_key.len() + plaintext.len() + TAG_LEN);
    out.push(FORMAT);
    out.push(ALGORITHM);
    put_key_fields(&mut out, key_name, wrapped_key)?;
    out.extend_from_slice(&message_id);
    out.extend_from_slice(&nonce);
    let header_len = out.len();
    let aad = gcm_aad(&out, aad);
    out.extend_from_slice(plaintext);
    let key = aead_key(data_key.derive(&message_id, INFO)?)?;
    let tag = match out.get_mut(header_len..) {
        Some(body) => seal_in_place(&key, nonce, &aad, body)?,
        None => return Err(FormatError::Internal("header length")),
    };
    out.extend_from_slice(&tag);
    Ok(out)
}

fn gcm_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_LABEL.len() + header.len() + aad.len());
    out.extend_from_slice(AAD_LABEL);
    out.extend_from_slice(header);
    out.extend_from_slice(aad);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_slice(&[0x42; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_header_fields() {
        let blob = seal(&key(), "app.pan", &[9; 82], b"4111111111111111", b"row 7").unwrap();
        assert_eq!(blob.len(), 49 + 7 + 82 + 16 + 16);
        let env = Envelope::parse(&blob).unwrap();
        assert_eq!(env.key_name(), "app.pan");
        assert_eq!(env.wrapped_key(), &[9; 82]);
        assert_eq!(env.open(&key(), b"row 7").unwrap(), b"4111111111111111");
        assert_eq!(env.open(&key(), b"row 8"), Err(FormatError::Authentication));
        let other = DataKey::from_slice(&[0x43; 32]).unwrap();
        assert_eq!(env.open(&other, b"row 7"), Err(FormatError::Authentication));
    }

    #[test]
    fn two_seals_differ() {
        let a = seal(&key(), "k", &[1], b"same", b"").unwrap();
        let b = seal(&key(), "k", &[1], b"same", b"").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let blob = seal(&key(), "k", &[1, 2, 3], b"pan", b"aad").unwrap();
        for i in 0..blob.len() {
            for bit in 0..8 {
                let mut t = blob.clone();
                t[i] ^= 1 << bit;
                let opened = Envelope::parse(&t).and_then(|e| e.open(&key(), b"aad"));
                assert!(opened.is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let blob = seal(&key(), "k", &[1, 2, 3], b"pan", b"").unwrap();
        for len in 0..blob.len() {
            let opened = Envelope::parse(&blob[..len]).and_then(|e| e.open(&key(), b""));
            assert!(opened.is_err(), "length {len}");
        }
    }

    #[test]
    fn writers_refuse_what_readers_would() {
        assert!(matches!(seal(&key(), "", &[1], b"", b""), Err(FormatError::Invalid(_))));
        assert!(matches!(
            seal(&key(), "a b", &[1], b"", b""),
            Err(FormatError::Invalid(_))
        ));
        assert!(matches!(
            seal(&key(), &"a".repeat(129), &[1], b"", b""),
            Err(FormatError::Invalid(_))
        ));
        assert!(matches!(seal(&key(), "k", &[], b"", b""), Err(FormatError::Invalid(_))));
        assert!(matches!(
            seal(&key(), "k", &[0; 1025], b"", b""),
            Err(FormatError::Invalid(_))
        ));
        assert!(seal(&key(), &"a".repeat(128), &[0; 1024], b"", b"").is_ok());
    }
}
