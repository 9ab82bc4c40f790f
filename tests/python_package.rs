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
    // jwt (PyJWT) and jwcrypto: the foreign JWS verifiers of test_jws.py
    let Some(python) = python_with("grpc, grpc_tools, google.protobuf, cryptography, jwt, jwcrypto") else {
        return;
    };
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
    let Some(python) = python_with("grpc, google.protobuf, cryptography") else {
        return;
    };
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

/// Python seals, Rust opens; Rust seals, Python opens: envelope messages
/// and streams, with data keys from this real daemon. The Rust side of the
/// messages is `kmsd_client::Envelopes` (seal/open with its caches), of the
/// streams the `kmsd-client` stream format with `GenerateDataKey` and
/// `Decrypt` made here (`kmsctl encrypt-file`/`decrypt-file` are crossed
/// with Python in clients/python/tests/test_daemon.py); the Python side is
/// clients/python/tests/interop.py.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_open_each_others_envelopes_and_streams() {
    use kmsd::client::envelope::Envelope;
    use kmsd::client::format::{DataKey, DATA_KEY_AAD};
    use kmsd::client::stream::{self, Header};
    use kmsd::client::{CacheLimits, ClientBuilder, Envelopes, UnwrapLimits};
    use kmsd::proto;

    let Some(python) = python_with("grpc, google.protobuf, cryptography") else {
        return;
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, "interop").await;
    let files = dir.path().join("interop");
    std::fs::create_dir_all(&files).unwrap();
    let python_run = |what: &str| {
        let o = Command::new(&python)
            .arg(format!("{root}/clients/python/tests/interop.py"))
            .args([what, files.to_str().unwrap(), "interop"])
            .env("PYTHONPATH", format!("{root}/clients/python/src"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
            .env("KMSD_CA", dir.path().join("ca.pem"))
            .env("KMSD_CERT", dir.path().join("client.pem"))
            .env("KMSD_KEY", dir.path().join("client.key"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "interop.py {what} failed: {stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    let read = |name: String| std::fs::read(files.join(name)).unwrap();

    // Python seals; Rust opens.
    assert!(python_run("seal").contains("ok sealed messages=5 streams=5"));
    let client = ClientBuilder::new()
        .endpoint(format!("unix:{}", d.socket.display()))
        .ca(dir.path().join("ca.pem"))
        .cert(dir.path().join("client.pem"))
        .key(dir.path().join("client.key"))
        .connect()
        .await
        .unwrap();
    let opener = Envelopes::new(client.clone()).expect_keys(["interop"]);
    for i in 0..5 {
        let blob = read(format!("py-msg-{i}.bin"));
        assert_eq!(Envelope::parse(&blob).unwrap().key_name(), "interop");
        let aad = read(format!("py-msg-{i}.aad"));
        let plain = opener.open(&blob, &aad).await.unwrap();
        assert_eq!(plain, read(format!("py-msg-{i}.plain")), "message {i}");
        assert!(opener.open(&blob, b"other").await.is_err());
    }
    for j in 0..5 {
        let blob = read(format!("py-stream-{j}.kmsd"));
        let h = Header::parse(&blob).unwrap();
        assert_eq!(h.segment_size(), 65536);
        let dk = unwrap(&mut crypto, h.key_name(), h.wrapped_key()).await;
        let aad = read(format!("py-stream-{j}.aad"));
        let plain = stream::open_all(&h, &dk, &blob, &aad).unwrap();
        assert_eq!(plain, read(format!("py-stream-{j}.plain")), "stream {j}");
        assert!(stream::open_all(&h, &dk, &blob[..blob.len() - 1], &aad).is_err());
    }

    // Rust seals; Python opens.
    // Two messages per data key: some share one.
    let limits = CacheLimits {
        max_messages: 2,
        ..CacheLimits::default()
    };
    let sealer = Envelopes::with_limits(client, limits, UnwrapLimits::default());
    let messages: [&[u8]; 4] = [b"", b"4111 1111 1111 1111", &[7u8; 1024], &[9u8; 70_000]];
    for (i, pt) in messages.iter().enumerate() {
        let aad = format!("rust-row-{i}");
        let blob = sealer.seal("interop", pt, aad.as_bytes()).await.unwrap();
        std::fs::write(files.join(format!("rs-msg-{i}.bin")), blob).unwrap();
        std::fs::write(files.join(format!("rs-msg-{i}.plain")), pt).unwrap();
        std::fs::write(files.join(format!("rs-msg-{i}.aad")), aad).unwrap();
    }
    for (j, size) in [0usize, 1, 65536, 3 * 65536 + 123].into_iter().enumerate() {
        let pt: Vec<u8> = (0..size).map(|b| (b % 251) as u8).collect();
        let (dk, wrapped) = data_key(&mut crypto, "interop").await;
        let h = Header::new(65536, "interop", &wrapped).unwrap();
        let aad = if j % 2 == 1 { b"rust-file".to_vec() } else { Vec::new() };
        let blob = stream::seal_all(&h, &dk, &pt, &aad).unwrap();
        std::fs::write(files.join(format!("rs-stream-{j}.kmsd")), blob).unwrap();
        std::fs::write(files.join(format!("rs-stream-{j}.plain")), &pt).unwrap();
        std::fs::write(files.join(format!("rs-stream-{j}.aad")), &aad).unwrap();
    }
    assert!(python_run("open").contains("ok opened messages=4 streams=4"));

    async fn unwrap(crypto: &mut Crypto, key: &str, wrapped: &[u8]) -> DataKey {
        let r = crypto
            .decrypt(proto::DecryptRequest {
                key: key.into(),
                ciphertext: wrapped.to_vec(),
                associated_data: DATA_KEY_AAD.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        DataKey::from_slice(&r.plaintext).unwrap()
    }

    async fn data_key(crypto: &mut Crypto, key: &str) -> (DataKey, Vec<u8>) {
        let r = crypto
            .generate_data_key(proto::GenerateDataKeyRequest {
                key: key.into(),
                bits: 256,
                associated_data: DATA_KEY_AAD.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        (DataKey::from_slice(&r.plaintext).unwrap(), r.ciphertext)
    }
}
