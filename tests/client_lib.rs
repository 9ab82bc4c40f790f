//! The typed client library (`kmsd-client`, issue 14) against the real
//! daemon over real mTLS: typed errors, deadlines, request ids, one-time
//! codes, failover past a dead endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::bank::Env;
use common::lib_client::*;
use common::*;
use kmsd::client::{CallOptions, ClientBuilder, Error, RetryPolicy};
use kmsd::proto;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_by_grpc_code() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let c = client_for(&d).await;
    create_key(&c, "typed").await;
    let e = c
        .get_key(proto::GetKeyRequest { name: "missing".into() })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    let e = c
        .decrypt(proto::DecryptRequest {
            key: "typed".into(),
            ciphertext: b"not a ciphertext".to_vec(),
            associated_data: vec![],
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    let e = c
        .create_key(proto::CreateKeyRequest {
            name: "typed".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e:?}");
    // a deadline that has passed: refused locally, typed
    let e = c
        .with(CallOptions::new().timeout(Duration::ZERO))
        .get_key(proto::GetKeyRequest { name: "typed".into() })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DeadlineExceeded(_)), "{e:?}");
    // a request id the daemon would not take is refused before sending
    let e = c
        .with(CallOptions::new().request_id("has space"))
        .get_key(proto::GetKeyRequest { name: "typed".into() })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Settings(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_reach_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let c = client_for(&d).await;
    create_key(&c, "rid").await;
    c.with(CallOptions::new().request_id("order-4711:attempt.1"))
        .encrypt(enc("rid", b"x", b""))
        .await
        .unwrap();
    // without one, each logical call gets its own
    c.encrypt(enc("rid", b"y", b"")).await.unwrap();
    c.encrypt(enc("rid", b"z", b"")).await.unwrap();
    let audit = dir.path().join("audit.log");
    wait_for("the audit records", || {
        audit_lines(&std::fs::read_to_string(&audit).unwrap_or_default())
            .iter()
            .filter(|r| r["op"] == "encrypt")
            .count()
            >= 3
    });
    let records = audit_lines(&std::fs::read_to_string(&audit).unwrap());
    let ids: Vec<&str> = records
        .iter()
        .filter(|r| r["op"] == "encrypt")
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"order-4711:attempt.1"), "{ids:?}");
    let generated: Vec<&&str> = ids.iter().filter(|i| **i != "order-4711:attempt.1").collect();
    assert_eq!(generated.len(), 2);
    assert_ne!(generated[0], generated[1]);
    assert!(generated.iter().all(|i| i.len() == 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_codes_are_a_call_option() {
    let mut env = Env::new().await;
    let dir = env.d.dir.clone();
    let admin = ClientBuilder::new()
        .endpoint(unix(&env.d))
        .ca(dir.join("ca.pem"))
        .cert(dir.join("admin.pem"))
        .key(dir.join("admin.key"))
        .connect()
        .await
        .unwrap();
    create_key(&admin, "otp-ring").await;
    let alice = ClientBuilder::new()
        .endpoint(unix(&env.d))
        .ca(dir.join("ca.pem"))
        .cert(dir.join("alice.pem"))
        .key(dir.join("alice.key"))
        .connect()
        .await
        .unwrap();
    let rotate = || proto::RotateKeyRequest {
        name: "otp-ring".into(),
    };
    let e = alice.rotate_key(rotate()).await.unwrap_err();
    assert!(
        matches!(e, Error::Unauthenticated(_)) && e.needs_second_factor(),
        "{e:?}"
    );
    let info = alice
        .with(CallOptions::new().otp(env.code("alice")))
        .rotate_key(rotate())
        .await
        .unwrap();
    assert_eq!(info.primary_version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_skipped_for_every_call() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let dead = format!("127.0.0.1:{}", free_port());
    // the dead endpoint first: connect, a data-path call and an
    // administrative call all go to the live one
    let c = builder(dir.path(), &[dead.clone(), unix(&d)]).connect().await.unwrap();
    create_key(&c, "fo").await;
    let ct = c.encrypt(enc("fo", b"pan", b"")).await.unwrap().ciphertext;
    assert_eq!(c.decrypt(dec("fo", &ct, b"")).await.unwrap().plaintext, b"pan");
    // only dead endpoints: the connection error, typed, after the retries
    let c = builder(dir.path(), &[dead])
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        })
        .build()
        .unwrap();
    let e = c.encrypt(enc("fo", b"pan", b"")).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
}
