//! `kmsd migrate` (issue 13): the sealed records of one store copied to
//! another byte for byte, with a real daemon before (keys created, data
//! encrypted) and after (the daemon on the destination decrypts
//! everything).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use kmsd::proto;
use kmsd_keystore::SledStore;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `kmsd migrate --from A/kmsd.toml --to B/kmsd.toml [extra]`.
fn migrate(from: &Path, to: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["migrate", "--from"])
        .arg(from.join("kmsd.toml"))
        .arg("--to")
        .arg(to.join("kmsd.toml"))
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A destination directory: the source's certificates and policy, and
/// (unless `same_key` is false) its master key; config written.
fn destination(src: &Path, dst: &Path, same_key: bool) {
    std::fs::create_dir_all(dst).unwrap();
    let mut files = vec![
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
        "policy.toml",
    ];
    if same_key {
        files.push("master-key");
    }
    for f in files {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    write_config(dst, None, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_to_sled_copies_every_record_and_the_destination_decrypts_everything() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    Pki::new(&a);
    let mut source = Daemon::start(&a);
    let (mut crypto, mut keys) = source.clients().await;
    let mut sealed = Vec::new();
    for name in ["payments.pan", "hr.salary", "logs.ip"] {
        create(&mut keys, name).await;
        for i in 0..3u8 {
            if name == "payments.pan" && i == 1 {
                keys.rotate_key(proto::RotateKeyRequest { name: name.into() })
                    .await
                    .unwrap();
            }
            let pt = format!("{name} secret {i}").into_bytes();
            let ct = crypto
                .encrypt(enc(name, &pt, b"aad"))
                .await
                .unwrap()
                .into_inner()
                .ciphertext;
            sealed.push((name, pt, ct));
        }
    }
    destination(&a, &b, true);

    // a running daemon holds the source: refused, nothing written
    let o = migrate(&a, &b, &[]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        stderr(&o).contains("another process holds it (is kmsd serving it? stop it first)"),
        "{}",
        stderr(&o)
    );
    source.stop();

    let o = migrate(&a, &b, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("migrate complete:") && out.contains("0 already there"),
        "{out}"
    );

    // byte for byte: every record of every kind, and nothing else
    {
        let (src, dst) = (
            SledStore::open(&a.join("store")).unwrap(),
            SledStore::open(&b.join("store")).unwrap(),
        );
        let n = kmsd::offline::migrate::verify_copy(&src, &dst).unwrap();
        assert!(n >= 3 + 3 + 2, "{n} records");
        assert!(out.contains(&format!("{n} verified byte for byte")), "{out}");
    }

    // a second run into the now non-empty destination is refused; --resume skips every record
    let o = migrate(&a, &b, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already holds") && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );
    let o = migrate(&a, &b, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(": 0 records copied"),
        "{o:?}"
    );

    // the daemon on the destination decrypts everything, and keeps working
    let dest = Daemon::start(&b);
    let (mut crypto, mut keys) = dest.clients().await;
    for (name, pt, ct) in &sealed {
        let got = crypto
            .decrypt(dec(name, ct, b"aad"))
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(&got, pt, "{name}");
    }
    assert_eq!(get(&mut keys, "payments.pan").await.versions.len(), 2);
    let ct = crypto
        .encrypt(enc("hr.salary", b"after", b""))
        .await
        .unwrap()
        .into_inner()
        .ciphertext;
    let pt = crypto
        .decrypt(dec("hr.salary", &ct, b""))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(pt, b"after");
}

#[test]
fn another_master_key_or_the_same_store_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let (a, c) = (root.path().join("a"), root.path().join("c"));
    Pki::new(&a);
    write_config(&a, None, "");
    destination(&a, &c, false);
    let o = migrate(&a, &c, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the two configurations use different master keys"),
        "{}",
        stderr(&o)
    );
    // nothing was written at the destination
    assert!(!c.join("store").exists(), "the destination store was created");
    let o = migrate(&a, &a, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--from and --to name the same store"),
        "{}",
        stderr(&o)
    );
}

/// sled → etcd → sled: the records that come back are the records that
/// left, byte for byte, and a daemon serves from etcd in between (issue 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_to_etcd_and_back_is_byte_identical() {
    let cluster = kmsd_etcd::testing::Cluster::start(3).unwrap();
    let root = tempfile::tempdir().unwrap();
    let (a, e, c) = (root.path().join("a"), root.path().join("e"), root.path().join("c"));
    Pki::new(&a);
    let mut source = Daemon::start(&a);
    let (mut crypto, mut keys) = source.clients().await;
    let mut sealed = Vec::new();
    for name in ["payments.pan", "hr.salary"] {
        create(&mut keys, name).await;
        let ct = crypto
            .encrypt(enc(name, name.as_bytes(), b""))
            .await
            .unwrap()
            .into_inner()
            .ciphertext;
        sealed.push((name, ct));
    }
    source.stop();
    destination(&a, &e, true);
    destination(&a, &c, true);
    let endpoints: Vec<String> = cluster.endpoints().iter().map(|x| format!("\"http://{x}\"")).collect();
    let etcd_store = format!(
        "backend = \"etcd\"\nmaster_key = \"master-key\"\n[store.etcd]\nendpoints = [{}]\ncluster = \"migrate\"\n",
        endpoints.join(", ")
    );
    let set_store = |config: &Path| {
        let text = std::fs::read_to_string(config).unwrap();
        let (head, _) = text.split_once("[store]").unwrap();
        std::fs::write(config, format!("{head}[store]\n{etcd_store}")).unwrap();
    };
    set_store(&e.join("kmsd.toml"));

    let o = migrate(&a, &e, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = migrate(&e, &c, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    {
        let src = SledStore::open(&a.join("store")).unwrap();
        let back = SledStore::open(&c.join("store")).unwrap();
        let n = kmsd::offline::migrate::verify_copy(&src, &back).unwrap();
        let etcd = kmsd_etcd::EtcdStore::open(&cluster.settings(), "/kmsd/migrate/").unwrap();
        assert_eq!(kmsd::offline::migrate::verify_copy(&src, &etcd).unwrap(), n);
        assert!(n >= 2 + 2, "{n} records");
    }

    // a daemon on etcd decrypts what was encrypted on sled
    let dest = Daemon::start_command(&e, "", |config| {
        set_store(config);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmsd"));
        cmd.args(["serve", "--config"]).arg(config);
        cmd
    });
    let (mut crypto, _) = dest.clients().await;
    for (name, ct) in &sealed {
        let pt = crypto.decrypt(dec(name, ct, b"")).await.unwrap().into_inner().plaintext;
        assert_eq!(pt, name.as_bytes());
    }
}
