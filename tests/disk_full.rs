//! A full disk (issue 12 item 3). The state directory (sled) and the audit
//! directory are each a small tmpfs mounted in a private mount namespace
//! that only the daemon and the test's `nsenter` helpers see (nothing is
//! mounted on the host). One of them is filled to the last page, then:
//! administrative calls are refused (fail closed, `UNAVAILABLE`), the data
//! path does what the README says, health keeps answering, and nothing
//! acknowledged is lost; once the filler file is deleted administrative
//! calls succeed again without a restart, and after a restart every
//! acknowledged key and ciphertext is there, no refused change is, and the
//! audit chain verifies.
//!
//! With the audit directory full every call is refused until the audit
//! writer can write again (README, "Failing safe"); with the state
//! directory full administrative calls are refused, decryption and
//! encryption within the durable usage reservation go on, and an
//! encryption needing a new reservation is refused (README, "Key store").
//!
//! Needs root (`unshare -m`, `mount -t tmpfs`): skipped with a message
//! otherwise, unless `KMSD_REQUIRE_NAMESPACES` is set (CI sets it and runs
//! as root), where a skip is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::faults::{create, decrypt, encrypt, get, health, rotate};
use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Says why the test cannot run here; a failure where it must.
fn skip(why: &str) {
    if std::env::var_os("KMSD_REQUIRE_NAMESPACES").is_some() {
        panic!("KMSD_REQUIRE_NAMESPACES is set but {why}");
    }
    eprintln!("SKIPPED: {why} (CI runs as root with KMSD_REQUIRE_NAMESPACES=1)");
}

/// A private mount namespace holding tmpfs mounts, kept alive by a
/// `sleep` so that the daemon can be stopped and started again in it
/// (`nsenter`) without losing what the tmpfs holds.
struct Namespace {
    holder: Child,
}

impl Namespace {
    /// Mounts a tmpfs of `size` (e.g. `"4m"`) on each directory. `None`
    /// (after saying why) where that is not possible.
    fn new(mounts: &[(&Path, &str)]) -> Option<Self> {
        if !is_root() {
            skip("needs root to mount a tmpfs in a private mount namespace");
            return None;
        }
        let mut script = String::new();
        for (dir, size) in mounts {
            std::fs::create_dir_all(dir).unwrap();
            script += &format!("mount -t tmpfs -o size={size},mode=0700 tmpfs '{}' && ", dir.display());
        }
        script += "echo ready && exec sleep 600";
        let spawned = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut holder = match spawned {
            Ok(c) => c,
            Err(e) => {
                skip(&format!("unshare cannot be run: {e}"));
                return None;
            }
        };
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "ready" {
            let mut err = String::new();
            holder.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            let _ = holder.wait();
            skip(&format!("no private mount namespace with a tmpfs (unshare -m): {err}"));
            return None;
        }
        let ns = Namespace { holder };
        for (dir, _) in mounts {
            let probe = dir.join("probe");
            ns.sh_ok(&format!("touch '{p}' && test -f '{p}'", p = probe.display()));
            assert!(!probe.exists(), "the tmpfs is not visible on the host");
            ns.sh_ok(&format!("rm '{}'", probe.display()));
        }
        Some(ns)
    }

    fn pid(&self) -> String {
        self.holder.id().to_string()
    }

