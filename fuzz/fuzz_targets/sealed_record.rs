#![no_main]
use kmsd_keystore::{KeyName, KeyRing, RecordKind, Revision, Sealer, MasterKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
    let _ = sealer.open(RecordKind::KeyRing, "k", data);
    if let Ok(name) = KeyName::parse("k") {
        let _ = KeyRing::decode(&name, data, Revision(1));
    }
});
