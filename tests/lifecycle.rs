//! Key lifecycle against the real daemon over real mTLS: scheduled and
//! usage rotation, version states, destruction, rewrap, batches, data
//! keys, backup and restore, and master-key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_happens_on_time_in_the_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path()); // dev_mode: periods down to 1 s
    let (mut crypto, mut keys) = d.clients().await;
    let policy = proto::KeyPolicy {
        rotation_period_seconds: Some(2),
        ..Default::default()
    };
    let info = create_with(&mut keys, "sched", policy).await;
    assert_eq!(info.next_rotation_at, info.created_at + 2);
    let old = encrypt_ok(&mut crypto, "sched", b"before").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let info = loop {
        let info = get(&mut keys, "sched").await;
        if info.primary_version >= 2 {
            break info;
        }
        assert!(Instant::now() < deadline, "no scheduled rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ev = &info.rotations[0];
    assert_eq!(ev.reason, proto::RotationReason::Scheduled as i32);
    // at its second, not on a polling grid (one second of slack for a loaded CI machine)
    assert!(
        ev.at == info.created_at + 2 || ev.at == info.created_at + 3,
        "rotated at {} for a deadline of {}",
        ev.at,
        info.created_at + 2
    );
    assert_eq!(info.versions[1].created_at, ev.at);
    let p = crypto
        .decrypt(dec("sched", &old.ciphertext, b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.plaintext, b"before");
    // GetKey reads the store, Encrypt the in-memory ring the scheduler
    // installs right after its store write: on a loaded machine the two may
    // be a moment apart, so allow the cache that moment (never more).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let v = encrypt_ok(&mut crypto, "sched", b"x").await.key_version;
        if v >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "encrypt still uses version {v} after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        d.log_text().contains("reason=\"scheduled\""),
        "rotation logged with its reason"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_limit_of_100_rotates_after_the_100th_encryption() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    let policy = proto::KeyPolicy {
        max_encryptions_per_version: Some(100),
        ..Default::default()
    };
    create_with(&mut keys, "limited", policy).await;
    for i in 1..=100 {
        let v = encrypt_ok(&mut crypto, "limited", b"m").await.key_version;
        assert_eq!(v, 1, "encryption {i}");
    }
    let v = encrypt_ok(&mut crypto, "limited", b"m").await.key_version;
    assert_eq!(v, 2);
    let info = get(&mut keys, "limited").await;
    assert_eq!(info.versions[0].encryptions, 100);
    assert_eq!(info.rotations[0].reason, proto::RotationReason::Usage as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_states_answer_as_specified_and_destruction_really_destroys() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, "st").await;
    let ct1 = encrypted(&mut crypto, "st", b"one").await;
    keys.rotate_key(proto::RotateKeyRequest { name: "st".into() })
        .await
        .unwrap();
    let ct2 = encrypted(&mut crypto, "st", b"two").await;

    // the primary cannot be disabled or destroyed
    let set = |v: u32, s: proto::VersionState| proto::SetVersionStateRequest {
        name: "st".into(),
        version: v,
        state: s as i32,
    };
    let e = keys
        .set_version_state(set(2, proto::VersionState::Disabled))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // DISABLED: no decryption, named in the error; reversible
    keys.set_version_state(set(1, proto::VersionState::Disabled))
        .await
        .unwrap();
    let e = crypto.decrypt(dec("st", &ct1, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("version 1 is DISABLED"), "{}", e.message());
    keys.set_version_state(set(1, proto::VersionState::DecryptOnly))
        .await
        .unwrap();
    assert_eq!(decrypted(&mut crypto, "st", &ct1).await, b"one");
    // usage is visible for "safe to retire" decisions
    let info = get(&mut keys, "st").await;
    assert!(info.versions[0].decryptions >= 1 && info.versions[0].last_used_at > 0);
    // below the minimum decryption version
    set_policy(&mut keys, "st", |p| p.min_decryption_version = Some(2))
        .await
        .unwrap();
    let e = crypto.decrypt(dec("st", &ct1, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("below the minimum"), "{}", e.message());
    set_policy(&mut keys, "st", |p| p.min_decryption_version = Some(0))
        .await
        .unwrap();

    // a waiting period shorter than the minimum is refused... in dev mode 1 s is allowed
    let sched = |wait: u64| proto::ScheduleVersionDestructionRequest {
        name: "st".into(),
        version: 1,
        waiting_period_seconds: wait,
    };
    let info = keys
        .schedule_version_destruction(sched(3600))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.versions[0].state,
        proto::VersionState::ScheduledForDestruction as i32
    );
    assert!(info.versions[0].destroy_at >= info.versions[0].created_at + 3600);
    let e = crypto.decrypt(dec("st", &ct1, b"")).await.unwrap_err();
    assert!(e.message().contains("SCHEDULED_FOR_DESTRUCTION"), "{}", e.message());
    // cancel → DISABLED
    let info = keys
        .cancel_version_destruction(proto::CancelVersionDestructionRequest {
            name: "st".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.versions[0].state, proto::VersionState::Disabled as i32);

    // capture the material as stored, to scan for it after destruction
    d.stop();
    let material = {
        let ring = stored_ring(dir.path(), "st");
        *ring.versions[0]
            .material
            .as_ref()
            .unwrap()
            .aes()
            .unwrap()
            .expose_secret()
    };
    d.restart_after_stop();
    let (mut crypto, mut keys) = d.clients().await;
    keys.schedule_version_destruction(sched(1)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = get(&mut keys, "st").await;
        if info.versions[0].state == proto::VersionState::Destroyed as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "version not destroyed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = crypto.decrypt(dec("st", &ct1, b"")).await.unwrap_err();
    assert!(e.message().contains("version 1 is DESTROYED"), "{}", e.message());
    assert_eq!(decrypted(&mut crypto, "st", &ct2).await, b"two");
    d.stop();
    {
        let ring = stored_ring(dir.path(), "st");
        assert!(
            ring.versions[0].material.is_none(),
            "destroyed material removed from the record"
        );
        assert_eq!(ring.versions.len(), 2, "metadata kept");
    }
    for f in walk(&dir.path().join("store")) {
        assert!(
            !contains(&std::fs::read(&f).unwrap(), &material),
            "material in clear in {}",
            f.display()
        );
    }
    // whole-key deletion needs deletion_allowed
    d.restart_after_stop();
    let (_, mut keys) = d.clients().await;
    let e = keys
        .schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
            name: "st".into(),
            waiting_period_seconds: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("does not allow deletion"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_batches_and_data_keys() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start_with(dir.path(), "[limits]\nmax_batch_items = 50\n");
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, "w").await;
    let old = crypto.encrypt(enc("w", b"secret", b"ctx")).await.unwrap().into_inner();
    keys.rotate_key(proto::RotateKeyRequest { name: "w".into() })
        .await
        .unwrap();
    let rewrap = |aad: &[u8]| proto::RewrapRequest {
        key: "w".into(),
        ciphertext: old.ciphertext.clone(),
        associated_data: aad.to_vec(),
    };
    let r = crypto.rewrap(rewrap(b"ctx")).await.unwrap().into_inner();
    assert_eq!((r.source_key_version, r.key_version), (1, 2));
    assert!(!contains(&r.ciphertext, b"secret"));
    assert_eq!(
        crypto
            .decrypt(dec("w", &r.ciphertext, b"ctx"))
            .await
            .unwrap()
            .into_inner()
            .plaintext,
        b"secret"
    );
    let e = crypto.rewrap(rewrap(b"bad")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // batches: one bad item never fails the batch
    let items = vec![
        enc("w", b"a", b""),
        enc("missing", b"b", b""),
        enc("bad/name", b"c", b""),
        enc("w", b"d", b"x"),
    ];
    let out = encrypt_batch(&mut crypto, items).await;
    use proto::encrypt_batch_item::Result as E;
    let cts: Vec<_> = out
        .iter()
        .map(|i| match i.result.as_ref().unwrap() {
            E::Ok(ok) => Ok(ok.ciphertext.clone()),
            E::Error(e) => Err(e.code),
        })
        .collect();
    assert!(cts[0].is_ok() && cts[3].is_ok());
    assert_eq!(cts[1], Err(Code::NotFound as i32));
    assert_eq!(cts[2], Err(Code::InvalidArgument as i32));
    let ditems = vec![
        dec("w", cts[0].as_ref().unwrap(), b""),
        dec("w", cts[3].as_ref().unwrap(), b"wrong"),
        dec("w", &[1, 2, 3], b""),
        dec("w", cts[3].as_ref().unwrap(), b"x"),
    ];
    let out = decrypt_batch(&mut crypto, ditems).await;
    use proto::decrypt_batch_item::Result as D;
    match (&out[0].result, &out[1].result, &out[2].result, &out[3].result) {
        (Some(D::Ok(a)), Some(D::Error(b)), Some(D::Error(c)), Some(D::Ok(d))) => {
            assert_eq!(a.plaintext, b"a");
            assert_eq!(b.code, Code::InvalidArgument as i32);
            assert!(c.message.starts_with("malformed ciphertext"));
            assert_eq!(d.plaintext, b"d");
        }
        other => panic!("unexpected batch result {other:?}"),
    }
    let rw = crypto
        .rewrap_batch(proto::RewrapBatchRequest {
            items: vec![
                proto::RewrapRequest {
                    key: "w".into(),
                    ciphertext: old.ciphertext.clone(),
                    associated_data: b"ctx".to_vec(),
                },
                proto::RewrapRequest {
                    key: "w".into(),
                    ciphertext: vec![9; 60],
                    associated_data: vec![],
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(matches!(rw[0].result, Some(proto::rewrap_batch_item::Result::Ok(_))));
    assert!(matches!(rw[1].result, Some(proto::rewrap_batch_item::Result::Error(_))));
    // the batch limit
    let too_many = (0..51).map(|_| enc("w", b"", b"")).collect();
    let e = crypto
        .encrypt_batch(proto::EncryptBatchRequest { items: too_many })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("limit of 50"), "{}", e.message());

    // data keys unwrap with Decrypt
    let data_key = |bits: u32, aad: &[u8]| proto::GenerateDataKeyRequest {
        key: "w".into(),
        bits,
        associated_data: aad.to_vec(),
    };
    let dk = crypto
        .generate_data_key(data_key(256, b"file-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dk.plaintext.len(), 32);
    let unwrapped = crypto
        .decrypt(dec("w", &dk.ciphertext, b"file-1"))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(unwrapped, dk.plaintext);
    let wrapped_only = crypto
        .generate_data_key_without_plaintext(data_key(128, b""))
        .await
        .unwrap()
        .into_inner();
    assert!(wrapped_only.plaintext.is_empty());
    assert_eq!(decrypted(&mut crypto, "w", &wrapped_only.ciphertext).await.len(), 16);
    let e = crypto.generate_data_key(data_key(100, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

async fn fill(crypto: &mut Crypto, keys: &mut Keys, n: usize) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut out = vec![];
    for i in 0..n {
        let name = format!("bk-{i}");
        create(keys, &name).await;
        let pt = format!("plaintext {i}").into_bytes();
        out.push((name.clone(), pt.clone(), encrypted(crypto, &name, &pt).await));
        if i % 3 == 0 {
            keys.rotate_key(proto::RotateKeyRequest { name: name.clone() })
                .await
                .unwrap();
            let pt2 = format!("after rotation {i}").into_bytes();
            out.push((name.clone(), pt2.clone(), encrypted(crypto, &name, &pt2).await));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_into_a_fresh_store_decrypts_everything() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    let cts = fill(&mut crypto, &mut keys, 12).await;
    let backup = dir.path().join("snap.kmsdbak");
    let kmsctl = |args: &[&str]| {
        std::process::Command::new(common::kmsctl_bin())
            .args(args)
            .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
            .env("KMSD_CA", dir.path().join("ca.pem"))
            .env("KMSD_CERT", dir.path().join("client.pem"))
            .env("KMSD_KEY", dir.path().join("client.key"))
            .output()
            .unwrap()
    };
    let out = kmsctl(&["backup", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&backup).unwrap();
    for (_, pt, _) in &cts {
        assert!(!contains(&bytes, pt));
    }

    // (1) online: a fresh daemon with the same master key, restored over gRPC
    let fresh = tempfile::tempdir().unwrap();
    Pki::new(fresh.path());
    std::fs::copy(dir.path().join("master-key"), fresh.path().join("master-key")).unwrap();
    let d2 = Daemon::start(fresh.path());
    let (mut c2, mut k2) = d2.clients().await;
    let chunks: Vec<_> = bytes
        .chunks(4096)
        .map(|c| proto::RestoreChunk { data: c.to_vec() })
        .collect();
    let r = k2.restore(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    assert_eq!(r.keys, 12);
    for (name, pt, ct) in &cts {
        assert_eq!(&decrypted(&mut c2, name, ct).await, pt, "{name}");
    }
    assert_eq!(get(&mut k2, "bk-0").await.primary_version, 2);
    // restoring over keys is refused
    let e = k2
        .restore(tokio_stream::iter(vec![proto::RestoreChunk { data: bytes.clone() }]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // (2) offline: `kmsd restore` into an empty store; a tampered file is refused
    let off = tempfile::tempdir().unwrap();
    Pki::new(off.path());
    std::fs::copy(dir.path().join("master-key"), off.path().join("master-key")).unwrap();
    let config = write_config(off.path(), None, "");
    let mut tampered = bytes.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    std::fs::write(off.path().join("bad.kmsdbak"), &tampered).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args([
            "restore",
            "--config",
            config.to_str().unwrap(),
            off.path().join("bad.kmsdbak").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("integrity check failed"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args([
            "restore",
            "--config",
            config.to_str().unwrap(),
            backup.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d3 = Daemon::start(off.path());
    let (mut c3, _) = d3.clients().await;
    for (name, pt, ct) in &cts {
        assert_eq!(&decrypted(&mut c3, name, ct).await, pt);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_reseals_everything_under_a_new_master_key() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    let cts = fill(&mut crypto, &mut keys, 6).await;
    d.stop();
    let new_key = dir.path().join("master-key.new");
    let out = common::rekey_to_new_master_key(dir.path());
    let kmsd = env!("CARGO_BIN_EXE_kmsd");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rekey complete"));
    // the new key alone opens the store; the old one no longer does
    std::fs::rename(dir.path().join("master-key"), dir.path().join("master-key.old")).unwrap();
    std::fs::rename(&new_key, dir.path().join("master-key")).unwrap();
    d.restart_after_stop();
    let (mut crypto, _) = d.clients().await;
    for (name, pt, ct) in &cts {
        assert_eq!(&decrypted(&mut crypto, name, ct).await, pt);
    }
    d.stop();
    std::fs::copy(dir.path().join("master-key.old"), dir.path().join("master-key")).unwrap();
    let out = std::process::Command::new(kmsd)
        .args(["serve", "--config", dir.path().join("kmsd.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not open this store"));
}

/// Key ring `name` as the store in `dir` holds it (the daemon stopped),
/// opened with the configured master key.
fn stored_ring(dir: &std::path::Path, name: &str) -> kmsd_keystore::KeyRing {
    let store: std::sync::Arc<dyn kmsd_keystore::KeyStore> =
        std::sync::Arc::new(kmsd_keystore::SledStore::open(&dir.join("store")).unwrap());
    let mk = kmsd_keystore::MasterKey::load(&dir.join("master-key")).unwrap();
    let rings = kmsd_keystore::RingStore::open(store, kmsd_keystore::Sealer::new(mk)).unwrap();
    rings
        .get(&kmsd_keystore::KeyName::parse(name).unwrap())
        .unwrap()
        .unwrap()
}
