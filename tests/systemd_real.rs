//! The shipped units under a real systemd 252 as PID 1: `systemd/sandbox.sh`
//! boots it in private mount and PID namespaces over a throwaway overlay of
//! this machine's root, and `systemd/operator-guide-test.sh` runs the
//! README's operator guide inside it with the kmsd and kmsctl built for this
//! test (install, sysusers, tmpfiles, master key credential, officer
//! enrolment, `enable --now`, clients in `kmsd-clients`, reload, rotation,
//! backup, restart, watchdog, stop, journal fields, no secrets, no SIGSYS).
//!
//! The second test runs `systemd/etcd-dropin-test.sh` there: the unit with
//! the etcd drop-in as shipped, against a real etcd with client-certificate
//! authentication (start, READY, a key written to etcd and read back sealed
//! through etcdctl, reload, the IP filter, the exposure rating, stop).
//!
//! Needs root. Skips with a message otherwise; with
//! `KMSD_REQUIRE_SYSTEMD_PID1=1` (set by `.ci/run`) it fails instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd::dev::{write_file, Ca};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Why the test cannot run here, if it cannot.
fn unavailable(etcd: bool) -> Option<String> {
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
        "/usr/sbin/ip",
        "/usr/bin/python3",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing"));
        }
    }
    if etcd {
        for tool in ["/usr/bin/etcd", "/usr/bin/etcdctl"] {
            if !Path::new(tool).exists() {
                return Some(format!("{tool} is missing (apt-get install etcd-server etcd-client)"));
            }
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

/// Adds etcd's PKI to `dir`: a CA, the member's server certificate (IP SAN
/// 10.0.0.11, the address the shipped drop-in names), the administrator
/// (CN `root`) and kmsd's etcd user (CN `kmsd-payments`).
fn write_etcd_pki(dir: &Path) {
    let ca = Ca::new("etcd systemd test CA").unwrap();
    write_file(&dir.join("etcd-ca.pem"), ca.cert_pem().as_bytes(), false).unwrap();
    // etcd's own gRPC gateway dials the member with this certificate, so
    // under --client-cert-auth it must serve for clients too (etcd's docs).
    let server = ca
        .issue_custom("etcd-1", None, |p| {
            p.subject_alt_names = vec![rcgen::SanType::IpAddress("10.0.0.11".parse().unwrap())];
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
        })
        .unwrap();
    write_file(&dir.join("etcd-server.pem"), server.cert_pem.as_bytes(), false).unwrap();
    write_file(&dir.join("etcd-server.key"), server.key_pem.as_bytes(), true).unwrap();
    for (file, cn) in [("etcd-root", "root"), ("etcd-kmsd", "kmsd-payments")] {
        let c = ca.issue_client(cn, None).unwrap();
        write_file(&dir.join(format!("{file}.pem")), c.cert_pem.as_bytes(), false).unwrap();
        write_file(&dir.join(format!("{file}.key")), c.key_pem.as_bytes(), true).unwrap();
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

/// Stages the binaries, units, example files and PKI under /var/tmp, runs
/// `systemd/SCRIPT` in `systemd/sandbox.sh` and checks it printed `done`.
fn run_in_sandbox(test: &str, script: &str, limit_s: u32, etcd: bool, done: &str) {
    if let Some(why) = unavailable(etcd) {
        assert!(
            std::env::var("KMSD_REQUIRE_SYSTEMD_PID1").as_deref() != Ok("1"),
            "KMSD_REQUIRE_SYSTEMD_PID1=1 but the real-systemd test cannot run: {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
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
    if etcd {
        write_etcd_pki(&st.join("pki"));
    }
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
        .arg(st.join("systemd").join(script))
        .arg(limit_s.to_string())
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
    eprintln!("{text}\n({script} under systemd: {elapsed:.1?})");
    assert!(
        out.status.success(),
        "{script} failed under systemd ({}):\n{text}",
        out.status
    );
    assert!(text.contains(done), "{script} ended early:\n{text}");
}

#[test]
fn operator_guide_works_under_systemd_as_pid1() {
    run_in_sandbox(
        "operator_guide_works_under_systemd_as_pid1",
        "operator-guide-test.sh",
        240,
        false,
        "operator guide under systemd: all steps passed",
    );
}

#[test]
fn the_etcd_drop_in_works_under_systemd_as_pid1() {
    run_in_sandbox(
        "the_etcd_drop_in_works_under_systemd_as_pid1",
        "etcd-dropin-test.sh",
        180,
        true,
        "etcd drop-in under systemd: all steps passed",
    );
}
