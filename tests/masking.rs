//! `kmsd.v1.Mask` against the real daemon, and `kmsctl redact` as log
//! shippers use it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, keys_client::KeysClient, mask_client::MaskClient, DataKind};
use std::io::Write;
use std::process::{Command, Stdio};
use tonic::Code;

fn luhn_ok(digits: &str) -> bool {
    let ds: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                *d
            }
        })
        .sum();
    sum % 10 == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_redact_and_stream_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let mut m = MaskClient::new(d.channel().await);
    let r = m
        .mask(proto::MaskRequest {
            value: "4111 1111 1111 1111".into(),
            kind: DataKind::Pan as i32,
            pan_keep_bin: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.masked.as_str(), r.valid), ("**** **** **** 1111", true));
    let r = m
        .mask(proto::MaskRequest {
            value: "4111111111111112".into(),
            kind: DataKind::Pan as i32,
            pan_keep_bin: 6,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.masked.starts_with("411111") && r.masked.ends_with("1112") && !r.valid,
        "{r:?}"
    );
    let e = m
        .mask(proto::MaskRequest {
            value: "x".into(),
            kind: 0,
            pan_keep_bin: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let line = r#"POST /v1/payments {"card":"4539 1488 0343 6467","iban":"GB82 WEST 1234 5698 7654 32","email":"lucy.j@example.co.uk","order":"ORD-20261124-0042","amount":"1,234.56"}"#;
    let r = m
        .redact(proto::RedactRequest {
            text: line.into(),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    for secret in [
        "4539 1488 0343 6467",
        "4539148803436467",
        "GB82 WEST 1234 5698 7654 32",
        "lucy.j@example.co.uk",
    ] {
        assert!(!r.text.contains(secret), "{secret} leaked: {}", r.text);
    }
    for keep in ["ORD-20261124-0042", "1,234.56", "POST /v1/payments"] {
        assert!(r.text.contains(keep), "{keep} damaged: {}", r.text);
    }
    let kinds: Vec<i32> = r.findings.iter().map(|f| f.kind).collect();
    assert!(kinds.contains(&(DataKind::Pan as i32)) && kinds.contains(&(DataKind::Iban as i32)));
    for f in &r.findings {
        assert!(f.start < f.end && (f.end as usize) <= line.len());
    }
    // restricting the kinds
    let only_iban = m
        .redact(proto::RedactRequest {
            text: line.into(),
            kinds: vec![DataKind::Iban as i32],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(only_iban.text.contains("4539 1488 0343 6467") && !only_iban.text.contains("GB82 WEST"));

    // streaming: order kept, every line answered
    let lines: Vec<String> = (0..500)
        .map(|i| {
            format!(
                "line {i} card 4111-1111-1111-1111 ref INV-{i:06} phone +44 7700 900{:03}",
                i % 1000
            )
        })
        .collect();
    let reqs: Vec<proto::RedactRequest> = lines
        .iter()
        .map(|l| proto::RedactRequest {
            text: l.clone(),
            kinds: vec![],
        })
        .collect();
    let mut out = m.redact_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let mut got = vec![];
    while let Some(r) = out.message().await.unwrap() {
        got.push(r.text);
    }
    assert_eq!(got.len(), 500);
    for (i, g) in got.iter().enumerate() {
        assert!(
            g.starts_with(&format!("line {i} card ")) && g.contains(&format!("INV-{i:06}")),
            "{g}"
        );
        assert!(!g.contains("4111-1111-1111-1111"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenization_is_deterministic_reversible_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let ch = d.channel().await;
    let (mut m, mut keys) = (MaskClient::new(ch.clone()), KeysClient::new(ch));
    create(&mut keys, "tok").await;
    let tok = |value: &str, kind: DataKind| proto::TokenizeRequest {
        key: "tok".into(),
        value: value.into(),
        kind: kind as i32,
    };
    let pan = "4539148803436467";
    let a = m.tokenize(tok(pan, DataKind::Pan)).await.unwrap().into_inner();
    let b = m.tokenize(tok(pan, DataKind::Pan)).await.unwrap().into_inner();
    assert_eq!(a.token, b.token, "deterministic");
    assert_eq!(a.token.len(), pan.len());
    assert!(a.token.chars().all(|c| c.is_ascii_digit()));
    assert!(a.token.ends_with("6467"), "last four kept");
    assert_ne!(a.token, pan);
    assert!(!luhn_ok(&a.token), "tokens never pass Luhn");
    let detok = |token: &str, kind: DataKind, v: u32| proto::DetokenizeRequest {
        key: "tok".into(),
        token: token.into(),
        kind: kind as i32,
        key_version: v,
    };
    assert_eq!(
        m.detokenize(detok(&a.token, DataKind::Pan, a.key_version))
            .await
            .unwrap()
            .into_inner()
            .value,
        pan
    );
    // other kinds: deterministic authenticated encryption
    let e = m
        .tokenize(tok("lucy.j@example.co.uk", DataKind::Email))
        .await
        .unwrap()
        .into_inner();
    assert!(!e.token.contains("lucy"));
    assert_eq!(
        m.detokenize(detok(&e.token, DataKind::Email, 0))
            .await
            .unwrap()
            .into_inner()
            .value,
        "lucy.j@example.co.uk"
    );
    let mut bad = e.token.clone();
    bad.pop();
    bad.push(if e.token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        m.detokenize(detok(&bad, DataKind::Email, 0)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // below the SP 800-38G minimum domain
    let s = m.tokenize(tok("12345", DataKind::UkAccountNumber)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(!s.message().contains("12345"), "errors never echo the value");
    // rotation: new tokens under v2, old ones still reverse with their version
    keys.rotate_key(proto::RotateKeyRequest { name: "tok".into() })
        .await
        .unwrap();
    let c = m.tokenize(tok(pan, DataKind::Pan)).await.unwrap().into_inner();
    assert_eq!(c.key_version, 2);
    assert_ne!(c.token, a.token);
    assert_eq!(
        m.detokenize(detok(&a.token, DataKind::Pan, 1))
            .await
            .unwrap()
            .into_inner()
            .value,
        pan
    );
    assert_eq!(
        m.detokenize(detok(&c.token, DataKind::Pan, 2))
            .await
            .unwrap()
            .into_inner()
            .value,
        pan
    );
    // a format-preserving token carries no version: it must be given
    let s = m.detokenize(detok(&c.token, DataKind::Pan, 0)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("key_version is required"), "{}", s.message());
    // unknown key
    let s = m
        .tokenize(proto::TokenizeRequest {
            key: "nope".into(),
            value: pan.into(),
            kind: DataKind::Pan as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    // no value in the daemon's log
    assert!(!d.log_text().contains(pan) && !d.log_text().contains("lucy.j@"));
}

#[test]
fn kmsctl_redact_writes_exactly_one_line_per_input_line() {
    let input: Vec<u8> = [
        &b"card 4111 1111 1111 1111 ok\n"[..],
        b"\n",
        b"crlf line iban GB82WEST12345698765432\r\n",
        b"not utf8 \xff\xfe card 5500-0000-0000-0004\n",
        b"password=hunter22 user=bob\n",
        b"last line without newline 4111111111111111",
    ]
    .concat();
    let mut child = Command::new(common::kmsctl_bin())
        .arg("redact")
        .env_remove("KMSD_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.len(), 6, "{text:?}");
    assert!(lines[0].ends_with("1111 ok") && !lines[0].contains("4111 1111"));
    assert_eq!(lines[1], "");
    assert!(lines[2].ends_with('\r') && !lines[2].contains("12345698765432"));
    assert!(!lines[3].contains("5500-0000-0000-0004"));
    assert!(!lines[4].contains("hunter22") && lines[4].contains("user=bob"));
    assert!(!lines[5].contains("4111111111111111"));
}

/// The shared corpus, when present beside the project (CI has it): recall
/// >= 99.5 % and keep >= 99 % with the real `kmsctl redact`.
#[test]
fn shared_redaction_corpus_scores_when_available() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tool = root.join("../shared/tools/eval-redaction");
    let corpus = root.join("../shared/testdata/redaction-dev.jsonl");
    if !tool.exists() || !corpus.exists() {
        eprintln!("SKIPPED: ../shared is not beside the project");
        return;
    }
    let out = Command::new("python3")
        .arg(&tool)
        .arg(&corpus)
        .arg("--")
        .arg(common::kmsctl_bin())
        .arg("redact")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.starts_with("recall="))
        .unwrap_or_else(|| panic!("{text}"));
    let field = |name: &str| -> f64 {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    assert!(field("recall=") >= 99.5 && field("keep=") >= 99.0, "{summary}");
}

/// Text that keeps the phone and e-mail detectors busy at every byte and is
/// left unchanged: `len` bytes, no newline.
fn busy_text(len: usize) -> String {
    "(0 %40 (+44 0 +4 ".chars().cycle().take(len).collect()
}

/// The daemon's user + system CPU time, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Issue 11 item 1: a redaction that exceeds the request timeout ends with
/// DEADLINE_EXCEEDED and its work stops (it used to run on to the end on
/// the blocking pool, unstoppable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redaction_past_the_request_timeout_is_stopped_with_deadline_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    // Debug builds scan ~20x slower: the timeout is shorter in release so
    // the same text still runs past it.
    let timeout_ms = if cfg!(debug_assertions) { 300 } else { 20 };
    let d = Daemon::start_with(dir.path(), &format!("[limits]\nrequest_timeout = \"{timeout_ms}ms\""));
    let mut m = MaskClient::new(d.channel().await).max_decoding_message_size(16 << 20);
    let text = busy_text(4_000_000);
    // several at once, so unstopped work would keep both cores busy
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let mut m = m.clone();
            let text = text.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let r = m.redact(proto::RedactRequest { text, kinds: vec![] }).await;
                (r, t.elapsed())
            })
        })
        .collect();
    for c in calls {
        let (r, took) = c.await.unwrap();
        let e = r.expect_err("the redaction should not finish within the timeout");
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?} after {took:?}");
        assert!(e.message().contains("deadline"), "{e:?}");
    }
    // The work stopped: the daemon is (nearly) idle in the next second.
    let before = cpu_ticks(d.pid());
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let used = cpu_ticks(d.pid()) - before;
    assert!(
        used < 30,
        "the daemon kept working after the deadline: {used} ticks in 1 s"
    );
    // and still serves: a small redaction is answered
    let r = m
        .redact(proto::RedactRequest {
            text: "card 4111 1111 1111 1111".into(),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.text, "card **** **** **** 1111");
}

/// Issue 11 item 3: RedactStream's memory is bounded per stream and over
/// the process (it used to buffer up to 32 responses of up to 8 MiB per
/// stream, 256 streams per connection). Two streams whose client does not
/// read the responses: the daemon stops reading their input after a few
/// messages (HTTP/2 flow control then stops the client), and everything
/// flows, in order, once the client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_stream_memory_is_bounded_per_stream_and_over_the_process() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    // Room for one 1 MiB message (2 MiB: text and redacted copy) at a time
    // over the whole process.
    let d = Daemon::start_with(dir.path(), "[limits]\nmax_redaction_bytes_in_flight = 3145728");
    let channel = d.channel().await;
    const MESSAGES: usize = 24;
    let pulled: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut outs = Vec::new();
    for (s, counter) in pulled.iter().enumerate() {
        let counter = counter.clone();
        let lines = (0..MESSAGES).map(move |i| {
            counter.fetch_add(1, Ordering::SeqCst);
            let head = format!("stream {s} line {i} ");
            proto::RedactRequest {
                text: format!("{head}{}", "plain words ".repeat((1 << 20) / 12)),
                kinds: vec![],
            }
        });
        let mut m = MaskClient::new(channel.clone()).max_decoding_message_size(16 << 20);
        outs.push(m.redact_stream(tokio_stream::iter(lines)).await.unwrap().into_inner());
    }
    // Let both pipelines fill up.
    let mut last = 0;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now: usize = pulled.iter().map(|p| p.load(Ordering::SeqCst)).sum();
        if now == last && now > 0 {
            break;
        }
        last = now;
    }
    let total: usize = pulled.iter().map(|p| p.load(Ordering::SeqCst)).sum();
    // Held by the daemon: one message redacted and waiting to be sent, one
    // read per stream waiting for room; the rest is what HTTP/2 windows and
    // the client's send buffers hold (about 1 MiB each). Before the bound,
    // each stream read 33 messages.
    assert!(
        total <= 14,
        "the daemon kept reading: {total} messages taken from the two streams"
    );
    // Both read at once: a stream whose client never reads holds its share
    // until its messages time out, so the other would wait for it.
    let readers: Vec<_> = outs
        .into_iter()
        .enumerate()
        .map(|(s, mut out)| {
            tokio::spawn(async move {
                for i in 0..MESSAGES {
                    let r = out.message().await.unwrap().unwrap();
                    assert!(r.text.starts_with(&format!("stream {s} line {i} ")), "out of order");
                }
                assert!(out.message().await.unwrap().is_none());
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
}
