//! A client not written in Rust (Python grpcio, stubs compiled from
//! `proto/` here) encrypts and decrypts against the real daemon over the
//! Unix socket and over TCP. CI sets KMSD_REQUIRE_PYTHON=1 and installs
//! grpcio; elsewhere the test is skipped, loudly, if grpcio is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::process::Command;

#[test]
fn python_grpcio_client_round_trip() {
    let Some(python) = python_with("grpc, grpc_tools") else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py");
    std::fs::create_dir_all(&out).unwrap();
    let st = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(format!("{root}/proto"))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .arg(format!("{root}/proto/kmsd/v1/kmsd.proto"))
        .status()
        .unwrap();
    assert!(st.success(), "protoc for python failed");
    // Regular packages, so these fresh stubs win over an installed `kmsd`
    // package (clients/python, which .ci/run installs): this test shows
    // that stubs compiled from proto/ by anyone work.
    std::fs::write(out.join("kmsd/__init__.py"), "").unwrap();
    std::fs::write(out.join("kmsd/v1/__init__.py"), "").unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    for (addr, key) in [
        (format!("unix:{}", d.socket.display()), "py-unix"),
        (d.tcp.clone().unwrap(), "py-tcp"),
    ] {
        let o = Command::new(&python)
            .arg(format!("{root}/tests/python/client.py"))
            .arg(key)
            .env("PYTHONPATH", &out)
            .env("KMSD_ADDR", &addr)
            .env("KMSD_CA", dir.path().join("ca.pem"))
            .env("KMSD_CERT", dir.path().join("client.pem"))
            .env("KMSD_KEY", dir.path().join("client.key"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "python client failed over {addr}: {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout.contains(&format!("ok key={key} version=1")), "{stdout}");
    }
}
