//! Injected faults (issue 12 item 3) against the real daemon over real
//! mTLS, and the real offline commands: the store's write, flush and
//! `fsync` failing with `EIO` at each step, and `SIGKILL` in the middle of
//! rekey, restore, start-up recovery and audit rotation.
//!
//! Faults are `fail` failpoints (named in `kmsd_keystore::failpoints`),
//! live only in the test build of the binaries and set through the
//! `FAILPOINTS` environment variable of the process under test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, keys_client::KeysClient};
use std::path::Path;
use std::process::Command;
use tonic::transport::Channel;
use tonic::Code;

type Keys = KeysClient<Channel>;

const KMSD: &str = env!("CARGO_BIN_EXE_kmsd");

/// Starts the daemon in `dir` with `FAILPOINTS=fp` (none when empty).
fn start_fp(dir: &Path, fp: &str) -> Daemon {
    let fp = fp.to_owned();
    Daemon::start_command(dir, "", move |config| {
        let mut c = Command::new(KMSD);
        c.args(["serve", "--config"]).arg(config);
        if !fp.is_empty() {
            c.env("FAILPOINTS", fp);
        }
        c
    })
}

async fn create(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.create_key(proto::CreateKeyRequest {
        name: name.into(),
        algorithm: 0,
        policy: None,
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(keys: &mut Keys, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
    keys.get_key(proto::GetKeyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> tonic::Status {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
    e
}

// ---------------------------------------------------------------- (a)

/// The release build (and any `cargo build`/`cargo run`) has the
/// failpoints compiled out: `fail`'s `failpoints` feature is reached only
/// through the dev-dependency. The feature graph of a build without dev
/// targets must not contain it; the test build's must.
#[test]
fn release_build_has_no_failpoints() {
    assert!(
        kmsd_keystore::failpoints::enabled(),
        "the test build must have live failpoints"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |edges: &str| {
        let out = Command::new(&cargo)
            .args(["tree", "--offline", "--locked", "-p", "kmsd", "-i", "fail", "-e", edges])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let release = tree("no-dev,features");
    assert!(release.contains("fail v0.5"), "{release}");
    assert!(
        !release.contains("feature \"failpoints\""),
        "a build without dev-dependencies turns failpoints on:\n{release}"
    );
    let test = tree("features");
    assert!(test.contains("feature \"failpoints\""), "{test}");
}

/// A malformed or unknown `FAILPOINTS` is refused at start, not ignored
/// (a test that thinks it injects a fault must not silently pass).
#[test]
fn a_malformed_failpoints_value_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let config = write_config(dir.path(), None, "");
    for bad in ["store-write", "no-such-point=return", "store-write=explode"] {
        let out = Command::new(KMSD)
            .args(["serve", "--config"])
            .arg(&config)
            .env("FAILPOINTS", bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("FAILPOINTS"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The test build's daemon reads `FAILPOINTS`: a targeted store fault
/// fails exactly the write it names, `UNAVAILABLE`, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_build_daemon_injects_the_faults_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = start_fp(dir.path(), "store-write=return(doomed)");
    let (_, mut keys) = d.clients().await;
    unavailable(create(&mut keys, "doomed").await, "create doomed");
    create(&mut keys, "fine").await.unwrap();
    assert_eq!(get(&mut keys, "doomed").await.unwrap_err().code(), Code::NotFound);
    assert!(d.log_text().contains("injected at failpoint store-write"));
}
