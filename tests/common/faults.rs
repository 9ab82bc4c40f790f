//! Helpers for the tests that make the daemon fail (injected faults, a
//! full disk, interrupted offline commands): one-call helpers that return
//! the gRPC status instead of failing the test, the daemon started with
//! failpoints, and the acknowledged ciphertexts that must survive.
use super::{Crypto, Daemon, Keys};
use kmsd::proto;
use std::path::Path;
use std::process::Command;
use tonic::transport::Channel;
use tonic::Code;

/// Starts the daemon in `dir` with `FAILPOINTS=fp` (none when empty).
pub fn start_fp(dir: &Path, fp: &str) -> Daemon {
    let fp = fp.to_owned();
    Daemon::start_command(dir, "", move |config| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kmsd"));
        c.args(["serve", "--config"]).arg(config);
        if !fp.is_empty() {
            c.env("FAILPOINTS", fp);
        }
        c
    })
}

pub async fn create(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.create_key(proto::CreateKeyRequest {
        name: name.into(),
        algorithm: 0,
        policy: None,
        exportable: false,
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn get(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.get_key(proto::GetKeyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

pub async fn rotate(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.rotate_key(proto::RotateKeyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

/// Schedules the destruction of `version` of `name` in one second.
pub async fn destroy(keys: &mut Keys, name: &str, version: u32) -> Result<proto::KeyInfo, tonic::Status> {
    keys.schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
        name: name.into(),
        version,
        waiting_period_seconds: 1,
    })
    .await
    .map(|r| r.into_inner())
}

/// Encrypts `pt` under `key` (associated data `faults`).
pub async fn encrypt(crypto: &mut Crypto, key: &str, pt: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    crypto
        .encrypt(proto::EncryptRequest {
            key: key.into(),
            plaintext: pt.to_vec(),
            associated_data: b"faults".to_vec(),
        })
        .await
        .map(|r| r.into_inner().ciphertext)
}

/// Decrypts what [`encrypt`] made.
pub async fn decrypt(crypto: &mut Crypto, key: &str, ct: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    crypto
        .decrypt(proto::DecryptRequest {
            key: key.into(),
            ciphertext: ct.to_vec(),
            associated_data: b"faults".to_vec(),
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

/// The gRPC health status of the whole server, asked over `channel`.
pub async fn health(channel: Channel) -> i32 {
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// The error of `r`, which must be `UNAVAILABLE`.
pub fn unavailable<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> tonic::Status {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
    e
}

/// The state of version `v` in `info`.
pub fn version_state(info: &proto::KeyInfo, v: u32) -> i32 {
    info.versions.iter().find(|x| x.version == v).unwrap().state
}

/// Every acknowledged ciphertext (key, plaintext, ciphertext).
pub type Acked = Vec<(String, Vec<u8>, Vec<u8>)>;

/// Every acknowledged ciphertext decrypts to its plaintext on `d`.
pub async fn assert_all_decrypt(d: &Daemon, acked: &Acked) {
    let (mut crypto, _) = d.clients().await;
    for (key, pt, ct) in acked {
        assert_eq!(&decrypt(&mut crypto, key, ct).await.unwrap(), pt, "{key}");
    }
}
