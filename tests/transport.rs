//! Who may connect, against the real daemon: key files readable by
//! others are refused; client certificates that are expired, not yet
//! valid, for the wrong use, revoked (CRL reloaded on SIGHUP), from a CA
//! replaced on SIGHUP, or with URI SANs that spell a key-hash identity,
//! break the scheme rules or leave the trust domains are refused at the
//! handshake and get nothing, as is a TLS 1.2-only client.
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

fn wait_log(d: &Daemon, from: usize, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log_text().get(from..).unwrap_or_default().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            d.log_text().get(from..).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn issue_uris(pki: &Pki, name: &str, uris: &[&str]) {
    let c = pki.ca.issue_client_uris(name, uris).unwrap();
    kmsd::dev::write_file(&pki.dir.join(format!("{name}.pem")), c.cert_pem.as_bytes(), false).unwrap();
    kmsd::dev::write_file(&pki.dir.join(format!("{name}.key")), c.key_pem.as_bytes(), true).unwrap();
}

/// `who`'s certificate is refused at the handshake (not by the policy:
/// it gets no `PermissionDenied`), and the daemon's log says `why`.
async fn refused_at_handshake(d: &Daemon, who: &str, why: &str) {
    let from = d.log_text().len();
    let e = create_as(d, who, &format!("by-{who}")).await.unwrap_err();
    assert!(
        !e.starts_with("PermissionDenied"),
        "{who}: refused at the handshake: {e}"
    );
    wait_log(d, from, why);
}

/// A certificate whose URI SAN spells another principal's key-hash
/// identity (`sha256:<hash>`) is refused at the handshake and gets nothing,
/// though the policy grants that key-hash identity everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_spelling_a_key_hash_identity_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.client("victim", None);
    let der = kmsd::tls::load_certs(&dir.path().join("victim.pem")).unwrap();
    let victim = kmsd::tls::PeerIdentity::from_cert(&der[0], String::new()).unwrap();
    let victim_id = victim.id().to_owned();
    assert!(victim_id.starts_with("sha256:") && victim.uri_san.is_none());
    std::fs::write(
        dir.path().join("policy.toml"),
        TEST_POLICY.replace(
            "[identities]\n",
            &format!("[identities]\n\"{victim_id}\" = [\"all\"]\n"),
        ),
    )
    .unwrap();
    pki.client("spoof", Some(&victim_id));
    let d = Daemon::start(dir.path());
    create_as(&d, "victim", "victims-key").await.unwrap();
    let from = d.log_text().len();
    let e = create_as(&d, "spoof", "stolen").await.unwrap_err();
    assert!(
        !e.starts_with("PermissionDenied"),
        "refused at the handshake, not by policy: {e}"
    );
    wait_log(&d, from, &format!("MalformedUri(\"{victim_id}\")"));
    let names = key_names(&d).await;
    assert!(names.contains(&"victims-key".to_string()), "{names:?}");
    assert!(!names.contains(&"stolen".to_string()), "{names:?}");
}

/// Two URI SANs are refused unless `tls.allow_multiple_uri_sans`; with
/// `tls.trust_domains` a URI SAN outside them is refused; a URI SAN that is
/// not `scheme://authority/...` is refused; a certificate without URI SAN
/// keeps its key-hash identity and meets the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_san_rules_and_trust_domains_are_enforced_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    issue_uris(
        &pki,
        "two",
        &["spiffe://test.internal/app", "spiffe://test.internal/other"],
    );
    pki.client("outsider", Some("spiffe://other.internal/app"));
    pki.client("lookalike", Some("spiffe://test.internal.evil/app"));
    pki.client("relative", Some("test.internal/app"));
    pki.client("hashed", None);
    let domains = "trust_domains = [\"spiffe://test.internal/\"]";
    let mut d = Daemon::start_with_tls(dir.path(), domains, "");
    create_as(&d, "client", "k1").await.unwrap();
    for (who, why) in [
        ("two", "MultipleUriSans(2)"),
        ("outsider", "OutsideTrustDomains(\"spiffe://other.internal/app\")"),
        ("lookalike", "OutsideTrustDomains(\"spiffe://test.internal.evil/app\")"),
        ("relative", "MalformedUri(\"test.internal/app\")"),
    ] {
        refused_at_handshake(&d, who, why).await;
    }
    let e = create_as(&d, "hashed", "by-hashed").await.unwrap_err();
    assert!(
        e.starts_with("PermissionDenied"),
        "the policy decides for a key-hash identity: {e}"
    );

    // allowed: the first URI SAN is the identity (and all must be in a trust domain)
    d.stop();
    write_config_tls(
        dir.path(),
        d.tcp.as_deref(),
        &format!("{domains}\nallow_multiple_uri_sans = true"),
        "",
    );
    d.restart_after_stop();
    create_as(&d, "two", "k2").await.unwrap();
    let names = key_names(&d).await;
    assert_eq!(names, vec!["k1".to_string(), "k2".to_string()]);
}

