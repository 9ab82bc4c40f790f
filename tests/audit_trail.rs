//! The audit trail against the real daemon over real mTLS: a batch names
//! every key and version it used; every call that got through gets an
//! outcome record, a cancelled one included; retention and a deleted
//! oldest file as `kmsd audit-verify` sees them; and a full disk (a small
//! tmpfs in a private mount namespace) refusing calls until space is freed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::bank::*;
use common::*;
use kmsd::proto;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::{Code, Request};

fn records(path: &Path) -> Vec<serde_json::Value> {
    audit_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Waits until the live log holds records matching `f`.
fn wait_records(path: &Path, what: &str, f: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = records(path);
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {r:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with_id<T>(msg: T, id: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("x-request-id", id.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_records_each_key_and_version_it_used() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut c, mut k) = d.clients().await;
    create(&mut k, "batch.a").await;
    create(&mut k, "batch.b").await;
    let enc = |key: &str| proto::EncryptRequest {
        key: key.into(),
        plaintext: b"x".to_vec(),
        associated_data: vec![],
    };
    let b1 = c.encrypt(enc("batch.b")).await.unwrap().into_inner().ciphertext;
    k.rotate_key(proto::RotateKeyRequest { name: "batch.b".into() })
        .await
        .unwrap();
    let b2 = c.encrypt(enc("batch.b")).await.unwrap().into_inner().ciphertext;
    let a1 = c.encrypt(enc("batch.a")).await.unwrap().into_inner().ciphertext;
    let item = |key: &str, ct: &[u8]| proto::DecryptRequest {
        key: key.into(),
        ciphertext: ct.to_vec(),
        associated_data: vec![],
    };
    let mut items = vec![];
    items.extend((0..5).map(|_| item("batch.a", &a1)));
    items.extend((0..3).map(|_| item("batch.b", &b1)));
    items.extend((0..2).map(|_| item("batch.b", &b2)));
    items.push(item("batch.missing", &a1));
    let out = c
        .decrypt_batch(with_id(proto::DecryptBatchRequest { items }, "batch-call-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.items.len(), 11);
    let path = dir.path().join("audit.log");
    let recs = wait_records(&path, "the batch's records", |r| {
        r.iter()
            .any(|x| x["request_id"] == "batch-call-1" && x["key"] == "(batch)")
    });
    let mine: Vec<(String, Option<u64>, String, String)> = recs
        .iter()
        .filter(|x| x["request_id"] == "batch-call-1")
        .map(|x| {
            (
                x["key"].as_str().unwrap().to_owned(),
                x["key_version"].as_u64(),
                x["result"].as_str().unwrap().to_owned(),
                x["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let part = |key: &str, v: Option<u64>, result: &str, n: u32| {
        (key.to_owned(), v, result.to_owned(), format!("batch part items={n}"))
    };
    assert_eq!(
        mine,
        vec![
            part("batch.a", Some(1), "OK", 5),
            part("batch.b", Some(1), "OK", 3),
            part("batch.b", Some(2), "OK", 2),
            part("batch.missing", None, "NOT_FOUND", 1),
            ("(batch)".into(), None, "OK".into(), "batch items=11 errors=1".into()),
        ],
        "one record per key, version and result, then the call's own"
    );
    // rewrap names the version the ciphertexts came from
    let out = c
        .rewrap_batch(with_id(
            proto::RewrapBatchRequest {
                items: vec![proto::RewrapRequest {
                    key: "batch.b".into(),
                    ciphertext: b1.clone(),
                    associated_data: vec![],
                }],
            },
            "batch-call-2",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.items.len(), 1);
    let recs = wait_records(&path, "the rewrap batch's records", |r| {
        r.iter()
            .any(|x| x["request_id"] == "batch-call-2" && x["key"] == "(batch)")
    });
    assert!(
        recs.iter().any(|x| x["request_id"] == "batch-call-2"
            && x["key"] == "batch.b"
            && x["key_version"] == 2
            && x["detail"] == "batch part items=1 from_version=1"),
        "{recs:#?}"
    );
}

/// Every STARTED record is followed by an outcome record of its request.
fn assert_every_started_has_an_outcome(recs: &[serde_json::Value]) {
    for (i, r) in recs.iter().enumerate() {
        if r["result"] == "STARTED" {
            assert!(
                recs[i + 1..]
                    .iter()
                    .any(|o| o["request_id"] == r["request_id"] && o["result"] != "STARTED"),
                "no outcome for {r}"
            );
        }
    }
}

/// Opens a client-streaming gRPC call over a raw HTTP/2 connection (real
/// mTLS) and sends one message: the test then resets the stream
/// (RST_STREAM CANCEL) or drops the connection itself, as a client that
/// gives up mid-call does.
async fn open_stream(
    d: &Daemon,
    path: &str,
    request_id: &str,
    message: &[u8],
) -> (
    h2::SendStream<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let s = d.settings("client", None);
    let cfg = kmsd::client::tls_config(&s.ca, &s.cert, &s.key).unwrap();
    let sock = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), sock)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-request-id", request_id)
        .body(())
        .unwrap();
    let (_response, mut stream) = send.send_request(req, false).unwrap();
    // one length-prefixed message: field 1 (bytes)
    let mut body = vec![0x0a, message.len() as u8];
    body.extend_from_slice(message);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    stream.send_data(bytes::Bytes::from(frame), false).unwrap();
    (stream, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_after_its_started_record_gets_an_outcome() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let path = dir.path().join("audit.log");
    let outcome_of = |id: &str| {
        let recs = wait_records(&path, &format!("the outcome of {id}"), |r| {
            r.iter().any(|x| x["request_id"] == id && x["result"] != "STARTED")
        });
        recs.into_iter()
            .find(|x| x["request_id"] == id && x["result"] != "STARTED")
            .unwrap()
    };
    // Restore: STARTED is durable before the stream is read; the client
    // sends one chunk, then its connection goes away mid-stream.
    let (_stream, conn) = open_stream(&d, "/kmsd.v1.Keys/Restore", "cancelled-restore", &[1, 2, 3]).await;
    wait_records(&path, "the STARTED record", |r| {
        r.iter()
            .any(|x| x["request_id"] == "cancelled-restore" && x["result"] == "STARTED")
    });
    conn.abort();
    let outcome = outcome_of("cancelled-restore");
    assert_eq!(outcome["op"], "restore");
    assert_eq!(outcome["result"], "CANCELLED", "{outcome}");

    // The stream reset instead (RST_STREAM CANCEL): tonic ends a request
    // stream that the client cancels as if it were complete, so the call
    // runs on what it got (here a 3-byte "backup": INVALID_ARGUMENT) —
    // or is dropped (CANCELLED). Either way STARTED gets its outcome.
    let (mut stream, _conn) = open_stream(&d, "/kmsd.v1.Keys/Restore", "reset-restore", &[1, 2, 3]).await;
    wait_records(&path, "the STARTED record", |r| {
        r.iter()
            .any(|x| x["request_id"] == "reset-restore" && x["result"] == "STARTED")
    });
    stream.send_reset(h2::Reason::CANCEL);
    let outcome = outcome_of("reset-restore");
    assert!(
        outcome["result"] == "CANCELLED" || outcome["result"] == "INVALID_ARGUMENT",
        "{outcome}"
    );

    // VerifyAudit (no STARTED record): a stream cut by the client also
    // ends with a record. (Its handler runs as soon as the headers arrive.)
    let (_stream, conn) = open_stream(&d, "/kmsd.v1.Admin/VerifyAudit", "cancelled-verify", b"{\"seq\":1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.abort();
    let outcome = outcome_of("cancelled-verify");
    assert_eq!(
        (outcome["op"].as_str(), outcome["result"].as_str()),
        (Some("audit.read"), Some("CANCELLED"))
    );

    // and the daemon keeps serving; every STARTED has its outcome
    let (_, mut k) = d.clients().await;
    create(&mut k, "after.cancel").await;
    let recs = records(&path);
    assert_every_started_has_an_outcome(&recs);
}

fn kmsd_audit_verify(dir: &Path, files: &[PathBuf]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["audit-verify", "--config"])
        .arg(dir.join("kmsd.toml"))
        .args(files)
        .output()
        .unwrap()
}

/// Starts the daemon with extra `[audit]` settings.
fn start_with_audit(dir: &Path, audit: &str, wrap: impl FnOnce(&Path) -> Command) -> Daemon {
    let audit = audit.to_owned();
    Daemon::start_command(dir, "", move |config| {
        let text = std::fs::read_to_string(config).unwrap();
        let text = text.replacen("[audit]\n", &format!("[audit]\n{audit}\n"), 1);
        std::fs::write(config, text).unwrap();
        wrap(config)
    })
}

fn plain(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kmsd"));
    c.args(["serve", "--config"]).arg(config);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_and_verify_catches_a_deleted_oldest_file() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = start_with_audit(dir.path(), "rotate_bytes = 4096\nkeep_files = 3", plain);
    let (mut c, mut k) = d.clients().await;
    create(&mut k, "ret.a").await;
    // (enough traffic for more rotations than are kept, however the
    // writer batches it)
    let log = dir.path().join("audit.log");
    for i in 0..20_000 {
        c.encrypt(enc("ret.a", b"x", b"")).await.unwrap();
        if i % 50 == 49 && kmsd::audit::rotated_files(&log).first().is_some_and(|r| r.first > 1) {
            break;
        }
    }
    d.stop();
    let rotated = kmsd::audit::rotated_files(&log);
    assert_eq!(rotated.len(), 3, "retention keeps 3 rotated files: {rotated:?}");
    assert!(
        rotated[0].first > 1,
        "older files were pruned: {rotated:?} {:?}",
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    // retention does not break verification (every retained file, oldest first)
    let out = kmsd_audit_verify(dir.path(), &[]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("OK "),
        "{out:?}"
    );
    // the files named explicitly: the same
    let files = kmsd::audit::log_files(&log);
    let out = kmsd_audit_verify(dir.path(), &files);
    assert!(out.status.success(), "{out:?}");
    // the oldest retained file deleted by hand: reported
    std::fs::remove_file(&rotated[0].path).unwrap();
    for given in [vec![], kmsd::audit::log_files(&log)] {
        let out = kmsd_audit_verify(dir.path(), &given);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{out:?}");
        assert!(err.contains("deleted from the start"), "{err}");
    }
}

/// Runs `script` in the daemon's mount namespace.
fn in_namespace(pid: u32, script: &str) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "sh", "-c", script])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_calls_until_the_audit_log_is_writable_again() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (a tmpfs mounted in a private mount namespace); CI runs as root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let fs = dir.path().join("auditfs");
    std::fs::create_dir(&fs).unwrap();
    let fs_arg = fs.clone();
    // The audit directory is a 256 KiB tmpfs that exists only in the
    // daemon's own mount namespace (nothing is mounted on the host).
    let mut d = start_with_audit(dir.path(), "", move |config| {
        let text = std::fs::read_to_string(config).unwrap();
        std::fs::write(
            config,
            text.replace("path = \"audit.log\"", "path = \"auditfs/audit.log\""),
        )
        .unwrap();
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=256k,mode=0700 tmpfs \"$1\" && exec \"$2\" serve --config \"$3\"",
            "sh",
        ])
        .arg(&fs_arg)
        .arg(env!("CARGO_BIN_EXE_kmsd"))
        .arg(config);
        c
    });
    let pid = d.pid();
    let fsd = fs.display().to_string();
    assert!(!fs.join("audit.log").exists(), "the tmpfs is not visible on the host");
    let (mut c, mut k) = d.clients().await;
    create(&mut k, "disk.a").await;
    c.encrypt(enc("disk.a", b"x", b"")).await.unwrap();
    // fill the disk
    let out = in_namespace(
        pid,
        &format!("dd if=/dev/zero of={fsd}/fill bs=4096 2>/dev/null; df -k {fsd}"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("100%"), "{out:?}");
    // data-path calls: answered until the writer meets the full disk, then refused
    let mut refused = None;
    for _ in 0..500 {
        match c.encrypt(enc("disk.a", b"x", b"")).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let s = refused.expect("calls are refused once the audit log cannot be written");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("audit log"), "{}", s.message());
    for _ in 0..3 {
        let e = c.encrypt(enc("disk.a", b"x", b"")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("cannot be written"), "{}", e.message());
    }
    let e = k
        .rotate_key(proto::RotateKeyRequest { name: "disk.a".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // free the space: the writer retries on its own, and calls succeed again
    let out = in_namespace(pid, &format!("rm {fsd}/fill"));
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.encrypt(enc("disk.a", b"x", b"")).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                assert!(Instant::now() < deadline, "no recovery: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let info = k
        .rotate_key(proto::RotateKeyRequest { name: "disk.a".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.primary_version, 2,
        "the refused rotation did not happen; this one did"
    );
    // copy the trail out of the namespace (head first), then verify it offline
    let copy = dir.path().join("audit-copy");
    std::fs::create_dir(&copy).unwrap();
    let out = in_namespace(
        pid,
        &format!(
            "cp {fsd}/audit.log.head {c}/ && cp {fsd}/audit.log {c}/",
            c = copy.display()
        ),
    );
    assert!(out.status.success(), "{out:?}");
    d.stop();
    for f in ["audit.log.head", "audit.log"] {
        std::fs::copy(copy.join(f), fs.join(f)).unwrap();
    }
    let out = kmsd_audit_verify(dir.path(), &[]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("OK "),
        "{out:?}"
    );
    let recs = records(&fs.join("audit.log"));
    assert_every_started_has_an_outcome(&recs);
    assert!(
        recs.iter().any(|r| r["op"] == "encrypt" && r["result"] == "OK"),
        "records written before and after the full disk are there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_detects_tampering_and_admin_calls_fail_closed() {
    let env = Env::new().await;
    let marker = b"AUDIT-MARKER-PLAINTEXT-55ab";
    let mut k = env.keys("admin");
    create(&mut k, "payments.a").await;
    let mut pay = env.crypto("payments");
    for _ in 0..10 {
        let ct = encrypted(&mut pay, "payments.a", marker).await;
        pay.decrypt(dec("payments.a", &ct, b"")).await.unwrap();
    }
    let _ = env.crypto("stranger").encrypt(enc("payments.a", marker, b"")).await;
    k.rotate_key(rotate("payments.a")).await.unwrap(); // durable: everything before it is on disk too
    let path = env.d.dir.join("audit.log");
    let head_first = env
        .admin("auditor")
        .audit_head(proto::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 23,
        "one record per request (+ intent records for admin calls): {}",
        lines.len()
    );
    assert!(text.contains("\"op\":\"encrypt\"") && text.contains("\"result\":\"PERMISSION_DENIED\""));
    assert!(
        !text.contains(std::str::from_utf8(marker).unwrap())
            && !env.d.log_text().contains(std::str::from_utf8(marker).unwrap())
    );
    let rec: serde_json::Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("\"op\":\"decrypt\"")).unwrap()).unwrap();
    for field in [
        "time",
        "request_id",
        "identity",
        "op",
        "key",
        "key_version",
        "result",
        "peer",
        "latency_us",
        "prev",
        "mac",
    ] {
        assert!(!rec[field].is_null(), "{field} in {rec}");
    }

    let verify = |content: String| async {
        env.admin("auditor")
            .verify_audit(tokio_stream::iter(vec![proto::AuditChunk {
                data: content.into_bytes(),
                head: Some(head_first.clone()),
            }]))
            .await
            .unwrap()
            .into_inner()
    };
    let join = |v: &[&str]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    let ok = verify(join(&lines)).await;
    assert!(ok.ok && ok.records == lines.len() as u64, "{ok:?}");
    let mut edited = lines.clone();
    let e5 = edited[5].replace("\"OK\"", "\"NOT_FOUND\"");
    edited[5] = &e5;
    let r = verify(join(&edited)).await;
    assert!(!r.ok && r.broken_line == 6, "{r:?}");
    let mut deleted = lines.clone();
    deleted.remove(7);
    assert_eq!(verify(join(&deleted)).await.broken_line, 8);
    let mut inserted = lines.clone();
    inserted.insert(9, lines[3]);
    assert_eq!(verify(join(&inserted)).await.broken_line, 10);
    let mut swapped = lines.clone();
    swapped.swap(10, 11);
    assert_eq!(verify(join(&swapped)).await.broken_line, 11);
    let cut = verify(join(&lines[..lines.len() - 2])).await;
    assert!(!cut.ok && cut.reason.contains("truncated"), "{cut:?}");
    // kmsctl audit verify (on the live log) prints OK with a count
    let file = path.clone();
    let out = std::process::Command::new(common::kmsctl_bin())
        .args(["audit", "verify", file.to_str().unwrap()])
        .env("KMSD_ADDR", format!("unix:{}", env.d.socket.display()))
        .env("KMSD_CA", env.d.dir.join("ca.pem"))
        .env("KMSD_CERT", env.d.dir.join("auditor.pem"))
        .env("KMSD_KEY", env.d.dir.join("auditor.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("OK "),
        "{out:?}"
    );

    // the audit file becomes unwritable: administrative calls are refused, and not performed
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = k.rotate_key(rotate("payments.a")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not performed"), "{}", e.message());
    // (on_failure = "fail": data-path calls are refused too while the log cannot be written)
    let e = pay.encrypt(enc("payments.a", marker, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // writable again: the writer recovers on its own
    std::fs::remove_dir(&path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let info = loop {
        match k
            .get_key(proto::GetKeyRequest {
                name: "payments.a".into(),
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(std::time::Instant::now() < deadline, "no recovery");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(info.primary_version, 2, "the refused rotation did not happen");
}
