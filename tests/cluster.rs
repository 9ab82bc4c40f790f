//! Several kmsd nodes on one etcd cluster (issue 13): real etcd members on
//! loopback, real daemons over real mTLS (tests/common/cluster.rs). Each
//! node's cache follows the store's watch; changes made on one node reach
//! the others; usage limits hold cluster-wide; losing one etcd member
//! changes nothing, losing the quorum fails closed and recovers without a
//! restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::cluster::KmsCluster;
use common::*;
use kmsd::proto;
use std::time::{Duration, Instant};
use tonic::Code;

/// How long a change may take to reach another node in these tests (the
/// watch delivers in milliseconds; generous for a loaded machine).
const PROPAGATION: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_node_reach_the_others() {
    let c = KmsCluster::start(3, 2, "");
    let (mut crypto_a, mut keys_a) = c.clients(0).await;
    let (mut crypto_b, mut keys_b) = c.clients(1).await;

    // created on A, B encrypts with it once the watch delivered it; A decrypts
    create(&mut keys_a, "orders").await;
    let ct1 = eventually("B to see the key A created", PROPAGATION, || {
        let mut b = crypto_b.clone();
        async move { b.encrypt(enc("orders", b"first", b"")).await.ok() }
    })
    .await
    .into_inner();
    assert_eq!(ct1.key_version, 1);
    assert_eq!(decrypted(&mut crypto_a, "orders", &ct1.ciphertext).await, b"first");

    // rotated on B: A encrypts under version 2 within the bound
    let info = keys_b
        .rotate_key(proto::RotateKeyRequest { name: "orders".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.primary_version, 2);
    let ct2 = eventually("A to encrypt under B's new version", PROPAGATION, || {
        let mut a = crypto_a.clone();
        async move {
            let r = a.encrypt(enc("orders", b"second", b"")).await.unwrap().into_inner();
            (r.key_version == 2).then_some(r)
        }
    })
    .await;
    assert_eq!(decrypted(&mut crypto_b, "orders", &ct2.ciphertext).await, b"second");

    // version 1 disabled on A: B refuses to decrypt under it once propagated
    keys_a
        .set_version_state(proto::SetVersionStateRequest {
            name: "orders".into(),
            version: 1,
            state: proto::VersionState::Disabled as i32,
        })
        .await
        .unwrap();
    let refused = eventually("B to refuse the version A disabled", PROPAGATION, || {
        let mut b = crypto_b.clone();
        let ct = ct1.ciphertext.clone();
        async move { b.decrypt(dec("orders", &ct, b"")).await.err() }
    })
    .await;
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // and the other version still serves on both
    assert_eq!(decrypted(&mut crypto_b, "orders", &ct2.ciphertext).await, b"second");

    // version 1 destroyed through B (every node's scheduler may carry it
    // out; the compare-and-swap lets one do it): A reports it DESTROYED
    // and refuses to decrypt under it, version 2 still serves on A
    keys_b
        .schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
            name: "orders".into(),
            version: 1,
            waiting_period_seconds: 1,
        })
        .await
        .unwrap();
    eventually("A to see version 1 DESTROYED", PROPAGATION, || {
        let mut k = keys_a.clone();
        async move {
            let info = get(&mut k, "orders").await;
            (info.versions[0].state == proto::VersionState::Destroyed as i32).then_some(())
        }
    })
    .await;
    let e = crypto_a.decrypt(dec("orders", &ct1.ciphertext, b"")).await.unwrap_err();
    assert!(e.message().contains("version 1 is DESTROYED"), "{}", e.message());
    assert_eq!(decrypted(&mut crypto_a, "orders", &ct2.ciphertext).await, b"second");

    // a key created on B with a policy reaches A with its policy
    create_with(
        &mut keys_b,
        "capped",
        proto::KeyPolicy {
            max_encryptions_per_version: Some(5),
            ..Default::default()
        },
    )
    .await;
    let info = eventually("A to see B's key", PROPAGATION, || {
        let mut k = keys_a.clone();
        async move {
            k.get_key(proto::GetKeyRequest { name: "capped".into() })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    })
    .await;
    assert_eq!(info.policy.unwrap().max_encryptions_per_version, Some(5));
}

