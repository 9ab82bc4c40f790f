#![no_main]
use kmsd_keystore::{MasterKey, Sealer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
    let _ = kmsd_keystore::backup::read_snapshot(data, &sealer);
});
