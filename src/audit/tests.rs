//! Unit tests of the audit trail: record format, chain, writer, recovery
//! and verification together (they build logs with the writer and break
//! them by hand).
use super::chain::*;
use super::handle::*;
use super::record::*;
use super::verify::*;
use super::writer::*;
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[test]
fn hand_built_json_and_hex_match_the_libraries() {
    for v in ["plain", "", "quote\" back\\slash", "ctl\u{1}\n\r\t", "ünï\u{2028}"] {
        let mut out = String::new();
        json_str(&mut out, v);
        assert_eq!(out, serde_json::to_string(v).unwrap());
    }
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(to_hex(&bytes), hex::encode(&bytes));
}

fn ev(i: u32) -> Event {
    Event {
        request_id: format!("r{i}"),
        identity: "spiffe://t/app".into(),
        op: "encrypt",
        key: Some("k".into()),
        key_version: Some(1),
        result: "OK",
        peer: "unix".into(),
        latency_us: 5,
        ..Event::default()
    }
}

fn write(dir: &Path, n: u32, rotate: u64) -> (PathBuf, AuditKey) {
    let p = dir.join("audit.log");
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), rotate).unwrap();
    for i in 0..n {
        w.write_batch(&[&ev(i)], true).unwrap();
    }
    (p, AuditKey::from_bytes(&[3; 32]))
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn a_crash_mid_append_leaves_a_log_that_continues_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 3, 1 << 30);
    // records written after the last head update, then a torn record
    {
        let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
        // (no periodic sync during the test, however slow the machine)
        w.last_sync = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        w.write_batch(&[&ev(10), &ev(11)], false).unwrap();
        // the crash: no sync, no head; the writer is dropped as is
        w.dirty = false;
    }
    let head_before = read_head(&p, &key).unwrap().unwrap();
    assert_eq!(head_before.seq, 3, "the head did not move");
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"seq\":6,\"time\":\"2026-").unwrap();
    drop(f);
    // restart: the torn line goes, seq 4 and 5 are adopted, 6 follows
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
    w.write_batch(&[&ev(20)], true).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let head = read_head(&p, &key).unwrap().unwrap();
    let r = verify(&text, &key, Some(&head)).unwrap();
    assert_eq!((r.records, r.first_seq, r.last_seq), (6, 1, 6));
    assert_eq!(head.seq, 6);
}

#[test]
fn a_crash_between_rotation_and_head_update_recovers() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 4, 1 << 30);
    // rotate by hand the way `rotate` does, then "crash" before the head
    let mut target = p.as_os_str().to_owned();
    target.push(format!(".{:020}-{:020}", 1, 4));
    std::fs::rename(&p, PathBuf::from(&target)).unwrap();
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
    w.write_batch(&[&ev(5)], true).unwrap();
    let head = read_head(&p, &key).unwrap().unwrap();
    assert_eq!((head.seq, head.file_first_seq), (5, 5));
    let all = format!(
        "{}{}",
        std::fs::read_to_string(&target).unwrap(),
        std::fs::read_to_string(&p).unwrap()
    );
    let r = verify(&all, &key, Some(&head)).unwrap();
    assert_eq!((r.records, r.last_seq), (5, 5));
}

#[test]
fn a_forged_record_after_the_head_is_moved_aside_not_adopted() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 3, 1 << 30);
    let covered = std::fs::read(&p).unwrap();
    // a complete line that does not continue the chain (another key)
    let other = tempfile::tempdir().unwrap();
    let (q, _) = write(other.path(), 4, 1 << 30);
    let forged = lines(&q).pop().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    writeln!(f, "{forged}").unwrap();
    f.write_all(b"{\"seq\":5,\"torn").unwrap();
    drop(f);
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
    w.write_batch(&[&ev(9)], true).unwrap();
    // the covered records are untouched, the chain continues from them
    let now = std::fs::read(&p).unwrap();
    assert_eq!(&now[..covered.len()], &covered[..]);
    let head = read_head(&p, &key).unwrap().unwrap();
    let r = verify(&String::from_utf8(now).unwrap(), &key, Some(&head)).unwrap();
    assert_eq!((r.records, r.last_seq), (4, 4));
    // and the foreign bytes are kept, byte for byte, beside the log
    let side: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit.log.unverified-"))
        .collect();
    assert_eq!(side.len(), 1);
    assert_eq!(
        std::fs::read(side[0].path()).unwrap(),
        format!("{forged}\n{{\"seq\":5,\"torn").into_bytes()
    );
}

