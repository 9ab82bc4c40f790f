//! Crash safety: a child kmsd is killed with SIGKILL at random moments
//! while clients encrypt and rotations run, 50 rounds. After each restart
//! the store opens cleanly, every ciphertext acknowledged before the kill
//! decrypts, each key has exactly one ACTIVE (primary) version, and no
//! version's encryption count went backwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUNDS: usize = 50;
const KEYS: [&str; 3] = ["crash-a", "crash-b", "crash-limited"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    {
        let (_, mut keys) = d.clients().await;
        for k in KEYS {
            let policy = (k == "crash-limited").then(|| proto::KeyPolicy {
                max_encryptions_per_version: Some(40),
                ..Default::default()
            });
            keys.create_key(proto::CreateKeyRequest {
                name: k.into(),
                algorithm: 0,
                policy,
            })
            .await
            .unwrap();
        }
    }
    // (key, plaintext, ciphertext) acknowledged by the daemon
    type Acked = Arc<Mutex<Vec<(String, Vec<u8>, Vec<u8>)>>>;
    let acked: Acked = Arc::default();
    let mut max_count: HashMap<(String, u32), u64> = HashMap::new();
    let mut verified = 0;
    for round in 0..ROUNDS {
        let channel = d.channel().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = vec![];
        for w in 0..3 {
            let (acked, stop) = (acked.clone(), stop.clone());
            let mut crypto = CryptoClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = KEYS[(i as usize + w) % KEYS.len()];
                    let pt = format!("r{round}-w{w}-{i}").into_bytes();
                    let req = proto::EncryptRequest {
                        key: key.into(),
                        plaintext: pt.clone(),
                        associated_data: vec![],
                    };
                    match crypto.encrypt(req).await {
                        Ok(r) => acked.lock().unwrap().push((key.into(), pt, r.into_inner().ciphertext)),
                        Err(_) => break, // killed
                    }
                    i += 1;
                }
            }));
        }
        {
            let (stop, mut keys) = (stop.clone(), KeysClient::new(channel.clone()));
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = KEYS[i % 2].to_string();
                    if keys.rotate_key(proto::RotateKeyRequest { name }).await.is_err() {
                        break;
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(7)).await;
                }
            }));
        }
        let delay = rand::thread_rng().gen_range(5..150);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        d.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        d.restart_after_stop(); // the store must open cleanly, or start-up panics here

        let channel = d.channel().await;
        let mut crypto = CryptoClient::new(channel.clone());
        let mut keys = KeysClient::new(channel);
        // every acknowledged ciphertext decrypts (checked in batches)
        let all = acked.lock().unwrap().clone();
        for chunk in all[verified..].chunks(500) {
            let items = chunk
                .iter()
                .map(|(k, _, ct)| proto::DecryptRequest {
                    key: k.clone(),
                    ciphertext: ct.clone(),
                    associated_data: vec![],
                })
                .collect();
            let out = crypto
                .decrypt_batch(proto::DecryptBatchRequest { items })
                .await
                .unwrap()
                .into_inner()
                .items;
            for ((k, pt, _), item) in chunk.iter().zip(out) {
                match item.result.unwrap() {
                    proto::decrypt_batch_item::Result::Ok(ok) => assert_eq!(&ok.plaintext, pt),
                    proto::decrypt_batch_item::Result::Error(e) => {
                        panic!("round {round}: acknowledged ciphertext under {k} lost: {}", e.message)
                    }
                }
            }
        }
        verified = all.len();
        // exactly one primary per key; counts never go backwards
        for k in KEYS {
            let info = keys
                .get_key(proto::GetKeyRequest { name: k.into() })
                .await
                .unwrap()
                .into_inner();
            let active: Vec<_> = info
                .versions
                .iter()
                .filter(|v| v.state == proto::VersionState::Active as i32)
                .collect();
            assert_eq!(
                active.len(),
                1,
                "round {round}: {k} has {} ACTIVE versions",
                active.len()
            );
            assert_eq!(active[0].version, info.primary_version);
            for v in &info.versions {
                let seen = max_count.entry((k.to_string(), v.version)).or_insert(0);
                assert!(
                    v.encryptions >= *seen,
                    "round {round}: {k} v{} count went back {} < {seen}",
                    v.version,
                    v.encryptions
                );
                *seen = v.encryptions;
            }
        }
    }
    assert!(verified > ROUNDS, "clients were acknowledged {verified} times");
    d.stop();
    // The audit trail survived every kill: torn records were cut, records
    // written after the last head update continued the chain, and the
    // whole log verifies against its head.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["audit-verify", "--config"])
        .arg(dir.path().join("kmsd.toml"))
        .arg(dir.path().join("audit.log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit log after {ROUNDS} kills: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
