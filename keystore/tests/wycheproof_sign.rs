//! The MAC and signature verification primitives (`kmsd_keystore::sign`)
//! against Wycheproof (testvectors_v1, copied into tests/data/wycheproof/
//! with its LICENSE): HMAC-SHA256/512 (full-length tags under keys of
//! kmsd's lengths), ECDSA P-256 SHA-256 in DER and P1363, RSA-PSS 3072 and
//! 4096 with SHA-256, MGF1-SHA-256 and a 32-byte salt, and Ed25519. Every
//! signature case runs through the message path (`ring`) and, except
//! Ed25519, the digest path (`p256`, `rsa`) with SHA-256 of the message:
//! both must give Wycheproof's answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
use kmsd_keystore::sign::{self, PublicKey, SigEncoding, SignInput};
use kmsd_keystore::{Algorithm, Material};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/../tests/data/wycheproof/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn h(t: &Value, k: &str) -> Vec<u8> {
    hex::decode(t[k].as_str().unwrap()).unwrap()
}

fn sha256(m: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(m).to_vec()
}

fn hmac(file: &str, alg: Algorithm, bits: u64) {
    let doc = load(file);
    let (mut valid, mut invalid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        if group["keySize"] != bits || group["tagSize"] != bits {
            continue; // other key lengths, truncated tags: not what kmsd does
        }
        for t in group["tests"].as_array().unwrap() {
            let key = Material::import(alg, &h(t, "key")).unwrap();
            let (msg, tag, id) = (h(t, "msg"), h(t, "tag"), &t["tcId"]);
            let ok = sign::verify_mac(alg, &key, &msg, &tag).unwrap();
            if t["result"] == "valid" {
                assert!(ok, "tc {id}");
                assert_eq!(sign::mac(alg, &key, &msg).unwrap(), tag, "tc {id}");
                valid += 1;
            } else {
                assert!(!ok, "tc {id} must fail");
                invalid += 1;
            }
        }
    }
    assert!(valid >= 5 && invalid >= 5, "{file}: {valid} valid, {invalid} invalid");
}

#[test]
fn wycheproof_hmac_sha256_and_sha512() {
    hmac("hmac_sha256_test.json", Algorithm::HmacSha256, 256);
    hmac("hmac_sha512_test.json", Algorithm::HmacSha512, 512);
}

fn signatures(file: &str, alg: Algorithm, encoding: SigEncoding) -> (usize, usize) {
    let doc = load(file);
    let (mut valid, mut invalid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        let key = PublicKey::from_spki_der(alg, &h(group, "publicKeyDer")).unwrap();
        for t in group["tests"].as_array().unwrap() {
            let (msg, sig, id) = (h(t, "msg"), h(t, "sig"), &t["tcId"]);
            let want = t["result"] == "valid";
            let got = key.verify(SignInput::Message(&msg), &sig, encoding).unwrap();
            assert_eq!(got, want, "{file} tc {id} (message): {}", t["comment"]);
            if alg != Algorithm::Ed25519 {
                let d = sha256(&msg);
                let got = key.verify(SignInput::Digest(&d), &sig, encoding).unwrap();
                assert_eq!(got, want, "{file} tc {id} (digest): {}", t["comment"]);
            }
            if want {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
    }
    assert!(valid >= 1 && invalid >= 10, "{file}: {valid} valid, {invalid} invalid");
    (valid, invalid)
}

#[test]
fn wycheproof_ecdsa_p256_sha256_der_and_p1363() {
    signatures(
        "ecdsa_secp256r1_sha256_test.json",
        Algorithm::EcdsaP256Sha256,
        SigEncoding::Der,
    );
    signatures(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        Algorithm::EcdsaP256Sha256,
        SigEncoding::P1363,
    );
}

#[test]
fn wycheproof_rsa_pss_3072_and_4096_sha256_mgf1_salt_32() {
    signatures(
        "rsa_pss_3072_sha256_mgf1_32_test.json",
        Algorithm::RsaPss3072Sha256,
        SigEncoding::Der,
    );
    signatures(
        "rsa_pss_4096_sha256_mgf1_32_test.json",
        Algorithm::RsaPss4096Sha256,
        SigEncoding::Der,
    );
}

#[test]
fn wycheproof_ed25519() {
    signatures("ed25519_test.json", Algorithm::Ed25519, SigEncoding::Der);
}