    /// Runs `script` in the namespace.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid(), "-m", "sh", "-c", script])
            .output()
            .unwrap()
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kmsd ARGS` in the namespace (`nsenter` execs it: the child's pid
    /// is kmsd's own).
    fn kmsd(&self, args: &[&str], config: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid(), "-m", "--", env!("CARGO_BIN_EXE_kmsd")])
            .args(args)
            .arg("--config")
            .arg(config);
        c
    }

    /// Fills the file system holding `dir` to its last page.
    fn fill(&self, dir: &Path) {
        let d = dir.display();
        let df = self.sh_ok(&format!(
            "dd if=/dev/zero of='{d}/fill' bs=4096 2>/dev/null; sync; df -k '{d}'"
        ));
        assert!(df.contains("100%"), "{df}");
    }

    /// Deletes the filler file.
    fn free(&self, dir: &Path) {
        self.sh_ok(&format!("rm '{}/fill'", dir.display()));
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The daemon's data and what the test mounts: `state/` holds the sled
/// store, `audit/` the audit log; both are tmpfs mounts in the namespace.
struct Setup {
    // dropped in this order: the daemon, then the namespace, then the files
    d: Daemon,
    ns: Namespace,
    dir: tempfile::TempDir,
}

impl Setup {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("kmsd.toml")
    }

    fn restart(&mut self) {
        self.d.stop();
        let cmd = self.ns.kmsd(&["serve"], &self.config());
        self.d.restart_command(cmd);
    }

    /// `kmsd audit-verify` in the namespace accepts every file of the trail.
    fn assert_audit_verifies(&self) {
        let out = self.ns.kmsd(&["audit-verify"], &self.config()).output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("OK "),
            "{out:?}"
        );
    }
}

/// Starts kmsd in a namespace with `state/` and `audit/` on tmpfs;
/// `extra` goes to the end of the config.
fn start(extra: &str) -> Option<Setup> {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (state, audit) = (dir.path().join("state"), dir.path().join("audit"));
    let ns = Namespace::new(&[(&state, "8m"), (&audit, "1m")])?;
    let cmd_ns = |config: &Path| {
        let text = std::fs::read_to_string(config).unwrap();
        let text = text
            .replace("path = \"audit.log\"", "path = \"audit/audit.log\"")
            .replace("path = \"store\"", "path = \"state/store\"");
        std::fs::write(config, text).unwrap();
        ns.kmsd(&["serve"], config)
    };
    let d = Daemon::start_command(dir.path(), extra, cmd_ns);
    Some(Setup { d, ns, dir })
}

/// A policy change: a rotation period of `secs`.
async fn set_period(keys: &mut KeysClient<Channel>, name: &str, secs: u64) -> Result<proto::KeyInfo, tonic::Status> {
    set_policy(keys, name, |p| p.rotation_period_seconds = Some(secs)).await
}

fn assert_refused(r: Result<proto::KeyInfo, tonic::Status>, what: &str, says: &str) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), Code::Unavailable, "{what}: {s:?}");
    assert!(s.message().contains(says), "{what}: {}", s.message());
}

/// Every acknowledged (key, plaintext, ciphertext) decrypts.
async fn assert_all_decrypt(crypto: &mut CryptoClient<Channel>, acked: &[(String, Vec<u8>, Vec<u8>)], when: &str) {
    for (k, pt, ct) in acked {
        assert_eq!(
            &decrypt(crypto, k, ct)
                .await
                .unwrap_or_else(|e| panic!("{when}: {k}: {e:?}")),
            pt
        );
    }
}

/// The records of the live audit log in the namespace (the test's log
/// never reaches `rotate_bytes`).
fn audit_records(s: &Setup) -> Vec<serde_json::Value> {
    let text = s.ns.sh_ok(&format!("cat '{}/audit.log'", s.audit().display()));
    audit_lines(&text)
}

/// The clients of `s` and, before the disk fills, key `key` with three
/// acknowledged encryptions under it (key, plaintext, ciphertext each, for
/// the checks after the restart); then `full` is filled to the last page
/// while `other` keeps room.
async fn encrypt_three_then_fill(
    s: &Setup,
    key: &str,
    full: &Path,
    other: &Path,
) -> (
    Channel,
    CryptoClient<Channel>,
    KeysClient<Channel>,
    Vec<(String, Vec<u8>, Vec<u8>)>,
) {
    let channel = s.d.channel().await;
    let (mut crypto, mut keys) = (CryptoClient::new(channel.clone()), KeysClient::new(channel.clone()));
    create(&mut keys, key).await.unwrap();
    let mut acked = vec![];
    for i in 0..3 {
        let pt = format!("before {i}").into_bytes();
        acked.push((
            key.to_string(),
            pt.clone(),
            encrypt(&mut crypto, key, &pt).await.unwrap(),
        ));
    }
    s.ns.fill(full);
    let df = s.ns.sh_ok(&format!("df -k '{}'", other.display()));
    assert!(!df.contains("100%"), "only {} is full: {df}", full.display());
    (channel, crypto, keys, acked)
}

/// Encrypts `during 0`, `during 1`, ... under `key` (`pause` apart) until
/// a call is refused, at most `n` times: the refusal, if any. Each
/// acknowledged encryption is added to `acked`.
async fn encrypt_until_refused(
    crypto: &mut CryptoClient<Channel>,
    key: &str,
    n: usize,
    pause: Duration,
    acked: &mut Vec<(String, Vec<u8>, Vec<u8>)>,
) -> Option<tonic::Status> {
    for i in 0..n {
        let pt = format!("during {i}").into_bytes();
        match encrypt(crypto, key, &pt).await {
            Ok(ct) => acked.push((key.to_string(), pt, ct)),
            Err(e) => return Some(e),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_directory_refuses_admin_calls_and_recovers_when_space_is_freed() {
    let Some(mut s) = start("") else {
        return;
    };
    let (channel, mut crypto, mut keys, mut acked) = encrypt_three_then_fill(&s, "aud.a", &s.audit(), &s.state()).await;
    // Data path (README, "Failing safe", on_failure = "fail"): answered
    // until the writer meets the full disk (the last page of the log may
    // take a few records), then every call is refused.
    let refused = encrypt_until_refused(&mut crypto, "aud.a", 500, Duration::from_millis(5), &mut acked).await;
    let e = refused.expect("calls are refused once the audit log cannot be written");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("audit log"), "{}", e.message());
    let says = "audit log cannot be written";
    // administrative calls: refused before anything is changed
    assert_refused(
        create(&mut keys, "aud.refused").await,
        "creation with a full audit log",
        says,
    );
    assert_refused(rotate(&mut keys, "aud.a").await, "rotation with a full audit log", says);
    assert_refused(
        set_period(&mut keys, "aud.a", 86_400).await,
        "policy change with a full audit log",
        says,
    );
    let e = decrypt(&mut crypto, "aud.a", &acked[0].2).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "decryption is refused too: {e:?}");
    // health is not audited and keeps answering
    assert_eq!(health(channel.clone()).await, ServingStatus::Serving as i32);

    // space freed: the writer catches up by itself, calls succeed again
    // without a restart
    s.ns.free(&s.audit());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rotate(&mut keys, "aud.a").await {
            Ok(info) => {
                assert_eq!(
                    info.primary_version, 2,
                    "the refused rotation did not happen; this one did"
                );
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "no recovery after space was freed: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    create(&mut keys, "aud.after").await.unwrap();
    set_period(&mut keys, "aud.a", 86_400).await.unwrap();
    let pt = b"after".to_vec();
    acked.push((
        "aud.a".to_string(),
        pt.clone(),
        encrypt(&mut crypto, "aud.a", &pt).await.unwrap(),
    ));
    assert_all_decrypt(&mut crypto, &acked, "after space was freed").await;

    // after a restart: everything acknowledged is there, nothing refused is
    s.restart();
    let channel = s.d.channel().await;
    let (mut crypto, mut keys) = (CryptoClient::new(channel.clone()), KeysClient::new(channel));
    assert_all_decrypt(&mut crypto, &acked, "after the restart").await;
    get(&mut keys, "aud.after").await.unwrap();
    assert_eq!(get(&mut keys, "aud.refused").await.unwrap_err().code(), Code::NotFound);
    let a = get(&mut keys, "aud.a").await.unwrap();
    assert_eq!(a.primary_version, 2);
    assert_eq!(a.policy.unwrap().rotation_period_seconds, Some(86_400));
    s.d.stop();
    s.assert_audit_verifies();
    // every acknowledged encryption has its record; no refused change has one
    let recs = audit_records(&s);
    let ok_encrypts = recs
        .iter()
        .filter(|r| r["op"] == "encrypt" && r["result"] == "OK")
        .count();
    assert!(
        ok_encrypts >= acked.len(),
        "{ok_encrypts} encrypt records for {} acknowledged",
        acked.len()
    );
    assert!(
        !recs
            .iter()
            .any(|r| r["key"] == "aud.refused" && r["op"] == "key.create"),
        "a creation refused before it was recorded left no record"
    );
    let rotations: Vec<_> = recs
        .iter()
        .filter(|r| r["op"] == "key.rotate" && r["result"] != "STARTED")
        .map(|r| r["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rotations, ["OK"], "one rotation happened and was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_refuses_admin_calls_and_recovers_when_space_is_freed() {
    // Small reservation blocks, so that the data path needs a store write
    // within a few encryptions.
    let Some(mut s) = start("[limits]\nusage_reservation_block = 8\n") else {
        return;
    };
    let (channel, mut crypto, mut keys, mut acked) =
        encrypt_three_then_fill(&s, "full.a", &s.state(), &s.audit()).await;
    // Administrative calls: refused once the store cannot write (the last
    // page sled's file already has may take a record or two first).
    let mut created = vec![];
    let mut refused = None;
    for i in 0..50 {
        let name = format!("full.new{i}");
        match create(&mut keys, &name).await {
            Ok(_) => created.push(name),
            Err(e) => {
                refused = Some((name, e));
                break;
            }
        }
    }
    let (refused_name, e) = refused.expect("creating keys on a full store is refused");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("key store unavailable"), "{}", e.message());
    let says = "key store unavailable";
    assert_refused(rotate(&mut keys, "full.a").await, "rotation on a full store", says);
    assert_refused(
        set_period(&mut keys, "full.a", 86_400).await,
        "policy change on a full store",
        says,
    );
    assert_refused(create(&mut keys, "full.b").await, "creation on a full store", says);
    assert_eq!(health(channel.clone()).await, ServingStatus::Serving as i32);
    // The data path (README: the store unavailable is UNAVAILABLE):
    // decryption is served from memory; encryption goes on within the
    // durable reservation, then is refused rather than counted on credit.
    assert_all_decrypt(&mut crypto, &acked, "full store").await;
    let data_refused = encrypt_until_refused(&mut crypto, "full.a", 40, Duration::ZERO, &mut acked).await;
    let e = data_refused.expect("encryption beyond the durable reservation is refused on a full store");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_all_decrypt(&mut crypto, &acked, "full store").await;
    assert_eq!(health(channel.clone()).await, ServingStatus::Serving as i32);

    // space freed: administrative calls succeed again, without a restart
    s.ns.free(&s.state());
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        match rotate(&mut keys, "full.a").await {
            Ok(info) => break info,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "no recovery after space was freed: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        info.primary_version, 2,
        "the refused rotation did not happen; this one did"
    );
    create(&mut keys, "full.after").await.unwrap();
    set_period(&mut keys, "full.a", 86_400).await.unwrap();
    for i in 0..20 {
        let pt = format!("after {i}").into_bytes();
        acked.push((
            "full.a".to_string(),
            pt.clone(),
            encrypt(&mut crypto, "full.a", &pt).await.unwrap(),
        ));
    }
    for name in [&refused_name, "full.b"] {
        let e = get(&mut keys, name).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "a refused creation does not appear: {e:?}");
    }

    // after a restart: everything acknowledged is there, nothing refused is
    s.restart();
    let channel = s.d.channel().await;
    let (mut crypto, mut keys) = (CryptoClient::new(channel.clone()), KeysClient::new(channel));
    assert_all_decrypt(&mut crypto, &acked, "after the restart").await;
    for name in created.iter().map(String::as_str).chain(["full.a", "full.after"]) {
        get(&mut keys, name)
            .await
            .unwrap_or_else(|e| panic!("acknowledged key {name} lost: {e:?}"));
    }
    for name in [&refused_name, "full.b"] {
        assert_eq!(get(&mut keys, name).await.unwrap_err().code(), Code::NotFound);
    }
    let a = get(&mut keys, "full.a").await.unwrap();
    assert_eq!(a.primary_version, 2);
    assert_eq!(a.policy.unwrap().rotation_period_seconds, Some(86_400));
    // the stored usage count never fell below the encryptions acknowledged
    for v in &a.versions {
        let n = acked
            .iter()
            .filter(|(_, _, ct)| envelope_version(ct) == v.version)
            .count() as u64;
        assert!(
            v.encryptions >= n,
            "v{}: stored count {} < {n} acknowledged",
            v.version,
            v.encryptions
        );
    }
    s.d.stop();
    s.assert_audit_verifies();
    // the refused creation was audited as attempted and refused
    let recs = audit_records(&s);
    let outcome: Vec<_> = recs
        .iter()
        .filter(|r| r["op"] == "key.create" && r["key"] == refused_name.as_str())
        .map(|r| r["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcome, ["STARTED", "UNAVAILABLE"], "{refused_name}");
}
