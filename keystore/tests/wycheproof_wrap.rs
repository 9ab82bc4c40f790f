//! The wrapping primitives of import and export (`kmsd_keystore::wrap`)
//! against Wycheproof: every AES-256 case of aes_kwp_test.json (RFC 5649)
//! and every case of rsa_oaep_3072_sha256_mgf1sha256_test.json with an
//! empty label (the only label kmsd uses; labelled cases must fail).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
use kmsd_keystore::wrap::{kwp_unwrap, kwp_wrap, WrappingKey};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/../tests/data/wycheproof/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn wycheproof_aes_256_kwp() {
    let doc = load("aes_kwp_test.json");
    let (mut valid, mut invalid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        if group["keySize"] != 256 {
            continue;
        }
        for t in group["tests"].as_array().unwrap() {
            let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
            let kek: [u8; 32] = h("key").try_into().unwrap();
            let (msg, ct, id) = (h("msg"), h("ct"), &t["tcId"]);
            match t["result"].as_str().unwrap() {
                "valid" | "acceptable" => {
                    assert_eq!(kwp_wrap(&kek, &msg).unwrap(), ct, "tc {id}");
                    assert_eq!(kwp_unwrap(&kek, &ct).unwrap().as_slice(), msg.as_slice(), "tc {id}");
                    valid += 1;
                }
                _ => {
                    assert!(kwp_unwrap(&kek, &ct).is_err(), "tc {id} must be refused");
                    invalid += 1;
                }
            }
        }
    }
    assert!(valid > 20 && invalid > 20, "{valid} valid, {invalid} invalid");
}

#[test]
fn wycheproof_rsa_oaep_3072_sha256() {
    let doc = load("rsa_oaep_3072_sha256_mgf1sha256_test.json");
    let (mut valid, mut invalid) = (0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        let der = hex::decode(group["privateKeyPkcs8"].as_str().unwrap()).unwrap();
        let key = WrappingKey::from_pkcs8_der(&der).unwrap();
        for t in group["tests"].as_array().unwrap() {
            let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
            let (msg, ct, label, id) = (h("msg"), h("ct"), h("label"), &t["tcId"]);
            let got = key.oaep_decrypt(&ct);
            if t["result"] == "valid" && label.is_empty() {
                assert_eq!(got.unwrap().as_slice(), msg.as_slice(), "tc {id}");
                valid += 1;
            } else {
                assert!(got.is_err(), "tc {id} must be refused");
                invalid += 1;
            }
        }
    }
    assert!(valid >= 10 && invalid >= 10, "{valid} valid, {invalid} invalid");
}
