//! The foundation, end to end: the real daemon, real mTLS certificates
//! made here, real gRPC over a Unix socket and over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_over_unix_socket_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    let info = create(&mut keys, "payments.pan").await;
    assert_eq!(info.primary_version, 1);
    assert_eq!(info.versions.len(), 1);
    assert_eq!(info.versions[0].state, proto::VersionState::Active as i32);

    let r = crypto
        .encrypt(enc("payments.pan", b"4111111111111111", b"order-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.key_version, 1);
    assert!(!contains(&r.ciphertext, b"4111111111111111"));
    let p = crypto
        .decrypt(dec("payments.pan", &r.ciphertext, b"order-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.plaintext, b"4111111111111111");
    assert_eq!(p.key_version, 1);

    // the same over TCP, decrypting what the Unix socket client encrypted
    let mut tcp = CryptoClient::new(d.tcp_channel().await);
    let p = tcp
        .decrypt(dec("payments.pan", &r.ciphertext, b"order-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.plaintext, b"4111111111111111");
    let r2 = encrypt_ok(&mut tcp, "payments.pan", b"").await;
    assert_eq!(decrypted(&mut crypto, "payments.pan", &r2.ciphertext).await, b"");

    // listing, paging, metadata only
    for i in 0..5 {
        create(&mut keys, &format!("list-{i}")).await;
    }
    let page = keys
        .list_keys(proto::ListKeysRequest {
            page_size: 3,
            page_token: String::new(),
            prefix: "list-".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.names, vec!["list-0", "list-1", "list-2"]);
    let page2 = keys
        .list_keys(proto::ListKeysRequest {
            page_size: 3,
            page_token: page.next_page_token,
            prefix: "list-".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.names, vec!["list-3", "list-4"]);
    assert!(page2.next_page_token.is_empty());

    // identity is logged per request (no authorisation yet)
    assert!(d.log_text().contains("spiffe://test.internal/app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_keys_and_old_ciphertexts_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    let ct = {
        let (mut crypto, mut keys) = d.clients().await;
        create(&mut keys, "k").await;
        crypto
            .encrypt(enc("k", b"survives", b"a"))
            .await
            .unwrap()
            .into_inner()
            .ciphertext
    };
    d.restart();
    let (mut crypto, mut keys) = d.clients().await;
    assert_eq!(
        crypto
            .decrypt(dec("k", &ct, b"a"))
            .await
            .unwrap()
            .into_inner()
            .plaintext,
        b"survives"
    );
    let info = keys
        .get_key(proto::GetKeyRequest { name: "k".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.primary_version, 1);
    // acknowledged creation survives a crash (SIGKILL) too
    create(&mut keys, "after-restart").await;
    let ct2 = encrypted(&mut crypto, "after-restart", b"x").await;
    d.kill();
    let _ = std::fs::remove_file(&d.socket);
    let mut d = Daemon::start(dir.path());
    let (mut crypto, _) = d.clients().await;
    assert_eq!(decrypted(&mut crypto, "after-restart", &ct2).await, b"x");
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_ciphertexts_and_new_ones_use_new_version() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, "r").await;
    let old = encrypt_ok(&mut crypto, "r", b"v1 data").await;
    assert_eq!(old.key_version, 1);
    let info = keys
        .rotate_key(proto::RotateKeyRequest { name: "r".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.primary_version, 2);
    assert_eq!(info.versions[0].state, proto::VersionState::DecryptOnly as i32);
    assert_eq!(info.versions[1].state, proto::VersionState::Active as i32);
    let new = encrypt_ok(&mut crypto, "r", b"v2 data").await;
    assert_eq!(new.key_version, 2);
    let p = crypto
        .decrypt(dec("r", &old.ciphertext, b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.plaintext.as_slice(), p.key_version), (&b"v1 data"[..], 1));
    let p = crypto
        .decrypt(dec("r", &new.ciphertext, b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((p.plaintext.as_slice(), p.key_version), (&b"v2 data"[..], 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_errors_and_the_daemon_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, "a").await;
    create(&mut keys, "b").await;
    let ct = crypto
        .encrypt(enc("a", b"payload", b"ctx"))
        .await
        .unwrap()
        .into_inner()
        .ciphertext;

    let code = |r: Result<tonic::Response<proto::DecryptResponse>, tonic::Status>| r.unwrap_err();
    // tampered body, tag, salt, nonce: one opaque status
    for i in [6, 22, 34, ct.len() - 1] {
        let mut t = ct.clone();
        t[i] ^= 1;
        let s = code(crypto.decrypt(dec("a", &t, b"ctx")).await);
        assert_eq!(s.code(), Code::InvalidArgument, "flip at {i}");
        assert!(s.message().contains("decryption failed"), "{}", s.message());
    }
    // wrong associated data, wrong key: the same opaque status
    let wrong_aad = code(crypto.decrypt(dec("a", &ct, b"other")).await);
    let wrong_key = code(crypto.decrypt(dec("b", &ct, b"ctx")).await);
    assert_eq!(wrong_aad.code(), Code::InvalidArgument);
    assert_eq!(wrong_aad.message(), wrong_key.message());
    // truncated, empty, unknown format
    for n in [0, 1, 10, 49] {
        let s = code(crypto.decrypt(dec("a", &ct[..n], b"ctx")).await);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("malformed ciphertext"), "{}", s.message());
    }
    let mut v9 = ct.clone();
    v9[0] = 9;
    let s = code(crypto.decrypt(dec("a", &v9, b"ctx")).await);
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "malformed ciphertext: unknown format version")
    );
    // unknown key, invalid key name
    let s = code(crypto.decrypt(dec("nope", &ct, b"ctx")).await);
    assert_eq!(s.code(), Code::NotFound);
    let s = crypto.encrypt(enc("nope", b"x", b"")).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    for bad in ["", "a/b", "x y", &"n".repeat(129)] {
        let s = keys
            .create_key(proto::CreateKeyRequest {
                name: bad.into(),
                algorithm: 0,
                policy: None,
                exportable: false,
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:?}");
    }
    assert_eq!(
        keys.create_key(proto::CreateKeyRequest {
            name: "a".into(),
            algorithm: 0,
            policy: None,
            exportable: false,
        })
        .await
        .unwrap_err()
        .code(),
        Code::AlreadyExists
    );
    // oversized message: RESOURCE_EXHAUSTED, and the connection still works
    let big = vec![7u8; 5 * 1024 * 1024];
    let s = crypto.encrypt(enc("a", &big, b"")).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    // still serving
    let p = crypto.decrypt(dec("a", &ct, b"ctx")).await.unwrap().into_inner();
    assert_eq!(p.plaintext, b"payload");
    assert!(d.child.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_certificate_are_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());

    // a client certificate from another CA
    let other = tempfile::tempdir().unwrap();
    let other_pki = Pki::new(other.path());
    other_pki.client("stranger", Some("spiffe://evil/x"));
    let mut s = d.settings("client", None);
    s.cert = other.path().join("stranger.pem");
    s.key = other.path().join("stranger.key");
    let refused = match kmsd::client::connect(&s).await {
        Err(_) => true,
        Ok(ch) => KeysClient::new(ch)
            .list_keys(proto::ListKeysRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");

    // no client certificate at all: a raw TLS client without client auth
    let mut roots = rustls::RootCertStore::empty();
    for c in kmsd::tls::load_certs(&dir.path().join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(kmsd::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let result = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, stream)
        .await;
    let refused = match result {
        Err(_) => true,
        Ok(mut tls) => {
            // TLS 1.3: the server's refusal arrives after the client's Finished
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate must be refused");

    // the daemon still serves good clients
    let (_, mut keys) = d.clients().await;
    keys.list_keys(proto::ListKeysRequest::default()).await.unwrap();
    assert!(d.log_text().contains("TLS handshake failed"));
}

#[test]
fn public_bind_addresses_are_refused_at_start() {
    for addr in ["8.8.8.8:7443", "0.0.0.0:7443", "[::]:7443", "[2001:db8::1]:7443"] {
        let dir = tempfile::tempdir().unwrap();
        Pki::new(dir.path());
        let config = write_config(dir.path(), Some(addr), "");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{addr} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        let shown = addr
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        assert!(
            err.contains("refusing to listen") && err.contains(shown),
            "{addr}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_or_key_material_in_logs_or_store_files() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    let marker = b"MARKER-PLAINTEXT-7f3a9c1e";
    {
        let (mut crypto, mut keys) = d.clients().await;
        create(&mut keys, "m").await;
        for _ in 0..20 {
            let ct = crypto
                .encrypt(enc("m", marker, marker))
                .await
                .unwrap()
                .into_inner()
                .ciphertext;
            crypto.decrypt(dec("m", &ct, marker)).await.unwrap();
            let _ = crypto.decrypt(dec("m", &ct, b"wrong")).await;
        }
        keys.rotate_key(proto::RotateKeyRequest { name: "m".into() })
            .await
            .unwrap();
    }
    d.stop();
    let log = std::fs::read(&d.log).unwrap();
    assert!(log.len() > 1000, "the daemon logged at debug level");
    assert!(!contains(&log, marker), "marker plaintext in the log");
    let files = walk(&dir.path().join("store"));
    assert!(!files.is_empty());
    for f in files {
        assert!(
            !contains(&std::fs::read(&f).unwrap(), marker),
            "marker in {}",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_record_is_data_loss_and_other_keys_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    let good_ct = {
        let (mut crypto, mut keys) = d.clients().await;
        create(&mut keys, "victim").await;
        create(&mut keys, "bystander").await;
        encrypted(&mut crypto, "bystander", b"fine").await
    };
    d.stop();
    {
        use kmsd_keystore::{KeyStore, RecordKind, SledStore};
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let e = store.get(RecordKind::KeyRing, "victim").unwrap().unwrap();
        let mut bad = e.value.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        store
            .put(RecordKind::KeyRing, "victim", Some(e.revision), &bad)
            .unwrap();
    }
    let _ = std::fs::remove_file(&d.socket);
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    let s = crypto.encrypt(enc("victim", b"x", b"")).await.unwrap_err();
    assert_eq!(s.code(), Code::DataLoss);
    assert!(s.message().contains("victim"), "{}", s.message());
    let s = keys
        .get_key(proto::GetKeyRequest { name: "victim".into() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::DataLoss);
    assert_eq!(decrypted(&mut crypto, "bystander", &good_ct).await, b"fine");
}
