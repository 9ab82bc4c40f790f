//! The typed client against a real etcd (kmsd_etcd::testing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_etcd::testing::Cluster;
use kmsd_etcd::*;

#[tokio::test]
async fn range_txn_lease_and_watch_on_one_member() {
    let cluster = Cluster::start(1).expect("etcd");
    let c = EtcdClient::connect(&cluster.settings()).unwrap();
    assert!(c.get(b"/t/a".to_vec()).await.unwrap().is_none());
    // create only if absent
    let t = Txn::new()
        .when([Compare::CreateRevision(b"/t/a".to_vec(), Cmp::Equal, 0)])
        .and_then([TxnOp::put(b"/t/a".to_vec(), b"1".to_vec())]);
    let r = c.txn(t.clone()).await.unwrap();
    assert!(r.succeeded);
    let kv = c.get(b"/t/a".to_vec()).await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"1"[..], r.revision));
    assert!(!c.txn(t).await.unwrap().succeeded);
    // watch from the creation
    let mut w = c.watch(Range::prefix(b"/t/".to_vec()), kv.mod_revision).await.unwrap();
    match w.next().await.unwrap() {
        WatchEvent::Events { revision, events } => {
            assert_eq!(revision, kv.mod_revision);
            assert_eq!(events[0].kind, EventKind::Put);
        }
        other => panic!("{other:?}"),
    }
    w.request_progress().await.unwrap();
    assert_eq!(w.next().await.unwrap(), WatchEvent::Progress { revision: r.revision });
    // lease
    let lease = c.lease_grant(5).await.unwrap();
    let mut keeper = c.lease_keep_alive(lease.id).await.unwrap();
    assert!(keeper.keep_alive().await.unwrap() > 0);
    c.lease_revoke(lease.id).await.unwrap();
    // status
    let st = c.member_status().await;
    assert!(st[0].1.as_ref().unwrap().leader != 0);
    assert_eq!(c.member_list().await.unwrap().len(), 1);
    // compaction seen by a watch from before it
    let r2 = c
        .txn(Txn::new().and_then([TxnOp::put(b"/t/b".to_vec(), b"2".to_vec())]))
        .await
        .unwrap();
    c.compact(r2.revision, true).await.unwrap();
    let mut w = c.watch(Range::prefix(b"/t/".to_vec()), kv.mod_revision).await.unwrap();
    assert!(
        matches!(w.next().await.unwrap(), WatchEvent::Compacted { compact_revision } if compact_revision == r2.revision)
    );
}
