//! Transport and identity hardening against the real daemon: key files
//! readable by others, the handshake flood, identities that spell another
//! namespace, trust domains and revocation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn kmsd(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmsd"));
    cmd.args(args).env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kmsd {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn refused(out: &Output, path: &Path, mode: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail; stderr:\n{stderr}");
    let expected = format!("{} is accessible by group or others (mode {mode})", path.display());
    assert!(stderr.contains(&expected), "expected {expected:?} in:\n{stderr}");
}

/// A master key or TLS private key that group or others can read is
/// refused by `check-config` and by `serve`, naming the file; systemd's
/// credentials directory is exempt.
#[test]
fn key_files_readable_by_group_or_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let config = write_config(dir.path(), None, "");
    let config = config.to_str().unwrap();
    let mk = dir.path().join("master-key");
    let tls_key = dir.path().join("server.key");
    let ok = kmsd(&["check-config", config], &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    chmod(&mk, 0o644);
    refused(&kmsd(&["check-config", config], &[]), &mk, "0644");
    refused(&kmsd(&["serve", "--config", config], &[]), &mk, "0644");
    chmod(&mk, 0o600);

    chmod(&tls_key, 0o640);
    refused(&kmsd(&["check-config", config], &[]), &tls_key, "0640");
    refused(&kmsd(&["serve", "--config", config], &[]), &tls_key, "0640");
    chmod(&tls_key, 0o400);
    let ok = kmsd(&["check-config", config], &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // the systemd credential (store.master_key unset) is not ours to chmod
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::rename(&mk, creds.join("master-key")).unwrap();
    chmod(&creds.join("master-key"), 0o440);
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("master_key = \"master-key\"", "");
    std::fs::write(config, text).unwrap();
    let ok = kmsd(&["check-config", config], &[("CREDENTIALS_DIRECTORY", &creds)]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
