//! etcd with client-certificate authentication (`--client-cert-auth
//! --trusted-ca-file`, users named by their certificate's CN, a role
//! limited to kmsd's prefix): the store connects with its certificate; no
//! certificate, an untrusted one, or a key outside the prefix is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_etcd::testing::{block_on, Cluster};
use kmsd_etcd::{Error, EtcdClient, EtcdStore, Settings, TlsSettings, Txn, TxnOp};
use kmsd_keystore::store::{KeyStore, RecordKind};

fn with_identity(cluster: &Cluster, identity: Option<(std::path::PathBuf, std::path::PathBuf)>) -> Settings {
    let mut s = cluster.settings();
    let (cert, key) = match identity {
        Some((c, k)) => (Some(c), Some(k)),
        None => (None, None),
    };
    s.tls = Some(TlsSettings {
        ca: cluster.ca().unwrap(),
        cert,
        key,
        server_name: None,
    });
    s
}

#[test]
fn client_certificate_auth_limits_the_store_to_its_prefix() {
    let cluster = Cluster::start_tls(3).expect("etcd");
    cluster
        .enable_auth_with_prefix_user("kmsd-node", "/kmsd/prod/")
        .unwrap();
    let node = with_identity(&cluster, Some(cluster.identity("kmsd-node").unwrap()));

    // the node's certificate: the whole contract under its prefix
    let s = EtcdStore::open(&node, "/kmsd/prod/").unwrap();
    kmsd_keystore::conformance::run(&s);

    // outside its prefix: refused, reading and writing
    let e = EtcdStore::open(&node, "/kmsd/other/").unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
    let n = node.clone();
    let (w, r) = block_on(async move {
        let c = EtcdClient::connect(&n).unwrap();
        let w = c
            .txn(Txn::new().and_then([TxnOp::put(b"/kmsd/other/kx".to_vec(), b"x".to_vec())]))
            .await;
        let r = c.get(b"/elsewhere".to_vec()).await;
        (w, r)
    });
    assert!(matches!(w, Err(Error::PermissionDenied(_))), "{w:?}");
    assert!(matches!(r, Err(Error::PermissionDenied(_))), "{r:?}");
    // (and nothing was written there: root sees nothing)
    let root = cluster.settings();
    let other = block_on(async move {
        EtcdClient::connect(&root)
            .unwrap()
            .range(kmsd_etcd::Range::prefix(b"/kmsd/other/".to_vec()))
            .await
            .unwrap()
    });
    assert!(other.kvs.is_empty());

    // no client certificate: refused at the handshake, said so
    let e = EtcdStore::open(&with_identity(&cluster, None), "/kmsd/prod/").unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("TLS handshake failed") && m.contains("client certificate"),
        "{m}"
    );

    // a certificate from a CA etcd does not trust: the same
    let untrusted = with_identity(&cluster, Some(cluster.untrusted_identity("kmsd-node").unwrap()));
    let m = EtcdStore::open(&untrusted, "/kmsd/prod/").unwrap_err().to_string();
    assert!(m.contains("TLS handshake failed") && m.contains("alert"), "{m}");

    // a node that does not trust etcd's server certificate refuses it
    let mut wrong_ca = node.clone();
    if let Some(t) = wrong_ca.tls.as_mut() {
        t.ca = cluster.untrusted_identity("x").unwrap().0;
    }
    let m = EtcdStore::open(&wrong_ca, "/kmsd/prod/").unwrap_err().to_string();
    assert!(m.contains("server certificate"), "{m}");

    // the refused nodes wrote nothing; the good one still works
    assert!(s.get(RecordKind::KeyRing, "a").unwrap().is_some());
}
