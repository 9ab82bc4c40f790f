//! MACs and signatures over key material ([`Material`]), and public keys.
//!
//! Which crate does what (no hand-written cryptography here):
//! - HMAC-SHA256/512: `ring::hmac` (verification: `ring::hmac::verify`,
//!   constant time).
//! - Signing and verifying **messages**: `ring` (`EcdsaKeyPair`,
//!   `RsaKeyPair` with `RSA_PSS_SHA256`, `Ed25519KeyPair`; verification
//!   with `UnparsedPublicKey`), constant-time implementations.
//! - Signing and verifying a pre-computed SHA-256 **digest**, which `ring`
//!   cannot do: `p256` (`sign_prehash` / `verify_prehash`, RFC 6979 nonces)
//!   for ECDSA, and the `rsa` crate's PSS (`BlindedSigningKey`: the private
//!   operation is blinded) for RSA. The `rsa` crate's big-integer
//!   arithmetic is not constant time (RUSTSEC-2023-0071, the Marvin
//!   attack): blinding masks the timing of each private operation, and
//!   only digest signing reaches it (message signing, the default, is
//!   `ring`'s). Ed25519 signs messages only (a digest is refused).
//! - Public keys: SubjectPublicKeyInfo DER (from `rsa`/`p256`'s encoders;
//!   Ed25519's is a fixed 12-byte prefix and the key), PEM, RFC 7517 JWK.
//!
//! `ring`'s key pairs (and `ring::hmac::Key`) are not zeroized on drop;
//! `p256`'s and `rsa`'s private keys are. A [`SigningKey`] is parsed once
//! per version and kept in the daemon's ring cache (re-parsing an RSA key
//! per call is slow), and dropped when its version is destroyed or its
//! ring deleted. HMAC keys are keyed per call from the zeroizing material
//! and never cached.
use crate::error::Error;
use crate::keyring::Algorithm;
use crate::material::Material;
use base64::Engine;
use ring::signature::{self as sig, KeyPair as _};

/// Length of the SHA-256 digest `Sign` and `Verify` accept.
pub const DIGEST_LEN: usize = 32;

/// What is signed or verified.
#[derive(Debug, Clone, Copy)]
pub enum SignInput<'a> {
    /// The message (hashed as the algorithm says).
    Message(&'a [u8]),
    /// A SHA-256 digest of the message, computed by the caller.
    Digest(&'a [u8]),
}

/// How an ECDSA signature is encoded (RSA-PSS and Ed25519 have one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SigEncoding {
    /// ASN.1 DER.
    #[default]
    Der,
    /// r || s, 32 bytes each (IEEE P1363; JWS ES256).
    P1363,
}

fn wrong_type(alg: Algorithm, what: &str) -> Error {
    Error::Precondition(format!("a {} key does not {what}", alg.as_str()))
}

fn hmac_alg(alg: Algorithm) -> Result<ring::hmac::Algorithm, Error> {
    match alg {
        Algorithm::HmacSha256 => Ok(ring::hmac::HMAC_SHA256),
        Algorithm::HmacSha512 => Ok(ring::hmac::HMAC_SHA512),
        other => Err(wrong_type(other, "compute MACs")),
    }
}

/// The HMAC of `data` under `material` (an HMAC key of `alg`).
pub fn mac(alg: Algorithm, material: &Material, data: &[u8]) -> Result<Vec<u8>, Error> {
    let key = ring::hmac::Key::new(hmac_alg(alg)?, material.expose_secret());
    Ok(ring::hmac::sign(&key, data).as_ref().to_vec())
}

/// Whether `tag` is the HMAC of `data` under `material`, compared in
/// constant time (`ring::hmac::verify`). A tag of the wrong length is
/// simply not valid.
pub fn verify_mac(alg: Algorithm, material: &Material, data: &[u8], tag: &[u8]) -> Result<bool, Error> {
    let key = ring::hmac::Key::new(hmac_alg(alg)?, material.expose_secret());
    Ok(ring::hmac::verify(&key, data, tag).is_ok())
}

fn check_digest(alg: Algorithm, digest: &[u8]) -> Result<(), Error> {
    if alg == Algorithm::Ed25519 {
        return Err(Error::InvalidInput(
            "an ED25519 key signs messages only, not pre-computed digests (Ed25519 hashes the message itself)".into(),
        ));
    }
    if digest.len() != DIGEST_LEN {
        return Err(Error::InvalidInput(format!(
            "a digest must be a SHA-256 digest of {DIGEST_LEN} bytes, got {}",
            digest.len()
        )));
    }
    Ok(())
}

