//! The conformance suite of the [`KeyStore`] contract, shared by every
//! backend's tests: the memory and sled backends in this crate
//! (`tests/conformance.rs`) and the etcd backend in kmsd-etcd. Compiled
//! only with the feature `conformance`, which only dev-dependencies turn
//! on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use crate::store::{KeyStore, RecordKind, Revision};
use crate::Error;
use std::sync::Arc;

/// The whole contract on an empty store `s`: create, read, conditional
/// replace and delete with the exact `Conflict`/`NotFound` answers, kinds
/// as separate namespaces, listing and paging, `for_each`, and atomic
/// batches. Panics (with the failed assertion) where `s` departs from it.
pub fn run(s: &dyn KeyStore) {
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
    // revision 0 is no record's revision: absent is NotFound, present Conflict
    assert!(matches!(
        s.put(k, "missing", Some(Revision(0)), b"x"),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.put(k, "a", Some(Revision(0)), b"x"),
        Err(Error::Conflict { .. })
    ));
    assert!(s.get(k, "missing").unwrap().is_none());
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
    fences(s);
}

/// `apply_fenced`: a batch applies only while its fence record is at the
/// fence's revision; once the record is gone or written again (another
/// node's leadership), the batch is `Fenced` and changes nothing; the
/// fence record itself is never written by the batch.
pub fn fences(s: &dyn KeyStore) {
    use crate::store::{Cond, Fence, Op};
    let (k, l) = (RecordKind::KeyRing, RecordKind::Lease);
    let lead = s.put(l, "leader", None, b"node-a").unwrap();
    let fence = |revision| {
        Some(Fence {
            kind: l,
            name: "leader",
            revision,
        })
    };
    let write = |name, cond, value| Op {
        kind: k,
        name,
        cond,
        value: Some(value),
    };
    // the fence holds: the batch applies, the fence record is untouched
    let revs = s
        .apply_fenced(fence(lead), &[write("fenced", Cond::Absent, &b"one"[..])])
        .unwrap();
    let r1 = revs[0].unwrap();
    assert_eq!(s.get(k, "fenced").unwrap().unwrap().value, b"one");
    let held = s.get(l, "leader").unwrap().unwrap();
    assert_eq!((held.revision, &held.value[..]), (lead, &b"node-a"[..]));
    // another revision of the fence record: Fenced, nothing applied, even
    // with every operation's own condition holding
    let taken = s.put(l, "leader", Some(lead), b"node-b").unwrap();
    for stale in [lead, Revision(taken.0 + 1), Revision(0)] {
        let e = s
            .apply_fenced(
                fence(stale),
                &[
                    write("fenced", Cond::At(r1), &b"two"[..]),
                    write("other", Cond::Absent, &b"x"[..]),
                ],
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Fenced {
                    kind: RecordKind::Lease,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(s.get(k, "fenced").unwrap().unwrap().value, b"one");
        assert!(s.get(k, "other").unwrap().is_none());
    }
    // the fence is decided before the operations: a stale fence with a
    // failing condition is still Fenced
    let e = s
        .apply_fenced(fence(lead), &[write("fenced", Cond::Absent, &b"x"[..])])
        .unwrap_err();
    assert!(matches!(e, Error::Fenced { .. }), "{e}");
    // the new holder's fence holds; the record gone (its lease expired):
    // Fenced, also for a revision the record had
    let r2 = s
        .apply_fenced(fence(taken), &[write("fenced", Cond::At(r1), &b"two"[..])])
        .unwrap()[0]
        .unwrap();
    s.delete(l, "leader", taken).unwrap();
    let e = s
        .apply_fenced(fence(taken), &[write("fenced", Cond::At(r2), &b"three"[..])])
        .unwrap_err();
    assert!(matches!(e, Error::Fenced { .. }), "{e}");
    assert_eq!(s.get(k, "fenced").unwrap().unwrap().value, b"two");
    // without a fence, the same batch applies
    s.apply_fenced(None, &[write("fenced", Cond::At(r2), &b"three"[..])])
        .unwrap();
    assert_eq!(s.get(k, "fenced").unwrap().unwrap().value, b"three");
}

/// `apply`: all operations or none.
pub fn batches(s: &dyn KeyStore) {
    use crate::store::{Cond, Op};
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

/// Four threads increment one counter record by compare-and-swap, 25
/// times each: no update is lost. `s` must not hold a `ctr` key ring.
pub fn concurrent_cas(s: Arc<dyn KeyStore>) {
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

/// Two writers sharing one store, each behind its own integrity manifest
/// ([`crate::manifest::CheckedStore`]): `a` and `b` are two handles on the
/// same records (two connections to one etcd prefix, or one shared
/// in-memory store); `raw` writes behind both manifests' backs. Each
/// writer reads and replaces what the other wrote (catching up with the
/// moved head, retrying its write), a record rolled back or replaced
/// behind the store's back is still `Corrupt` on both, and neither can
/// open the store if the manifest entries no longer match the head.
pub fn two_writers(a: Arc<dyn KeyStore>, b: Arc<dyn KeyStore>, raw: &dyn KeyStore) {
    use crate::manifest::CheckedStore;
    use crate::{MasterKey, Sealer};
    let sealer = || Arc::new(Sealer::new(MasterKey::from_bytes(&[7u8; 32])));
    let ma = CheckedStore::open(a, sealer()).unwrap();
    let mb = CheckedStore::open(b, sealer()).unwrap();
    let k = RecordKind::KeyRing;
    // A creates, B reads it (B catches up) and replaces it
    let r1 = ma.put(k, "x", None, b"from a").unwrap();
    assert_eq!(mb.get(k, "x").unwrap().unwrap().value, b"from a");
    let r2 = mb.put(k, "x", Some(r1), b"from b").unwrap();
    // A's next write conflicts on the head B moved: it catches up and
    // retries without the caller seeing it
    ma.put(k, "y", None, b"a again").unwrap();
    assert_eq!(ma.get(k, "x").unwrap().unwrap().value, b"from b");
    // A's stale compare-and-swap on x is the record's own Conflict
    assert!(matches!(
        ma.put(k, "x", Some(r1), b"stale"),
        Err(Error::Conflict { .. })
    ));
    // interleaved writes on both sides, each seen by the other
    for i in 0..10u32 {
        let (w, r) = if i % 2 == 0 { (&ma, &mb) } else { (&mb, &ma) };
        w.put(k, &format!("n{i}"), None, format!("v{i}").as_bytes()).unwrap();
        assert_eq!(
            r.get(k, &format!("n{i}")).unwrap().unwrap().value,
            format!("v{i}").as_bytes()
        );
    }
    // deletion by one is seen by the other as absent, not as data loss
    let ry = mb.get(k, "y").unwrap().unwrap().revision;
    mb.delete(k, "y", ry).unwrap();
    assert!(ma.get(k, "y").unwrap().is_none());
    let mut names = Vec::new();
    ma.for_each(k, &mut |n, _| {
        names.push(n.to_owned());
        Ok(())
    })
    .unwrap();
    assert_eq!(names.len(), 11, "{names:?}"); // x and n0..n9
                                              // a rollback behind both: x put back to A's value with a raw write
    let cur = raw.get(k, "x").unwrap().unwrap();
    assert!(cur.revision >= r2);
    let sealed_old = b"from a".to_vec();
    raw.put(k, "x", Some(cur.revision), &sealed_old).unwrap();
    for m in [&ma, &mb] {
        assert!(
            matches!(m.get(k, "x"), Err(Error::Corrupt { .. })),
            "a record rolled back behind the store's back must fail its check"
        );
    }
    // a record added behind the store's back
    raw.put(k, "intruder", None, b"forged").unwrap();
    assert!(matches!(mb.get(k, "intruder"), Err(Error::Corrupt { .. })));
    // a record deleted behind the store's back
    let n3 = raw.get(k, "n3").unwrap().unwrap().revision;
    raw.delete(k, "n3", n3).unwrap();
    assert!(matches!(ma.get(k, "n3"), Err(Error::Corrupt { .. })));
    // the others keep working on both, and both still write
    assert_eq!(ma.get(k, "n4").unwrap().unwrap().value, b"v4");
    mb.put(k, "after", None, b"ok").unwrap();
    assert_eq!(ma.get(k, "after").unwrap().unwrap().value, b"ok");
    // a manifest entry changed behind the store's back: catching up fails
    let e = raw.get(RecordKind::Manifest, "kafter").unwrap().unwrap();
    let mut forged = e.value.clone();
    if let Some(b) = forged.last_mut() {
        *b ^= 1;
    }
    raw.put(RecordKind::Manifest, "kafter", Some(e.revision), &forged)
        .unwrap();
    mb.put(k, "later", None, b"moves the head").ok();
    assert!(ma.catch_up().is_err(), "a forged entry must fail the catch-up");
}

/// Fenced batches through the integrity manifest
/// ([`crate::manifest::CheckedStore`]): the fence reaches the backend with
/// the record and its manifest entries, a `Fenced` batch leaves record,
/// entries and head as they were (the store opens and reads clean after),
/// and the manifest refuses lease records as records. `raw` is the store
/// `s` wraps, where the lease record is written (as the election does).
pub fn fences_through_the_manifest(s: Arc<dyn KeyStore>) {
    use crate::manifest::CheckedStore;
    use crate::store::{Cond, Fence, Op};
    use crate::{MasterKey, Sealer};
    let sealer = || Arc::new(Sealer::new(MasterKey::from_bytes(&[7u8; 32])));
    let m = CheckedStore::open(s.clone(), sealer()).unwrap();
    let (k, l) = (RecordKind::KeyRing, RecordKind::Lease);
    let lead = s.put(l, "leader", None, b"node-a").unwrap();
    let fence = |revision| {
        Some(Fence {
            kind: l,
            name: "leader",
            revision,
        })
    };
    let r1 = m
        .apply_fenced(
            fence(lead),
            &[Op {
                kind: k,
                name: "ring",
                cond: Cond::Absent,
                value: Some(b"one"),
            }],
        )
        .unwrap()[0]
        .unwrap();
    let generation = m.generation(k, "ring");
    let taken = s.put(l, "leader", Some(lead), b"node-b").unwrap();
    assert_ne!(taken, lead);
    let e = m
        .apply_fenced(
            fence(lead),
            &[Op {
                kind: k,
                name: "ring",
                cond: Cond::At(r1),
                value: Some(b"two"),
            }],
        )
        .unwrap_err();
    assert!(matches!(e, Error::Fenced { .. }), "{e}");
    assert_eq!(m.get(k, "ring").unwrap().unwrap().value, b"one");
    assert_eq!(m.generation(k, "ring"), generation, "no manifest entry written");
    // a fresh open checks every entry against the head: all intact
    let again = CheckedStore::open(s.clone(), sealer()).unwrap();
    assert_eq!(again.get(k, "ring").unwrap().unwrap().value, b"one");
    // lease records are not records of the manifest
    assert!(matches!(m.get(l, "leader"), Err(Error::Precondition(_))));
    assert!(matches!(m.put(l, "leader", None, b"x"), Err(Error::Precondition(_))));
    // the current holder's fence holds
    m.apply_fenced(
        fence(taken),
        &[Op {
            kind: k,
            name: "ring",
            cond: Cond::At(r1),
            value: Some(b"two"),
        }],
    )
    .unwrap();
    assert_eq!(again.get(k, "ring").unwrap().unwrap().value, b"two");
}
