//! The conformance suite of the `KeyStore` contract
//! (`kmsd_keystore::conformance`, feature `conformance`) run against the
//! in-memory and sled backends (kmsd-etcd runs it on etcd), plus sealing
//! checks on the real store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_keystore::conformance::{concurrent_cas, run as suite};
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::*;
use std::sync::Arc;

#[test]
fn memory_backend_conforms() {
    suite(&MemoryStore::new());
    concurrent_cas(Arc::new(MemoryStore::new()));
}

/// Two integrity manifests over one shared in-memory store: each writer
/// catches up with the other's writes, tampering is still caught (the
/// same check runs on one etcd prefix in kmsd-etcd's tests).
#[test]
fn two_manifests_share_a_memory_store() {
    let shared = Arc::new(MemoryStore::new());
    kmsd_keystore::conformance::two_writers(shared.clone(), shared.clone(), shared.as_ref());
}

/// Fenced batches through the integrity manifest, on memory and sled
/// (`conformance::run` checks the fence on each raw backend; kmsd-etcd
/// runs both on etcd).
#[test]
fn fences_pass_through_the_manifest() {
    kmsd_keystore::conformance::fences_through_the_manifest(Arc::new(MemoryStore::new()));
    let dir = tempfile::tempdir().unwrap();
    kmsd_keystore::conformance::fences_through_the_manifest(Arc::new(SledStore::open(&dir.path().join("s")).unwrap()));
}

#[test]
fn sled_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    suite(&SledStore::open(&dir.path().join("s")).unwrap());
    let dir2 = tempfile::tempdir().unwrap();
    concurrent_cas(Arc::new(SledStore::open(&dir2.path().join("s")).unwrap()));
}

#[test]
fn sled_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    {
        let s = SledStore::open(&p).unwrap();
        s.put(RecordKind::KeyRing, "k", None, b"persist").unwrap();
    }
    let s = SledStore::open(&p).unwrap();
    assert_eq!(s.get(RecordKind::KeyRing, "k").unwrap().unwrap().value, b"persist");
}

fn ring_store(store: Arc<dyn KeyStore>, mk: [u8; 32]) -> Result<RingStore, Error> {
    RingStore::open(store, Sealer::new(MasterKey::from_bytes(&mk)))
}

#[test]
fn rings_are_sealed_and_tamper_is_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    let material;
    {
        let store: Arc<dyn KeyStore> = Arc::new(SledStore::open(&p).unwrap());
        let rings = ring_store(store.clone(), [9; 32]).unwrap();
        let name = KeyName::parse("payments").unwrap();
        let ring = rings
            .create(KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1).unwrap())
            .unwrap();
        material = *ring.versions[0]
            .material
            .as_ref()
            .unwrap()
            .aes()
            .unwrap()
            .expose_secret();
        rings
            .create(
                KeyRing::new(
                    KeyName::parse("other").unwrap(),
                    Algorithm::Aes256Gcm,
                    KeyPolicy::default(),
                    1,
                )
                .unwrap(),
            )
            .unwrap();
        let (ring, v) = rings.update(&name, |r| r.rotate(5, RotationReason::Manual)).unwrap();
        assert_eq!((v, ring.primary), (2, 2));
        assert!(matches!(
            rings.create(KeyRing::new(name.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1).unwrap()),
            Err(Error::Conflict { .. })
        ));
        // copy the sealed "payments" record over "other": detected as corrupt
        let e = store.get(RecordKind::KeyRing, "payments").unwrap().unwrap();
        let o = store.get(RecordKind::KeyRing, "other").unwrap().unwrap();
        store
            .put(RecordKind::KeyRing, "other", Some(o.revision), &e.value)
            .unwrap();
        let other = KeyName::parse("other").unwrap();
        assert!(matches!(rings.get(&other), Err(Error::Corrupt { .. })));
        // a flipped byte is detected, naming the key
        let mut bad = e.value.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        store
            .put(RecordKind::KeyRing, "payments", Some(e.revision), &bad)
            .unwrap();
        let err = rings.get(&name).unwrap_err();
        assert!(err.to_string().contains("payments"), "{err}");
        // restore it; other keys keep working
        let cur = store.get(RecordKind::KeyRing, "payments").unwrap().unwrap();
        store
            .put(RecordKind::KeyRing, "payments", Some(cur.revision), &e.value)
            .unwrap();
        let mut good = vec![];
        let failures = rings.load_all(|r| good.push(r.name.to_string())).unwrap();
        assert_eq!(good, vec!["payments"]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].name, "other");
        store.sync().unwrap();
    }
    // no key material in clear anywhere in the store's files
    for entry in walk(&p) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(32).any(|w| w == material),
            "material in clear in {}",
            entry.display()
        );
    }
    // the wrong master key is refused at open
    let store: Arc<dyn KeyStore> = Arc::new(SledStore::open(&p).unwrap());
    assert!(matches!(ring_store(store, [1; 32]), Err(Error::MasterKey(_))));
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Readers of one node never see another node's fresh write as tampering:
/// node B rewrites a record while four threads of node A read it (each
/// read that finds a hash A's manifest does not list catches up; one
/// thread's catch-up must not make another's find "nothing moved" and
/// report the record corrupt).
#[test]
fn concurrent_readers_of_another_writers_record_never_see_corruption() {
    use kmsd_keystore::manifest::CheckedStore;
    let shared = Arc::new(MemoryStore::new());
    let sealer = || Arc::new(Sealer::new(MasterKey::from_bytes(&[7u8; 32])));
    let a = Arc::new(CheckedStore::open(shared.clone(), sealer()).unwrap());
    let b = CheckedStore::open(shared.clone(), sealer()).unwrap();
    let k = RecordKind::KeyRing;
    let mut rev = b.put(k, "hot", None, b"0").unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (a, stop) = (a.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut corrupt = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(Error::Corrupt { .. }) = a.get(k, "hot") {
                        corrupt += 1;
                    }
                }
                corrupt
            })
        })
        .collect();
    for i in 1..2000u32 {
        rev = b.put(k, "hot", Some(rev), i.to_string().as_bytes()).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let corrupt: u32 = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(corrupt, 0, "reads reported an honest write of another node as corrupt");
}

