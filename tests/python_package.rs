//! The Python package in `clients/python/` (`import kmsd`): its own tests
//! (format vectors, cache limits, settings, stubs up to date with `proto/`)
//! and, against this real daemon over real mTLS, its client, envelope and
//! streams, across languages with `kmsctl` (clients/python/tests/).
//!
//! The tests run on the source tree (`PYTHONPATH=clients/python/src`), so
//! they test this commit, not an installed copy. CI sets
//! KMSD_REQUIRE_PYTHON=1 and installs the package's dependencies
//! (`.ci/run`); elsewhere the test is skipped, loudly, if they are missing.
//! KMSD_PYTHON names another interpreter (a virtualenv with the oldest
//! supported grpcio, protobuf and cryptography, for instance).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::process::Command;

#[test]
fn python_package_tests_pass_against_the_daemon() {
    let python = std::env::var("KMSD_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let have = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools, google.protobuf, cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var_os("KMSD_REQUIRE_PYTHON").is_none(),
            "python3 with grpcio, grpcio-tools, protobuf and cryptography is required"
        );
        eprintln!("SKIPPED: python3 grpcio/grpcio-tools/protobuf/cryptography not installed");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (d, _metrics) = Daemon::start_with_metrics(dir.path(), "");
    let o = Command::new(&python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(format!("{root}/clients/python/tests"))
        .env("PYTHONPATH", format!("{root}/clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KMSD_TEST_DAEMON", "1")
        .env("KMSD_TEST_DIR", dir.path())
        .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
        .env("KMSD_TEST_TCP", d.tcp.clone().unwrap())
        .env("KMSD_CA", dir.path().join("ca.pem"))
        .env("KMSD_CERT", dir.path().join("client.pem"))
        .env("KMSD_KEY", dir.path().join("client.key"))
        .env("KMSCTL", kmsctl_bin())
        .output()
        .unwrap();
    // unittest reports on stderr.
    let report = String::from_utf8_lossy(&o.stderr);
    eprintln!("{report}");
    assert!(o.status.success(), "python package tests failed:\n{report}");
    let ran: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .expect("unittest printed no summary");
    assert!(ran >= 30, "only {ran} Python tests ran:\n{report}");
    assert!(!report.contains("skipped"), "a Python test was skipped:\n{report}");
}

/// The failover case for the Python client: two nodes on one etcd
/// store, 10,000 decrypts from 4 threads through one client that knows
/// both, the node it is on killed with SIGKILL a third of the way through:
/// zero failed calls (clients/python/tests/cluster_failover.py).
#[test]
fn python_client_survives_a_node_killed_under_load() {
    let python = std::env::var("KMSD_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let have = Command::new(&python)
        .args(["-c", "import grpc, google.protobuf, cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            std::env::var_os("KMSD_REQUIRE_PYTHON").is_none(),
            "python3 with grpcio, protobuf and cryptography is required"
        );
        eprintln!("SKIPPED: python3 grpcio/protobuf/cryptography not installed");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let c = common::cluster::KmsCluster::start(1, 2, "");
    let shared = c.root.path().join("shared");
    let addrs = format!(
        "unix:{},unix:{}",
        c.node(0).socket.display(),
        c.node(1).socket.display()
    );
    let o = Command::new(&python)
        .arg(format!("{root}/clients/python/tests/cluster_failover.py"))
        .env("PYTHONPATH", format!("{root}/clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KMSD_ADDR", addrs)
        .env("KMSD_CA", shared.join("ca.pem"))
        .env("KMSD_CERT", shared.join("client.pem"))
        .env("KMSD_KEY", shared.join("client.key"))
        .env("KMSD_TEST_KILL_PID", c.node(0).pid().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("{stdout}");
    assert!(
        o.status.success(),
        "failover run failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("ok decrypts=10000 failed=0"), "{stdout}");
}
