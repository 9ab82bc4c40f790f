//! The daemon on the etcd backend (issue 13), against a real etcd cluster
//! on loopback (kmsd_etcd's test harness): TLS with client-certificate
//! authentication and a user limited to kmsd's prefix; a node whose
//! certificate etcd does not trust, or whose user may not read the prefix,
//! does not start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use kmsd_etcd::testing::Cluster;
use std::path::Path;
use std::process::Command;

const PREFIX: &str = "/kmsd/test/";

/// `[store]` for `cluster` over https with the client identity `cn`
/// (certificate and key copied into `dir`), the CA, and `prefix`.
fn etcd_store(cluster: &Cluster, dir: &Path, cert: &Path, key: &Path, prefix: &str) -> String {
    std::fs::copy(cert, dir.join("etcd.pem")).unwrap();
    std::fs::copy(key, dir.join("etcd.key")).unwrap();
    let endpoints: Vec<String> = cluster.endpoints().iter().map(|e| format!("\"https://{e}\"")).collect();
    format!(
        "backend = \"etcd\"\nmaster_key = \"master-key\"\n[store.etcd]\nendpoints = [{}]\nprefix = \"{prefix}\"\n\
         ca = \"{}\"\ncert = \"etcd.pem\"\nkey = \"etcd.key\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"3s\"\n",
        endpoints.join(", "),
        cluster.ca().unwrap().display()
    )
}

/// Replaces the `[store]` section of the config at `config`.
fn set_store(config: &Path, store: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let (head, _) = text.split_once("[store]").unwrap();
    std::fs::write(config, format!("{head}[store]\n{store}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_from_etcd_with_client_certificate_auth_and_keeps_keys_across_restarts() {
    let cluster = Cluster::start_tls(3).unwrap();
    cluster.enable_auth_with_prefix_user("kmsd-node", PREFIX).unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    Pki::new(dir);
    let (cert, key) = cluster.identity("kmsd-node").unwrap();
    let store = etcd_store(&cluster, dir, &cert, &key, PREFIX);
    let mut d = Daemon::start_command(dir, "", |config| {
        set_store(config, &store);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmsd"));
        cmd.args(["serve", "--config"]).arg(config);
        cmd
    });
    assert!(d.log_text().contains("etcd https://127.0.0.1:"), "{}", d.log_text());
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, "payments.pan").await;
    let marker = b"etcd-plaintext-marker-4242";
    let ct = crypto
        .encrypt(enc("payments.pan", marker, b""))
        .await
        .unwrap()
        .into_inner()
        .ciphertext;
    d.restart();
    let (mut crypto, _) = d.clients().await;
    let pt = crypto
        .decrypt(dec("payments.pan", &ct, b""))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(pt, marker);
    d.stop();

    // etcd holds the records under the prefix, sealed: neither the
    // plaintext nor the key name's material in clear
    let settings = cluster.settings();
    let kvs = kmsd_etcd::testing::block_on(async move {
        let c = kmsd_etcd::EtcdClient::connect(&settings).unwrap();
        c.range(kmsd_etcd::Range::prefix(PREFIX.as_bytes().to_vec()))
            .await
            .unwrap()
            .kvs
    });
    assert!(
        kvs.iter().any(|kv| kv.key.ends_with(b"kpayments.pan")),
        "{} keys",
        kvs.len()
    );
    for kv in &kvs {
        assert!(kv.key.starts_with(PREFIX.as_bytes()));
        assert!(!contains(&kv.value, marker));
    }
}

/// Start-up against etcd that refuses kmsd: the node stops with an error
/// naming etcd (it never serves without its store).
fn refused_start(dir: &Path, store: &str) -> String {
    Pki::new(dir);
    let config = write_config(dir, None, "");
    set_store(&config, store);
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("key store (etcd, prefix"), "{err}");
    err
}

#[test]
fn a_node_etcd_does_not_trust_or_outside_its_prefix_does_not_start() {
    let cluster = Cluster::start_tls(1).unwrap();
    cluster.enable_auth_with_prefix_user("kmsd-node", PREFIX).unwrap();
    let root = tempfile::tempdir().unwrap();
    // a certificate from a CA etcd does not trust
    let (cert, key) = cluster.untrusted_identity("kmsd-node").unwrap();
    let a = root.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    refused_start(&a, &etcd_store(&cluster, &a, &cert, &key, PREFIX));
    // a trusted certificate whose user may not read another cluster's prefix
    let (cert, key) = cluster.identity("kmsd-node").unwrap();
    let b = root.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    refused_start(&b, &etcd_store(&cluster, &b, &cert, &key, "/kmsd/other/"));
}
