//! `EtcdStore` against a real 3-member etcd cluster: the keystore's
//! conformance suite, and what a lost member or a lost quorum does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_etcd::testing::Cluster;
use kmsd_etcd::EtcdStore;
use kmsd_keystore::store::{KeyStore, RecordKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn conformance_on_a_three_member_cluster() {
    let cluster = Cluster::start(3).expect("etcd");
    let s = EtcdStore::open(&cluster.settings(), "/kmsd/conf/").unwrap();
    kmsd_keystore::conformance::run(&s);
    let cas = Arc::new(EtcdStore::open(&cluster.settings(), "/kmsd/cas/").unwrap());
    kmsd_keystore::conformance::concurrent_cas(cas);
    // the records are where the layout says, and nothing else is
    let c = s.client();
    let keys = kmsd_etcd::testing::block_on(async move {
        c.range(kmsd_etcd::Range::prefix(b"/kmsd/conf/".to_vec()))
            .await
            .unwrap()
            .kvs
    });
    assert!(keys.iter().any(|kv| kv.key == b"/kmsd/conf/ka"), "{keys:?}");
    assert!(keys.iter().all(|kv| s.decode_key(&kv.key).is_some()));
}

/// Two kmsd nodes' integrity manifests over one prefix (two stores, two
/// connections): each catches up with the other's writes, tampering behind
/// both is still caught (keystore's `conformance::two_writers`).
#[test]
fn two_manifests_share_one_prefix() {
    let cluster = Cluster::start(3).expect("etcd");
    let open = || Arc::new(EtcdStore::open(&cluster.settings(), "/kmsd/two/").unwrap());
    let (a, b, raw) = (open(), open(), open());
    kmsd_keystore::conformance::two_writers(a, b, raw.as_ref());
    // fenced batches through a manifest on etcd (the fence is a compare
    // in the batch's transaction)
    kmsd_keystore::conformance::fences_through_the_manifest(Arc::new(
        EtcdStore::open(&cluster.settings(), "/kmsd/fence/").unwrap(),
    ));
}

/// A fresh store on `cluster` under `prefix`, with a short request timeout.
fn store(settings: kmsd_etcd::Settings, prefix: &str) -> EtcdStore {
    EtcdStore::open(&settings, prefix).unwrap()
}

fn leader(cluster: &Cluster) -> usize {
    let c = cluster.settings();
    let st =
        kmsd_etcd::testing::block_on(async move { kmsd_etcd::EtcdClient::connect(&c).unwrap().member_status().await });
    let id = st.iter().find_map(|(_, s)| s.as_ref().ok().map(|s| s.leader)).unwrap();
    st.iter()
        .position(|(_, s)| s.as_ref().is_ok_and(|s| s.member_id == id))
        .unwrap()
}

#[test]
fn one_member_killed_changes_nothing() {
    let mut cluster = Cluster::start(3).expect("etcd");
    let s = store(cluster.settings(), "/kmsd/k/");
    s.put(RecordKind::KeyRing, "before", None, b"v").unwrap();
    // the member every call went to so far
    cluster.kill(0).unwrap();
    kmsd_keystore::conformance::run(&store(cluster.settings(), "/kmsd/k1/"));
    assert_eq!(s.get(RecordKind::KeyRing, "before").unwrap().unwrap().value, b"v");
    cluster.restart(0).unwrap();
    // the raft leader
    let l = leader(&cluster);
    cluster.kill(l).unwrap();
    // at once, during the election: delayed, not failed
    let e = s.get(RecordKind::KeyRing, "before").unwrap().unwrap();
    s.put(RecordKind::KeyRing, "before", Some(e.revision), b"v").unwrap();
    kmsd_keystore::conformance::run(&store(cluster.settings(), "/kmsd/k2/"));
    let e = s.get(RecordKind::KeyRing, "before").unwrap().unwrap();
    s.put(RecordKind::KeyRing, "before", Some(e.revision), b"w").unwrap();
}

#[test]
fn quorum_lost_fails_within_the_timeout_then_recovers() {
    let mut cluster = Cluster::start(3).expect("etcd");
    let mut settings = cluster.settings();
    settings.request_timeout = Duration::from_secs(1);
    let s = store(settings, "/kmsd/q/");
    let r1 = s.put(RecordKind::KeyRing, "r", None, b"1").unwrap();
    // two of three stopped, among them the one the store talks to
    cluster.stop(0).unwrap();
    cluster.stop(1).unwrap();
    let bound = Duration::from_secs(3); // the 1 s timeout, with room for a loaded machine
    let t = Instant::now();
    let e = s.put(RecordKind::KeyRing, "r", Some(r1), b"2").unwrap_err();
    assert!(t.elapsed() < bound, "the write hung {:?}", t.elapsed());
    assert!(
        matches!(e, kmsd_keystore::Error::Backend(ref m) if m.contains("etcd unavailable")),
        "{e}"
    );
    let t = Instant::now();
    let e = s.get(RecordKind::KeyRing, "r").unwrap_err();
    assert!(t.elapsed() < bound, "the read hung {:?}", t.elapsed());
    assert!(e.to_string().contains("etcd unavailable"), "{e}");
    let t = Instant::now();
    assert!(s.list(RecordKind::KeyRing, "", None, 10).is_err());
    assert!(t.elapsed() < bound, "the listing hung {:?}", t.elapsed());
    // resumed: everything works again, without reopening the store
    cluster.cont(0).unwrap();
    cluster.cont(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = loop {
        match s.get(RecordKind::KeyRing, "r") {
            Ok(e) => break e.unwrap(),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("not back after SIGCONT: {e}"),
        }
    };
    // the failed write may or may not have been applied (even a little
    // later); compare-and-swap from what is read succeeds once the
    // cluster has settled (its first writes may still time out)
    assert!(e.value == b"1" || e.value == b"2");
    let mut current = e;
    loop {
        match s.put(RecordKind::KeyRing, "r", Some(current.revision), b"3") {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("after SIGCONT: {e}");
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(Some(now)) = s.get(RecordKind::KeyRing, "r") {
                    current = now;
                }
            }
            Err(e) => panic!("no write after SIGCONT: {e}"),
        }
    }
    assert_eq!(s.get(RecordKind::KeyRing, "r").unwrap().unwrap().value, b"3");
    kmsd_keystore::conformance::run(&store(cluster.settings(), "/kmsd/q2/"));
}

/// etcd refuses a request over `--max-request-bytes` (1.5 MiB by
/// default): a record near the bound is stored, one over it is refused
/// with a clear error and changes nothing. (A key ring takes about 45
/// bytes per version, so about 34,000 versions fit.)
#[test]
fn etcds_request_limit_bounds_a_record() {
    let cluster = Cluster::start(1).expect("etcd");
    let s = store(cluster.settings(), "/kmsd/big/");
    let near = vec![7u8; 1_400_000];
    let r = s.put(RecordKind::KeyRing, "big", None, &near).unwrap();
    for over in [1_700_000usize, 3_000_000] {
        let e = s
            .put(RecordKind::KeyRing, "big", Some(r), &vec![8u8; over])
            .unwrap_err();
        assert!(e.to_string().contains("too large"), "{over}: {e}");
    }
    let e = s.get(RecordKind::KeyRing, "big").unwrap().unwrap();
    assert_eq!((e.revision, e.value.len()), (r, near.len()));
}

/// What a cache built on the store uses: `for_each` fixes the snapshot
/// revision it read at, a watch from the next revision reports every
/// later write (by another node's store) keyed back to its record, with
/// progress on request, and a compaction past it as `Compacted`.
#[test]
fn a_watch_from_the_snapshot_sees_other_nodes_writes() {
    use kmsd_etcd::{EventKind, WatchEvent};
    let cluster = Cluster::start(1).expect("etcd");
    let a = store(cluster.settings(), "/kmsd/w/");
    let b = store(cluster.settings(), "/kmsd/w/");
    a.put(RecordKind::KeyRing, "k1", None, b"1").unwrap();
    a.for_each(RecordKind::KeyRing, &mut |_, _| Ok(())).unwrap();
    let snap = a.snapshot_revision();
    assert!(snap >= a.opened_revision() && snap > 0);
    let mut w = a.watch(snap + 1).unwrap();
    let r = b.put(RecordKind::Meta, "m", None, b"2").unwrap();
    let e = b.get(RecordKind::KeyRing, "k1").unwrap().unwrap();
    b.delete(RecordKind::KeyRing, "k1", e.revision).unwrap();
    b.put(RecordKind::KeyRing, "k1", None, b"3").unwrap();
    let (seen, progress, compacted) = kmsd_etcd::testing::block_on(async move {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match w.next().await.unwrap() {
                WatchEvent::Events { events, .. } => seen.extend(events),
                WatchEvent::Progress { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        w.request_progress().await.unwrap();
        let progress = w.next().await.unwrap();
        (seen, progress, w)
    });
    let decoded: Vec<_> = seen
        .iter()
        .map(|e| (e.kind, a.decode_key(&e.kv.key).unwrap()))
        .collect();
    assert_eq!(
        decoded,
        vec![
            (EventKind::Put, (RecordKind::Meta, "m".to_owned())),
            (EventKind::Delete, (RecordKind::KeyRing, "k1".to_owned())),
            (EventKind::Put, (RecordKind::KeyRing, "k1".to_owned())),
        ]
    );
    assert_eq!(seen[0].kv.mod_revision as u64, r.0);
    assert_eq!(seen[0].kv.value, b"2");
    let now = a.revision().unwrap();
    assert_eq!(progress, WatchEvent::Progress { revision: now });
    drop(compacted);
    // compacted past the snapshot: a watch from it is told to reload
    a.reclaim().unwrap();
    let mut w = a.watch(snap + 1).unwrap();
    let ev = kmsd_etcd::testing::block_on(async move { w.next().await.unwrap() });
    assert_eq!(ev, WatchEvent::Compacted { compact_revision: now });
}

/// A watch never goes silent: on a member that lost its quorum etcd ends
/// it ("no leader": the client asks for that), and on a member that
/// stopped answering the connection's pings end it; either way `next`
/// returns `Unavailable` and the follower can watch again elsewhere.
#[test]
fn a_watch_breaks_instead_of_going_silent() {
    let mut cluster = Cluster::start(3).expect("etcd");
    let mut settings = cluster.settings();
    settings.endpoints.truncate(1); // watch through member 0
    let s = store(settings, "/kmsd/ws/");
    let next_within = |mut w: kmsd_etcd::Watcher| {
        kmsd_etcd::testing::block_on(async move { tokio::time::timeout(Duration::from_secs(5), w.next()).await })
    };
    // member 0 loses its quorum
    let w = s.watch(s.revision().unwrap() + 1).unwrap();
    cluster.stop(1).unwrap();
    cluster.stop(2).unwrap();
    let r = next_within(w).expect("the watch went silent without a quorum");
    assert!(matches!(r, Err(ref e) if e.is_unavailable()), "{r:?}");
    cluster.cont(1).unwrap();
    cluster.cont(2).unwrap();
    // member 0 itself stops answering
    let deadline = Instant::now() + Duration::from_secs(10);
    let w = loop {
        match s.watch(s.revision().unwrap_or(0) + 1) {
            Ok(w) => break w,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no watch after SIGCONT: {e}"),
        }
    };
    cluster.stop(0).unwrap();
    let r = next_within(w).expect("the watch went silent on a stopped member");
    assert!(matches!(r, Err(ref e) if e.is_unavailable()), "{r:?}");
    cluster.cont(0).unwrap();
}

/// A whole-kind read over many pages (the first of 1,000 records, the
/// next sized by bytes): every record once, in name order, with its
/// value, other kinds left out, and a write made during the read not
/// seen (one snapshot).
#[test]
fn for_each_reads_many_pages_at_one_revision() {
    use kmsd_keystore::store::{Cond, Op};
    let cluster = Cluster::start(1).expect("etcd");
    let s = store(cluster.settings(), "/kmsd/pages/");
    let n = 3_000usize;
    // small values, and every 500th a large one (pages by bytes shrink)
    let value = |i: usize| vec![(i % 251) as u8; if i % 500 == 0 { 200_000 } else { 40 }];
    let names: Vec<String> = (0..n).map(|i| format!("r{i:05}")).collect();
    let values: Vec<Vec<u8>> = (0..n).map(value).collect();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<Op<'_>> = chunk
            .iter()
            .map(|&i| Op {
                kind: RecordKind::KeyRing,
                name: &names[i],
                cond: Cond::Absent,
                value: Some(&values[i]),
            })
            .collect();
        s.apply(&ops).unwrap();
    }
    s.put(RecordKind::Meta, "other-kind", None, b"x").unwrap();
    let mut seen = Vec::new();
    s.for_each(RecordKind::KeyRing, &mut |name, e| {
        if seen.len() == 1500 {
            // written during the read: after its snapshot
            s.put(RecordKind::KeyRing, "r99999-late", None, b"late").unwrap();
        }
        let i: usize = name[1..].parse().unwrap();
        assert_eq!(e.value, values[i], "{name}");
        seen.push(name.to_owned());
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, names);
    assert!(s.get(RecordKind::KeyRing, "r99999-late").unwrap().is_some());
}
