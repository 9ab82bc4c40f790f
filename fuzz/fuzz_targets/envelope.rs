#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = kmsd_keystore::KeyMaterial::from_bytes(&[7; 32]);
    let _ = kmsd::crypto::parse_header(data);
    let _ = kmsd::crypto::decrypt(&key, "fuzz", data, b"");
});
