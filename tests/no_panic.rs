//! Every parser of untrusted bytes answers arbitrary input with an error,
//! never a panic (the fuzz targets in `fuzz/` explore the same functions
//! with coverage guidance).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_keystore::{KeyMaterial, KeyName, KeyRing, MasterKey, RecordKind, Revision, Sealer};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn envelope_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = KeyMaterial::from_bytes(&[7; 32]);
        let _ = kmsd::crypto::parse_header(&data);
        prop_assert!(kmsd::crypto::decrypt(&key, "k", &data, b"").is_err());
    }

    #[test]
    fn envelope_with_valid_header_and_garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..200), version in any::<u32>()) {
        let key = KeyMaterial::from_bytes(&[7; 32]);
        let mut data = vec![1u8, 1];
        data.extend_from_slice(&version.to_be_bytes());
        data.extend_from_slice(&tail);
        prop_assert!(kmsd::crypto::decrypt(&key, "k", &data, b"").is_err());
    }

    #[test]
    fn sealed_records_and_ring_decoding_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
        prop_assert!(sealer.open(RecordKind::KeyRing, "k", &data).is_err());
        let _ = KeyRing::decode(&KeyName::parse("k").unwrap(), &data, Revision(1));
    }

    #[test]
    fn backup_reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
        prop_assert!(kmsd_keystore::backup::read_snapshot(&data, &sealer).is_err());
    }

    #[test]
    fn key_names_never_panic(s in ".{0,200}") {
        let _ = KeyName::parse(&s);
    }
}