#[test]
fn records_cut_from_the_start_of_the_live_log_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 5, 1 << 30);
    let l = lines(&p);
    let text: String = l[2..].iter().map(|s| format!("{s}\n")).collect();
    let head = read_head(&p, &key).unwrap().unwrap();
    let e = verify(&text, &key, Some(&head)).unwrap_err();
    assert!(e.reason.contains("deleted from the start"), "{e}");
    // (an anchor that does not know the oldest record: the live file's start)
    let old = Anchor { first_seq: 0, ..head };
    let e = verify(&text, &key, Some(&old)).unwrap_err();
    assert!(e.reason.contains("truncated at the start"), "{e}");
}

#[test]
fn a_log_missing_the_heads_record_is_left_for_verify() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 5, 1 << 30);
    // the last two records cut away: the head still says 5
    let l = lines(&p);
    std::fs::write(&p, l[..3].iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
    w.write_batch(&[&ev(9)], true).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let head = read_head(&p, &key).unwrap().unwrap();
    assert!(verify(&text, &key, Some(&head)).is_err(), "the cut is reported");
}

#[test]
fn intact_log_verifies_and_every_tampering_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 10, 1 << 30);
    let text = std::fs::read_to_string(&p).unwrap();
    let head = read_head(&p, &key).unwrap().unwrap();
    let anchor = Some(&head);
    let r = verify(&text, &key, anchor).unwrap();
    assert_eq!((r.records, r.first_seq, r.last_seq), (10, 1, 10));
    let l = lines(&p);
    let join = |v: &[String]| v.iter().map(|s| format!("{s}\n")).collect::<String>();
    // edited
    let mut edited = l.clone();
    edited[4] = edited[4].replace("\"OK\"", "\"PERMISSION_DENIED\"");
    assert_eq!(verify(&join(&edited), &key, anchor).unwrap_err().line, 5);
    // deleted
    let mut deleted = l.clone();
    deleted.remove(3);
    assert_eq!(verify(&join(&deleted), &key, anchor).unwrap_err().line, 4);
    // inserted: a forged line, and a replayed copy of a valid one
    let mut forged = l.clone();
    forged.insert(2, l[2].replace("r2", "rX"));
    assert!(verify(&join(&forged), &key, anchor).unwrap_err().reason.contains("MAC"));
    let mut replayed = l.clone();
    replayed.insert(6, l[2].clone());
    assert_eq!(verify(&join(&replayed), &key, anchor).unwrap_err().line, 7);
    // swapped
    let mut swapped = l.clone();
    swapped.swap(6, 7);
    assert_eq!(verify(&join(&swapped), &key, anchor).unwrap_err().line, 7);
    // tail cut: detected through the head
    let cut = join(&l[..8]);
    let e = verify(&cut, &key, anchor).unwrap_err();
    assert!(e.reason.contains("truncated"), "{e}");
    // another key cannot verify, nor forge
    assert!(verify(&text, &AuditKey::from_bytes(&[4; 32]), None).is_err());
}

#[test]
fn rotation_keeps_the_chain_and_reopen_continues_it() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 30, 4096);
    let mut files: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("audit.log."))
        .filter(|f| !f.to_string_lossy().ends_with(".head"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "rotated at least once");
    files.push(p.clone());
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    let r = verify(&all, &key, read_head(&p, &key).unwrap().as_ref()).unwrap();
    assert_eq!((r.first_seq, r.last_seq), (1, 30));
    // reopen continues the chain
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 4096).unwrap();
    w.write_batch(&[&ev(99)], true).unwrap();
    let live = std::fs::read_to_string(&p).unwrap();
    let rotated: String = files[..files.len() - 1]
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let r = verify(&format!("{rotated}{live}"), &key, read_head(&p, &key).unwrap().as_ref()).unwrap();
    assert_eq!(r.last_seq, 31);
}

#[test]
fn strings_are_escaped() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let key = AuditKey::from_bytes(&[3; 32]);
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
    let mut e = ev(1);
    e.detail = Some("quote \" backslash \\ newline \n tab \t bell \u{7} é".into());
    w.write_batch(&[&e], true).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["detail"], "quote \" backslash \\ newline \n tab \t bell \u{7} é");
    verify(&text, &key, None).unwrap();
}