/// A parsed private key of a signing version, ready to sign. No `Debug`
/// that shows key material.
pub struct SigningKey {
    alg: Algorithm,
    inner: Inner,
    public: PublicKey,
}

enum Inner {
    Ecdsa {
        /// `ring`, r || s encoding (converted to DER when asked).
        pair: sig::EcdsaKeyPair,
        /// `p256`, for digests.
        prehash: p256::ecdsa::SigningKey,
    },
    Rsa {
        /// `ring`, for messages.
        pair: sig::RsaKeyPair,
        /// The `rsa` crate with blinding, for digests.
        prehash: Box<rsa::pss::BlindedSigningKey<sha2::Sha256>>,
    },
    Ed25519(sig::Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, [REDACTED])", self.alg.as_str())
    }
}

impl SigningKey {
    /// Parses a version's PKCS#8 material as a key of `alg`.
    pub fn parse(alg: Algorithm, material: &Material) -> Result<Self, Error> {
        let der = material.expose_secret();
        let bad = |why: String| Error::InvalidMaterial(format!("{} key material: {why}", alg.as_str()));
        match alg {
            Algorithm::EcdsaP256Sha256 => {
                use p256::pkcs8::DecodePrivateKey;
                let rng = ring::rand::SystemRandom::new();
                let pair = sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|e| bad(format!("not a PKCS#8 P-256 private key ({e})")))?;
                let prehash = p256::ecdsa::SigningKey::from_pkcs8_der(der)
                    .map_err(|_| bad("not a PKCS#8 P-256 private key".into()))?;
                let public = PublicKey::ec(pair.public_key().as_ref())?;
                Ok(SigningKey {
                    alg,
                    inner: Inner::Ecdsa { pair, prehash },
                    public,
                })
            }
            Algorithm::RsaPss3072Sha256 | Algorithm::RsaPss4096Sha256 => {
                use rsa::pkcs8::DecodePrivateKey;
                use rsa::traits::PublicKeyParts;
                let pair =
                    sig::RsaKeyPair::from_pkcs8(der).map_err(|e| bad(format!("not a PKCS#8 RSA private key ({e})")))?;
                let key =
                    rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|_| bad("not a PKCS#8 RSA private key".into()))?;
                let want = alg.rsa_bits().unwrap_or(0);
                if key.n().bits() != want {
                    return Err(bad(format!(
                        "a {}-bit modulus, expected exactly {want}",
                        key.n().bits()
                    )));
                }
                let public = PublicKey::rsa(alg, key.to_public_key())?;
                let prehash = Box::new(rsa::pss::BlindedSigningKey::<sha2::Sha256>::new_with_salt_len(
                    key, DIGEST_LEN,
                ));
                Ok(SigningKey {
                    alg,
                    inner: Inner::Rsa { pair, prehash },
                    public,
                })
            }
            Algorithm::Ed25519 => {
                let pair = sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| bad(format!("not a PKCS#8 Ed25519 private key ({e})")))?;
                let raw: [u8; 32] = pair
                    .public_key()
                    .as_ref()
                    .try_into()
                    .map_err(|_| bad("Ed25519 public key length".into()))?;
                Ok(SigningKey {
                    alg,
                    inner: Inner::Ed25519(pair),
                    public: PublicKey {
                        alg,
                        inner: PubInner::Ed25519(raw),
                    },
                })
            }
            other => Err(wrong_type(other, "sign")),
        }
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Its public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `input`. ECDSA encodes as `encoding` says; the others ignore it.
    pub fn sign(&self, input: SignInput<'_>, encoding: SigEncoding) -> Result<Vec<u8>, Error> {
        let failed = || Error::InvalidInput(format!("{} signing failed", self.alg.as_str()));
        let rng = ring::rand::SystemRandom::new();
        match (&self.inner, input) {
            (Inner::Ecdsa { pair, .. }, SignInput::Message(m)) => {
                let rs = pair.sign(&rng, m).map_err(|_| failed())?;
                match encoding {
                    SigEncoding::P1363 => Ok(rs.as_ref().to_vec()),
                    SigEncoding::Der => p256::ecdsa::Signature::from_slice(rs.as_ref())
                        .map(|s| s.to_der().as_bytes().to_vec())
                        .map_err(|_| failed()),
                }
            }
            (Inner::Ecdsa { prehash, .. }, SignInput::Digest(d)) => {
                use p256::ecdsa::signature::hazmat::PrehashSigner;
                check_digest(self.alg, d)?;
                let s: p256::ecdsa::Signature = prehash.sign_prehash(d).map_err(|_| failed())?;
                Ok(match encoding {
                    SigEncoding::P1363 => s.to_bytes().to_vec(),
                    SigEncoding::Der => s.to_der().as_bytes().to_vec(),
                })
            }
            (Inner::Rsa { pair, .. }, SignInput::Message(m)) => {
                let mut out = vec![0u8; pair.public().modulus_len()];
                pair.sign(&sig::RSA_PSS_SHA256, &rng, m, &mut out)
                    .map_err(|_| failed())?;
                Ok(out)
            }
            (Inner::Rsa { prehash, .. }, SignInput::Digest(d)) => {
                use rsa::signature::{hazmat::RandomizedPrehashSigner, SignatureEncoding};
                check_digest(self.alg, d)?;
                let s = prehash
                    .sign_prehash_with_rng(&mut rand::rngs::OsRng, d)
                    .map_err(|_| failed())?;
                Ok(s.to_vec())
            }
            (Inner::Ed25519(pair), SignInput::Message(m)) => Ok(pair.sign(m).as_ref().to_vec()),
            (Inner::Ed25519(_), SignInput::Digest(d)) => {
                check_digest(self.alg, d)?;
                Err(failed())
            }
        }
    }
}

