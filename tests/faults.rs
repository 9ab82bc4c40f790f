//! Injected faults (issue 12 item 3) against the real daemon over real
//! mTLS, and the real offline commands: the store's write, flush and
//! `fsync` failing with `EIO` at each step, and `SIGKILL` in the middle of
//! rekey, restore, start-up recovery and audit rotation.
//!
//! Faults are `fail` failpoints (named in `kmsd_keystore::failpoints`),
//! live only in the test build of the binaries and set through the
//! `FAILPOINTS` environment variable of the process under test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tonic::transport::Channel;
use tonic::Code;

type Crypto = CryptoClient<Channel>;
type Keys = KeysClient<Channel>;

const KMSD: &str = env!("CARGO_BIN_EXE_kmsd");

/// Starts the daemon in `dir` with `FAILPOINTS=fp` (none when empty).
fn start_fp(dir: &Path, fp: &str) -> Daemon {
    let fp = fp.to_owned();
    Daemon::start_command(dir, "", move |config| {
        let mut c = Command::new(KMSD);
        c.args(["serve", "--config"]).arg(config);
        if !fp.is_empty() {
            c.env("FAILPOINTS", fp);
        }
        c
    })
}

async fn create(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.create_key(proto::CreateKeyRequest {
        name: name.into(),
        algorithm: 0,
        policy: None,
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.get_key(proto::GetKeyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

async fn rotate(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.rotate_key(proto::RotateKeyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

async fn destroy(keys: &mut Keys, name: &str, version: u32) -> Result<proto::KeyInfo, tonic::Status> {
    keys.schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
        name: name.into(),
        version,
        waiting_period_seconds: 1,
    })
    .await
    .map(|r| r.into_inner())
}

async fn encrypt(crypto: &mut Crypto, key: &str, pt: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    crypto
        .encrypt(proto::EncryptRequest {
            key: key.into(),
            plaintext: pt.to_vec(),
            associated_data: b"faults".to_vec(),
        })
        .await
        .map(|r| r.into_inner().ciphertext)
}

async fn decrypt(crypto: &mut Crypto, key: &str, ct: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    crypto
        .decrypt(proto::DecryptRequest {
            key: key.into(),
            ciphertext: ct.to_vec(),
            associated_data: b"faults".to_vec(),
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

async fn health(d: &Daemon) -> i32 {
    let mut h = tonic_health::pb::health_client::HealthClient::new(d.channel().await);
    h.check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> tonic::Status {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
    e
}

fn version_state(info: &proto::KeyInfo, v: u32) -> i32 {
    info.versions.iter().find(|x| x.version == v).unwrap().state
}

/// Every acknowledged ciphertext (key, plaintext, ciphertext).
type Acked = Vec<(String, Vec<u8>, Vec<u8>)>;

async fn assert_all_decrypt(d: &Daemon, acked: &Acked) {
    let (mut crypto, _) = d.clients().await;
    for (key, pt, ct) in acked {
        assert_eq!(&decrypt(&mut crypto, key, ct).await.unwrap(), pt, "{key}");
    }
}

// ---------------------------------------------------------------- (a)

/// The release build (and any `cargo build`/`cargo run`) has the
/// failpoints compiled out: `fail`'s `failpoints` feature is reached only
/// through the dev-dependency. The feature graph of a build without dev
/// targets must not contain it; the test build's must.
#[test]
fn release_build_has_no_failpoints() {
    assert!(
        kmsd_keystore::failpoints::enabled(),
        "the test build must have live failpoints"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |edges: &str| {
        let out = Command::new(&cargo)
            .args(["tree", "--offline", "--locked", "-p", "kmsd", "-i", "fail", "-e", edges])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let release = tree("no-dev,features");
    assert!(release.contains("fail v0.5"), "{release}");
    assert!(
        !release.contains("feature \"failpoints\""),
        "a build without dev-dependencies turns failpoints on:\n{release}"
    );
    let test = tree("features");
    assert!(test.contains("feature \"failpoints\""), "{test}");
}

/// A malformed or unknown `FAILPOINTS` is refused at start, not ignored
/// (a test that thinks it injects a fault must not silently pass).
#[test]
fn a_malformed_failpoints_value_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let config = write_config(dir.path(), None, "");
    for bad in ["store-write", "no-such-point=return", "store-write=explode"] {
        let out = Command::new(KMSD)
            .args(["serve", "--config"])
            .arg(&config)
            .env("FAILPOINTS", bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("FAILPOINTS"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The test build's daemon reads `FAILPOINTS`: a targeted store fault
/// fails exactly the write it names, `UNAVAILABLE`, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_build_daemon_injects_the_faults_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = start_fp(dir.path(), "store-write=return(doomed)");
    let (_, mut keys) = d.clients().await;
    unavailable(create(&mut keys, "doomed").await, "create doomed");
    create(&mut keys, "fine").await.unwrap();
    assert_eq!(get(&mut keys, "doomed").await.unwrap_err().code(), Code::NotFound);
    assert!(d.log_text().contains("injected at failpoint store-write"));
}

// ---------------------------------------------------------------- (b)

/// The store's write failing (`EIO`, before anything is applied) at each
/// step: create, rotate, usage reservation, destruction (the call that
/// schedules it and the scheduler's write that performs it). Each call
/// fails `UNAVAILABLE`, changes nothing, the daemon keeps serving other
/// keys, reads and health, the same call succeeds once the fault is gone,
/// and after a restart without failpoints every acknowledged write is
/// there and no failed one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_write_changes_nothing_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut acked: Acked = vec![];
    // clean run: the keys the faulty run works on
    let mut d = start_fp(dir.path(), "");
    let (mut crypto, mut keys) = d.clients().await;
    for k in ["other", "rot", "use", "des"] {
        create(&mut keys, k).await.unwrap();
        let ct = encrypt(&mut crypto, k, k.as_bytes()).await.unwrap();
        acked.push((k.into(), k.as_bytes().to_vec(), ct));
    }
    rotate(&mut keys, "des").await.unwrap();
    d.stop();

    // Each key's N-th write in this run fails (creation of `new` is its
    // first; `use` reserves at its first encryption after a restart; the
    // scheduler's destruction of des v1 is des's third write).
    let mut d = start_fp(dir.path(), "store-write=return(new@1,rot@1,use@1,des@1,des@3)");
    let (mut crypto, mut keys) = d.clients().await;

    // create
    let e = unavailable(create(&mut keys, "new").await, "create");
    assert!(e.message().contains("key store unavailable (a storage fault"), "{e:?}");
    assert_eq!(get(&mut keys, "new").await.unwrap_err().code(), Code::NotFound);
    create(&mut keys, "new").await.unwrap();
    let ct = encrypt(&mut crypto, "new", b"new").await.unwrap();
    acked.push(("new".into(), b"new".to_vec(), ct));

    // rotate
    unavailable(rotate(&mut keys, "rot").await, "rotate");
    assert_eq!(get(&mut keys, "rot").await.unwrap().primary_version, 1);
    let ct = encrypt(&mut crypto, "rot", b"rot v1").await.unwrap();
    acked.push(("rot".into(), b"rot v1".to_vec(), ct));
    assert_eq!(rotate(&mut keys, "rot").await.unwrap().primary_version, 2);

    // usage reservation (the data path's durable write)
    unavailable(encrypt(&mut crypto, "use", b"u").await, "reservation");
    let ct = encrypt(&mut crypto, "use", b"use 2").await.unwrap();
    acked.push(("use".into(), b"use 2".to_vec(), ct));

    // destruction: scheduling it, then the scheduler performing it
    unavailable(destroy(&mut keys, "des", 1).await, "schedule destruction");
    assert_eq!(
        version_state(&get(&mut keys, "des").await.unwrap(), 1),
        proto::VersionState::DecryptOnly as i32
    );
    destroy(&mut keys, "des", 1).await.unwrap();
    // the scheduler's first attempt fails (des@3); it retries
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let info = get(&mut keys, "des").await.unwrap();
        if version_state(&info, 1) == proto::VersionState::Destroyed as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "destruction never retried");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        d.log_text().contains("scheduled key maintenance failed"),
        "the scheduler's write was not the one that failed: {}",
        d.log_text()
    );
    acked.retain(|(k, _, _)| k != "des"); // its v1 ciphertext is gone with v1

    // meanwhile everything else was served
    let ct = encrypt(&mut crypto, "other", b"still").await.unwrap();
    acked.push(("other".into(), b"still".to_vec(), ct));
    assert_all_decrypt(&d, &acked).await;
    assert_eq!(health(&d).await, 1, "SERVING");
    d.stop();

    // after a restart without failpoints: exactly the acknowledged writes
    let d = start_fp(dir.path(), "");
    let (_, mut keys) = d.clients().await;
    assert_eq!(get(&mut keys, "new").await.unwrap().versions.len(), 1);
    assert_eq!(get(&mut keys, "rot").await.unwrap().primary_version, 2);
    let des = get(&mut keys, "des").await.unwrap();
    assert_eq!(version_state(&des, 1), proto::VersionState::Destroyed as i32);
    assert_all_decrypt(&d, &acked).await;
}

/// The store's flush or `fsync` failing after sled applied the batch in
/// memory, at each step: create, rotate, usage reservation, scheduling a
/// destruction, and the scheduler performing it. The call fails
/// `UNAVAILABLE`; the batch is undone at once (readers, the ring cache and
/// the next flush never see it) and the store refuses writes until the
/// daemon restarts (after a failed `fsync` the kernel may have dropped the
/// dirty pages: no later write is acknowledged on top of them). Reads,
/// decryption, encryption within a reservation and health keep being
/// served; the scheduler backs off instead of spinning. After a `SIGKILL`
/// and a restart without failpoints the failed write is not there, every
/// acknowledged one is, and the same step succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_or_fsync_is_undone_and_writes_wait_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut acked: Acked = vec![];
    let points = ["store-flush", "store-fsync"];
    let mut d = start_fp(dir.path(), "");
    let (mut crypto, mut keys) = d.clients().await;
    for k in ["other", "rot", "use"] {
        create(&mut keys, k).await.unwrap();
        let ct = encrypt(&mut crypto, k, k.as_bytes()).await.unwrap();
        acked.push((k.into(), k.as_bytes().to_vec(), ct));
    }
    for p in points {
        for k in [format!("des-{p}"), format!("dp-{p}")] {
            create(&mut keys, &k).await.unwrap();
            rotate(&mut keys, &k).await.unwrap();
        }
    }
    d.stop();
    let mut rot_primary = 1;

    for p in points {
        for step in ["create", "rotate", "reserve", "schedule-destruction", "destroy"] {
            let new = format!("new-{p}");
            let (des, dp) = (format!("des-{p}"), format!("dp-{p}"));
            if step == "destroy" {
                // due a second after this clean run: the faulty run's scheduler performs it
                let d = start_fp(dir.path(), "");
                let (_, mut keys) = d.clients().await;
                destroy(&mut keys, &dp, 1).await.unwrap();
                drop(d); // SIGKILL: nothing else written meanwhile
            }
            let target = match step {
                "create" => &new,
                "rotate" => "rot",
                "reserve" => "use",
                "schedule-destruction" => &des,
                _ => &dp,
            };
            let what = format!("{p} at {step}");
            let mut d = start_fp(dir.path(), &format!("{p}=return({target})"));
            let (mut crypto, mut keys) = d.clients().await;
            // a reservation of another key, taken before the fault (the
            // scheduler's destruction may come first: it is due at start)
            let reserved = step != "destroy";
            if reserved {
                let ct = encrypt(&mut crypto, "other", b"before").await.unwrap();
                acked.push(("other".into(), b"before".to_vec(), ct));
            }
            match step {
                "create" => {
                    unavailable(create(&mut keys, &new).await, &what);
                    assert_eq!(get(&mut keys, &new).await.unwrap_err().code(), Code::NotFound, "{what}");
                }
                "rotate" => {
                    unavailable(rotate(&mut keys, "rot").await, &what);
                    assert_eq!(
                        get(&mut keys, "rot").await.unwrap().primary_version,
                        rot_primary,
                        "{what}"
                    );
                }
                "reserve" => {
                    unavailable(encrypt(&mut crypto, "use", b"x").await, &what);
                }
                "schedule-destruction" => {
                    unavailable(destroy(&mut keys, &des, 1).await, &what);
                    let info = get(&mut keys, &des).await.unwrap();
                    assert_eq!(
                        version_state(&info, 1),
                        proto::VersionState::DecryptOnly as i32,
                        "{what}"
                    );
                }
                _ => {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while !d.log_text()[d.log_offset..].contains("scheduled key maintenance failed") {
                        assert!(std::time::Instant::now() < deadline, "{what}: no destruction attempted");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    // the scheduler retries with a back-off, not in a loop
                    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
                    let attempts = d.log_text()[d.log_offset..]
                        .matches("scheduled key maintenance failed")
                        .count();
                    assert!((2..=4).contains(&attempts), "{what}: {attempts} attempts in 2.5 s");
                    let info = get(&mut keys, &dp).await.unwrap();
                    assert_eq!(
                        version_state(&info, 1),
                        proto::VersionState::ScheduledForDestruction as i32,
                        "{what}"
                    );
                }
            }
            let log = d.log_text()[d.log_offset..].to_owned();
            assert!(log.contains("failed to reach the disk: undone"), "{what}: {log}");
            // writes wait for a restart; everything else is served
            unavailable(create(&mut keys, &format!("later-{p}-{step}")).await, &what);
            if reserved {
                let ct = encrypt(&mut crypto, "other", b"within the reservation").await.unwrap();
                acked.push(("other".into(), b"within the reservation".to_vec(), ct));
            }
            assert_all_decrypt(&d, &acked).await;
            assert_eq!(health(&d).await, 1, "{what}: SERVING");
            d.kill();

            // restart without failpoints: the failed write is absent, the step succeeds
            let mut d = start_fp(dir.path(), "");
            let (mut crypto, mut keys) = d.clients().await;
            assert_eq!(
                get(&mut keys, &format!("later-{p}-{step}")).await.unwrap_err().code(),
                Code::NotFound
            );
            match step {
                "create" => {
                    assert_eq!(get(&mut keys, &new).await.unwrap_err().code(), Code::NotFound, "{what}");
                    create(&mut keys, &new).await.unwrap();
                    let ct = encrypt(&mut crypto, &new, b"new").await.unwrap();
                    acked.push((new.clone(), b"new".to_vec(), ct));
                }
                "rotate" => {
                    assert_eq!(
                        get(&mut keys, "rot").await.unwrap().primary_version,
                        rot_primary,
                        "{what}"
                    );
                    rot_primary = rotate(&mut keys, "rot").await.unwrap().primary_version;
                    let ct = encrypt(&mut crypto, "rot", b"rot").await.unwrap();
                    acked.push(("rot".into(), b"rot".to_vec(), ct));
                }
                "reserve" => {
                    let ct = encrypt(&mut crypto, "use", b"use").await.unwrap();
                    acked.push(("use".into(), b"use".to_vec(), ct));
                }
                "schedule-destruction" => {
                    let info = get(&mut keys, &des).await.unwrap();
                    assert_eq!(
                        version_state(&info, 1),
                        proto::VersionState::DecryptOnly as i32,
                        "{what}"
                    );
                    let info = destroy(&mut keys, &des, 1).await.unwrap();
                    assert_eq!(
                        version_state(&info, 1),
                        proto::VersionState::ScheduledForDestruction as i32,
                        "{what}"
                    );
                }
                _ => {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while version_state(&get(&mut keys, &dp).await.unwrap(), 1) != proto::VersionState::Destroyed as i32
                    {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "{what}: not destroyed after restart"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
            assert_all_decrypt(&d, &acked).await;
            d.stop();
        }
    }
}

// ------------------------------------------- (b) offline: rekey, restore

fn kmsd_cmd(args: &[&std::ffi::OsStr], fp: &str) -> Command {
    let mut c = Command::new(KMSD);
    c.args(args);
    if !fp.is_empty() {
        c.env("FAILPOINTS", fp);
    }
    c
}

fn rekey_cmd(dir: &Path, new_key: &Path, fp: &str) -> Command {
    let config = dir.join("kmsd.toml");
    kmsd_cmd(
        &[
            "rekey".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--new-master-key".as_ref(),
            new_key.as_os_str(),
        ],
        fp,
    )
}

fn restore_cmd(dir: &Path, file: &Path, fp: &str) -> Command {
    let config = dir.join("kmsd.toml");
    kmsd_cmd(
        &[
            "restore".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            file.as_os_str(),
        ],
        fp,
    )
}

fn run_ok(mut c: Command, what: &str) -> Output {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `c`, which must fail with the injected `EIO`.
fn run_fails_with_eio(mut c: Command, what: &str) {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert!(err.contains("Input/output error"), "{what}: {err}");
}

fn new_master_key(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    run_ok(
        kmsd_cmd(&["init".as_ref(), "--master-key".as_ref(), p.as_os_str()], ""),
        "init",
    );
    p
}

/// `kmsd audit-verify` over every retained audit file.
fn assert_audit_verifies(dir: &Path) {
    let config = dir.join("kmsd.toml");
    let out = run_ok(
        kmsd_cmd(&["audit-verify".as_ref(), "--config".as_ref(), config.as_os_str()], ""),
        "audit-verify",
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK "));
}

/// Keys `fk-0..n` (every third rotated), one acknowledged ciphertext per
/// version; the daemon is stopped.
async fn fill(dir: &Path, n: usize) -> Acked {
    let mut d = start_fp(dir, "");
    let (mut crypto, mut keys) = d.clients().await;
    let mut acked = vec![];
    for i in 0..n {
        let k = format!("fk-{i}");
        create(&mut keys, &k).await.unwrap();
        let pt = format!("pt {i}").into_bytes();
        acked.push((k.clone(), pt.clone(), encrypt(&mut crypto, &k, &pt).await.unwrap()));
        if i % 3 == 0 {
            rotate(&mut keys, &k).await.unwrap();
            let pt = format!("pt {i} v2").into_bytes();
            acked.push((k.clone(), pt.clone(), encrypt(&mut crypto, &k, &pt).await.unwrap()));
        }
    }
    d.stop();
    acked
}

/// Makes `key` the configured master key (the old one kept as
/// `master-key.old`).
fn switch_master_key(dir: &Path, key: &Path) {
    std::fs::rename(dir.join("master-key"), dir.join("master-key.old")).unwrap();
    std::fs::rename(key, dir.join("master-key")).unwrap();
}

/// `kmsd rekey` whose store write, then `fsync`, fails half-way: it exits
/// non-zero; the store opens with the new key and the old one as
/// `previous_master_key` (every record under one of them) and serves every
/// acknowledged ciphertext; the same command run again completes, and the
/// new key alone then opens everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_whose_write_or_fsync_fails_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let acked = fill(dir.path(), 6).await;
    let new_key = new_master_key(dir.path(), "master-key.new");
    run_fails_with_eio(
        rekey_cmd(dir.path(), &new_key, "store-write=return(fk-2)"),
        "rekey, write",
    );
    run_fails_with_eio(
        rekey_cmd(dir.path(), &new_key, "store-fsync=return(fk-4)"),
        "rekey, fsync",
    );
    // the old key still opens the store's marker, or the new one does: the
    // documented intermediate configuration (new key, old as previous) serves all
    switch_master_key(dir.path(), &new_key);
    let mut d = Daemon::start_with(dir.path(), "previous_master_key = \"master-key.old\"");
    assert_all_decrypt(&d, &acked).await;
    d.stop();
    // the same command again (now with the new key configured) completes
    let current = dir.path().join("master-key");
    let out = run_ok(rekey_cmd(dir.path(), &current, ""), "rekey again");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rekey complete"));
    let d = Daemon::start(dir.path()); // no previous key
    assert_all_decrypt(&d, &acked).await;
    drop(d);
    assert_audit_verifies(dir.path());
}

/// Writes a backup of `dir`'s store (daemon stopped after).
async fn backup(dir: &Path) -> PathBuf {
    let mut d = start_fp(dir, "");
    let file = dir.join("snap.kmsdbak");
    let out = Command::new(common::kmsctl_bin())
        .args(["backup", file.to_str().unwrap()])
        .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
        .env("KMSD_CA", dir.join("ca.pem"))
        .env("KMSD_CERT", dir.join("client.pem"))
        .env("KMSD_KEY", dir.join("client.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.stop();
    file
}

/// A fresh state directory with the PKI and master key of `from`.
fn fresh_target(from: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    Pki::new(t.path());
    std::fs::copy(from.join("master-key"), t.path().join("master-key")).unwrap();
    write_config(t.path(), None, "");
    t
}

/// `kmsd restore` whose store write, then `fsync`, fails half-way: it
/// exits non-zero; the same command run again completes and the daemon
/// serves every acknowledged ciphertext of the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_write_or_fsync_fails_is_resumed() {
    let src = tempfile::tempdir().unwrap();
    Pki::new(src.path());
    let acked = fill(src.path(), 6).await;
    let file = backup(src.path()).await;
    let t = fresh_target(src.path());
    run_fails_with_eio(
        restore_cmd(t.path(), &file, "store-write=return(fk-2)"),
        "restore, write",
    );
    run_fails_with_eio(
        restore_cmd(t.path(), &file, "store-fsync=return(fk-4)"),
        "restore, fsync",
    );
    run_ok(restore_cmd(t.path(), &file, ""), "restore again");
    let d = start_fp(t.path(), "");
    assert_all_decrypt(&d, &acked).await;
    drop(d);
    assert_audit_verifies(t.path());
}

// ---------------------------------------------------------------- (c)

/// Runs `c` with `FAILPOINTS=fp` until it prints `kmsd failpoint: POINT`
/// (it then waits there), and `SIGKILL`s it: a crash at exactly that point.
fn kill_at(mut c: Command, fp: &str, point: &str) {
    use std::io::BufRead;
    let mut child = c
        .env("FAILPOINTS", fp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let marker = format!("kmsd failpoint: {point}");
    let mut seen = String::new();
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) if line.contains(&marker) => break,
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{fp}: never reached {point} (status {:?}); stderr:\n{seen}",
                    child.try_wait()
                );
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn serve_cmd(dir: &Path) -> Command {
    let config = dir.join("kmsd.toml");
    kmsd_cmd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], "")
}

/// `SIGKILL` in the middle of `kmsd rekey` (after the 1st, 3rd and 6th
/// record), then the same command again: it completes, every record opens
/// under the new key alone, and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_killed_half_way_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let acked = fill(dir.path(), 6).await;
    for n in [0, 2, 5] {
        let new_key = new_master_key(dir.path(), "master-key.new");
        kill_at(
            rekey_cmd(dir.path(), &new_key, ""),
            &format!("rekey-record={n}*off->return"),
            "rekey-record",
        );
        let out = run_ok(rekey_cmd(dir.path(), &new_key, ""), "rekey again");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("already under the new key"), "{text}");
        assert!(
            !text.contains(" 0 already under"),
            "nothing was done before the kill: {text}"
        );
        switch_master_key(dir.path(), &new_key);
        std::fs::remove_file(dir.path().join("master-key.old")).unwrap(); // the new key alone
        let d = start_fp(dir.path(), "");
        assert_all_decrypt(&d, &acked).await;
        drop(d);
        assert_audit_verifies(dir.path());
    }
}

/// `SIGKILL` in the middle of `kmsd restore` (after the 1st, 4th and 7th
/// record), then the same command again: it completes, the daemon serves
/// every acknowledged ciphertext of the source, the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_half_way_is_finished_by_running_it_again() {
    let src = tempfile::tempdir().unwrap();
    Pki::new(src.path());
    let acked = fill(src.path(), 6).await;
    let file = backup(src.path()).await;
    for n in [0, 3, 6] {
        let t = fresh_target(src.path());
        kill_at(
            restore_cmd(t.path(), &file, ""),
            &format!("restore-record={n}*off->return"),
            "restore-record",
        );
        run_ok(restore_cmd(t.path(), &file, ""), "restore again");
        let d = start_fp(t.path(), "");
        assert_all_decrypt(&d, &acked).await;
        drop(d);
        assert_audit_verifies(t.path());
    }
}

/// `SIGKILL` during start-up recovery: after sled recovered the store
/// (before its first sync), after the integrity manifest was opened (on a
/// new store: just built, before the store marker), and in the audit tail
/// recovery (a torn record moved aside, the head not yet moved). The next
/// start serves every acknowledged ciphertext and the audit chain
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_up_killed_during_recovery_recovers_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    // a brand-new store, killed right after its manifest was built
    write_config(dir.path(), None, "");
    kill_at(serve_cmd(dir.path()), "manifest-open=return", "manifest-open");
    let acked = fill(dir.path(), 3).await;
    for point in ["store-open", "manifest-open", "audit-recover"] {
        if point == "audit-recover" {
            // a crash's torn record at the end of the live log
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join("audit.log"))
                .unwrap();
            f.write_all(b"{\"seq\":").unwrap();
        }
        kill_at(serve_cmd(dir.path()), &format!("{point}=return"), point);
        let mut d = start_fp(dir.path(), "");
        assert_all_decrypt(&d, &acked).await;
        let (_, mut keys) = d.clients().await;
        create(&mut keys, &format!("after-{point}")).await.unwrap();
        d.stop();
        assert_audit_verifies(dir.path());
    }
    let side: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("audit.log.unverified-"))
        .collect();
    assert_eq!(side.len(), 1, "the torn record was moved aside: {side:?}");
}

/// `SIGKILL` during audit rotation: after the live log was renamed (the
/// head not yet moved), and after the head moved (retention not yet
/// applied). The next start continues the chain: every acknowledged
/// ciphertext decrypts and `kmsd audit-verify` accepts every retained file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_rotation_killed_half_way_recovers_at_the_next_start() {
    for point in ["audit-rotate-renamed", "audit-rotate-head"] {
        let dir = tempfile::tempdir().unwrap();
        Pki::new(dir.path());
        let fp = format!("{point}=return");
        let mut d = Daemon::start_command(dir.path(), "", |config| {
            let text = std::fs::read_to_string(config).unwrap();
            let text = text.replacen("[audit]\n", "[audit]\nrotate_bytes = 4096\nkeep_files = 2\n", 1);
            std::fs::write(config, text).unwrap();
            let mut c = Command::new(KMSD);
            c.args(["serve", "--config"]).arg(config).env("FAILPOINTS", &fp);
            c
        });
        let (mut crypto, mut keys) = d.clients().await;
        let mut acked: Acked = vec![];
        let marker = format!("kmsd failpoint: {point}");
        let mut i = 0;
        // admin calls (durable audit records) until a rotation stops at the point
        while !d.log_text().contains(&marker) {
            assert!(i < 200, "{point}: no rotation");
            let k = format!("rk-{i}");
            let call = async {
                create(&mut keys, &k).await?;
                encrypt(&mut crypto, &k, k.as_bytes()).await
            };
            // a call waiting on the stopped audit writer times out
            if let Ok(Ok(ct)) = tokio::time::timeout(std::time::Duration::from_millis(500), call).await {
                acked.push((k.clone(), k.as_bytes().to_vec(), ct));
            }
            i += 1;
        }
        d.kill();
        d.restart_after_stop();
        assert_all_decrypt(&d, &acked).await;
        let (_, mut keys) = d.clients().await;
        create(&mut keys, "after").await.unwrap();
        d.stop();
        assert_audit_verifies(dir.path());
    }
}

// ------------------------------------------------ found with a delay point

/// Once GetKey reads a version as DISABLED or DESTROYED, the data path
/// refuses it. The store is written first and the data path's cache after;
/// with the window between them widened (`keys-install=sleep(1000)`),
/// GetKey answered DISABLED while Decrypt still opened that version's
/// ciphertexts (a concurrent observer saw a change the data path had not
/// made yet), and DESTROYED while Decrypt still said SCHEDULED_FOR_DESTRUCTION
/// (why tests/lifecycle.rs::version_states_answer_as_specified_and_destruction_really_destroys
/// failed now and then on a loaded machine). GetKey now waits for a change
/// under way to reach the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_get_key_reads_as_disabled_or_destroyed_no_longer_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = start_fp(dir.path(), "keys-install=sleep(1000)");
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, "gone").await.unwrap();
    let ct = encrypt(&mut crypto, "gone", b"v1").await.unwrap();
    rotate(&mut keys, "gone").await.unwrap();
    let reader = keys.clone();
    let wait_for = |state: proto::VersionState| {
        let mut keys = reader.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while version_state(&get(&mut keys, "gone").await.unwrap(), 1) != state as i32 {
                assert!(std::time::Instant::now() < deadline, "never {state:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    // disabled, by a call still under way
    let mut k2 = keys.clone();
    let call = tokio::spawn(async move {
        k2.set_version_state(proto::SetVersionStateRequest {
            name: "gone".into(),
            version: 1,
            state: proto::VersionState::Disabled as i32,
        })
        .await
    });
    wait_for(proto::VersionState::Disabled).await;
    let e = decrypt(&mut crypto, "gone", &ct).await.unwrap_err();
    assert!(e.message().contains("version 1 is DISABLED"), "{e:?}");
    call.await.unwrap().unwrap();
    // destroyed, by the scheduler
    destroy(&mut keys, "gone", 1).await.unwrap();
    wait_for(proto::VersionState::Destroyed).await;
    let e = decrypt(&mut crypto, "gone", &ct).await.unwrap_err();
    assert!(e.message().contains("version 1 is DESTROYED"), "{e:?}");
}