#[test]
fn records_have_only_the_fixed_fields() {
    let d = tempfile::tempdir().unwrap();
    let (p, _) = write(d.path(), 1, 1 << 30);
    let v: serde_json::Value = serde_json::from_str(&lines(&p)[0]).unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "detail",
            "identity",
            "key",
            "key_version",
            "latency_us",
            "mac",
            "op",
            "peer",
            "prev",
            "request_id",
            "result",
            "seq",
            "time"
        ]
    );
}

fn all_files(p: &Path) -> String {
    log_files(p)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

#[test]
fn the_verifier_reads_in_pieces_with_bounded_memory() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 20, 1 << 30);
    let text = std::fs::read_to_string(&p).unwrap();
    let head = read_head(&p, &key).unwrap().unwrap();
    let whole = verify(&text, &key, Some(&head)).unwrap();
    // any split gives the same answer, and the same first problem
    for piece in [1, 7, 100, 4096] {
        let mut v = Verifier::new(&key, Some(head.clone()));
        for c in text.as_bytes().chunks(piece) {
            v.feed(c).unwrap();
            assert!(v.partial.len() <= MAX_LINE);
        }
        assert_eq!(v.finish().unwrap(), whole);
        let edited = text.replacen("\"r7\"", "\"rX\"", 1);
        let mut v = Verifier::new(&key, Some(head.clone()));
        let r = edited.as_bytes().chunks(piece).try_for_each(|c| v.feed(c));
        let e = r.and_then(|()| v.finish()).unwrap_err();
        assert_eq!(e.line, 8, "{e}");
    }
    // a "line" that never ends is refused at the bound, not buffered
    let mut v = Verifier::new(&key, None);
    let junk = vec![b'a'; 16 * 1024];
    let mut fed = 0usize;
    let e = loop {
        match v.feed(&junk) {
            Ok(()) => fed += junk.len(),
            Err(e) => break e,
        }
        assert!(fed <= MAX_LINE, "kept buffering");
    };
    assert!(e.reason.contains("longer than"), "{e}");
    assert!(v.partial.capacity() <= 2 * MAX_LINE);
}

fn spawn_with(p: &Path, opts: Options) -> AuditHandle {
    spawn(
        p,
        AuditKey::from_bytes(&[3; 32]),
        opts,
        std::sync::Arc::new(crate::ops::metrics::Metrics::default()),
    )
    .unwrap()
}

#[test]
fn a_full_queue_makes_the_caller_wait_then_fail() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let opts = Options {
        queue_size: 4,
        queue_wait: std::time::Duration::from_millis(300),
        ..Options::default()
    };
    let h = spawn_with(&p, opts.clone());
    // the writer stalls (it publishes every batch under this lock)
    let stall = h.head.lock().unwrap();
    let mut refused = None;
    for i in 0..100 {
        let t = std::time::Instant::now();
        if let Err(e) = h.record(ev(i)) {
            assert!(t.elapsed() >= opts.queue_wait, "waited before failing");
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a full queue refuses the record");
    assert!(e.0.contains("queue stayed full"), "{e}");
    drop(stall);
    // the writer catches up: records are taken again
    wait_for("the writer to catch up", || h.record(ev(200)).is_ok());

    // log-and-continue: the caller never waits nor fails; the record is dropped and counted
    let d2 = tempfile::tempdir().unwrap();
    let h = spawn_with(
        &d2.path().join("audit.log"),
        Options {
            on_failure: OnFailure::LogAndContinue,
            ..opts
        },
    );
    let stall = h.head.lock().unwrap();
    for i in 0..100 {
        h.record(ev(i)).unwrap();
    }
    assert!(
        h.metrics
            .audit_write_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    drop(stall);
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_failed_write_refuses_calls_until_the_writer_succeeds_again() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let key = AuditKey::from_bytes(&[3; 32]);
    let h = spawn_with(&p, Options::default());
    h.record_durable(ev(1)).unwrap();
    // the log cannot be written: its path becomes a directory
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    h.record(ev(2)).unwrap(); // (queued before the failure is known)
    assert!(h.record_durable(ev(3)).is_err(), "a durable record fails");
    let e = h.unavailable().expect("calls are refused");
    assert!(e.0.contains("cannot be written"), "{e}");
    assert!(h.record(ev(4)).is_err(), "data-path records are refused");
    // writable again: the writer retries on its own, kept records first
    std::fs::remove_dir(&p).unwrap();
    wait_for("recovery", || h.unavailable().is_none());
    h.record(ev(5)).unwrap();
    h.record_durable(ev(6)).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"].to_string())
        .collect();
    assert_eq!(ids, ["\"r2\"", "\"r3\"", "\"r5\"", "\"r6\""], "nothing kept was lost");
    // (r1 went with the replaced file: the chain goes on from it)
    let r = verify(&text, &key, None).unwrap();
    assert_eq!((r.records, r.first_seq, r.last_seq), (4, 2, 5));
}

#[test]
fn a_torn_write_is_cut_back_before_the_next() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 3, 1 << 30);
    let mut w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
    let before = std::fs::metadata(&p).unwrap().len();
    // (what a write cut short by a full disk leaves, and the length to cut back to)
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"{\"seq\":4,\"ti")
        .unwrap();
    w.cut_to = Some(before);
    w.write_batch(&[&ev(4)], true).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    verify(&text, &key, read_head(&p, &key).unwrap().as_ref()).unwrap();
}

