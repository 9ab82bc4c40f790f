//! A store and a backup written by the format-1 code
//! (`tests/data/legacy-v1`, see its README) open, migrate, and read back
//! exactly what that code wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_keystore::backup::{read_snapshot, restore_snapshot};
use kmsd_keystore::*;
use std::path::Path;
use std::sync::Arc;

const MK: [u8; 32] = [0x4b; 32];

fn data() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/legacy-v1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data().join("expected.json")).unwrap()).unwrap()
}

/// Every ring and secret reads back as the format-1 code wrote it.
fn check_everything(rings: &RingStore) {
    let want = expected();
    let mut seen = 0;
    let failures = rings
        .load_all(|ring| {
            seen += 1;
            let w = &want[ring.name.as_str()];
            assert_eq!(u64::from(ring.primary), w["primary"].as_u64().unwrap());
            assert_eq!(
                u64::from(ring.policy.min_decryption_version),
                w["min_decryption_version"].as_u64().unwrap()
            );
            let versions = w["versions"].as_array().unwrap();
            assert_eq!(ring.versions.len(), versions.len());
            for (v, wv) in ring.versions.iter().zip(versions) {
                assert_eq!(v.state.as_str(), wv["state"].as_str().unwrap());
                assert_eq!(
                    v.material.as_ref().map(|m| hex::encode(m.expose_secret())),
                    wv["material"].as_str().map(str::to_owned),
                    "{} v{}",
                    ring.name,
                    v.version
                );
            }
        })
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(seen, 3);
    for (name, value) in want["secrets"].as_object().unwrap() {
        let e = rings.raw().get(RecordKind::Secret, name).unwrap().unwrap();
        let plain = rings.sealer().open(RecordKind::Secret, name, &e.value).unwrap();
        assert_eq!(hex::encode(&plain[..]), value.as_str().unwrap());
    }
}

#[test]
fn a_format_1_store_is_migrated_and_everything_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("store");
    copy_dir(&data().join("store"), &p);
    {
        let raw = SledStore::open(&p).unwrap();
        let mut formats = vec![];
        raw.for_each(RecordKind::KeyRing, &mut |_, e| {
            formats.push(e.value[0]);
            Ok(())
        })
        .unwrap();
        assert_eq!(formats, vec![1, 1, 1], "the test data is format 1");
        assert!(raw.get(RecordKind::Manifest, "#head").unwrap().is_none());
    }
    {
        let raw: Arc<dyn KeyStore> = Arc::new(SledStore::open(&p).unwrap());
        let rings = RingStore::open(raw.clone(), Sealer::new(MasterKey::from_bytes(&MK))).unwrap();
        check_everything(&rings);
        // every record is now format 2 (per-record keys), listed in the manifest
        let sealer = Sealer::new(MasterKey::from_bytes(&MK));
        for kind in [RecordKind::Meta, RecordKind::KeyRing, RecordKind::Secret] {
            raw.for_each(kind, &mut |n, e| {
                assert!(sealer.is_current(&e.value), "{kind} {n} not migrated");
                assert!(
                    rings.checked().generation(kind, n).is_some(),
                    "{kind} {n} not in the manifest"
                );
                Ok(())
            })
            .unwrap();
        }
        // the destroyed version has a tombstone
        assert!(rings.tombstone("payments").unwrap().contains(&1));
    }
    // reopens cleanly, nothing left to migrate
    let raw: Arc<dyn KeyStore> = Arc::new(SledStore::open(&p).unwrap());
    let rings = RingStore::open(raw, Sealer::new(MasterKey::from_bytes(&MK))).unwrap();
    check_everything(&rings);
}

#[test]
fn a_format_1_backup_verifies_and_restores_into_a_new_store() {
    let bytes = std::fs::read(data().join("backup-v1.kmsdbak")).unwrap();
    assert!(bytes.starts_with(b"KMSDBAK1"));
    let dir = tempfile::tempdir().unwrap();
    let raw: Arc<dyn KeyStore> = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    let rings = RingStore::open(raw, Sealer::new(MasterKey::from_bytes(&MK))).unwrap();
    let records = read_snapshot(&bytes, rings.sealer()).unwrap();
    restore_snapshot(&rings, &records, &mut |_, _| {}).unwrap();
    check_everything(&rings);
    // a flipped byte is refused
    let mut bad = bytes.clone();
    bad[20] ^= 1;
    assert!(read_snapshot(&bad, rings.sealer()).is_err());
}
