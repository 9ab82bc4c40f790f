//! Interrupted operations are finished by running them again (issue 12
//! item 3), with the real offline commands and the real daemon: `kmsd
//! rekey` and `kmsd restore` whose store write or `fsync` fails half-way
//! (`EIO`), and `SIGKILL` at named points of rekey, restore, start-up
//! recovery and audit rotation. Every acknowledged ciphertext decrypts
//! afterwards and the audit chain verifies.
//!
//! Faults and stopping points are `fail` failpoints (named in
//! `kmsd_keystore::failpoints`), live only in the test build of the
//! binaries and set through the `FAILPOINTS` environment variable of the
//! process under test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::faults::{assert_all_decrypt, create, encrypt, rotate, start_fp, Acked};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KMSD: &str = env!("CARGO_BIN_EXE_kmsd");

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