/// A client certificate on the configured CRL is refused at the handshake;
/// a CRL that revokes one more, put in place and signalled with SIGHUP,
/// refuses it from the next handshake on; a bad CRL file is refused on
/// reload and the previous CRL stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused_and_a_crl_reload_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.client("revoked", Some("spiffe://test.internal/app"));
    pki.client("late", Some("spiffe://test.internal/app"));
    let pem = |n: &str| std::fs::read_to_string(dir.path().join(format!("{n}.pem"))).unwrap();
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, pki.ca.crl(&[&pem("revoked")], 1).unwrap()).unwrap();
    let d = Daemon::start_with_tls(dir.path(), "client_crls = [\"crl.pem\"]", "");
    create_as(&d, "client", "k1").await.unwrap();
    create_as(&d, "late", "k2").await.unwrap();
    let from = d.log_text().len();
    create_as(&d, "revoked", "k3").await.unwrap_err();
    wait_log(&d, from, "TLS handshake failed");
    assert!(d.log_text()[from..].contains("Revoked"), "{}", &d.log_text()[from..]);

    // a bad CRL file: the reload is refused, the previous CRL stays
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n").unwrap();
    let from = d.log_text().len();
    signal(d.pid(), "HUP");
    wait_log(&d, from, "reload refused");
    create_as(&d, "revoked", "k4").await.unwrap_err();
    create_as(&d, "late", "k5").await.unwrap();

    // a new CRL revoking "late" too: the next handshake refuses it
    std::fs::write(&crl, pki.ca.crl(&[&pem("revoked"), &pem("late")], 2).unwrap()).unwrap();
    let from = d.log_text().len();
    signal(d.pid(), "HUP");
    wait_log(&d, from, "reloaded TLS certificate");
    create_as(&d, "late", "k6").await.unwrap_err();
    create_as(&d, "client", "k7").await.unwrap();
    let names = key_names(&d).await;
    assert_eq!(names, vec!["k1", "k2", "k5", "k7"]);
}

/// The negative matrix of the client side of the handshake: expired and
/// not-yet-valid certificates, a serverAuth-only certificate, the CA
/// certificate itself, and a TLS 1.2-only client are all refused (and get
/// nothing), while a valid client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_certificates_and_tls_1_2_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let app = Some("spiffe://test.internal/app");
    pki.unusable_clients(app);
    // the CA certificate itself, with its own key
    kmsd::dev::write_file(&dir.path().join("the-ca.pem"), pki.ca.cert_pem().as_bytes(), false).unwrap();
    kmsd::dev::write_file(&dir.path().join("the-ca.key"), pki.ca.key_pem().as_bytes(), true).unwrap();

    let d = Daemon::start(dir.path());
    for (who, why) in [
        ("expired", "certificate expired"),
        ("future", "not valid yet"),
        ("server-auth", "extended key usage"),
        ("the-ca", "invalid peer certificate"),
    ] {
        refused_at_handshake(&d, who, why).await;
    }

    // a TLS 1.2-only client with a valid certificate
    let settings = d.settings("client", None);
    let mut roots = rustls::RootCertStore::empty();
    for c in kmsd::tls::load_certs(&settings.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let mut tls12 = rustls::ClientConfig::builder_with_provider(kmsd::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            kmsd::tls::load_certs(&settings.cert).unwrap(),
            kmsd::tls::load_key(&settings.key).unwrap(),
        )
        .unwrap();
    tls12.alpn_protocols = vec![b"h2".to_vec()];
    let from = d.log_text().len();
    let refused = match kmsd::client::connect_with(&settings, std::sync::Arc::new(tls12)).await {
        Err(_) => true,
        Ok(ch) => kmsd::proto::keys_client::KeysClient::new(ch)
            .create_key(kmsd::proto::CreateKeyRequest {
                name: "by-tls12".into(),
                algorithm: 0,
                policy: None,
                exportable: false,
            })
            .await
            .is_err(),
    };
    assert!(refused, "TLS 1.2 must be refused");
    wait_log(&d, from, "TLS handshake failed");

    create_as(&d, "client", "k1").await.unwrap();
    assert_eq!(key_names(&d).await, vec!["k1"]);
}

/// A client CA replaced on SIGHUP: clients of the old CA are refused on
/// their next handshake, clients of the new one are served, and a
/// connection established before the reload keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_replaced_on_sighup_refuses_old_clients_on_their_next_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // clients keep trusting the server's CA (the old one) under another name
    std::fs::copy(dir.path().join("ca.pem"), dir.path().join("server-ca.pem")).unwrap();
    let d = Daemon::start(dir.path());
    let mut settings = d.settings("client", None);
    settings.ca = dir.path().join("server-ca.pem");
    let before = kmsd::client::connect(&settings).await.unwrap();
    let mut before = kmsd::proto::keys_client::KeysClient::new(before);
    let create = |name: &str| kmsd::proto::CreateKeyRequest {
        name: name.into(),
        algorithm: 0,
        policy: None,
        exportable: false,
    };
    before.create_key(create("k1")).await.unwrap();

    let new_ca = kmsd::dev::Ca::new("replacement client CA").unwrap();
    let newcomer = new_ca
        .issue_client("newcomer", Some("spiffe://test.internal/app"))
        .unwrap();
    pki.write_issued("newcomer", &newcomer);
    kmsd::dev::write_file(&dir.path().join("ca.pem"), new_ca.cert_pem().as_bytes(), false).unwrap();
    let from = d.log_text().len();
    signal(d.pid(), "HUP");
    wait_log(&d, from, "reloaded TLS certificate");

    let from = d.log_text().len();
    let refused = match kmsd::client::connect(&settings).await {
        Err(_) => true,
        Ok(ch) => kmsd::proto::keys_client::KeysClient::new(ch)
            .create_key(create("k2"))
            .await
            .is_err(),
    };
    assert!(refused, "a client of the old CA must be refused on its next handshake");
    wait_log(&d, from, "TLS handshake failed");
    let mut new_settings = d.settings("newcomer", None);
    new_settings.ca = dir.path().join("server-ca.pem");
    kmsd::proto::keys_client::KeysClient::new(kmsd::client::connect(&new_settings).await.unwrap())
        .create_key(create("k3"))
        .await
        .unwrap();
    // established before the reload: still up (documented; see limits.idle_timeout)
    before.create_key(create("k4")).await.unwrap();
    let names = before
        .list_keys(kmsd::proto::ListKeysRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names, vec!["k1", "k3", "k4"]);
}
