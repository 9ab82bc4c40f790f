//! kmsctl without a daemon: the offline commands, `--output json`, and
//! one-line errors for missing settings and unreadable certificates.
//! (The commands against a real daemon are tested in the workspace's
//! tests/cli.rs, tests/lifecycle.rs, tests/audit_trail.rs; this test also makes
//! `cargo test --workspace` build the kmsctl binary they run.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn kmsctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kmsctl"));
    c.args(args);
    for v in [
        "KMSD_ADDR",
        "KMSD_CA",
        "KMSD_CERT",
        "KMSD_KEY",
        "KMSD_OTP",
        "KMSD_SERVER_NAME",
    ] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied()).output().unwrap()
}

fn one_error_line(o: &Output) -> String {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("kmsctl: "), "{err}");
    err
}

#[test]
fn mask_prints_text_or_json() {
    let o = kmsctl(&["mask", "--kind", "pan", "4111111111111111"], &[]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "************1111\n");
    let o = kmsctl(&["mask", "--kind", "pan", "4111111111111111", "--output", "json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"masked": "************1111", "valid": true}));
}

#[test]
fn redact_is_a_line_filter() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsctl"))
        .arg("redact")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"card 4111 1111 1111 1111 ok\nnothing here\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(!text.contains("4111 1111 1111 1111"), "{text}");
    assert!(text.ends_with("nothing here\n"), "{text}");
}

#[test]
fn missing_settings_and_files_are_one_line_each() {
    let err = one_error_line(&kmsctl(&["status"], &[]));
    assert_eq!(err, "kmsctl: KMSD_ADDR is not set (flag --addr or environment)\n");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody.pem");
    let missing = missing.to_str().unwrap();
    let err = one_error_line(&kmsctl(
        &["key", "list"],
        &[
            ("KMSD_ADDR", "unix:/nonexistent.sock"),
            ("KMSD_CA", missing),
            ("KMSD_CERT", missing),
            ("KMSD_KEY", missing),
        ],
    ));
    assert!(
        err.starts_with(&format!("kmsctl: client certificate {missing}: cannot read")),
        "{err}"
    );
}