#[test]
fn retention_moves_the_heads_first_seq_and_verify_catches_a_deleted_oldest_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let key = AuditKey::from_bytes(&[3; 32]);
    let opts = Options {
        rotate_bytes: 4096,
        keep_files: Some(2),
        ..Options::default()
    };
    let mut w = Writer::open_with(&p, AuditKey::from_bytes(&[3; 32]), &opts).unwrap();
    for i in 0..80 {
        w.write_batch(&[&ev(i)], true).unwrap();
    }
    let rotated = rotated_files(&p);
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    let head = read_head(&p, &key).unwrap().unwrap();
    assert!(head.first_seq > 1, "files were pruned");
    assert_eq!(head.first_seq, rotated[0].first);
    // the retained files verify
    let r = verify(&all_files(&p), &key, Some(&head)).unwrap();
    assert_eq!((r.first_seq, r.last_seq), (head.first_seq, 80));
    // the live log, or the newest rotated file, deleted: a cut tail
    for f in [p.clone(), rotated[1].path.clone()] {
        let saved = std::fs::read(&f).unwrap();
        std::fs::remove_file(&f).unwrap();
        let e = verify(&all_files(&p), &key, Some(&head)).unwrap_err();
        assert!(e.reason.contains("truncated") || e.reason.contains("gap"), "{e}");
        std::fs::write(&f, saved).unwrap();
    }
    // the oldest retained file deleted by hand: reported
    std::fs::remove_file(&rotated[0].path).unwrap();
    let e = verify(&all_files(&p), &key, Some(&head)).unwrap_err();
    assert!(e.reason.contains("deleted from the start"), "{e}");
    // a crash between the head's move and the deletion leaves an older
    // file: still fine, and the next start deletes it
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let mut w = Writer::open_with(
        &p,
        AuditKey::from_bytes(&[3; 32]),
        &Options {
            keep_files: None,
            ..opts.clone()
        },
    )
    .unwrap();
    for i in 0..80 {
        w.write_batch(&[&ev(i)], true).unwrap();
    }
    let n = rotated_files(&p).len();
    assert!(n > 2);
    w.keep_files = Some(n - 1);
    let oldest = rotated_files(&p)[0].clone();
    let kept = std::fs::read(&oldest.path).unwrap();
    w.prune().unwrap();
    std::fs::write(&oldest.path, kept).unwrap(); // "not deleted yet"
    let head = read_head(&p, &key).unwrap().unwrap();
    verify(&all_files(&p), &key, Some(&head)).unwrap();
    drop(w);
    let _w = Writer::open_with(&p, AuditKey::from_bytes(&[3; 32]), &opts).unwrap();
    assert_eq!(rotated_files(&p).len(), 2);
    verify(&all_files(&p), &key, read_head(&p, &key).unwrap().as_ref()).unwrap();
}

#[test]
fn a_head_from_before_first_seq_still_verifies_and_is_upgraded() {
    let d = tempfile::tempdir().unwrap();
    let (p, key) = write(d.path(), 3, 1 << 30);
    let h = read_head(&p, &key).unwrap().unwrap();
    let mac = key.mac(format!("{}:{}:{}", h.seq, h.hash, h.file_first_seq).as_bytes());
    let old = format!(
        "{{\"seq\":{},\"hash\":\"{}\",\"file_first_seq\":{},\"mac\":\"{mac}\"}}",
        h.seq, h.hash, h.file_first_seq
    );
    std::fs::write(head_path(&p), old).unwrap();
    assert_eq!(read_head(&p, &key).unwrap().unwrap().first_seq, 0);
    let _w = Writer::open(&p, AuditKey::from_bytes(&[3; 32]), 1 << 30).unwrap();
    assert_eq!(read_head(&p, &key).unwrap().unwrap().first_seq, 1);
}
