//! Opaque `ListKeys` page tokens.
//!
//! A token names the last key name a caller was *shown* (never one it may
//! not read), sealed with AES-256-GCM under a subkey of the master key and
//! bound to the caller's identity and the listing prefix: a caller can
//! neither read a token nor forge one, nor replay another caller's. Tokens
//! survive restarts (the subkey is derived, not random) and die with a
//! master-key rekey (`INVALID_ARGUMENT`: list again from the start).
//!
//! This module never sees key material other than the derived token key.
use crate::error::{Error, Invalid};
use kmsd_keystore::aead::{self, NONCE_LEN, TAG_LEN};
use rand::RngCore;
use zeroize::Zeroizing;

/// The label of the token subkey (distinct from every other subkey label).
pub const SUBKEY_LABEL: &[u8] = b"kmsd list page token v1";

/// Token format version (the first hex byte of every token).
const V1: u8 = 1;

/// Longest name a token may carry (key names are far shorter).
const MAX_NAME: usize = 1024;

fn aad(identity: &str, prefix: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + identity.len() + prefix.len());
    a.extend_from_slice(b"kmsd list page token v1\0");
    a.extend_from_slice(&(identity.len() as u32).to_be_bytes());
    a.extend_from_slice(identity.as_bytes());
    a.extend_from_slice(&(prefix.len() as u32).to_be_bytes());
    a.extend_from_slice(prefix.as_bytes());
    a
}

/// Seals `last_shown` into a token for `identity` listing `prefix`.
pub fn seal(key: &Zeroizing<[u8; 32]>, identity: &str, prefix: &str, last_shown: &str) -> Result<String, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut body = last_shown.as_bytes().to_vec();
    let tag = aead::seal_detached(key, &nonce, &aad(identity, prefix), &mut body)
        .map_err(|_| Error::Internal("page token could not be sealed"))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len() + TAG_LEN);
    out.push(V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(hex::encode(out))
}

/// Opens a token made by [`seal`] for the same identity and prefix.
pub fn open(key: &Zeroizing<[u8; 32]>, identity: &str, prefix: &str, token: &str) -> Result<String, Error> {
    let invalid = || Error::InvalidArgument(Invalid::PageToken);
    if token.len() > 2 * (1 + NONCE_LEN + MAX_NAME + TAG_LEN) {
        return Err(invalid());
    }
    let raw = hex::decode(token).map_err(|_| invalid())?;
    let (version, rest) = raw.split_first().ok_or_else(invalid)?;
    if *version != V1 || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(invalid());
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| invalid())?;
    let mut buf = body.to_vec();
    aead::open(key, &nonce, &aad(identity, prefix), &mut buf).map_err(|_| invalid())?;
    String::from_utf8(buf).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_caller_and_prefix() {
        let key = Zeroizing::new([7u8; 32]);
        let t = seal(&key, "spiffe://a", "pay", "payments.pan").unwrap();
        assert!(!t.contains(&hex::encode("payments.pan")), "the name is not readable");
        assert_eq!(open(&key, "spiffe://a", "pay", &t).unwrap(), "payments.pan");
        assert!(open(&key, "spiffe://b", "pay", &t).is_err(), "another caller");
        assert!(open(&key, "spiffe://a", "", &t).is_err(), "another prefix");
        assert!(open(&Zeroizing::new([8u8; 32]), "spiffe://a", "pay", &t).is_err());
        // the old format (hex of a name) is refused
        assert!(open(&key, "spiffe://a", "pay", &hex::encode("payments.pan")).is_err());
        let mut bad = t.into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert!(open(&key, "spiffe://a", "pay", std::str::from_utf8(&bad).unwrap()).is_err());
        assert!(open(&key, "spiffe://a", "pay", "zz").is_err());
    }
}
