//! Integrity at rest: records rolled back, replaced or deleted behind the
//! store's back are detected (per record, the others keep working);
//! restores keep destroyed versions destroyed; backups made before a rekey
//! still verify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_keystore::backup::{read_snapshot, rekey, restore_snapshot, write_snapshot};
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::*;
use std::sync::Arc;

const MK: [u8; 32] = [9; 32];

fn open(store: &Arc<dyn KeyStore>) -> Result<RingStore, Error> {
    RingStore::open(store.clone(), Sealer::new(MasterKey::from_bytes(&MK)))
}

/// A temporary directory and the path of a sled store in it.
fn sled_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    (dir, p)
}

/// The sled store at `p` and its rings.
fn open_sled(p: &std::path::Path) -> (Arc<dyn KeyStore>, RingStore) {
    let raw: Arc<dyn KeyStore> = Arc::new(SledStore::open(p).unwrap());
    let rings = open(&raw).unwrap();
    (raw, rings)
}

/// A memory store and its rings holding key `k` with versions 1 and 2.
fn memory_with_two_versions() -> (Arc<dyn KeyStore>, RingStore) {
    let raw: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let rings = open(&raw).unwrap();
    create(&rings, "k");
    rings
        .update(&name("k"), |r| r.rotate(2, RotationReason::Manual))
        .unwrap();
    (raw, rings)
}

fn name(n: &str) -> KeyName {
    KeyName::parse(n).unwrap()
}

fn create(rings: &RingStore, n: &str) {
    rings
        .create(KeyRing::new(name(n), Algorithm::Aes256Gcm, KeyPolicy::default(), 1).unwrap())
        .unwrap();
}

fn destroy_v1(rings: &RingStore, n: &str) {
    rings.update(&name(n), |r| r.rotate(2, RotationReason::Manual)).unwrap();
    rings.update(&name(n), |r| r.schedule_destruction(1, 3)).unwrap();
    let (_, done) = rings.update(&name(n), |r| Ok(r.destroy_due(3))).unwrap();
    assert_eq!(done, vec![1]);
}

fn is_data_loss(e: &Error, n: &str) -> bool {
    matches!(e, Error::Corrupt { name, .. } if name == n)
}

/// Puts `value` back as the record's bytes through the raw store, as
/// someone with write access to the state directory could.
fn put_back(raw: &dyn KeyStore, kind: RecordKind, n: &str, value: &[u8]) {
    let cur = raw.get(kind, n).unwrap().map(|e| e.revision);
    raw.put(kind, n, cur, value).unwrap();
}

#[test]
fn an_old_ring_record_put_back_after_a_destruction_is_data_loss_and_never_opens() {
    let (_dir, p) = sled_dir();
    let old;
    {
        let (raw, rings) = open_sled(&p);
        create(&rings, "k");
        create(&rings, "other");
        rings
            .update(&name("k"), |r| r.rotate(2, RotationReason::Manual))
            .unwrap();
        // the sealed record while version 1 still has its material
        old = raw.get(RecordKind::KeyRing, "k").unwrap().unwrap().value;
        rings.update(&name("k"), |r| r.schedule_destruction(1, 3)).unwrap();
        rings.update(&name("k"), |r| Ok(r.destroy_due(3))).unwrap();
        assert!(rings.get(&name("k")).unwrap().unwrap().versions[0].material.is_none());
    }
    // put the old bytes back in the sled tree, daemon stopped
    {
        let raw = SledStore::open(&p).unwrap();
        put_back(&raw, RecordKind::KeyRing, "k", &old);
        raw.sync().unwrap();
    }
    let (raw, rings) = open_sled(&p);
    let mut loaded = vec![];
    let failures = rings.load_all(|r| loaded.push(r)).unwrap();
    assert_eq!(failures.len(), 1);
    assert!(is_data_loss(&failures[0].error, "k"), "{:?}", failures[0].error);
    assert!(
        failures[0].error.to_string().contains("rolled back"),
        "{}",
        failures[0].error
    );
    // the other key keeps working, and no loaded ring carries k's old material
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].name.as_str(), "other");
    assert!(is_data_loss(&rings.get(&name("k")).unwrap_err(), "k"));
    // nor does an update resurrect it
    assert!(is_data_loss(&rings.update(&name("k"), |_| Ok(())).unwrap_err(), "k"));
    rings
        .update(&name("other"), |r| r.rotate(5, RotationReason::Manual))
        .unwrap();
    // and so it stays after another restart
    drop(rings);
    drop(raw);
    let (_raw, rings) = open_sled(&p);
    assert!(is_data_loss(&rings.get(&name("k")).unwrap_err(), "k"));
    assert_eq!(rings.get(&name("other")).unwrap().unwrap().primary, 2);
}

