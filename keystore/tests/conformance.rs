//! One conformance suite for the `KeyStore` contract, run against every
//! backend (in-memory and sled), plus sealing checks on the real store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::*;
use std::sync::Arc;

fn suite(s: &dyn KeyStore) {
    let k = RecordKind::KeyRing;
    // create, read
    assert!(s.get(k, "a").unwrap().is_none());
    let r1 = s.put(k, "a", None, b"v1").unwrap();
    assert_eq!(s.get(k, "a").unwrap().unwrap().value, b"v1");
    assert_eq!(s.get(k, "a").unwrap().unwrap().revision, r1);
    // create again conflicts and changes nothing
    assert!(matches!(s.put(k, "a", None, b"x"), Err(Error::Conflict { .. })));
    assert_eq!(s.get(k, "a").unwrap().unwrap().value, b"v1");
    // conditional replace
    let r2 = s.put(k, "a", Some(r1), b"v2").unwrap();
    assert!(r2 > r1);
    assert!(matches!(s.put(k, "a", Some(r1), b"stale"), Err(Error::Conflict { .. })));
    assert_eq!(s.get(k, "a").unwrap().unwrap().value, b"v2");
    assert!(matches!(
        s.put(k, "missing", Some(r1), b"x"),
        Err(Error::NotFound { .. })
    ));
    // kinds are separate namespaces
    assert!(s.get(RecordKind::Meta, "a").unwrap().is_none());
    s.put(RecordKind::Meta, "a", None, b"meta").unwrap();
    assert_eq!(s.get(k, "a").unwrap().unwrap().value, b"v2");
    // list with prefix and paging
    for n in ["b1", "b2", "b3", "c"] {
        s.put(k, n, None, n.as_bytes()).unwrap();
    }
    assert_eq!(s.list(k, "", None, 100).unwrap(), vec!["a", "b1", "b2", "b3", "c"]);
    assert_eq!(s.list(k, "b", None, 2).unwrap(), vec!["b1", "b2"]);
    assert_eq!(s.list(k, "b", Some("b2"), 2).unwrap(), vec!["b3"]);
    assert_eq!(s.list(k, "", Some("b3"), 10).unwrap(), vec!["c"]);
    assert!(s.list(k, "z", None, 10).unwrap().is_empty());
    // for_each sees one kind only, in order
    let mut seen = vec![];
    s.for_each(k, &mut |n, _| {
        seen.push(n.to_owned());
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, vec!["a", "b1", "b2", "b3", "c"]);
    // conditional delete
    let rc = s.get(k, "c").unwrap().unwrap().revision;
    assert!(matches!(
        s.delete(k, "c", Revision(rc.0 + 7)),
        Err(Error::Conflict { .. })
    ));
    s.delete(k, "c", rc).unwrap();
    assert!(s.get(k, "c").unwrap().is_none());
    assert!(matches!(s.delete(k, "c", rc), Err(Error::NotFound { .. })));
    // re-create after delete starts fresh
    s.put(k, "c", None, b"again").unwrap();
    s.sync().unwrap();
    batches(s);
}

/// `apply`: all operations or none.
fn batches(s: &dyn KeyStore) {
    use kmsd_keystore::store::{Cond, Op};
    let (k, m) = (RecordKind::KeyRing, RecordKind::Meta);
    let op = |kind, name, cond, value| Op {
        kind,
        name,
        cond,
        value,
    };
    let revs = s
        .apply(&[
            op(k, "t1", Cond::Absent, Some(&b"one"[..])),
            op(m, "t1", Cond::Any, Some(&b"meta one"[..])),
        ])
        .unwrap();
    assert_eq!(revs.len(), 2);
    let r1 = revs[0].unwrap();
    assert_eq!(s.get(k, "t1").unwrap().unwrap().value, b"one");
    assert_eq!(s.get(m, "t1").unwrap().unwrap().revision, revs[1].unwrap());
    // one failing condition: nothing of the batch is applied
    for bad in [
        op(k, "t1", Cond::Absent, Some(&b"x"[..])),
        op(k, "t1", Cond::At(Revision(r1.0 + 5)), Some(&b"x"[..])),
        op(k, "nope", Cond::At(r1), None),
    ] {
        let e = s
            .apply(&[
                op(m, "t1", Cond::Any, Some(&b"changed"[..])),
                op(k, "t2", Cond::Absent, Some(&b"new"[..])),
                bad,
            ])
            .unwrap_err();
        assert!(matches!(e, Error::Conflict { .. } | Error::NotFound { .. }), "{e}");
        assert_eq!(s.get(m, "t1").unwrap().unwrap().value, b"meta one");
        assert!(s.get(k, "t2").unwrap().is_none());
    }
    // replace and delete together
    let revs = s
        .apply(&[
            op(k, "t1", Cond::At(r1), None),
            op(m, "t1", Cond::Any, Some(&b"meta two"[..])),
        ])
        .unwrap();
    assert_eq!(revs[0], None);
    assert!(s.get(k, "t1").unwrap().is_none());
    assert_eq!(s.get(m, "t1").unwrap().unwrap().value, b"meta two");
}

fn concurrent_cas(s: Arc<dyn KeyStore>) {
    s.put(RecordKind::KeyRing, "ctr", None, &0u64.to_be_bytes()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    loop {
                        let e = s.get(RecordKind::KeyRing, "ctr").unwrap().unwrap();
                        let n = u64::from_be_bytes(e.value.try_into().unwrap()) + 1;
                        if s.put(RecordKind::KeyRing, "ctr", Some(e.revision), &n.to_be_bytes())
                            .is_ok()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let e = s.get(RecordKind::KeyRing, "ctr").unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(e.value.try_into().unwrap()), 100, "no lost update");
}

#[test]
fn memory_backend_conforms() {
    suite(&MemoryStore::new());
    concurrent_cas(Arc::new(MemoryStore::new()));
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
            .create(KeyRing::new(
                name.clone(),
                Algorithm::Aes256Gcm,
                KeyPolicy::default(),
                1,
            ))
            .unwrap();
        material = *ring.versions[0].material.as_ref().unwrap().expose_secret();
        rings
            .create(KeyRing::new(
                KeyName::parse("other").unwrap(),
                Algorithm::Aes256Gcm,
                KeyPolicy::default(),
                1,
            ))
            .unwrap();
        let (ring, v) = rings.update(&name, |r| r.rotate(5, RotationReason::Manual)).unwrap();
        assert_eq!((v, ring.primary), (2, 2));
        assert!(matches!(
            rings.create(KeyRing::new(
                name.clone(),
                Algorithm::Aes256Gcm,
                KeyPolicy::default(),
                1
            )),
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
