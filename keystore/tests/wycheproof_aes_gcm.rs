//! Every AES-256 / 96-bit-IV / 128-bit-tag case of Wycheproof's
//! aes_gcm_test.json through the AEAD core: valid cases produce the
//! vector's ciphertext and tag and decrypt back; invalid ones are rejected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_keystore::aead::{Aead, RingAead, RustCryptoAead};
use serde_json::Value;

#[test]
fn wycheproof_aes_256_gcm_ring() {
    run(&RingAead);
}

#[test]
fn wycheproof_aes_256_gcm_rustcrypto() {
    run(&RustCryptoAead);
}

fn run(backend: &dyn Aead) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/wycheproof/aes_gcm_test.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        if group["keySize"] != 256 || group["ivSize"] != 96 || group["tagSize"] != 128 {
            continue;
        }
        for t in group["tests"].as_array().unwrap() {
            let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
            let key: [u8; 32] = h("key").try_into().unwrap();
            let iv: [u8; 12] = h("iv").try_into().unwrap();
            let (aad, msg) = (h("aad"), h("msg"));
            let mut expected = h("ct");
            expected.extend(h("tag"));
            let id = &t["tcId"];
            match t["result"].as_str().unwrap() {
                "valid" | "acceptable" => {
                    let mut buf = msg.clone();
                    backend.seal(&key, &iv, &aad, &mut buf).unwrap();
                    assert_eq!(buf, expected, "tcId {id}: ciphertext");
                    backend
                        .open(&key, &iv, &aad, &mut buf)
                        .unwrap_or_else(|_| panic!("tcId {id}: open"));
                    assert_eq!(buf, msg, "tcId {id}: plaintext");
                    valid += 1;
                }
                _ => {
                    let mut buf = expected.clone();
                    assert!(
                        backend.open(&key, &iv, &aad, &mut buf).is_err(),
                        "tcId {id} must be rejected"
                    );
                    assert!(buf.is_empty(), "tcId {id}: no plaintext released");
                    invalid += 1;
                }
            }
        }
    }
    assert!(
        valid > 20 && invalid > 10,
        "ran {valid} valid / {invalid} invalid cases"
    );
}