/// Three nodes encrypt concurrently under a key limited to 1,000
/// encryptions per version, with small reservation blocks (50) so the
/// nodes' windows interleave within each version: no version is
/// acknowledged more than 1,000 times, counted from the ciphertexts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_limit_holds_across_nodes() {
    const LIMIT: u64 = 1000;
    let c = KmsCluster::start(3, 3, "[limits]\nusage_reservation_block = 50\n");
    let (_, mut keys_a) = c.clients(0).await;
    create_with(
        &mut keys_a,
        "metered",
        proto::KeyPolicy {
            max_encryptions_per_version: Some(LIMIT),
            ..Default::default()
        },
    )
    .await;
    for i in 1..3 {
        let (crypto, _) = c.clients(i).await;
        eventually("every node to see the key", PROPAGATION, || {
            let mut cr = crypto.clone();
            async move { cr.encrypt(enc("metered", b"warm-up", b"")).await.ok() }
        })
        .await;
    }
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (mut crypto, _) = c.clients(i).await;
        tasks.push(tokio::spawn(async move {
            let (mut versions, mut errors) = (Vec::new(), Vec::new());
            for _ in 0..20 {
                let items = (0..60).map(|_| enc("metered", b"m", b"")).collect();
                let r = crypto.encrypt_batch(proto::EncryptBatchRequest { items }).await;
                let Ok(r) = r else { continue };
                for item in r.into_inner().items {
                    match item.result {
                        Some(proto::encrypt_batch_item::Result::Ok(ok)) => {
                            assert_eq!(envelope_version(&ok.ciphertext), ok.key_version);
                            versions.push(ok.key_version);
                        }
                        other => errors.push(format!("{other:?}")),
                    }
                }
            }
            (versions, errors)
        }));
    }
    let mut per_version = std::collections::BTreeMap::<u32, u64>::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (versions, e) = t.await.unwrap();
        errors.extend(e.into_iter().take(3));
        for v in versions {
            *per_version.entry(v).or_default() += 1;
        }
    }
    // the two warm-up encryptions count against version 1 too
    if let Some(n) = per_version.get_mut(&1) {
        *n += 2;
    }
    let total: u64 = per_version.values().sum();
    assert!(
        total >= 3 * LIMIT,
        "too few encryptions succeeded: {per_version:?}; errors: {errors:?}"
    );
    for (v, n) in &per_version {
        assert!(
            *n <= LIMIT,
            "version {v} was acknowledged {n} times (limit {LIMIT}): {per_version:?}"
        );
    }
    assert!(per_version.len() >= 4, "{per_version:?}");
}

/// One etcd member killed (the quorum stays): nothing visible changes,
/// also past max_staleness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_member_down_changes_nothing() {
    // a request timeout that outlasts the election when the killed member
    // led (100 ms election timeout, slower on a loaded machine)
    let timers = "connect_timeout = \"500ms\"\nrequest_timeout = \"3s\"\nmax_staleness = \"2s\"\n";
    let mut c = KmsCluster::start_with(3, 2, timers, "");
    let (mut crypto_a, mut keys_a) = c.clients(0).await;
    let (mut crypto_b, _) = c.clients(1).await;
    create(&mut keys_a, "before").await;
    let ct = encrypted(&mut crypto_a, "before", b"kept").await;
    c.etcd.kill(0).unwrap();
    if let Err(e) = keys_a
        .create_key(proto::CreateKeyRequest {
            name: "after".into(),
            algorithm: 0,
            policy: None,
            exportable: false,
        })
        .await
    {
        panic!("{e:?}\nlog of A:\n{}", c.node(0).log_text());
    }
    let ct2 = eventually("B to see the key created with a member down", PROPAGATION, || {
        let mut b = crypto_b.clone();
        async move { b.encrypt(enc("after", b"new", b"")).await.ok() }
    })
    .await
    .into_inner();
    // well past max_staleness (2 s): both nodes still serve
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(decrypted(&mut crypto_b, "before", &ct).await, b"kept");
    assert_eq!(decrypted(&mut crypto_a, "after", &ct2.ciphertext).await, b"new");
    c.etcd.restart(0).unwrap();
    create(&mut keys_a, "again").await;
}