#[test]
fn undoing_disabled_or_a_raised_minimum_is_data_loss() {
    let (raw, rings) = memory_with_two_versions();
    let before = raw.get(RecordKind::KeyRing, "k").unwrap().unwrap().value;
    rings
        .update(&name("k"), |r| r.set_version_state(1, VersionState::Disabled))
        .unwrap();
    put_back(raw.as_ref(), RecordKind::KeyRing, "k", &before);
    assert!(is_data_loss(&rings.get(&name("k")).unwrap_err(), "k"));
    // a fresh open (a restart) sees it too
    let again = open(&raw).unwrap();
    let failures = again.load_all(|_| {}).unwrap();
    assert_eq!(failures.len(), 1);

    let (raw, rings) = memory_with_two_versions();
    let before = raw.get(RecordKind::KeyRing, "k").unwrap().unwrap().value;
    rings
        .update(&name("k"), |r| {
            let mut p = r.policy.clone();
            p.min_decryption_version = 2;
            r.set_policy(p)
        })
        .unwrap();
    put_back(raw.as_ref(), RecordKind::KeyRing, "k", &before);
    assert!(is_data_loss(&rings.get(&name("k")).unwrap_err(), "k"));
}

#[test]
fn a_deleted_ring_or_officer_record_is_detected() {
    let (_dir, p) = sled_dir();
    {
        let (_raw, rings) = open_sled(&p);
        create(&rings, "gone");
        create(&rings, "kept");
        let totp = rings
            .sealer()
            .seal(RecordKind::Secret, "totp:officer", &[1; 20])
            .unwrap();
        rings
            .raw()
            .put(RecordKind::Secret, "totp:officer", None, &totp)
            .unwrap();
    }
    {
        let raw = SledStore::open(&p).unwrap();
        let r = raw.get(RecordKind::KeyRing, "gone").unwrap().unwrap().revision;
        raw.delete(RecordKind::KeyRing, "gone", r).unwrap();
        let r = raw.get(RecordKind::Secret, "totp:officer").unwrap().unwrap().revision;
        raw.delete(RecordKind::Secret, "totp:officer", r).unwrap();
    }
    let (raw, rings) = open_sled(&p);
    let mut loaded = vec![];
    let failures = rings.load_all(|r| loaded.push(r.name.to_string())).unwrap();
    assert_eq!(loaded, vec!["kept"]);
    assert_eq!(failures.len(), 1);
    assert!(is_data_loss(&failures[0].error, "gone"));
    assert!(
        failures[0].error.to_string().contains("deleted"),
        "{}",
        failures[0].error
    );
    assert!(is_data_loss(&rings.get(&name("gone")).unwrap_err(), "gone"));
    let e = rings.raw().get(RecordKind::Secret, "totp:officer").unwrap_err();
    assert!(is_data_loss(&e, "totp:officer"), "{e}");
    // a record added behind the store's back is refused as well
    raw.put(
        RecordKind::KeyRing,
        "planted",
        None,
        &rings.sealer().seal(RecordKind::KeyRing, "planted", b"x").unwrap(),
    )
    .unwrap();
    assert!(is_data_loss(&rings.get(&name("planted")).unwrap_err(), "planted"));
}

#[test]
fn a_tampered_manifest_fails_the_open_and_a_deleted_head_is_not_rebuilt() {
    let raw: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let rings = open(&raw).unwrap();
    create(&rings, "a");
    create(&rings, "b");
    drop(rings);
    // an entry removed (a record and its entry deleted together)
    let ra = raw.get(RecordKind::KeyRing, "a").unwrap().unwrap().revision;
    let ea = raw.get(RecordKind::Manifest, "ka").unwrap().unwrap();
    let mem = MemoryStore::new();
    for kind in [
        RecordKind::Meta,
        RecordKind::KeyRing,
        RecordKind::Secret,
        RecordKind::Manifest,
    ] {
        raw.for_each(kind, &mut |n, e| {
            mem.put(kind, n, None, &e.value).unwrap();
            Ok(())
        })
        .unwrap();
    }
    raw.delete(RecordKind::KeyRing, "a", ra).unwrap();
    raw.delete(RecordKind::Manifest, "ka", ea.revision).unwrap();
    let e = open(&raw).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corrupt {
                kind: RecordKind::Manifest,
                ..
            }
        ),
        "{e}"
    );
    // the head deleted, to have the manifest rebuilt over what is there
    let mem: Arc<dyn KeyStore> = Arc::new(mem);
    assert!(open(&mem).is_ok(), "the copy is intact");
    let h = mem.get(RecordKind::Manifest, "#head").unwrap().unwrap().revision;
    mem.delete(RecordKind::Manifest, "#head", h).unwrap();
    let e = open(&mem).unwrap_err();
    assert!(e.to_string().contains("head is missing"), "{e}");
}