/// The public half of a signing key: verifies, and encodes as SPKI DER,
/// PEM and JWK. Not secret.
#[derive(Debug, Clone)]
pub struct PublicKey {
    alg: Algorithm,
    inner: PubInner,
}

#[derive(Debug, Clone)]
enum PubInner {
    /// Uncompressed SEC1 point (65 bytes), and the `p256` key for digests.
    Ec {
        point: Vec<u8>,
        key: p256::ecdsa::VerifyingKey,
    },
    /// PKCS#1 `RSAPublicKey` DER (what `ring` verifies with), and the
    /// `rsa` key for digests.
    Rsa {
        pkcs1: Vec<u8>,
        key: rsa::RsaPublicKey,
    },
    Ed25519([u8; 32]),
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE,
/// AlgorithmIdentifier { id-Ed25519 }, BIT STRING of 32 bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl PublicKey {
    fn ec(point: &[u8]) -> Result<Self, Error> {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
            .map_err(|_| Error::InvalidInput("not a P-256 public key".into()))?;
        Ok(PublicKey {
            alg: Algorithm::EcdsaP256Sha256,
            inner: PubInner::Ec {
                point: key.to_encoded_point(false).as_bytes().to_vec(),
                key,
            },
        })
    }

    fn rsa(alg: Algorithm, key: rsa::RsaPublicKey) -> Result<Self, Error> {
        use rsa::pkcs1::EncodeRsaPublicKey;
        use rsa::traits::PublicKeyParts;
        if Some(key.n().bits()) != alg.rsa_bits() {
            return Err(Error::InvalidInput(format!(
                "a {}-bit RSA public key is not a {} key",
                key.n().bits(),
                alg.as_str()
            )));
        }
        let pkcs1 = key
            .to_pkcs1_der()
            .map_err(|_| Error::InvalidInput("RSA public key encoding".into()))?
            .as_bytes()
            .to_vec();
        Ok(PublicKey {
            alg,
            inner: PubInner::Rsa { pkcs1, key },
        })
    }