/// Two of three members stopped (SIGSTOP: no quorum): admin writes answer
/// UNAVAILABLE within the request timeout; decryption serves from the
/// cache until max_staleness, then UNAVAILABLE; after SIGCONT everything
/// works again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_lost_fails_closed_then_recovers() {
    let mut c = KmsCluster::start_with(3, 2, common::cluster::SHORT_TIMERS, "");
    let (mut crypto_a, mut keys_a) = c.clients(0).await;
    let (mut crypto_b, _) = c.clients(1).await;
    create(&mut keys_a, "k").await;
    let ct = encrypted(&mut crypto_a, "k", b"secret-ish").await;
    eventually("B to see the key", PROPAGATION, || {
        let mut b = crypto_b.clone();
        let ct = ct.clone();
        async move { b.decrypt(dec("k", &ct, b"")).await.ok() }
    })
    .await;

    c.etcd.stop(1).unwrap();
    c.etcd.stop(2).unwrap();
    let stopped = Instant::now();
    // decryption from the cache, still within max_staleness
    assert_eq!(decrypted(&mut crypto_b, "k", &ct).await, b"secret-ish");
    // an admin write fails closed within the request timeout (1 s; one
    // and a half with the resend to another member, plus the call's own
    // work on a loaded machine)
    let t = Instant::now();
    let e = keys_a
        .create_key(proto::CreateKeyRequest {
            name: "during".into(),
            algorithm: 0,
            policy: None,
            exportable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // past max_staleness (3 s): UNAVAILABLE, saying why
    let e = eventually("decryption to stop past max_staleness", Duration::from_secs(10), || {
        let mut b = crypto_b.clone();
        let ct = ct.clone();
        async move { b.decrypt(dec("k", &ct, b"")).await.err() }
    })
    .await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("stale"), "{}", e.message());
    // not at once: the cache served for a while after the stop
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        stopped.elapsed()
    );
    // A too (its last confirmation may be a tick later than B's)
    let e = eventually(
        "encryption on A to stop past max_staleness",
        Duration::from_secs(10),
        || {
            let mut a = crypto_a.clone();
            async move { a.encrypt(enc("k", b"x", b"")).await.err() }
        },
    )
    .await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("stale"), "{}", e.message());

    c.etcd.cont(1).unwrap();
    c.etcd.cont(2).unwrap();
    let pt = eventually("decryption to recover after SIGCONT", PROPAGATION, || {
        let mut b = crypto_b.clone();
        let ct = ct.clone();
        async move { b.decrypt(dec("k", &ct, b"")).await.ok() }
    })
    .await;
    assert_eq!(pt.into_inner().plaintext, b"secret-ish");
    eventually("admin writes to recover", PROPAGATION, || {
        let mut k = keys_a.clone();
        async move {
            k.create_key(proto::CreateKeyRequest {
                name: "after".into(),
                algorithm: 0,
                policy: None,
                exportable: false,
            })
            .await
            .ok()
        }
    })
    .await;
    eventually("B to see the key made after recovery", PROPAGATION, || {
        let mut b = crypto_b.clone();
        async move { b.encrypt(enc("after", b"y", b"")).await.ok() }
    })
    .await;
}

/// A node killed and restarted loads the keys the others made meanwhile
/// and follows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up() {
    let mut c = KmsCluster::start(3, 2, "");
    c.kill_node(1);
    let (mut crypto_a, mut keys_a) = c.clients(0).await;
    create(&mut keys_a, "while-down").await;
    let ct = encrypted(&mut crypto_a, "while-down", b"p").await;
    c.restart_node(1);
    let (mut crypto_b, mut keys_b) = c.clients(1).await;
    assert_eq!(decrypted(&mut crypto_b, "while-down", &ct).await, b"p");
    create(&mut keys_b, "from-b").await;
    eventually("A to see B's key", PROPAGATION, || {
        let mut a = crypto_a.clone();
        async move { a.encrypt(enc("from-b", b"q", b"")).await.ok() }
    })
    .await;
}
