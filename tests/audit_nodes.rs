//! `kmsd audit-verify` over several nodes' audit files (issue 13): each
//! node writes its own chain under the one audit key of the shared store;
//! given one directory per node, each chain is verified on its own and
//! reported per node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Starts a daemon on `dir`'s store whose audit log is `audit` (relative
/// to `dir`): two such daemons, one after the other, are two nodes of one
/// store, each with its own chain.
fn start_node(dir: &Path, audit: &str) -> Daemon {
    let audit = audit.to_owned();
    Daemon::start_command(dir, "", move |config| {
        let text = std::fs::read_to_string(config).unwrap();
        std::fs::write(
            config,
            text.replacen("path = \"audit.log\"", &format!("path = \"{audit}\""), 1),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmsd"));
        cmd.args(["serve", "--config"]).arg(config);
        cmd
    })
}

fn verify(dir: &Path, args: &[PathBuf]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["audit-verify", "--config"])
        .arg(dir.join("kmsd.toml"))
        .args(args)
        .output()
        .unwrap()
}

/// Makes a few audited calls on `d`.
async fn some_calls(d: &Daemon, key: &str) {
    let (mut crypto, mut keys) = d.clients().await;
    create(&mut keys, key).await;
    for i in 0..3u8 {
        crypto.encrypt(enc(key, &[i], b"")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nodes_chain_is_verified_on_its_own_and_reported_per_node() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    Pki::new(dir);
    let (a, b) = (dir.join("node-a"), dir.join("node-b"));
    for (node, key) in [("node-a", "k.a"), ("node-b", "k.b")] {
        let mut d = start_node(dir, &format!("{node}/audit.log"));
        some_calls(&d, key).await;
        d.stop();
    }
    // the config left behind names node-b's log; any node's config opens the key
    let out = verify(dir, &[a.clone(), b.clone()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(&format!("{}: OK ", a.display())), "{stdout}");
    assert!(lines[1].starts_with(&format!("{}: OK ", b.display())), "{stdout}");
    // the single-chain form still works
    let out = verify(dir, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK "), "{out:?}");

    // node-b's chain edited: node-b is BROKEN, node-a still OK, exit non-zero
    let log_b = b.join("audit.log");
    let text = std::fs::read_to_string(&log_b).unwrap();
    let tampered = text.replacen("\"k.b\"", "\"k.x\"", 1);
    assert_ne!(text, tampered);
    std::fs::write(&log_b, tampered).unwrap();
    let empty = dir.join("node-c");
    std::fs::create_dir(&empty).unwrap();
    let out = verify(dir, &[a.clone(), b.clone(), empty.clone()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("2 of 3 node chains failed"), "{stderr}");
    assert!(stderr.contains(&format!("{}: OK ", a.display())), "{stderr}");
    assert!(stderr.contains(&format!("{}: BROKEN: ", b.display())), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: no audit files (audit.log*) here", empty.display())),
        "{stderr}"
    );

    // files and directories together are refused
    let out = verify(dir, &[a.join("audit.log"), b]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("give the files of one chain, or one directory per node, not both"),
        "{out:?}"
    );
}
