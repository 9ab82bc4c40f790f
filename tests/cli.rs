//! The dev setup and `kmsctl`, as a user runs them: `kmsd dev` in a fresh
//! directory, the printed exports, then kmsctl commands; restarting dev
//! mode reuses the state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    child: Child,
    env: Vec<(String, String)>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_dev(dir: &std::path::Path) -> Dev {
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["dev", "--dir"])
        .arg(dir)
        .args(["--tcp", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut env = vec![];
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = out.lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(kv) = line.strip_prefix("export ") {
            let (k, v) = kv.split_once('=').unwrap();
            env.push((k.to_owned(), v.to_owned()));
        }
        if env.len() == 4 {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let sock = dir.join("kmsd.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let dev = Dev { child, env };
    while kmsctl(&dev, &["status"]).status.code() != Some(0) {
        assert!(
            Instant::now() < deadline,
            "kmsd dev did not come up ({})",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dev
}

fn kmsctl(dev: &Dev, args: &[&str]) -> Output {
    Command::new(common::kmsctl_bin())
        .args(args)
        .envs(dev.env.iter().cloned())
        .output()
        .unwrap()
}

fn ok(dev: &Dev, args: &[&str]) -> String {
    let o = kmsctl(dev, args);
    assert!(
        o.status.success(),
        "kmsctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn dev_mode_and_kmsctl_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("kmsd-dev");
    let ct;
    {
        let dev = start_dev(&state);
        let names: Vec<_> = dev.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["KMSD_ADDR", "KMSD_CA", "KMSD_CERT", "KMSD_KEY"]);
        for f in [
            "ca.pem",
            "server.pem",
            "server.key",
            "client.pem",
            "client.key",
            "master-key",
            "store",
        ] {
            assert!(state.join(f).exists(), "{f}");
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(state.join("master-key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );

        let created = ok(
            &dev,
            &[
                "key",
                "create",
                "cards",
                "--rotation-period",
                "90d",
                "--max-encryptions",
                "1000000",
            ],
        );
        // aligned text: one `label: value` per line, values in one column
        assert!(
            created.lines().any(|l| l.starts_with("name:") && l.ends_with(" cards")),
            "{created}"
        );
        assert!(
            created
                .lines()
                .any(|l| l.starts_with("rotation_period:") && l.ends_with(" 90d")),
            "{created}"
        );
        let starts: std::collections::BTreeSet<usize> = created
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let colon = l.find(':').unwrap();
                colon + 1 + l[colon + 1..].find(|c| c != ' ').unwrap()
            })
            .collect();
        assert_eq!(starts.len(), 1, "values aligned: {created}");
        // the same key for scripts
        let shown: serde_json::Value =
            serde_json::from_str(&ok(&dev, &["key", "show", "cards", "--output", "json"])).unwrap();
        assert_eq!(shown["name"], "cards");
        assert_eq!(shown["policy"]["rotation_period_seconds"], 7_776_000);
        assert_eq!(shown["versions"][0]["state"], "ACTIVE");
        ct = ok(
            &dev,
            &["encrypt", "--key", "cards", "--aad", "order-1", "4111 1111 1111 1111"],
        )
        .trim()
        .to_owned();
        assert_eq!(
            ok(&dev, &["decrypt", "--key", "cards", "--aad", "order-1", &ct]),
            "4111 1111 1111 1111"
        );
        ok(&dev, &["key", "rotate", "cards"]);
        let rewrapped = ok(&dev, &["rewrap", "--key", "cards", "--aad", "order-1", &ct])
            .trim()
            .to_owned();
        assert_eq!(
            ok(&dev, &["decrypt", "--key", "cards", "--aad", "order-1", &rewrapped]),
            "4111 1111 1111 1111"
        );
        let versions = ok(&dev, &["key", "versions", "cards"]);
        assert!(
            versions.contains("DECRYPT_ONLY") && versions.contains("ACTIVE"),
            "{versions}"
        );
        let dk: serde_json::Value =
            serde_json::from_str(&ok(&dev, &["datakey", "--key", "cards", "--output", "json"])).unwrap();
        assert_eq!(dk["key_version"], 2);
        assert!(ok(&dev, &["key", "list"]).lines().any(|l| l == "cards"));
        let listed: serde_json::Value = serde_json::from_str(&ok(&dev, &["key", "list", "-o", "json"])).unwrap();
        assert_eq!(listed["names"], serde_json::json!(["cards"]));
        let status = ok(&dev, &["status"]);
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("health:") && l.ends_with(" SERVING")),
            "{status}"
        );
        let status: serde_json::Value = serde_json::from_str(&ok(&dev, &["status", "--output", "json"])).unwrap();
        assert_eq!(status["health"], "SERVING");
        assert_eq!(status["keys"], 1);
        assert_eq!(status["versions_by_state"]["DECRYPT_ONLY"], 1);
        assert_eq!(status["backend"], "sled");
        assert_eq!(status["scheduler_leader"], true);
        let ct_json: serde_json::Value = serde_json::from_str(&ok(
            &dev,
            &["encrypt", "--key", "cards", "-o", "json", "4111 1111 1111 1111"],
        ))
        .unwrap();
        assert_eq!(ct_json["key_version"], 2);
        // errors: one clear line, non-zero exit
        let o = kmsctl(&dev, &["decrypt", "--key", "cards", "--aad", "wrong", &ct]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        // status codes print as their canonical names
        assert!(err.starts_with("kmsctl: INVALID_ARGUMENT: "), "{err}");
        let o = kmsctl(&dev, &["key", "show", "missing"]);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).starts_with("kmsctl: NOT_FOUND: "));

        // certificates: one line naming which one, why, and what to do
        let other = kmsd::dev::Ca::new("another CA").unwrap();
        let write = |name: &str, c: &kmsd::dev::Issued| {
            kmsd::dev::write_file(&dir.path().join(format!("{name}.pem")), c.cert_pem.as_bytes(), false).unwrap();
            kmsd::dev::write_file(&dir.path().join(format!("{name}.key")), c.key_pem.as_bytes(), true).unwrap();
            dir.path().join(format!("{name}.pem")).display().to_string()
        };
        let stranger = write("stranger", &other.issue_client("stranger", None).unwrap());
        let expired = write(
            "expired",
            &other
                .issue_custom("expired", None, |p| {
                    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
                })
                .unwrap(),
        );
        for (name, cert, says) in [
            ("stranger", &stranger, "it is not issued by a CA the daemon trusts"),
            (
                "expired",
                &expired,
                "expired at 2021-01-01T00:00:00Z: get a new certificate",
            ),
        ] {
            let o = Command::new(common::kmsctl_bin())
                .arg("status")
                .envs(dev.env.iter().cloned())
                .env("KMSD_CERT", cert)
                .env("KMSD_KEY", dir.path().join(format!("{name}.key")))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success());
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(cert.as_str()) && err.contains(says), "{err}");
        }
    }
    // restart: the same state, old ciphertexts decrypt
    let dev = start_dev(&state);
    assert_eq!(
        ok(&dev, &["decrypt", "--key", "cards", "--aad", "order-1", &ct]),
        "4111 1111 1111 1111"
    );
}