#[test]
fn many_writes_and_reopens_keep_the_manifest_consistent() {
    let (_dir, p) = sled_dir();
    for round in 0..3 {
        let raw: Arc<dyn KeyStore> = Arc::new(SledStore::open(&p).unwrap());
        let rings = Arc::new(open(&raw).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let rings = rings.clone();
                std::thread::spawn(move || {
                    let n = format!("r{round}-{t}");
                    create(&rings, &n);
                    for i in 0..5 {
                        rings
                            .update(&name(&n), |r| r.rotate(10 + i, RotationReason::Manual))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let failures = rings.load_all(|_| {}).unwrap();
        assert!(failures.is_empty());
    }
    let (_raw, rings) = open_sled(&p);
    let mut n = 0;
    assert!(rings.load_all(|_| n += 1).unwrap().is_empty());
    assert_eq!(n, 12);
    assert!(rings.checked().generation(RecordKind::KeyRing, "r2-3").unwrap() > 1);
}

fn snapshot(rings: &RingStore) -> Vec<u8> {
    let mut out = Vec::new();
    write_snapshot(rings.raw().as_ref(), rings.sealer(), &mut out, &mut |_, _| {}).unwrap();
    out
}

#[test]
fn a_restore_never_brings_back_a_version_destroyed_after_the_backup() {
    let (raw, rings) = memory_with_two_versions();
    let v1 = rings.get(&name("k")).unwrap().unwrap().versions[0]
        .material
        .as_ref()
        .unwrap()
        .expose_secret()
        .to_vec();
    let backup = snapshot(&rings);
    rings.update(&name("k"), |r| r.schedule_destruction(1, 3)).unwrap();
    rings.update(&name("k"), |r| Ok(r.destroy_due(3))).unwrap();
    // the ring record wiped (to make room for the restore)
    let r = raw.get(RecordKind::KeyRing, "k").unwrap().unwrap().revision;
    rings.raw().delete(RecordKind::KeyRing, "k", r).unwrap();
    let records = read_snapshot(&backup, rings.sealer()).unwrap();
    restore_snapshot(&rings, &records, &mut |_, _| {}).unwrap();
    let ring = rings.get(&name("k")).unwrap().unwrap();
    assert_eq!(ring.versions[0].state, VersionState::Destroyed);
    assert!(ring.versions[0].material.is_none(), "destroyed material came back");
    assert!(ring.versions[1].material.is_some(), "the rest is restored");
    // nothing in the store holds version 1's material any more
    let failures = rings
        .load_all(|r| {
            for v in &r.versions {
                assert_ne!(
                    v.material.as_ref().map(|m| m.expose_secret().to_vec()),
                    Some(v1.clone())
                );
            }
        })
        .unwrap();
    assert!(failures.is_empty());
    // a fresh store knows of no destruction: the backup is restored as taken
    let fresh: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let fresh = open(&fresh).unwrap();
    restore_snapshot(&fresh, &read_snapshot(&backup, fresh.sealer()).unwrap(), &mut |_, _| {}).unwrap();
    assert!(fresh.get(&name("k")).unwrap().unwrap().versions[0].material.is_some());
}

#[test]
fn a_restore_after_a_whole_key_deletion_keeps_it_destroyed() {
    let raw: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let rings = open(&raw).unwrap();
    rings
        .create(
            KeyRing::new(
                name("k"),
                Algorithm::Aes256Gcm,
                KeyPolicy {
                    deletion_allowed: true,
                    ..KeyPolicy::default()
                },
                1,
            )
            .unwrap(),
        )
        .unwrap();
    destroy_v1(&rings, "k");
    let backup = snapshot(&rings);
    rings.update(&name("k"), |r| r.schedule_deletion(10)).unwrap();
    rings.update(&name("k"), |r| Ok(r.destroy_due(10))).unwrap();
    let r = raw.get(RecordKind::KeyRing, "k").unwrap().unwrap().revision;
    rings.raw().delete(RecordKind::KeyRing, "k", r).unwrap();
    restore_snapshot(&rings, &read_snapshot(&backup, rings.sealer()).unwrap(), &mut |_, _| {}).unwrap();
    let ring = rings.get(&name("k")).unwrap().unwrap();
    assert!(ring
        .versions
        .iter()
        .all(|v| v.material.is_none() && v.state == VersionState::Destroyed));
}

#[test]
fn backups_made_under_the_previous_master_key_verify_and_restore_after_a_rekey() {
    let old = [1u8; 32];
    let new = [2u8; 32];
    let raw: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let material;
    let backup_before;
    {
        let rings = RingStore::open(raw.clone(), Sealer::new(MasterKey::from_bytes(&old))).unwrap();
        create(&rings, "k");
        material = rings.get(&name("k")).unwrap().unwrap().versions[0]
            .material
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_vec();
        backup_before = snapshot(&rings);
    }
    // rekey
    let both = || Sealer::new(MasterKey::from_bytes(&new)).with_previous(MasterKey::from_bytes(&old));
    {
        let rings = RingStore::open(raw.clone(), both()).unwrap();
        let (resealed, _) = rekey(rings.raw().as_ref(), rings.sealer(), &mut |_, _| {}).unwrap();
        assert!(resealed >= 2);
    }
    // the store now opens under the new key alone
    let rings = RingStore::open(raw.clone(), Sealer::new(MasterKey::from_bytes(&new))).unwrap();
    assert!(rings.load_all(|_| {}).unwrap().is_empty());
    let e = read_snapshot(&backup_before, rings.sealer()).unwrap_err();
    assert!(e.to_string().contains("previous_master_key"), "{e}");
    // with the old key configured as previous, the old backup verifies and restores
    let fresh: Arc<dyn KeyStore> = Arc::new(MemoryStore::new());
    let target = RingStore::open(fresh.clone(), both()).unwrap();
    let records = read_snapshot(&backup_before, target.sealer()).unwrap();
    restore_snapshot(&target, &records, &mut |_, _| {}).unwrap();
    assert_eq!(
        target.get(&name("k")).unwrap().unwrap().versions[0]
            .material
            .as_ref()
            .unwrap()
            .expose_secret(),
        &material
    );
    // restored records are re-sealed under the new key: it alone opens them
    let alone = RingStore::open(fresh, Sealer::new(MasterKey::from_bytes(&new))).unwrap();
    assert!(alone.load_all(|_| {}).unwrap().is_empty());
    // a backup made after the rekey verifies under the new key alone
    assert!(read_snapshot(&snapshot(&rings), rings.sealer()).is_ok());
}

fn files(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn after_a_destruction_the_old_sealed_ring_record_is_nowhere_in_the_store_files() {
    let (dir, p) = sled_dir();
    let (raw, rings) = open_sled(&p);
    create(&rings, "k");
    create(&rings, "other");
    rings
        .update(&name("k"), |r| r.rotate(2, RotationReason::Manual))
        .unwrap();
    let mut superseded = vec![raw.get(RecordKind::KeyRing, "k").unwrap().unwrap().value];
    rings.update(&name("k"), |r| r.schedule_destruction(1, 3)).unwrap();
    superseded.push(raw.get(RecordKind::KeyRing, "k").unwrap().unwrap().value);
    raw.sync().unwrap();
    // before the destruction the old records are still in sled's log
    let all: Vec<u8> = files(&p).iter().flat_map(|f| std::fs::read(f).unwrap()).collect();
    assert!(
        superseded.iter().any(|s| all.windows(s.len()).any(|w| w == &s[..])),
        "the test would prove nothing: sled already dropped the old records"
    );
    rings.update(&name("k"), |r| Ok(r.destroy_due(3))).unwrap();
    raw.sync().unwrap();
    for f in files(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for s in &superseded {
            assert!(
                !bytes.windows(s.len()).any(|w| w == &s[..]),
                "a sealed record holding the destroyed material is still in {}",
                f.display()
            );
        }
    }
    // nothing else is lost, now and after a restart
    assert!(rings.get(&name("k")).unwrap().unwrap().versions[0].material.is_none());
    assert!(rings.get(&name("other")).unwrap().is_some());
    drop(rings);
    drop(raw);
    let (_raw, rings) = open_sled(&p);
    assert!(rings.load_all(|_| {}).unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no reclaim directory left"
    );
}

#[test]
fn an_interrupted_reclaim_is_finished_at_open() {
    let (dir, p) = sled_dir();
    {
        let (_raw, rings) = open_sled(&p);
        create(&rings, "k");
    }
    // crash after the old directory was renamed away, before the copy was
    // renamed into place: the copy (marked complete) becomes the store
    let copy = dir.path().join("s.reclaim-new");
    std::fs::rename(&p, &copy).unwrap();
    std::fs::write(copy.join("kmsd-reclaim-complete"), b"").unwrap();
    std::fs::create_dir(dir.path().join("s.reclaim-old")).unwrap();
    std::fs::write(dir.path().join("s.reclaim-old/db"), b"old bytes").unwrap();
    let (raw, rings) = open_sled(&p);
    assert!(rings.get(&name("k")).unwrap().is_some());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // a half-built copy (not marked complete) is discarded
    drop(rings);
    drop(raw);
    std::fs::create_dir(dir.path().join("s.reclaim-new")).unwrap();
    std::fs::write(dir.path().join("s.reclaim-new/db"), b"partial").unwrap();
    let raw: Arc<dyn KeyStore> = Arc::new(SledStore::open(&p).unwrap());
    assert!(open(&raw).unwrap().get(&name("k")).unwrap().is_some());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
