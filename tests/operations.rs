//! Operating kmsd: socket activation, systemd notifications, SIGHUP
//! reload, graceful SIGTERM, health, handshake timeout, metrics — against
//! the real daemon binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_with_systemd_socket_activate() {
    if Command::new("systemd-socket-activate").arg("--help").output().is_err() {
        assert!(
            std::env::var_os("KMSD_REQUIRE_SYSTEMD").is_none(),
            "systemd-socket-activate is required"
        );
        eprintln!("SKIPPED: systemd-socket-activate not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    // the config names no listener the daemon could bind itself at this path
    let config = write_config(dir.path(), None, "");
    let sock = dir.path().join("activated.sock");
    let log = std::fs::File::create(dir.path().join("kmsd.log")).unwrap();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg("--fdname=grpc")
        .arg(env!("CARGO_BIN_EXE_kmsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("the activation socket", || sock.exists());
    let mut settings = kmsd::client::ClientSettings {
        addr: format!("unix:{}", sock.display()),
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("client.pem"),
        key: dir.path().join("client.key"),
        server_name: None,
    };
    // the first connection starts kmsd (systemd-socket-activate execs it on the first connection)
    // (the socket file exists from bind(), a moment before listen())
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        match kmsd::client::connect(&settings).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mut keys = KeysClient::new(channel.clone());
    loop {
        match keys
            .create_key(proto::CreateKeyRequest {
                name: "act".into(),
                algorithm: 0,
                policy: None,
                exportable: false,
            })
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let mut crypto = CryptoClient::new(channel);
    let ct = encrypted(&mut crypto, "act", b"via activation").await;
    let pt = decrypted(&mut crypto, "act", &ct).await;
    assert_eq!(pt, b"via activation");
    let log = std::fs::read_to_string(dir.path().join("kmsd.log")).unwrap();
    assert!(log.contains("socket-activated Unix socket"), "{log}");
    assert!(
        !dir.path().join("kmsd.sock").exists(),
        "the configured path was not bound"
    );
    settings.addr = String::new();
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_reload_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let config = write_config(dir.path(), None, "");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut recv_until = |needle: &str, seen: &mut String| {
        while !seen.contains(needle) {
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|_| panic!("no {needle} on NOTIFY_SOCKET; saw {seen}"));
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    };
    recv_until("READY=1", &mut seen);
    assert!(seen.contains("STATUS=self-test"), "{seen}");
    let before_ready = seen.split("READY=1").next().unwrap().to_string();
    assert!(!before_ready.contains("WATCHDOG=1"), "no watchdog ping before ready");
    seen.clear();
    recv_until("WATCHDOG=1", &mut seen);
    seen.clear();
    recv_until("WATCHDOG=1", &mut seen); // pings keep coming (every 100 ms)
    seen.clear();
    signal(child.id(), "HUP");
    recv_until("RELOADING=1", &mut seen);
    recv_until("READY=1", &mut seen);
    seen.clear();
    signal(child.id(), "TERM");
    recv_until("STOPPING=1", &mut seen);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let old_channel = d.channel().await;
    let mut old_keys = KeysClient::new(old_channel.clone());
    create(&mut old_keys, "before").await;

    // (1) a bad certificate file is refused; the old one stays in force
    let good_cert = std::fs::read(dir.path().join("server.pem")).unwrap();
    std::fs::write(dir.path().join("server.pem"), b"-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let offset = d.log_text().len();
    signal(d.pid(), "HUP");
    wait_for("refused reload", || d.log_text()[offset..].contains("reload refused"));
    let mut fresh = KeysClient::new(d.channel().await);
    fresh
        .get_key(proto::GetKeyRequest { name: "before".into() })
        .await
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), &good_cert).unwrap();

    // (2) a new server certificate from a new CA: new handshakes use it
    let new_ca = kmsd::dev::Ca::new("rotated CA").unwrap();
    let server = new_ca.issue_server(&["localhost"], &[]).unwrap();
    kmsd::dev::write_file(&dir.path().join("server.pem"), server.cert_pem.as_bytes(), false).unwrap();
    kmsd::dev::write_file(&dir.path().join("server.key"), server.key_pem.as_bytes(), true).unwrap();
    let new_ca_path = dir.path().join("new-ca.pem");
    kmsd::dev::write_file(&new_ca_path, new_ca.cert_pem().as_bytes(), false).unwrap();
    let offset = d.log_text().len();
    signal(d.pid(), "HUP");
    wait_for("reload", || d.log_text()[offset..].contains("reloaded TLS certificate"));
    // a client trusting only the old CA can no longer complete a new handshake
    let old_trust = d.settings("client", None);
    let refused = match kmsd::client::connect(&old_trust).await {
        Err(_) => true,
        Ok(ch) => KeysClient::new(ch)
            .list_keys(proto::ListKeysRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "new handshakes must present the new certificate");
    let mut new_trust = d.settings("client", None);
    new_trust.ca = new_ca_path;
    let mut k2 = KeysClient::new(kmsd::client::connect(&new_trust).await.unwrap());
    k2.get_key(proto::GetKeyRequest { name: "before".into() })
        .await
        .unwrap();
    // the connection established before the reload is still up
    create(&mut old_keys, "after").await;
    let _ = pki;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (mut d, metrics) = Daemon::start_with_metrics(
        dir.path(),
        "[limits]\nmax_message_bytes = 67108864\nmax_batch_items = 100000\nshutdown_timeout = \"120s\"\n",
    );
    let channel = d.channel().await;
    let mut keys = KeysClient::new(channel.clone());
    create(&mut keys, "drain").await;
    // Requests that take long to serve. The signal goes out once the
    // server has accepted all three (a stream the server never saw is
    // refused by the GOAWAY, which gRPC clients may safely retry).
    const ITEMS: usize = 40_000;
    let big: Vec<proto::EncryptRequest> = (0..ITEMS).map(|_| enc("drain", &[7u8], b"")).collect();
    let mut calls = vec![];
    for _ in 0..3 {
        let mut crypto = CryptoClient::new(channel.clone())
            .max_decoding_message_size(1 << 27)
            .max_encoding_message_size(1 << 27);
        let items = big.clone();
        calls.push(tokio::spawn(async move {
            crypto.encrypt_batch(proto::EncryptBatchRequest { items }).await
        }));
    }
    let m = metrics.clone();
    let body = tokio::task::spawn_blocking(move || wait_scrape(&m, "kmsd_requests_in_flight 3"))
        .await
        .unwrap();
    assert!(body.contains("kmsd_requests_in_flight 3"), "{body}");
    let pid = d.pid();
    signal(pid, "TERM");
    let mut finished_after_signal = 0;
    for c in calls {
        let r = match c.await.unwrap() {
            Ok(r) => r,
            Err(e) => panic!(
                "in-flight call failed after SIGTERM: {e:?}\ndaemon log:\n{}",
                d.log_text()
            ),
        };
        assert_eq!(r.into_inner().items.len(), ITEMS);
        finished_after_signal += 1;
    }
    assert_eq!(finished_after_signal, 3);
    let mut child = d.child.take().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let log = d.log_text();
    assert!(
        log.contains("shutting down") && log.contains("store synced") && log.contains("stopped"),
        "{log}"
    );
    // new connections are refused after shutdown
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_ready() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let config = write_config(dir.path(), None, "");
    let log = std::fs::File::create(dir.path().join("kmsd.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("KMSD_DANGER_DEV_STARTUP_DELAY_MS", "2000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sock = dir.path().join("kmsd.sock");
    wait_for("socket", || std::os::unix::net::UnixStream::connect(&sock).is_ok());
    let settings = kmsd::client::ClientSettings {
        addr: format!("unix:{}", sock.display()),
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("client.pem"),
        key: dir.path().join("client.key"),
        server_name: None,
    };
    let channel = kmsd::client::connect(&settings).await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let st = health.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(st, ServingStatus::NotServing as i32);
    let st = health.check(check("kmsd.v1.Crypto")).await.unwrap().into_inner().status;
    assert_eq!(st, ServingStatus::NotServing as i32);
    let e = KeysClient::new(channel.clone())
        .list_keys(proto::ListKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = health.check(check("kmsd.v1.Crypto")).await.unwrap().into_inner().status;
        if st == ServingStatus::Serving as i32 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    KeysClient::new(channel)
        .list_keys(proto::ListKeysRequest::default())
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start_with(dir.path(), "[limits]\nhandshake_timeout = \"300ms\"\n");
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    // half a ClientHello, then silence
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the daemon closed the connection");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "dropped by the handshake timeout, not the read timeout"
    );
    wait_for("log line", || d.log_text().contains("TLS handshake timed out"));
    // and keeps serving others
    let (_, mut keys) = d.clients().await;
    keys.list_keys(proto::ListKeysRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_expected_series_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (d, metrics) = Daemon::start_with_metrics(dir.path(), "");
    let (mut crypto, mut keys) = d.clients().await;
    let marker = b"METRICS-MARKER-SECRET-91f2";
    create(&mut keys, "customer-pan-key").await;
    set_policy(&mut keys, "customer-pan-key", |p| {
        p.rotation_period_seconds = Some(3600)
    })
    .await
    .unwrap();
    let ct = encrypted(&mut crypto, "customer-pan-key", marker).await;
    let _ = crypto.decrypt(dec("customer-pan-key", &ct, b"bad")).await;
    keys.rotate_key(proto::RotateKeyRequest {
        name: "customer-pan-key".into(),
    })
    .await
    .unwrap();
    // one failed handshake
    let _ = std::os::unix::net::UnixStream::connect(&d.socket).map(|mut s| s.write_all(b"not tls at all\r\n\r\n"));
    let body = wait_scrape(&metrics, "kmsd_tls_handshake_failures_total 1");
    for series in [
        "kmsd_requests_total{method=\"encrypt\",code=\"OK\"} 1",
        "kmsd_requests_total{method=\"decrypt\",code=\"INVALID_ARGUMENT\"} 1",
        "kmsd_request_duration_seconds_bucket{method=\"encrypt\",le=\"+Inf\"} 1",
        "kmsd_keys 1",
        "kmsd_key_versions{state=\"ACTIVE\"} 1",
        "kmsd_key_versions{state=\"DECRYPT_ONLY\"} 1",
        "kmsd_rotations_total{reason=\"manual\"} 1",
        "kmsd_next_rotation_seconds ",
        "kmsd_audit_write_seconds_count",
        "kmsd_ready 1",
    ] {
        assert!(body.contains(series), "missing {series:?} in\n{body}");
    }
    assert!(!body.contains("customer-pan-key"), "key names only with key_labels");
    assert!(!body.contains(std::str::from_utf8(marker).unwrap()));
}

fn wait_scrape(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = scrape(path);
        if body.contains(needle) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// grpcurl, Postman, grpc_cli and Evans discover the API by server
/// reflection: both protocol versions list every service and resolve a
/// symbol to its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reflection_v1_and_v1alpha_list_and_resolve_the_services() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let channel = d.channel().await;

    let expected = [
        "kmsd.v1.Crypto",
        "kmsd.v1.Keys",
        "kmsd.v1.Admin",
        "kmsd.v1.Mask",
        "grpc.health.v1.Health",
    ];
    {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let reqs = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol("kmsd.v1.Crypto".into())),
            },
        ];
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("v1: {first:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for e in expected {
            assert!(names.iter().any(|n| n == e), "v1 lacks {e}: {names:?}");
        }
        let second = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
            panic!("v1: {second:?}")
        };
        assert!(!files.file_descriptor_proto.is_empty());
        assert!(files.file_descriptor_proto.iter().any(|f| f
            .windows(b"kmsd/v1/kmsd.proto".len())
            .any(|w| w == b"kmsd/v1/kmsd.proto")));
    }
    {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("v1alpha: {first:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for e in expected {
            assert!(names.iter().any(|n| n == e), "v1alpha lacks {e}: {names:?}");
        }
    }
}
