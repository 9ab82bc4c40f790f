//! The shipped units under a real systemd 252 as PID 1: `systemd/sandbox.sh`
//! boots it in private mount and PID namespaces over a throwaway overlay of
//! this machine's root, and `systemd/operator-guide-test.sh` runs the
//! README's operator guide inside it with the kmsd and kmsctl built for this
//! test (install, sysusers, tmpfiles, master key credential, officer
//! enrolment, `enable --now`, clients in `kmsd-clients`, reload, rotation,
//! backup, restart, watchdog, stop, journal fields, no secrets, no SIGSYS).
//!
//! Needs root. Skips with a message otherwise; with
//! `KMSD_REQUIRE_SYSTEMD_PID1=1` (set by `.ci/run`) it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd::dev::{write_file, Ca};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Why the test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    // `id -u` rather than a libc call: tests stay free of unsafe.
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("needs root (it boots systemd in private namespaces)".into());
    }
    for tool in [
        "/lib/systemd/systemd",
        "/usr/bin/unshare",
        "/usr/bin/nsenter",
        "/usr/bin/systemd-creds",
        "/usr/sbin/runuser",
        "/usr/bin/python3",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

/// Writes the test PKI: a CA (installed as the clients' CA), the server
/// certificate for the Unix socket (`localhost`), and the two identities of
/// `policy.example.toml` the guide test uses.
fn write_pki(dir: &Path) {
    let ca = Ca::new("kmsd systemd test CA").unwrap();
    write_file(&dir.join("ca.pem"), ca.cert_pem().as_bytes(), false).unwrap();
    let server = ca.issue_server(&["localhost"], &[]).unwrap();
    write_file(&dir.join("server.pem"), server.cert_pem.as_bytes(), false).unwrap();
    write_file(&dir.join("server.key"), server.key_pem.as_bytes(), true).unwrap();
    for (name, uri) in [
        ("payments", "spiffe://bank.internal/payments"),
        ("alice", "spiffe://bank.internal/officer/alice"),
    ] {
        let c = ca.issue_client(name, Some(uri)).unwrap();
        write_file(&dir.join(format!("{name}.pem")), c.cert_pem.as_bytes(), false).unwrap();
        write_file(&dir.join(format!("{name}.key")), c.key_pem.as_bytes(), true).unwrap();
    }
}

/// Copies a directory tree, keeping file modes (the scripts are executable).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn operator_guide_works_under_systemd_as_pid1() {
    if let Some(why) = unavailable() {
        assert!(
            std::env::var("KMSD_REQUIRE_SYSTEMD_PID1").as_deref() != Ok("1"),
            "KMSD_REQUIRE_SYSTEMD_PID1=1 but the real-systemd test cannot run: {why}"
        );
        eprintln!("SKIPPED operator_guide_works_under_systemd_as_pid1: {why}");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Everything the script uses is staged under /var/tmp: the sandbox
    // mounts its own /tmp and /run, and a clone of this repository (or its
    // target directory) may well live under /tmp.
    let stage = tempfile::Builder::new()
        .prefix("kmsd-systemd-real-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let st = stage.path();
    std::fs::create_dir_all(st.join("pki")).unwrap();
    write_pki(&st.join("pki"));
    copy_tree(&root.join("systemd"), &st.join("systemd"));
    for f in ["kmsd.example.toml", "policy.example.toml"] {
        std::fs::copy(root.join(f), st.join(f)).unwrap();
    }
    std::fs::create_dir_all(st.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_kmsd"), st.join("bin/kmsd")).unwrap();
    // (kmsctl is its own package: no CARGO_BIN_EXE_kmsctl here; it sits
    // beside kmsd, built by `cargo test --workspace`)
    let kmsctl = std::path::Path::new(env!("CARGO_BIN_EXE_kmsd")).with_file_name("kmsctl");
    std::fs::copy(&kmsctl, st.join("bin/kmsctl"))
        .unwrap_or_else(|e| panic!("{}: {e} (build it: cargo test --workspace)", kmsctl.display()));

    let started = Instant::now();
    let out = Command::new(st.join("systemd/sandbox.sh"))
        .arg(st.join("systemd/operator-guide-test.sh"))
        .arg("240")
        .env("KMSD_BIN", st.join("bin"))
        .env("KMSD_TEST_PKI", st.join("pki"))
        .output()
        .expect("running systemd/sandbox.sh");
    let elapsed = started.elapsed();
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}\n(operator guide under systemd: {elapsed:.1?})");
    assert!(
        out.status.success(),
        "the operator guide failed under systemd ({}):\n{text}",
        out.status
    );
    assert!(
        text.contains("operator guide under systemd: all steps passed"),
        "the script ended early:\n{text}"
    );
}