    /// Parses a SubjectPublicKeyInfo DER as a public key of `alg` (what
    /// [`spki_der`](Self::spki_der) writes; also test vectors).
    pub fn from_spki_der(alg: Algorithm, der: &[u8]) -> Result<Self, Error> {
        let bad = || Error::InvalidInput(format!("not a {} public key", alg.as_str()));
        match alg {
            Algorithm::EcdsaP256Sha256 => {
                use p256::pkcs8::DecodePublicKey;
                let key = p256::ecdsa::VerifyingKey::from_public_key_der(der).map_err(|_| bad())?;
                Self::ec(key.to_encoded_point(false).as_bytes())
            }
            Algorithm::RsaPss3072Sha256 | Algorithm::RsaPss4096Sha256 => {
                use rsa::pkcs8::DecodePublicKey;
                Self::rsa(alg, rsa::RsaPublicKey::from_public_key_der(der).map_err(|_| bad())?)
            }
            Algorithm::Ed25519 => {
                let raw = der
                    .strip_prefix(&ED25519_SPKI_PREFIX[..])
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .ok_or_else(bad)?;
                Ok(PublicKey {
                    alg,
                    inner: PubInner::Ed25519(raw),
                })
            }
            other => Err(wrong_type(other, "have a public key")),
        }
    }

    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Whether `signature` is valid for `input`. A malformed signature is
    /// not valid (`Ok(false)`); a digest of the wrong length, or a digest
    /// for Ed25519, is an error (the request is wrong, not the signature).
    pub fn verify(&self, input: SignInput<'_>, signature: &[u8], encoding: SigEncoding) -> Result<bool, Error> {
        Ok(match (&self.inner, input) {
            (PubInner::Ec { point, .. }, SignInput::Message(m)) => {
                let alg = match encoding {
                    SigEncoding::Der => &sig::ECDSA_P256_SHA256_ASN1,
                    SigEncoding::P1363 => &sig::ECDSA_P256_SHA256_FIXED,
                };
                sig::UnparsedPublicKey::new(alg, point).verify(m, signature).is_ok()
            }
            (PubInner::Ec { key, .. }, SignInput::Digest(d)) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                check_digest(self.alg, d)?;
                let s = match encoding {
                    SigEncoding::Der => p256::ecdsa::Signature::from_der(signature),
                    SigEncoding::P1363 => p256::ecdsa::Signature::from_slice(signature),
                };
                s.is_ok_and(|s| key.verify_prehash(d, &s).is_ok())
            }
            (PubInner::Rsa { pkcs1, .. }, SignInput::Message(m)) => {
                sig::UnparsedPublicKey::new(&sig::RSA_PSS_2048_8192_SHA256, pkcs1)
                    .verify(m, signature)
                    .is_ok()
            }
            (PubInner::Rsa { key, .. }, SignInput::Digest(d)) => {
                use rsa::signature::hazmat::PrehashVerifier;
                check_digest(self.alg, d)?;
                let vk = rsa::pss::VerifyingKey::<sha2::Sha256>::new_with_salt_len(key.clone(), DIGEST_LEN);
                rsa::pss::Signature::try_from(signature).is_ok_and(|s| vk.verify_prehash(d, &s).is_ok())
            }
            (PubInner::Ed25519(k), SignInput::Message(m)) => sig::UnparsedPublicKey::new(&sig::ED25519, k)
                .verify(m, signature)
                .is_ok(),
            (PubInner::Ed25519(_), SignInput::Digest(d)) => {
                check_digest(self.alg, d)?;
                false
            }
        })
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Result<Vec<u8>, Error> {
        let enc = || Error::InvalidInput("public key encoding".into());
        match &self.inner {
            PubInner::Ec { key, .. } => {
                use p256::pkcs8::EncodePublicKey;
                Ok(p256::PublicKey::from(key)
                    .to_public_key_der()
                    .map_err(|_| enc())?
                    .as_bytes()
                    .to_vec())
            }
            PubInner::Rsa { key, .. } => {
                use rsa::pkcs8::EncodePublicKey;
                Ok(key.to_public_key_der().map_err(|_| enc())?.as_bytes().to_vec())
            }
            PubInner::Ed25519(k) => {
                let mut out = ED25519_SPKI_PREFIX.to_vec();
                out.extend_from_slice(k);
                Ok(out)
            }
        }
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn pem(&self) -> Result<String, Error> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.spki_der()?);
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        Ok(out)
    }

    /// RFC 7517 JWK as JSON text, with `kid`, `alg` (RFC 7518 / RFC 8037:
    /// ES256, PS256, EdDSA) and `"use":"sig"`.
    pub fn jwk(&self, kid: &str) -> String {
        let kid: String = kid
            .chars()
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c if c.is_control() => Vec::new(),
                c => vec![c],
            })
            .collect();
        let alg = self.alg.jws_alg().unwrap_or("");
        match &self.inner {
            PubInner::Ec { point, .. } => {
                let (x, y) = (point.get(1..33).unwrap_or(&[]), point.get(33..65).unwrap_or(&[]));
                format!(
                    r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}","kid":"{kid}","alg":"{alg}","use":"sig"}}"#,
                    b64url(x),
                    b64url(y)
                )
            }
            PubInner::Rsa { key, .. } => {
                use rsa::traits::PublicKeyParts;
                format!(
                    r#"{{"kty":"RSA","n":"{}","e":"{}","kid":"{kid}","alg":"{alg}","use":"sig"}}"#,
                    b64url(&key.n().to_bytes_be()),
                    b64url(&key.e().to_bytes_be())
                )
            }
            PubInner::Ed25519(k) => format!(
                r#"{{"kty":"OKP","crv":"Ed25519","x":"{}","kid":"{kid}","alg":"{alg}","use":"sig"}}"#,
                b64url(k)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNING: [Algorithm; 4] = [
        Algorithm::EcdsaP256Sha256,
        Algorithm::RsaPss3072Sha256,
        Algorithm::RsaPss4096Sha256,
        Algorithm::Ed25519,
    ];

    fn sha256(m: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(m).to_vec()
    }

    #[test]
    fn every_signing_type_signs_and_verifies_messages_and_digests() {
        for alg in SIGNING {
            let key = SigningKey::parse(alg, &Material::generate(alg).unwrap()).unwrap();
            let public = PublicKey::from_spki_der(alg, &key.public_key().spki_der().unwrap()).unwrap();
            let m = b"the message";
            for enc in [SigEncoding::Der, SigEncoding::P1363] {
                let s = key.sign(SignInput::Message(m), enc).unwrap();
                assert!(
                    public.verify(SignInput::Message(m), &s, enc).unwrap(),
                    "{alg:?} {enc:?}"
                );
                assert!(!public.verify(SignInput::Message(b"other"), &s, enc).unwrap());
                let mut bad = s.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(!public.verify(SignInput::Message(m), &bad, enc).unwrap());
                if alg == Algorithm::Ed25519 {
                    let e = key.sign(SignInput::Digest(&sha256(m)), enc).unwrap_err();
                    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
                    continue;
                }
                // a digest signature verifies as a message signature and back
                let d = sha256(m);
                let s = key.sign(SignInput::Digest(&d), enc).unwrap();
                assert!(
                    public.verify(SignInput::Message(m), &s, enc).unwrap(),
                    "{alg:?} {enc:?}"
                );
                assert!(public.verify(SignInput::Digest(&d), &s, enc).unwrap());
                assert!(!public.verify(SignInput::Digest(&sha256(b"x")), &s, enc).unwrap());
                assert!(key.sign(SignInput::Digest(&d[..31]), enc).is_err());
            }
            let pem = key.public_key().pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
            let jwk = key.public_key().jwk("k/1");
            assert!(
                jwk.contains(r#""kid":"k/1""#) && jwk.contains(r#""use":"sig""#),
                "{jwk}"
            );
            assert!(jwk.contains(alg.jws_alg().unwrap()));
            assert!(format!("{key:?}").contains("REDACTED"));
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_and_verifies_in_constant_time() {
        // RFC 4231 test case 2 ("Jefe"), padded keys are not our lengths:
        // check against the RustCrypto hmac crate instead, at our lengths.
        use hmac::Mac;
        for (alg, len) in [(Algorithm::HmacSha256, 32), (Algorithm::HmacSha512, 64)] {
            let m = Material::import(alg, &vec![7u8; len]).unwrap();
            let tag = mac(alg, &m, b"data").unwrap();
            let want = match alg {
                Algorithm::HmacSha256 => hmac::Hmac::<sha2::Sha256>::new_from_slice(&vec![7u8; len])
                    .unwrap()
                    .chain_update(b"data")
                    .finalize()
                    .into_bytes()
                    .to_vec(),
                _ => hmac::Hmac::<sha2::Sha512>::new_from_slice(&vec![7u8; len])
                    .unwrap()
                    .chain_update(b"data")
                    .finalize()
                    .into_bytes()
                    .to_vec(),
            };
            assert_eq!(tag, want);
            assert!(verify_mac(alg, &m, b"data", &tag).unwrap());
            let mut bad = tag.clone();
            bad[0] ^= 1;
            assert!(!verify_mac(alg, &m, b"data", &bad).unwrap());
            assert!(!verify_mac(alg, &m, b"data", &tag[..16]).unwrap());
            assert!(mac(Algorithm::Ed25519, &m, b"x").is_err());
        }
    }
}
