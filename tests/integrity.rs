//! Integrity at rest against the real daemon: a ring record put back or
//! deleted in the state directory while the daemon is stopped is DATA_LOSS
//! for that key (logged at ERROR), the destroyed version never decrypts
//! again, and the other keys keep serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient};
use kmsd_keystore::{KeyStore, RecordKind, SledStore};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

async fn round_trip(crypto: &mut CryptoClient<Channel>, key: &str) {
    let ct = encrypted(crypto, key, b"still fine").await;
    let pt = decrypted(crypto, key, &ct).await;
    assert_eq!(pt, b"still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_record_put_back_or_deleted_on_disk_is_data_loss_for_that_key_only() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let store = dir.path().join("store");
    let mut d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    for n in ["victim", "bystander", "deleted"] {
        create(&mut keys, n).await;
    }
    let ct1 = encrypted(&mut crypto, "victim", b"secret").await;
    keys.rotate_key(proto::RotateKeyRequest { name: "victim".into() })
        .await
        .unwrap();
    d.stop();
    // the sealed ring record while version 1 still has its material
    let old = SledStore::open(&store)
        .unwrap()
        .get(RecordKind::KeyRing, "victim")
        .unwrap()
        .unwrap()
        .value;
    d.restart_after_stop();
    let (mut crypto, mut keys) = d.clients().await;
    keys.schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
        name: "victim".into(),
        version: 1,
        waiting_period_seconds: 1,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = crypto.decrypt(dec("victim", &ct1, b"")).await.unwrap_err();
        if e.message().contains("DESTROYED") {
            break;
        }
        assert!(Instant::now() < deadline, "version not destroyed: {}", e.message());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.stop();
    // someone with write access to the state directory puts the old record
    // back and deletes another ring
    {
        let raw = SledStore::open(&store).unwrap();
        let cur = raw.get(RecordKind::KeyRing, "victim").unwrap().unwrap().revision;
        raw.put(RecordKind::KeyRing, "victim", Some(cur), &old).unwrap();
        let r = raw.get(RecordKind::KeyRing, "deleted").unwrap().unwrap().revision;
        raw.delete(RecordKind::KeyRing, "deleted", r).unwrap();
        raw.sync().unwrap();
    }
    d.restart_after_stop();
    let (mut crypto, mut keys) = d.clients().await;
    let e = crypto.decrypt(dec("victim", &ct1, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{}", e.message());
    let e = crypto.encrypt(enc("victim", b"x", b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{}", e.message());
    let e = keys
        .get_key(proto::GetKeyRequest { name: "deleted".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{}", e.message());
    let e = crypto.encrypt(enc("deleted", b"x", b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{}", e.message());
    round_trip(&mut crypto, "bystander").await;
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("DATA LOSS") && l.contains("victim")),
        "no ERROR line naming the rolled-back key"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("DATA LOSS") && l.contains("deleted")),
        "no ERROR line naming the deleted key"
    );
    d.stop();
}