/// The same race through whole-kind reads: node B rewrites records while
/// eight threads of node A read the kind (`for_each_checked`, what a
/// reload and `for_each` use). A read that finds a record B just wrote
/// must not call it tampering because another thread of A caught up
/// first (the catch-up then finds nothing new).
#[test]
fn concurrent_scans_of_another_writers_records_never_see_corruption() {
    use kmsd_keystore::manifest::CheckedStore;
    let shared = Arc::new(MemoryStore::new());
    let sealer = || Arc::new(Sealer::new(MasterKey::from_bytes(&[7u8; 32])));
    let a = Arc::new(CheckedStore::open(shared.clone(), sealer()).unwrap());
    let b = CheckedStore::open(shared.clone(), sealer()).unwrap();
    let k = RecordKind::KeyRing;
    let names = ["cold-1", "hot", "cold-2"];
    let mut revs: Vec<Revision> = names.iter().map(|n| b.put(k, n, None, b"0").unwrap()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (a, stop) = (a.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut scans, mut corrupt) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut seen = 0;
                    let scan = a.for_each_checked(k, &mut |_, r| {
                        seen += 1;
                        if let Err(Error::Corrupt { .. }) = r {
                            corrupt += 1;
                        }
                    });
                    match scan {
                        Ok(()) => {
                            assert_eq!(seen, 3, "every record is reported, once");
                            scans += 1;
                        }
                        // B kept moving the manifest: "retry", not a verdict
                        Err(Error::Backend(_)) => assert_eq!(seen, 0),
                        Err(e) => panic!("{e}"),
                    }
                }
                (scans, corrupt)
            })
        })
        .collect();
    for i in 1..20_000u32 {
        let j = if i % 4 == 0 { i as usize % 3 } else { 1 }; // mostly the hot one
        revs[j] = b.put(k, names[j], Some(revs[j]), i.to_string().as_bytes()).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (scans, corrupt) = readers
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(s, c), (s2, c2)| (s + s2, c + c2));
    assert!(scans > 0);
    assert_eq!(
        corrupt, 0,
        "{corrupt} of {scans} scans reported an honest write of another node as corrupt"
    );
    // tampering is still reported by a scan: a record put behind the
    // manifest's back
    shared.put(k, "hot", None, b"planted").unwrap_err();
    let hot = shared.get(k, "hot").unwrap().unwrap();
    shared.put(k, "hot", Some(hot.revision), b"planted").unwrap();
    let mut bad = Vec::new();
    a.for_each_checked(k, &mut |n, r| {
        if let Err(Error::Corrupt { .. }) = r {
            bad.push(n.to_owned());
        }
    })
    .unwrap();
    assert_eq!(bad, ["hot"]);
}
