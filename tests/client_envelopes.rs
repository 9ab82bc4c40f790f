//! Envelope encryption through the client library (issue 14) against the
//! real daemon: the data-key cache's limits, counted in the daemon's own
//! metrics (`max_messages = 100`: 1,000 seals make 10 `GenerateDataKey`
//! calls), expiry, the unwrap cache, and the expected-keys allow-list.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::lib_client::*;
use common::*;
use kmsd::client::{CacheLimits, Envelopes, Error, UnwrapLimits};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_cache_limits_are_counted_in_the_daemons_metrics() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (d, metrics) = Daemon::start_with_metrics(dir.path(), "");
    let c = client_for(&d).await;
    create_key(&c, "env.cards").await;
    let limits = CacheLimits {
        max_messages: 100,
        ..CacheLimits::default()
    };
    let env = Envelopes::with_limits(c.clone(), limits, UnwrapLimits::default());
    let before = ok_calls(&metrics, "datakey");
    let mut blobs = Vec::new();
    for i in 0..1000u32 {
        let pt = format!("4111 1111 1111 {i:04}");
        blobs.push(env.seal("env.cards", pt.as_bytes(), &i.to_be_bytes()).await.unwrap());
    }
    // max_messages = 100: 1,000 seals, 10 GenerateDataKey calls
    assert_eq!(ok_calls(&metrics, "datakey") - before, 10);
    // and the opening side unwraps each of the 10 data keys once
    let decrypts = ok_calls(&metrics, "decrypt");
    for (i, blob) in blobs.iter().enumerate() {
        let pt = env.open(blob, &(i as u32).to_be_bytes()).await.unwrap();
        assert_eq!(pt, format!("4111 1111 1111 {i:04}").as_bytes());
    }
    assert_eq!(ok_calls(&metrics, "decrypt") - decrypts, 10);
    // wrong associated data (the row id): refused, typed
    let e = env.open(&blobs[1], &0u32.to_be_bytes()).await.unwrap_err();
    assert!(
        matches!(e, Error::Format(kmsd::client::format::FormatError::Authentication)),
        "{e:?}"
    );

    // no cache: one call per message
    let direct = Envelopes::with_limits(c.clone(), CacheLimits::disabled(), UnwrapLimits::disabled());
    let before = ok_calls(&metrics, "datakey");
    for _ in 0..20 {
        direct.seal("env.cards", b"x", b"").await.unwrap();
    }
    assert_eq!(ok_calls(&metrics, "datakey") - before, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_data_keys_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (d, metrics) = Daemon::start_with_metrics(dir.path(), "");
    let c = client_for(&d).await;
    create_key(&c, "env.age").await;
    let limits = CacheLimits {
        max_age: Duration::from_millis(300),
        ..CacheLimits::default()
    };
    let env = Envelopes::with_limits(c, limits, UnwrapLimits::default());
    let before = ok_calls(&metrics, "datakey");
    let wrapped = |b: &[u8]| {
        kmsd::client::envelope::Envelope::parse(b)
            .unwrap()
            .wrapped_key()
            .to_vec()
    };
    let a = env.seal("env.age", b"a", b"").await.unwrap();
    let b = env.seal("env.age", b"b", b"").await.unwrap();
    assert_eq!(wrapped(&a), wrapped(&b), "within max_age: the cached data key");
    assert_eq!(ok_calls(&metrics, "datakey") - before, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c2 = env.seal("env.age", b"c", b"").await.unwrap();
    assert_ne!(wrapped(&a), wrapped(&c2), "past max_age: a new data key");
    assert_eq!(ok_calls(&metrics, "datakey") - before, 2);
    assert_eq!(env.cached().0, 1, "the expired entry was replaced, not kept beside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_refuses_an_unexpected_key_before_calling_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (d, metrics) = Daemon::start_with_metrics(dir.path(), "");
    let c = client_for(&d).await;
    create_key(&c, "env.mine").await;
    create_key(&c, "env.other").await;
    let sealer = Envelopes::new(c.clone());
    let other = sealer.seal("env.other", b"secret", b"").await.unwrap();
    let mine = sealer.seal("env.mine", b"mine", b"").await.unwrap();
    let opener = Envelopes::new(c).expect_keys(["env.mine"]);
    let decrypts = ok_calls(&metrics, "decrypt");
    let e = opener.open(&other, b"").await.unwrap_err();
    assert!(
        matches!(&e, Error::UnexpectedKey { key } if key == "env.other"),
        "{e:?}"
    );
    assert_eq!(ok_calls(&metrics, "decrypt"), decrypts, "no call for a refused key");
    assert_eq!(opener.open(&mine, b"").await.unwrap(), b"mine");
}
