//! Golden ciphertexts of envelope format 1, committed in
//! `tests/data/golden-v1.json`: they must decrypt forever, and the encoder
//! must still produce them byte for byte from the same salt and nonce.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd::crypto;
use kmsd_keystore::KeyMaterial;
use serde_json::{json, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/golden-v1.json");

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn golden_v1_ciphertexts_decrypt_and_reencode() {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for c in cases {
        let key = KeyMaterial::from_bytes(&h(&c["key"]).try_into().unwrap());
        let name = c["key_name"].as_str().unwrap();
        let ct = h(&c["ciphertext"]);
        let (aad, pt) = (h(&c["aad"]), h(&c["plaintext"]));
        assert_eq!(
            crypto::parse_header(&ct).unwrap().version,
            c["version"].as_u64().unwrap() as u32
        );
        assert_eq!(crypto::decrypt(&key, name, &ct, &aad).unwrap(), pt, "{name}");
        let again = crypto::encrypt_with(
            &key,
            name,
            c["version"].as_u64().unwrap() as u32,
            &pt,
            &aad,
            &h(&c["salt"]).try_into().unwrap(),
            &h(&c["nonce"]).try_into().unwrap(),
        )
        .unwrap();
        assert_eq!(again, ct, "format 1 encoding changed for {name}");
    }
}

/// Writes the golden file. Run once when a format is introduced:
/// `cargo test --test golden -- --ignored write_golden`. Never regenerate
/// an existing format's file.
#[test]
#[ignore]
fn write_golden() {
    let mut cases = vec![];
    let specs: [(&str, u32, &[u8], &[u8]); 5] = [
        ("golden.empty", 1, b"", b""),
        ("golden.pan", 1, b"4111111111111111", b"order-42"),
        ("golden.v7", 7, b"GB82 WEST 1234 5698 7654 32", b""),
        ("golden.long", 3, &[0x5a; 1000], b"context with spaces"),
        ("golden.max-version", u32::MAX, b"x", b"\x00\xff"),
    ];
    for (i, (name, version, pt, aad)) in specs.iter().enumerate() {
        let key = [i as u8 + 1; 32];
        let salt = [0x10 + i as u8; 16];
        let nonce = [0x20 + i as u8; 12];
        let ct = crypto::encrypt_with(&KeyMaterial::from_bytes(&key), name, *version, pt, aad, &salt, &nonce).unwrap();
        cases.push(json!({
            "key_name": name, "version": version, "key": hex::encode(key),
            "salt": hex::encode(salt), "nonce": hex::encode(nonce),
            "aad": hex::encode(aad), "plaintext": hex::encode(pt), "ciphertext": hex::encode(ct),
        }));
    }
    let doc = json!({"format": 1, "note": "kmsd ciphertext envelope format 1 golden vectors; never regenerate", "cases": cases});
    std::fs::write(PATH, serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
}
