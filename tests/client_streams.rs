//! Streaming encryption (issue 14) against the real daemon: the library's
//! tokio adapters refuse every truncation, dropped, swapped, repeated and
//! appended segment of a 10 MiB stream; `kmsctl encrypt-file` and
//! `decrypt-file` round-trip a file, and a tampered stream leaves no output
//! file behind; a 1 GiB stream encrypts in constant memory (kmsctl's peak
//! RSS is the same as for 16 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::client::format::FormatError;
use kmsd::client::stream::Header;
use kmsd::client::{ClientBuilder, Envelopes, Error};
use kmsd::proto;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

async fn envelopes(d: &Daemon) -> Envelopes {
    let c = ClientBuilder::new()
        .endpoint(format!("unix:{}", d.socket.display()))
        .ca(d.dir.join("ca.pem"))
        .cert(d.dir.join("client.pem"))
        .key(d.dir.join("client.key"))
        .connect()
        .await
        .unwrap();
    c.create_key(proto::CreateKeyRequest {
        name: "files".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    Envelopes::new(c)
}

fn data(len: usize) -> Vec<u8> {
    let mut x = 0x2545F4914F6CDD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn open(env: &Envelopes, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    let mut r = env.stream_reader(blob, aad).await?;
    let mut out = Vec::new();
    match r.read_to_end(&mut out).await {
        Ok(_) => Ok(out),
        Err(e) => Err(Error::Format(
            kmsd::client::stream_io::format_error(&e).expect("a format error"),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tampering_of_a_10_mib_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let env = envelopes(&d).await;
    let pt = data(10 * MIB);
    let mut w = env.stream_writer("files", Vec::new(), b"export-2026-12").await.unwrap();
    for piece in pt.chunks(100_000) {
        w.write_all(piece).await.unwrap();
    }
    w.shutdown().await.unwrap();
    let blob = w.into_inner();
    assert_eq!(open(&env, &blob, b"export-2026-12").await.unwrap(), pt);

    let hl = Header::parse(&blob).unwrap().as_bytes().len();
    let (header, body) = blob.split_at(hl);
    let segs: Vec<&[u8]> = body.chunks(65536 + 16).collect();
    assert_eq!(segs.len(), 160, "10 MiB in 64 KiB segments");
    let join = |parts: &[&[u8]]| -> Vec<u8> {
        let mut v = header.to_vec();
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    };
    let refused = |r: Result<Vec<u8>, Error>, what: String| match r {
        Err(Error::Format(FormatError::Authentication | FormatError::Truncated(_) | FormatError::Malformed(_))) => {}
        other => panic!("{what}: {:?}", other.map(|v| v.len())),
    };
    let mut cases = 0;
    // every truncation at a segment boundary, and one byte either side
    for k in 0..segs.len() {
        let end = hl + segs[..k].iter().map(|s| s.len()).sum::<usize>();
        for cut in [end.saturating_sub(1), end, end + 1] {
            if cut < blob.len() {
                refused(
                    open(&env, &blob[..cut], b"export-2026-12").await,
                    format!("cut at {cut}"),
                );
                cases += 1;
            }
        }
    }
    // every segment dropped
    for k in 0..segs.len() {
        let mut parts = segs.clone();
        parts.remove(k);
        refused(open(&env, &join(&parts), b"export-2026-12").await, format!("drop {k}"));
        cases += 1;
    }
    // every pair of neighbours swapped
    for k in 0..segs.len() - 1 {
        let mut parts = segs.clone();
        parts.swap(k, k + 1);
        refused(open(&env, &join(&parts), b"export-2026-12").await, format!("swap {k}"));
        cases += 1;
    }
    // every segment appended again at the end, and repeated in place
    for k in 0..segs.len() {
        let mut parts = segs.clone();
        parts.push(segs[k]);
        refused(
            open(&env, &join(&parts), b"export-2026-12").await,
            format!("append {k}"),
        );
        let mut parts = segs.clone();
        parts.insert(k, segs[k]);
        refused(
            open(&env, &join(&parts), b"export-2026-12").await,
            format!("repeat {k}"),
        );
        cases += 2;
    }
    // a validly sealed segment of another stream under the same key, appended
    let mut w = env.stream_writer("files", Vec::new(), b"export-2026-12").await.unwrap();
    w.write_all(&pt[..1000]).await.unwrap();
    w.shutdown().await.unwrap();
    let other = w.into_inner();
    let mut appended = blob.clone();
    appended.extend_from_slice(&other[Header::parse(&other).unwrap().as_bytes().len()..]);
    refused(
        open(&env, &appended, b"export-2026-12").await,
        "foreign segment appended".into(),
    );
    // other associated data
    refused(open(&env, &blob, b"export-2026-11").await, "other aad".into());
    assert!(cases > 900, "{cases}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_encrypts_and_decrypts_files_and_leaves_nothing_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let _env = envelopes(&d).await;
    let work = tempfile::tempdir().unwrap();
    let plain = work.path().join("statement.csv");
    let pt = data(3 * MIB + 123);
    std::fs::write(&plain, &pt).unwrap();
    let kmsctl = |args: &[&str]| {
        Command::new(kmsctl_bin())
            .args(args)
            .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
            .env("KMSD_CA", d.dir.join("ca.pem"))
            .env("KMSD_CERT", d.dir.join("client.pem"))
            .env("KMSD_KEY", d.dir.join("client.key"))
            .output()
            .unwrap()
    };
    let enc = work.path().join("statement.csv.kms");
    let o = kmsctl(&[
        "encrypt-file",
        plain.to_str().unwrap(),
        enc.to_str().unwrap(),
        "--key",
        "files",
        "--aad",
        "q4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let blob = std::fs::read(&enc).unwrap();
    assert_eq!(blob[0], 0xE2);
    assert_eq!(Header::parse(&blob).unwrap().key_name(), "files");

    let out = work.path().join("out.csv");
    let o = kmsctl(&[
        "decrypt-file",
        enc.to_str().unwrap(),
        out.to_str().unwrap(),
        "--aad",
        "q4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), pt);

    // truncated at a segment boundary: refused, no output file, no temporary left
    let cut = work.path().join("cut.kms");
    std::fs::write(&cut, &blob[..blob.len() - (123 + 16)]).unwrap();
    let bad = work.path().join("bad.csv");
    let o = kmsctl(&[
        "decrypt-file",
        cut.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--aad",
        "q4",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("authentication failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!bad.exists());
    // wrong associated data, and a key outside --expect-key
    let o = kmsctl(&[
        "decrypt-file",
        enc.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--aad",
        "q3",
    ]);
    assert!(!o.status.success());
    let o = kmsctl(&[
        "decrypt-file",
        enc.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--aad",
        "q4",
        "--expect-key",
        "payroll",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"files\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!bad.exists());
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// kmsctl's peak resident set (VmHWM, KiB) while it encrypts `len` bytes
/// from stdin to stdout; checks the output's length.
fn encrypt_peak_rss(d: &Daemon, len: usize) -> u64 {
    let mut child = Command::new(kmsctl_bin())
        .args(["encrypt-file", "-", "-", "--key", "files"])
        .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
        .env("KMSD_CA", d.dir.join("ca.pem"))
        .env("KMSD_CERT", d.dir.join("client.pem"))
        .env("KMSD_KEY", d.dir.join("client.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![0x5au8; MIB];
        let mut left = len;
        while left > 0 {
            let n = left.min(MIB);
            stdin.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; MIB];
        let mut total = 0usize;
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    // VmHWM only grows: the last reading before exit is the peak
    let mut peak = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak = peak.max(kb);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    feeder.join().unwrap();
    let total = drain.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    let segments = len.div_ceil(65536).max(1);
    let header = 48 + "files".len() + 82;
    assert_eq!(total, header + len + 16 * segments);
    peak
}

#[test]
fn a_1_gib_stream_encrypts_in_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(envelopes(&d));
    let small = encrypt_peak_rss(&d, 16 * MIB);
    let big = encrypt_peak_rss(&d, 1024 * MIB);
    eprintln!("kmsctl encrypt-file peak RSS: 16 MiB -> {small} KiB, 1 GiB -> {big} KiB");
    // constant: 64x the input, within 4 MiB of the same peak
    assert!(big <= small + 4096, "16 MiB: {small} KiB, 1 GiB: {big} KiB");
    assert!(big < 64 * 1024, "peak RSS {big} KiB");
}
