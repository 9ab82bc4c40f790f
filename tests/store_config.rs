//! The `[store]` section (issue 13): `backend = "sled" | "etcd"` and
//! `[store.etcd]`, validated by `kmsd check-config` with one precise
//! message per refusal, and an old sled-only `[store]` still accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A test directory with certificates, a policy and a config whose
/// `[store]` section is `store` (the master key line is added).
fn config_with_store(dir: &Path, store: &str) -> PathBuf {
    let pki = Pki::new(dir);
    // kmsd's client certificate for etcd: etcd.pem / etcd.key (0600)
    pki.client("etcd", None);
    let path = write_config(dir, None, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, _) = text.split_once("[store]").unwrap();
    std::fs::write(&path, format!("{head}[store]\nmaster_key = \"master-key\"\n{store}\n")).unwrap();
    path
}

/// Runs `kmsd check-config` on a config with this `[store]` section:
/// (success, stdout + stderr).
fn check(store: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with_store(dir.path(), store);
    check_config(&path)
}

/// Runs `kmsd check-config` on the config at `path`: (success, stdout +
/// stderr).
fn check_config(path: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// check-config refuses `store` with a message containing `needle`.
fn refused(store: &str, needle: &str) {
    let (ok, text) = check(store);
    assert!(!ok, "check-config accepted:\n{store}\n{text}");
    assert!(text.contains(needle), "expected {needle:?} for:\n{store}\ngot:\n{text}");
}

const TLS_FILES: &str = "ca = \"ca.pem\"\ncert = \"etcd.pem\"\nkey = \"etcd.key\"\n";

fn etcd(endpoints: &str, rest: &str) -> String {
    format!("backend = \"etcd\"\n[store.etcd]\nendpoints = [{endpoints}]\n{rest}")
}

#[test]
fn a_sled_store_section_without_backend_is_still_accepted() {
    let (ok, text) = check("path = \"store\"");
    assert!(ok, "{text}");
    assert!(text.contains(": OK"), "{text}");
    let (ok, text) = check("backend = \"sled\"\npath = \"store\"");
    assert!(ok, "{text}");
}

#[test]
fn a_complete_etcd_section_is_accepted() {
    let eps = "\"https://10.0.0.1:2379\", \"https://etcd-2.bank.internal:2379\", \"https://[fd00::3]:2379\"";
    let (ok, text) = check(&etcd(
        eps,
        &format!("cluster = \"payments\"\n{TLS_FILES}connect_timeout = \"2s\"\nrequest_timeout = \"3s\"\nmax_staleness = \"30s\"\n"),
    ));
    assert!(ok, "{text}");
    // plain http on loopback (a one-host test cluster) needs no TLS files
    let (ok, text) = check(&etcd(
        "\"http://127.0.0.1:2379\", \"http://localhost:22379\"",
        "prefix = \"/kmsd/test/\"\n",
    ));
    assert!(ok, "{text}");
}

#[test]
fn endpoints_that_are_not_http_host_port_are_refused_with_their_line() {
    for (ep, why) in [
        ("etcd.internal:2379", "the scheme must be https:// or http://"),
        ("unix:///run/etcd.sock", "the scheme must be https:// or http://"),
        ("https://10.0.0.1", "the port is missing"),
        ("https://10.0.0.1:0", "the port must be 1 to 65535"),
        ("https://10.0.0.1:99999", "the port must be 1 to 65535"),
        ("https://10.0.0.1:2379/v3", "no user, path, query or fragment"),
        ("https://root:pw@10.0.0.1:2379", "no user, path, query or fragment"),
        ("https://fd00::1:2379", "the host must be a DNS name or an IP address"),
        ("https://[fd00::zz]:2379", "not an IPv6 address"),
        ("https://etcd_1!:2379", "the host must be a DNS name or an IP address"),
    ] {
        // the error names the config file and the line of `endpoints`
        refused(&etcd(&format!("\"{ep}\""), TLS_FILES), "kmsd.toml:");
        refused(&etcd(&format!("\"{ep}\""), TLS_FILES), why);
    }
    refused(
        &etcd("", TLS_FILES),
        "store.etcd.endpoints: name at least one etcd member",
    );
}

#[test]
fn plain_http_is_refused_off_loopback_unless_declared_insecure() {
    refused(
        &etcd("\"http://10.0.0.1:2379\"", ""),
        "refusing plain http://10.0.0.1:2379: http:// is allowed on loopback only",
    );
    refused(
        &etcd("\"http://etcd.bank.internal:2379\"", ""),
        "http:// is allowed on loopback only",
    );
    let (ok, text) = check(&etcd("\"http://10.0.0.1:2379\"", "insecure_plaintext = true\n"));
    assert!(ok, "{text}");
    refused(
        &etcd("\"https://10.0.0.1:2379\", \"http://127.0.0.1:2379\"", TLS_FILES),
        "mixing https:// and http:// endpoints is refused",
    );
    refused(
        &etcd("\"http://127.0.0.1:2379\"", "cert = \"etcd.pem\"\nkey = \"etcd.key\"\n"),
        "ca, cert and key need https:// endpoints",
    );
}

#[test]
fn https_needs_a_ca_and_a_client_certificate_with_its_key() {
    let ep = "\"https://10.0.0.1:2379\"";
    for (rest, why) in [
        (
            "cert = \"etcd.pem\"\nkey = \"etcd.key\"\n",
            "store.etcd.ca: https:// endpoints need the CA",
        ),
        (
            "ca = \"ca.pem\"\ncert = \"etcd.pem\"\n",
            "store.etcd.cert is set without store.etcd.key",
        ),
        (
            "ca = \"ca.pem\"\nkey = \"etcd.key\"\n",
            "store.etcd.key is set without store.etcd.cert",
        ),
        (
            "ca = \"ca.pem\"\n",
            "kmsd authenticates to etcd with a client certificate",
        ),
    ] {
        refused(&etcd(ep, rest), why);
    }
    // files that do not load
    refused(
        &etcd(ep, "ca = \"missing.pem\"\ncert = \"etcd.pem\"\nkey = \"etcd.key\"\n"),
        "store.etcd.ca: cannot read",
    );
    refused(
        &etcd(ep, "ca = \"ca.pem\"\ncert = \"etcd.key\"\nkey = \"etcd.key\"\n"),
        "store.etcd.cert: no certificate",
    );
    // a key file that is kmsd's alone but holds no key
    let dir = tempfile::tempdir().unwrap();
    let path = config_with_store(dir.path(), &etcd(ep, TLS_FILES));
    kmsd::dev::write_file(&dir.path().join("etcd.key"), b"not a key\n", true).unwrap();
    let (ok, err) = check_config(&path);
    assert!(!ok, "{err}");
    assert!(err.contains("store.etcd.key: cannot read private key"), "{err}");
}

#[test]
fn a_client_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with_store(dir.path(), &etcd("\"https://10.0.0.1:2379\"", TLS_FILES));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("etcd.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, err) = check_config(&path);
    assert!(!ok, "{err}");
    assert!(
        err.contains("store.etcd.key:") && err.contains("mode 0640") && err.contains("TLS private key (etcd client)"),
        "{err}"
    );
}

#[test]
fn prefix_cluster_and_durations_are_bounded() {
    let ep = "\"http://127.0.0.1:2379\"";
    for (prefix, why) in [
        ("kmsd/prod/", "it must be absolute"),
        ("/kmsd/prod", "it must end with '/'"),
        ("/", "it must end with '/' below the root"),
        ("/kmsd/../etcd/", "no '.' or '..' segments"),
        ("/kmsd//prod/", "no empty segments"),
        ("/kmsd/pr od/", "printable ASCII"),
    ] {
        refused(&etcd(ep, &format!("prefix = \"{prefix}\"\n")), why);
    }
    for (rest, why) in [
        ("cluster = \"Prod\"\n", "store.etcd.cluster \"Prod\""),
        ("cluster = \"\"\n", "store.etcd.cluster \"\""),
        (
            "max_staleness = \"500ms\"\n",
            "store.etcd.max_staleness must be between 1s and 10m (is 500ms)",
        ),
        (
            "max_staleness = \"11m\"\n",
            "store.etcd.max_staleness must be between 1s and 10m",
        ),
        (
            "request_timeout = \"10ms\"\n",
            "store.etcd.request_timeout must be between 100ms and 1m",
        ),
        (
            "connect_timeout = \"2m\"\n",
            "store.etcd.connect_timeout must be between 100ms and 1m",
        ),
        ("max_staleness = \"soon\"\n", "kmsd.toml:"),
        (
            "leader_lease_ttl = \"500ms\"\n",
            "store.etcd.leader_lease_ttl must be between 1s and 1m (is 500ms)",
        ),
        (
            "leader_lease_ttl = \"2m\"\n",
            "store.etcd.leader_lease_ttl must be between 1s and 1m",
        ),
        (
            "leader_lease_ttl = \"2500ms\"\n",
            "store.etcd.leader_lease_ttl must be whole seconds",
        ),
    ] {
        refused(&etcd(ep, rest), why);
    }
}

#[test]
fn sections_that_contradict_the_backend_are_refused() {
    refused(
        "backend = \"etcd\"\n",
        "store.backend is \"etcd\" but there is no [store.etcd] section",
    );
    refused(
        &format!("path = \"store\"\n{}", etcd("\"http://127.0.0.1:2379\"", "")),
        "store.path is for the sled backend",
    );
    refused(
        "path = \"store\"\n[store.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
        "store.etcd is set but store.backend is \"sled\"",
    );
    refused(
        "backend = \"sled\"\n",
        "store.path: the sled backend (the default) needs a path",
    );
    refused(
        "backend = \"zookeeper\"\npath = \"store\"\n",
        "unknown variant `zookeeper`",
    );
    refused(
        &etcd("\"http://127.0.0.1:2379\"", "password = \"x\"\n"),
        "unknown field `password`",
    );
}
