//! The tamper-evident audit trail.
//!
//! One JSON line per record, fields in a fixed order, no payloads (never
//! plaintext, ciphertext, tokens, codes or key material):
//! ```text
//! {"seq":1,"time":"…","request_id":"…","identity":"…","op":"encrypt","key":"k","key_version":1,
//!  "result":"OK","detail":null,"peer":"unix","latency_us":12,"prev":"<hex>","mac":"<hex>"}
//! ```
//! - `prev` is the SHA-256 of the previous record's line (without its
//!   newline); the first record of a chain has the SHA-256 of
//!   `"kmsd audit chain v1"`, and the first record of a rotated-to file
//!   carries the last hash of the file before it, so the chain continues
//!   across files.
//! - `mac` is HMAC-SHA256, under the audit key (kept sealed in the key
//!   store), of the line up to and excluding `,"mac":"…"` followed by `}`.
//! - A head file beside the log (`<log>.head`) holds the last sequence
//!   number and hash, MAC'd, rewritten after every durable batch: a log cut
//!   short at its tail no longer reaches the head.
//!
//! Edits, deletions, insertions, reordering and truncation of the tail are
//! all detected by [`verify`]. Writing is group-committed: a writer thread
//! drains everything queued, appends it with one `write` and one
//! `fdatasync`, and only then answers callers waiting for durability.
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// The audit HMAC key.
pub struct AuditKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey([REDACTED])")
    }
}

impl AuditKey {
    /// Wraps key bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Self {
        AuditKey(SecretBox::new(Box::new(*b)))
    }

    fn mac(&self, data: &[u8]) -> String {
        match Hmac::<Sha256>::new_from_slice(self.0.expose_secret()) {
            Ok(mut m) => {
                m.update(data);
                hex::encode(m.finalize().into_bytes())
            }
            Err(_) => String::new(),
        }
    }
}

/// What a caller supplies for one record.
#[derive(Debug, Clone, Default)]
pub struct Event {
    /// Request id.
    pub request_id: String,
    /// Caller identity.
    pub identity: std::sync::Arc<str>,
    /// Operation name.
    pub op: &'static str,
    /// Key name, if any.
    pub key: Option<String>,
    /// Key version, if any.
    pub key_version: Option<u32>,
    /// gRPC code name (or STARTED for the intent record of an admin call).
    pub result: &'static str,
    /// Short, never secret, detail.
    pub detail: Option<String>,
    /// Peer address.
    pub peer: std::sync::Arc<str>,
    /// Latency in microseconds.
    pub latency_us: u64,
}

/// A record as parsed by `verify` (the writer builds lines by hand in the
/// same field order, see [`LineWriter`]).
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    seq: u64,
    time: String,
    request_id: std::borrow::Cow<'a, str>,
    identity: std::borrow::Cow<'a, str>,
    op: std::borrow::Cow<'a, str>,
    key: Option<std::borrow::Cow<'a, str>>,
    key_version: Option<u32>,
    result: std::borrow::Cow<'a, str>,
    detail: Option<std::borrow::Cow<'a, str>>,
    peer: std::borrow::Cow<'a, str>,
    latency_us: u64,
    prev: String,
}

fn chain_start() -> String {
    hex::encode(Sha256::digest(b"kmsd audit chain v1"))
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends lower-case hex of `bytes`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
}

/// Lower-case hex of `bytes` (what `hex::encode` gives, without its
/// per-character iterator).
fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// The writer's hot path: builds MAC'd lines into one reusable buffer,
/// with the HMAC key schedule computed once and the timestamp's seconds
/// formatted once per second.
struct LineWriter {
    mac: Option<Hmac<Sha256>>,
    second: u64,
    second_text: String,
}

impl LineWriter {
    fn new(key: &AuditKey) -> Self {
        LineWriter {
            mac: Hmac::<Sha256>::new_from_slice(key.0.expose_secret()).ok(),
            second: u64::MAX,
            second_text: String::new(),
        }
    }

    fn time(&mut self, out: &mut String) {
        use std::fmt::Write as _;
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if d.as_secs() != self.second {
            self.second = d.as_secs();
            self.second_text =
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.second))
                    .to_string()
                    .trim_end_matches('Z')
                    .to_owned();
        }
        let _ = write!(out, "\"{}.{:03}Z\"", self.second_text, d.subsec_millis());
    }

    /// Appends the record's line (without newline) to `out`; returns its hash.
    fn line(&mut self, out: &mut String, seq: u64, e: &Event, prev: &str) -> String {
        use std::fmt::Write as _;
        let start = out.len();
        let _ = write!(out, "{{\"seq\":{seq},\"time\":");
        self.time(out);
        out.push_str(",\"request_id\":");
        json_str(out, &e.request_id);
        out.push_str(",\"identity\":");
        json_str(out, &e.identity);
        out.push_str(",\"op\":");
        json_str(out, e.op);
        out.push_str(",\"key\":");
        match &e.key {
            Some(k) => json_str(out, k),
            None => out.push_str("null"),
        }
        match e.key_version {
            Some(v) => {
                let _ = write!(out, ",\"key_version\":{v}");
            }
            None => out.push_str(",\"key_version\":null"),
        }
        out.push_str(",\"result\":");
        json_str(out, e.result);
        out.push_str(",\"detail\":");
        match &e.detail {
            Some(d) => json_str(out, d),
            None => out.push_str("null"),
        }
        out.push_str(",\"peer\":");
        json_str(out, &e.peer);
        let _ = write!(out, ",\"latency_us\":{},\"prev\":\"{prev}\"}}", e.latency_us);
        let tag = self.mac.as_ref().map(|m| {
            let mut m = m.clone();
            m.update(&out.as_bytes()[start..]);
            m.finalize().into_bytes()
        });
        out.pop(); // the closing brace
        out.push_str(",\"mac\":\"");
        if let Some(tag) = tag {
            push_hex(out, &tag);
        }
        out.push_str("\"}");
        line_hash(&out.as_bytes()[start..])
    }
}

/// Splits a line into (its body JSON, its MAC) if it has the record shape.
fn split_line(line: &str) -> Option<(String, &str)> {
    let idx = line.rfind(",\"mac\":\"")?;
    let mac = line.get(idx + 8..)?.strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..idx]), mac))
}

#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
    /// First sequence number in the live file.
    file_first_seq: u64,
    /// First sequence number of the oldest retained file: verify reports a
    /// log that starts later (its oldest files deleted). Absent in heads
    /// written before it existed (then found from the files on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_seq: Option<u64>,
    mac: String,
}

impl Head {
    /// What the head's MAC covers (the old three-field form when the head
    /// predates `first_seq`, so old heads still verify).
    fn mac_input(seq: u64, hash: &str, file_first_seq: u64, first_seq: Option<u64>) -> String {
        match first_seq {
            Some(f) => format!("{seq}:{hash}:{file_first_seq}:{f}"),
            None => format!("{seq}:{hash}:{file_first_seq}"),
        }
    }
}

/// Appends the newline a log's last line lacks, durably, so that the next
/// record starts a line of its own. `bytes` is the file's current content.
fn terminate_last_line(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    if bytes.is_empty() || bytes.last() == Some(&b'\n') {
        return Ok(());
    }
    let io = |e: std::io::Error| AuditError(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(io)?;
    std::io::Write::write_all(&mut f, b"\n").map_err(io)?;
    f.sync_all().map_err(io)
}

/// Moves an unterminated last line (a write torn by a crash) from a log
/// that has no head yet into `<log>.torn`, durably. Complete lines are
/// never touched.
fn cut_torn_tail(path: &Path) -> Result<(), AuditError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(AuditError(format!("{}: {e}", path.display()))),
    };
    let keep = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    move_tail_aside(path, &bytes, keep, ".torn")
}

/// Moves `bytes[keep..]` (the log's content past `keep`) into the side file
/// `<log><suffix>`, durably, then cuts the log to `keep` bytes, durably.
/// Nothing is discarded: the side file keeps the bytes as evidence.
fn move_tail_aside(path: &Path, bytes: &[u8], keep: usize, suffix: &str) -> Result<(), AuditError> {
    let Some(rest) = bytes.get(keep..).filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let mut side = path.as_os_str().to_owned();
    side.push(suffix);
    let side = PathBuf::from(side);
    write_synced(&side, rest).map_err(|e| AuditError(format!("{}: {e}", side.display())))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(keep as u64).and_then(|()| f.sync_all()))
        .map_err(|e| AuditError(format!("{}: {e}", path.display())))?;
    tracing::warn!(bytes = rest.len(), moved_to = %side.display(),
        "audit log: bytes after the last record that continues the chain (a crash's torn write, or not ours) were moved aside");
    Ok(())
}

/// The chain hash of a record line (without its newline).
fn line_hash(line: &[u8]) -> String {
    to_hex(&Sha256::digest(line))
}

/// `<log>.<first seq>-<last seq>`: the name a rotated log gets.
fn rotated_path(log: &Path, first: u64, last: u64) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(format!(".{first:020}-{last:020}"));
    PathBuf::from(p)
}

/// A rotated file beside the live log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The file.
    pub path: PathBuf,
    /// Its first sequence number (from its name).
    pub first: u64,
    /// Its last sequence number (from its name).
    pub last: u64,
}

/// The rotated files of `log` (`<log>.<first seq>-<last seq>`), oldest
/// first. Side files (`.head`, `.torn`, `.unverified-…`) are not rotated
/// files.
pub fn rotated_files(log: &Path) -> Vec<Rotated> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Rotated> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name();
            let rest = file.to_str()?.strip_prefix(name)?.strip_prefix('.')?;
            let (a, b) = rest.split_once('-')?;
            let digits = |s: &str| s.len() == 20 && s.bytes().all(|c| c.is_ascii_digit());
            if !digits(a) || !digits(b) {
                return None;
            }
            Some(Rotated {
                path: log.with_file_name(&file),
                first: a.parse().ok()?,
                last: b.parse().ok()?,
            })
        })
        .collect();
    out.sort_by_key(|r| r.first);
    out
}

/// Every file of the log in chain order: the rotated files, oldest first,
/// then the live log (what `kmsd audit-verify` reads when given no files).
pub fn log_files(log: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = rotated_files(log).into_iter().map(|r| r.path).collect();
    // (none right after a rotation; a live log that should hold records
    // but is gone is a cut tail, which verify reports against the head)
    if log.exists() {
        files.push(log.to_owned());
    }
    files
}

/// Writes `data` to a new file (mode 0600) and syncs it.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn head_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

/// A point of the chain the log must reach: the writer's last durable
/// record (from the daemon, or from the MAC'd head file).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Anchor {
    /// Sequence number of the last durable record.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// First sequence number of the live file.
    pub file_first_seq: u64,
    /// First sequence number of the oldest retained file (0: unknown, not
    /// checked): a log given to verify must start there (or earlier).
    pub first_seq: u64,
}

/// Reads and checks the head file beside `log` (read it *before* the log,
/// so that the log read afterwards contains at least what it records).
pub fn read_head(log: &Path, key: &AuditKey) -> Result<Option<Anchor>, String> {
    let Ok(t) = std::fs::read_to_string(head_path(log)) else {
        return Ok(None);
    };
    let h: Head = serde_json::from_str(&t).map_err(|_| "the audit head file is malformed".to_string())?;
    if key.mac(Head::mac_input(h.seq, &h.hash, h.file_first_seq, h.first_seq).as_bytes()) != h.mac {
        return Err("the audit head file fails its MAC".into());
    }
    Ok(Some(Anchor {
        seq: h.seq,
        hash: h.hash,
        file_first_seq: h.file_first_seq,
        first_seq: h.first_seq.unwrap_or(0),
    }))
}

/// An audit write failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {0}")]
pub struct AuditError(pub String);

/// What calls do when the audit trail cannot take their records
/// (`[audit] on_failure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Fail safe (the default): a caller whose record finds the queue full
    /// waits up to `queue_wait`, then gets `UNAVAILABLE`; after a failed
    /// write every call gets `UNAVAILABLE` until the writer (which keeps
    /// retrying) has written the log again. No call completes unaudited.
    #[default]
    Fail,
    /// Availability first: a record that finds the queue full is dropped
    /// (counted in `kmsd_audit_write_failures_total`) and calls go on while
    /// the log cannot be written; records that failed are kept (up to the
    /// queue size) and written when the log is writable again.
    LogAndContinue,
}

/// How the writer runs (from `[audit]`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Rotate the live file when it reaches this size.
    pub rotate_bytes: u64,
    /// Records queued for the writer at most.
    pub queue_size: usize,
    /// How long a record waits for room in a full queue (`Fail` only).
    pub queue_wait: std::time::Duration,
    /// Full queue and failed writes: fail calls, or log and continue.
    pub on_failure: OnFailure,
    /// Keep at most this many rotated files (`None`: all).
    pub keep_files: Option<usize>,
    /// Delete rotated files whose last record is older than this (`None`: never).
    pub keep_age: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rotate_bytes: 64 << 20,
            queue_size: 65_536,
            queue_wait: std::time::Duration::from_secs(2),
            on_failure: OnFailure::Fail,
            keep_files: None,
            keep_age: None,
        }
    }
}

struct Job {
    /// None: a flush (everything before it durable, nothing written).
    event: Option<Event>,
    done: Option<mpsc::SyncSender<Result<(), AuditError>>>,
}

/// The writer's health, shared with every handle.
#[derive(Default)]
struct Health {
    /// The last write (or sync) failed and nothing has been written since.
    failed: std::sync::atomic::AtomicBool,
    /// Why (for the callers' message and the daemon's log).
    error: std::sync::Mutex<String>,
}

/// Hands records to the writer thread.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::SyncSender<Job>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    head: std::sync::Arc<std::sync::Mutex<Anchor>>,
    health: std::sync::Arc<Health>,
    on_failure: OnFailure,
    queue_wait: std::time::Duration,
    /// The writer thread, unparked for durable records only: data-path
    /// records are picked up on its next tick, so a request never pays for
    /// waking it.
    writer: std::thread::Thread,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditHandle")
    }
}

/// Runs `f`, which may block (an fsync, a full queue), without stalling
/// the other tasks of a multi-threaded runtime's worker.
pub fn blocking_section<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl AuditHandle {
    /// What calls do when records cannot be queued or written.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// `Some(why)` while calls must be refused: `on_failure = "fail"` and
    /// the last write failed (the writer retries on its own).
    pub fn unavailable(&self) -> Option<AuditError> {
        if self.on_failure != OnFailure::Fail || !self.health.failed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let why = self.health.error.lock().map(|e| e.clone()).unwrap_or_default();
        Some(AuditError(format!(
            "the audit log cannot be written ({why}); calls are refused until it can"
        )))
    }

    /// Queues a record (data path): it becomes durable with the next group
    /// commit; the caller does not wait for that. With `on_failure =
    /// "fail"` a full queue makes the caller wait (up to `queue_wait`) and
    /// then fails, and so does a log that cannot be written: the caller
    /// must then not complete its call.
    pub fn record(&self, event: Event) -> Result<(), AuditError> {
        if self.on_failure == OnFailure::LogAndContinue {
            self.record_anyway(event);
            return Ok(());
        }
        if let Some(e) = self.unavailable() {
            return Err(e);
        }
        let job = match self.tx.try_send(Job {
            event: Some(event),
            done: None,
        }) {
            Ok(()) => return Ok(()),
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(AuditError("the audit writer stopped".into())),
            Err(mpsc::TrySendError::Full(job)) => job,
        };
        self.writer.unpark();
        let deadline = std::time::Instant::now() + self.queue_wait;
        let waited = blocking_section(move || {
            let mut job = job;
            loop {
                std::thread::sleep(std::time::Duration::from_millis(1));
                match self.tx.try_send(job) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::TrySendError::Disconnected(_)) => {
                        return Err(AuditError("the audit writer stopped".into()))
                    }
                    Err(mpsc::TrySendError::Full(j)) => job = j,
                }
                if std::time::Instant::now() >= deadline {
                    return Err(AuditError(format!(
                        "the audit queue stayed full for {:?} (the writer is behind); the call was refused",
                        self.queue_wait
                    )));
                }
            }
        });
        if waited.is_err() {
            self.metrics
                .audit_write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        waited
    }

    /// Queues a record whatever the writer's state (the outcome of a call
    /// that is refused or abandoned: there is nobody left to fail). A full
    /// queue drops it, counted.
    pub fn record_anyway(&self, event: Event) {
        if self
            .tx
            .try_send(Job {
                event: Some(event),
                done: None,
            })
            .is_err()
        {
            self.metrics
                .audit_write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The last durable record.
    pub fn head(&self) -> Anchor {
        self.head.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Waits until every record queued before it is durable (shutdown:
    /// the last data-path records must not be lost with the process).
    /// Blocking.
    pub fn flush(&self) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Job {
                event: None,
                done: Some(tx),
            })
            .map_err(|_| AuditError("the audit writer stopped".into()))?;
        self.writer.unpark();
        rx.recv()
            .unwrap_or_else(|_| Err(AuditError("the audit writer stopped".into())))
    }

    /// Writes a record and waits until it is durable (administrative
    /// calls: they fail closed if this fails). Blocking: call from a
    /// blocking context.
    pub fn record_durable(&self, event: Event) -> Result<(), AuditError> {
        let started = std::time::Instant::now();
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Job {
                event: Some(event),
                done: Some(tx),
            })
            .map_err(|_| AuditError("the audit writer stopped".into()))?;
        self.writer.unpark();
        let r = rx
            .recv()
            .unwrap_or_else(|_| Err(AuditError("the audit writer stopped".into())));
        self.metrics.audit_write.observe(started.elapsed());
        if r.is_err() {
            self.metrics
                .audit_write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
}

/// Why a batch failed: before its records reached the file (they are
/// kept and written again), or after (they are in the file; what failed
/// was the sync, the head or the rotation, which are retried).
#[derive(Debug)]
enum WriteError {
    NotWritten(AuditError),
    Written(AuditError),
}

impl WriteError {
    fn error(&self) -> &AuditError {
        match self {
            WriteError::NotWritten(e) | WriteError::Written(e) => e,
        }
    }
}

/// The writer's state.
struct Writer {
    path: PathBuf,
    key: AuditKey,
    lines: LineWriter,
    buf: String,
    /// The open log and its inode (reopened if the path changes).
    file: Option<(std::fs::File, u64)>,
    /// Written but not yet synced.
    dirty: bool,
    /// Synced, but the head file does not say so yet.
    head_stale: bool,
    /// A write failed part-way: the log must be cut back to this length
    /// before anything else is appended (a torn line would break the chain).
    cut_to: Option<u64>,
    last_sync: std::time::Instant,
    rotate_bytes: u64,
    keep_files: Option<usize>,
    keep_age: Option<std::time::Duration>,
    seq: u64,
    last_hash: String,
    file_first_seq: u64,
    /// First sequence number of the oldest retained file.
    first_seq: u64,
}

impl Writer {
    #[cfg(test)]
    fn open(path: &Path, key: AuditKey, rotate_bytes: u64) -> Result<Self, AuditError> {
        Self::open_with(
            path,
            key,
            &Options {
                rotate_bytes,
                ..Options::default()
            },
        )
    }

    fn open_with(path: &Path, key: AuditKey, opts: &Options) -> Result<Self, AuditError> {
        let mut w = Writer {
            path: path.to_owned(),
            lines: LineWriter::new(&key),
            buf: String::with_capacity(1 << 20),
            file: None,
            dirty: false,
            head_stale: false,
            cut_to: None,
            last_sync: std::time::Instant::now(),
            key,
            rotate_bytes: opts.rotate_bytes,
            keep_files: opts.keep_files,
            keep_age: opts.keep_age,
            seq: 0,
            last_hash: chain_start(),
            file_first_seq: 1,
            first_seq: 1,
        };
        // Continue the chain from the head (authoritative), else from the file.
        if let Ok(text) = std::fs::read_to_string(head_path(path)) {
            if let Ok(h) = serde_json::from_str::<Head>(&text) {
                if w.key
                    .mac(Head::mac_input(h.seq, &h.hash, h.file_first_seq, h.first_seq).as_bytes())
                    == h.mac
                {
                    w.seq = h.seq;
                    w.last_hash = h.hash;
                    w.file_first_seq = h.file_first_seq;
                    // A head from before `first_seq`: the oldest file on disk.
                    w.first_seq = h.first_seq.unwrap_or_else(|| {
                        rotated_files(path)
                            .first()
                            .map_or(h.file_first_seq, |r| r.first.min(h.file_first_seq))
                    });
                    w.recover_tail()?;
                    if h.first_seq.is_none() {
                        w.write_head()?;
                    }
                    w.prune()?;
                    return Ok(w);
                }
                return Err(AuditError(format!(
                    "{} fails its integrity check",
                    head_path(path).display()
                )));
            }
        }
        // No head yet (a crash before the first one): a torn last line is
        // moved aside before the chain continues from the last record.
        cut_torn_tail(path)?;
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(last) = text.lines().last() {
                let (body, _) =
                    split_line(last).ok_or_else(|| AuditError("the last audit record is malformed".into()))?;
                let b: Body<'_> =
                    serde_json::from_str(&body).map_err(|_| AuditError("the last audit record is malformed".into()))?;
                w.seq = b.seq;
                w.last_hash = line_hash(last.as_bytes());
                w.file_first_seq = text
                    .lines()
                    .next()
                    .and_then(split_line)
                    .and_then(|(b, _)| serde_json::from_str::<Body<'_>>(&b).ok().map(|b| b.seq))
                    .unwrap_or(1);
                w.first_seq = rotated_files(path)
                    .first()
                    .map_or(w.file_first_seq, |r| r.first.min(w.file_first_seq));
            }
        }
        Ok(w)
    }

    /// Recovers the log's tail after a crash, starting from the (MAC-checked)
    /// head. Records the head covers are never touched. After the head's
    /// record, each complete line whose sequence number, `prev` hash and
    /// MAC continue the chain is adopted (written before the crash, the
    /// head not yet moved). Whatever follows the last adopted record — a
    /// line torn by the crash, or anything that does not continue the
    /// chain — is moved, byte for byte, into a side file
    /// `<log>.unverified-<unix time>` (kept as evidence, reported in the
    /// daemon's log) so that new records chain on from a clean end. A log
    /// that lacks the head's record is left alone: that is truncation, for
    /// `verify` to report, not for the writer to paper over.
    fn recover_tail(&mut self) -> Result<(), AuditError> {
        let io = |p: &Path, e: std::io::Error| AuditError(format!("{}: {e}", p.display()));
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.recover_rotation(),
            Err(e) => return Err(io(&self.path, e)),
        };
        // Offset just after the head's record (or 0 when the head precedes
        // this file: it was rotated right after the head's record).
        let mut pos = 0usize;
        if self.seq + 1 != self.file_first_seq {
            let mut found = false;
            for line in bytes.split_inclusive(|&c| c == b'\n') {
                pos += line.len();
                if line.last() == Some(&b'\n') && line_hash(&line[..line.len() - 1]) == self.last_hash {
                    found = true;
                    break;
                }
            }
            if !found {
                // The head's record may be the last line with its newline
                // lost (the file cut by one byte), or missing altogether
                // (truncation, for `verify` to report). Either way the next
                // record must start on a line of its own, never glued to
                // the last one.
                return terminate_last_line(&self.path, &bytes);
            }
        }
        let mut adopted = 0u64;
        let mut end = pos;
        for line in bytes.get(pos..).unwrap_or(&[]).split_inclusive(|&c| c == b'\n') {
            let Some(body_line) = line.strip_suffix(b"\n").and_then(|l| std::str::from_utf8(l).ok()) else {
                break;
            };
            let Some((body_json, mac)) = split_line(body_line) else {
                break;
            };
            let Ok(body) = serde_json::from_str::<Body<'_>>(&body_json) else {
                break;
            };
            if body.seq != self.seq + 1 || body.prev != self.last_hash || self.key.mac(body_json.as_bytes()) != mac {
                break;
            }
            self.seq = body.seq;
            self.last_hash = line_hash(body_line.as_bytes());
            adopted += 1;
            end += line.len();
        }
        let moved = end < bytes.len();
        if moved {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            move_tail_aside(&self.path, &bytes, end, &format!(".unverified-{secs}"))?;
            kmsd_keystore::failpoints::kill_point(kmsd_keystore::failpoints::AUDIT_RECOVER);
        }
        if adopted > 0 {
            tracing::warn!(
                records = adopted,
                "audit records written before a crash continue the chain"
            );
            // durable before the head covers them
            std::fs::File::open(&self.path)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&self.path, e))?;
        }
        if adopted > 0 || moved {
            self.write_head()?;
        }
        Ok(())
    }

    /// The live log is missing. If a crash came between a rotation's
    /// rename and its head update, the rotated file is there and ends with
    /// the head's record: the live file then starts after it.
    fn recover_rotation(&mut self) -> Result<(), AuditError> {
        if self.file_first_seq > self.seq {
            return Ok(());
        }
        let Ok(text) = std::fs::read_to_string(rotated_path(&self.path, self.file_first_seq, self.seq)) else {
            return Ok(());
        };
        let ends_with_head = text
            .lines()
            .last()
            .is_some_and(|l| line_hash(l.as_bytes()) == self.last_hash);
        if ends_with_head {
            self.file_first_seq = self.seq + 1;
            self.write_head()?;
        }
        Ok(())
    }

    /// Appends records. `durable`: sync before returning (an
    /// administrative call waits on it); otherwise the batch is synced
    /// within [`SYNC_EVERY`] (data-path records).
    fn write_batch(&mut self, events: &[&Event], durable: bool) -> Result<(), WriteError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let (mut seq, mut hash) = (self.seq, self.last_hash.clone());
        for e in events {
            seq += 1;
            hash = self.lines.line(&mut buf, seq, e, &hash);
            buf.push('\n');
        }
        let result = self.append(&buf, seq, hash, durable);
        self.buf = buf;
        result
    }

    /// The open log, reopened when the path no longer names it (removed,
    /// replaced): a log that cannot be opened fails the write, and
    /// administrative calls fail closed.
    fn log_file(&mut self) -> Result<&mut std::fs::File, AuditError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let io = |e: std::io::Error| AuditError(format!("{}: {e}", self.path.display()));
        let current = std::fs::metadata(&self.path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.ino());
        let stale = match (&self.file, current) {
            (Some((_, ino)), Some(now)) => *ino != now,
            _ => true,
        };
        if stale {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)
                .map_err(io)?;
            let ino = f.metadata().map_err(io)?.ino();
            self.file = Some((f, ino));
        }
        match self.file.as_mut() {
            Some((f, _)) => Ok(f),
            None => Err(AuditError("audit log not open".into())),
        }
    }

    fn append(&mut self, buf: &str, seq: u64, hash: String, durable: bool) -> Result<(), WriteError> {
        let path = self.path.display().to_string();
        let io = |e: std::io::Error| AuditError(format!("{path}: {e}"));
        let cut_to = self.cut_to;
        let f = self.log_file().map_err(WriteError::NotWritten)?;
        if let Some(len) = cut_to {
            f.set_len(len).map_err(|e| WriteError::NotWritten(io(e)))?;
        }
        let before = f.metadata().map_err(|e| WriteError::NotWritten(io(e)))?.len();
        if let Err(e) = f.write_all(buf.as_bytes()) {
            // (a full disk: the part that was written must go, or the next
            // write would follow a torn line)
            let cut = f.set_len(before).is_ok();
            self.cut_to = (!cut).then_some(before);
            return Err(WriteError::NotWritten(io(e)));
        }
        self.cut_to = None;
        let len = before + buf.len() as u64;
        self.seq = seq;
        self.last_hash = hash;
        self.dirty = true;
        if durable || self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync().map_err(WriteError::Written)?;
        }
        if len >= self.rotate_bytes {
            self.sync().map_err(WriteError::Written)?;
            self.rotate().map_err(WriteError::Written)?;
        }
        Ok(())
    }

    /// After a failure with nothing left to write again: the log opens,
    /// what was written is synced and the head moved, a rotation that
    /// failed is done.
    fn retry(&mut self) -> Result<(), AuditError> {
        let len = self.log_file()?.metadata().map(|m| m.len()).unwrap_or(0);
        self.sync()?;
        if len >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Whether written records still wait for their sync or head.
    fn needs_sync(&self) -> bool {
        self.dirty || self.head_stale
    }

    /// Makes everything written durable, then moves the head.
    fn sync(&mut self) -> Result<(), AuditError> {
        if self.dirty {
            let path = self.path.display().to_string();
            if let Some((f, _)) = self.file.as_mut() {
                f.sync_data().map_err(|e| AuditError(format!("{path}: {e}")))?;
            }
            self.dirty = false;
            self.head_stale = true;
            self.last_sync = std::time::Instant::now();
        }
        if self.head_stale {
            self.write_head()?;
            self.head_stale = false;
        }
        Ok(())
    }

    fn write_head(&self) -> Result<(), AuditError> {
        let first_seq = Some(self.first_seq);
        let mac = self
            .key
            .mac(Head::mac_input(self.seq, &self.last_hash, self.file_first_seq, first_seq).as_bytes());
        let head = Head {
            seq: self.seq,
            hash: self.last_hash.clone(),
            file_first_seq: self.file_first_seq,
            first_seq,
            mac,
        };
        let p = head_path(&self.path);
        let tmp = p.with_extension("head.tmp");
        let text = serde_json::to_string(&head).unwrap_or_default();
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                AuditError(format!("{}: {e}", p.display()))
            })
    }

    /// Renames the full log to `<log>.<first seq>-<last seq>` and starts a
    /// new file that continues the chain; then applies the retention.
    fn rotate(&mut self) -> Result<(), AuditError> {
        std::fs::rename(&self.path, rotated_path(&self.path, self.file_first_seq, self.seq))
            .map_err(|e| AuditError(format!("rotating: {e}")))?;
        kmsd_keystore::failpoints::kill_point(kmsd_keystore::failpoints::AUDIT_ROTATE_RENAMED);
        self.file = None;
        self.file_first_seq = self.seq + 1;
        self.head_stale = true;
        self.write_head()?;
        self.head_stale = false;
        kmsd_keystore::failpoints::kill_point(kmsd_keystore::failpoints::AUDIT_ROTATE_HEAD);
        self.prune()
    }

    /// Retention: deletes the oldest rotated files beyond `keep_files`, or
    /// whose last write is older than `keep_age`. Always a run of the
    /// oldest files, so the retained log stays one unbroken chain; the
    /// head's `first_seq` moves to the new oldest file *before* anything is
    /// deleted (a crash in between leaves an extra old file, which verify
    /// accepts and the next start deletes).
    fn prune(&mut self) -> Result<(), AuditError> {
        if self.keep_files.is_none() && self.keep_age.is_none() {
            return Ok(());
        }
        // Only files wholly before the live file (never the live one).
        let files: Vec<Rotated> = rotated_files(&self.path)
            .into_iter()
            .filter(|r| r.last < self.file_first_seq)
            .collect();
        let mut cut = 0usize;
        if let Some(n) = self.keep_files {
            cut = cut.max(files.len().saturating_sub(n));
        }
        if let Some(age) = self.keep_age {
            let now = std::time::SystemTime::now();
            let old = |r: &Rotated| {
                std::fs::metadata(&r.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|d| d > age)
            };
            if let Some(i) = files.iter().rposition(old) {
                cut = cut.max(i + 1);
            }
        }
        // Files from before `first_seq` (a crash after the head moved) go too.
        let stale = files.iter().take_while(|r| r.last < self.first_seq).count();
        cut = cut.max(stale);
        if cut == 0 {
            return Ok(());
        }
        let new_first = files.get(cut).map_or(self.file_first_seq, |r| r.first);
        if new_first > self.first_seq {
            self.first_seq = new_first;
            self.head_stale = true;
            self.write_head()?;
            self.head_stale = false;
        }
        for r in files.iter().take(cut) {
            std::fs::remove_file(&r.path).map_err(|e| AuditError(format!("{}: {e}", r.path.display())))?;
            tracing::info!(file = %r.path.display(), first_seq = r.first, last_seq = r.last, "audit retention: rotated file deleted");
        }
        Ok(())
    }
}

/// How often the writer wakes on its own to take queued data-path records.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(2);

/// Data-path records are synced at most this long after they are written.
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// After a failed write, the writer tries again this often.
pub const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Publishes the last *durable* record as the in-memory head.
fn publish(h: &std::sync::Mutex<Anchor>, w: &Writer) {
    if w.dirty {
        return;
    }
    if let Ok(mut a) = h.lock() {
        *a = Anchor {
            seq: w.seq,
            hash: w.last_hash.clone(),
            file_first_seq: w.file_first_seq,
            first_seq: w.first_seq,
        };
    }
}

/// Starts the writer thread for the log at `path`.
pub fn spawn(
    path: &Path,
    key: AuditKey,
    opts: Options,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> Result<AuditHandle, AuditError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AuditError(format!("{}: {e}", dir.display())))?;
    }
    let opts = Options {
        rotate_bytes: opts.rotate_bytes.max(4096),
        queue_size: opts.queue_size.max(1),
        ..opts
    };
    let mut w = Writer::open_with(path, key, &opts)?;
    let (tx, rx) = mpsc::sync_channel::<Job>(opts.queue_size);
    let m = metrics.clone();
    let head = std::sync::Arc::new(std::sync::Mutex::new(Anchor {
        seq: w.seq,
        hash: w.last_hash.clone(),
        file_first_seq: w.file_first_seq,
        first_seq: w.first_seq,
    }));
    let health = std::sync::Arc::new(Health::default());
    let (h, health_w) = (head.clone(), health.clone());
    let (keep_max, on_failure) = (opts.queue_size, opts.on_failure);
    let writer = std::thread::Builder::new()
        .name("kmsd-audit".into())
        .spawn(move || {
            let set_health = |r: Result<(), &AuditError>| match r {
                Ok(()) => {
                    if health_w.failed.swap(false, std::sync::atomic::Ordering::AcqRel) {
                        tracing::warn!("the audit log is writable again");
                    }
                }
                Err(e) => {
                    if let Ok(mut why) = health_w.error.lock() {
                        *why = e.0.clone();
                    }
                    health_w.failed.store(true, std::sync::atomic::Ordering::Release);
                }
            };
            let failed = || health_w.failed.load(std::sync::atomic::Ordering::Acquire);
            // Records whose write failed, oldest first: written again,
            // before anything newer, once the log is writable.
            let mut kept: Vec<Event> = Vec::new();
            let mut last_try = std::time::Instant::now();
            let mut disconnected = false;
            while !disconnected {
                // Sleep a tick (woken early for durable records), then take
                // everything queued.
                std::thread::park_timeout(TICK);
                let mut jobs = Vec::new();
                while jobs.len() < 65_536 {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            disconnected = true;
                            break;
                        }
                    }
                }
                let waiting = jobs.iter().any(|j| j.done.is_some());
                if failed() && !waiting && !disconnected && last_try.elapsed() < RETRY_EVERY {
                    // (failing: new records wait with the kept ones; no
                    // busy retrying on every tick)
                    kept.extend(jobs.into_iter().filter_map(|j| j.event));
                    continue;
                }
                if jobs.is_empty() && kept.is_empty() {
                    // (failing: retried here at most every RETRY_EVERY, see above)
                    if failed() || (w.needs_sync() && w.last_sync.elapsed() >= SYNC_EVERY) {
                        last_try = std::time::Instant::now();
                        let r = if failed() { w.retry() } else { w.sync() };
                        if let Err(e) = &r {
                            m.audit_write_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(error = %e, "audit sync failed");
                        }
                        set_health(r.as_ref().map(|_| ()));
                        publish(&h, &w);
                    }
                    continue;
                }
                last_try = std::time::Instant::now();
                let started = std::time::Instant::now();
                // (durable when someone waits, and when recovering: the
                // failure clears only once the records are on disk)
                let durable = waiting || failed() || disconnected;
                let mut events = std::mem::take(&mut kept);
                let mut done = Vec::new();
                for j in jobs {
                    events.extend(j.event);
                    done.extend(j.done);
                }
                let refs: Vec<&Event> = events.iter().collect();
                let result = w.write_batch(&refs, durable);
                drop(refs);
                m.audit_write.observe(started.elapsed());
                let answer = result.as_ref().map(|_| ()).map_err(|e| e.error().clone());
                set_health(answer.as_ref().map(|_| ()));
                match result {
                    Ok(()) => publish(&h, &w),
                    Err(WriteError::Written(e)) => {
                        tracing::error!(error = %e, records = events.len(), "audit records written, but not synced");
                    }
                    Err(WriteError::NotWritten(e)) => {
                        tracing::error!(error = %e, records = events.len(), "audit write failed; the records are kept and written again");
                        kept = events;
                        if on_failure == OnFailure::LogAndContinue && kept.len() > keep_max {
                            let dropped = kept.len() - keep_max;
                            kept.drain(..dropped);
                            m.audit_write_failures
                                .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(records = dropped, "audit records dropped (on_failure = log-and-continue)");
                        }
                    }
                }
                for d in done {
                    let _ = d.send(answer.clone());
                }
            }
            let _ = w.sync();
        })
        .map_err(|e| AuditError(format!("audit writer thread: {e}")))?;
    Ok(AuditHandle {
        tx,
        metrics,
        head,
        health,
        on_failure: opts.on_failure,
        queue_wait: opts.queue_wait,
        writer: writer.thread().clone(),
    })
}

/// The result of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Hash of the last record.
    pub last_hash: String,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record at line {line}{}: {reason}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct Broken {
    /// 1-based line number (in the concatenation of the files given).
    pub line: u64,
    /// The record's claimed sequence number, if readable.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// Longest record line `Verifier` accepts (a record is a few hundred
/// bytes; the longest fields are bounded by the daemon): a longer "line"
/// is reported, never buffered.
pub const MAX_LINE: usize = 64 * 1024;

/// Verifies log text (files in chain order, concatenated). With an
/// `anchor` (the daemon's last durable record, or the head file read
/// before the log), a log that ends before it — its tail cut off — or that
/// holds a different record at its sequence number is reported.
pub fn verify(text: &str, key: &AuditKey, anchor: Option<&Anchor>) -> Result<Report, Broken> {
    let mut v = Verifier::new(key, anchor.cloned());
    v.feed(text.as_bytes())?;
    v.finish()
}

/// Verifies a log fed in pieces of any size (files in chain order, a
/// gRPC stream's chunks): memory stays bounded by one piece plus one
/// partial line of at most [`MAX_LINE`] bytes, whatever the log's size.
pub struct Verifier {
    mac: Option<Hmac<Sha256>>,
    anchor: Option<Anchor>,
    anchor_seen: bool,
    prev: Option<String>,
    line_no: u64,
    /// The start of a line whose end has not been fed yet.
    partial: Vec<u8>,
    report: Report,
    /// The first problem, once found (later input is ignored).
    broken: Option<Broken>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("line_no", &self.line_no)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier under `key`, checking against `anchor` if given.
    pub fn new(key: &AuditKey, anchor: Option<Anchor>) -> Self {
        Verifier {
            mac: Hmac::<Sha256>::new_from_slice(key.0.expose_secret()).ok(),
            anchor,
            anchor_seen: false,
            prev: None,
            line_no: 0,
            partial: Vec::new(),
            report: Report {
                records: 0,
                first_seq: 0,
                last_seq: 0,
                last_hash: chain_start(),
            },
            broken: None,
        }
    }

    /// Feeds the next bytes of the log. Returns the first problem as soon
    /// as it is found (and keeps returning it).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Broken> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        while let Some(i) = bytes.iter().position(|&c| c == b'\n') {
            let (line, rest) = bytes.split_at(i);
            bytes = rest.get(1..).unwrap_or_default();
            let r = if self.partial.is_empty() {
                self.line(line)
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                let r = self.check_length(whole.len()).and_then(|()| self.line(&whole));
                whole.clear();
                self.partial = whole;
                r
            };
            if let Err(b) = r {
                self.broken = Some(b.clone());
                return Err(b);
            }
        }
        if let Err(b) = self.check_length(self.partial.len() + bytes.len()) {
            self.broken = Some(b.clone());
            return Err(b);
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn check_length(&self, len: usize) -> Result<(), Broken> {
        if len > MAX_LINE {
            return Err(Broken {
                line: self.line_no + 1,
                seq: None,
                reason: format!("not an audit record (a line longer than {MAX_LINE} bytes)"),
            });
        }
        Ok(())
    }

    /// Ends the log: a last line without its newline is checked, then the
    /// anchor.
    pub fn finish(mut self) -> Result<Report, Broken> {
        if let Some(b) = self.broken.take() {
            return Err(b);
        }
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.line(&last)?;
        }
        self.check_anchor()?;
        Ok(self.report)
    }

    fn mac_hex(&self, data: &[u8]) -> String {
        self.mac.as_ref().map_or_else(String::new, |m| {
            let mut m = m.clone();
            m.update(data);
            to_hex(&m.finalize().into_bytes())
        })
    }

    fn line(&mut self, line: &[u8]) -> Result<(), Broken> {
        self.line_no += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line_no = self.line_no;
        let broken = |seq: Option<u64>, reason: &str| Broken {
            line: line_no,
            seq,
            reason: reason.to_owned(),
        };
        let line = std::str::from_utf8(line).map_err(|_| broken(None, "not an audit record"))?;
        let Some((body_json, mac)) = split_line(line) else {
            return Err(broken(None, "not an audit record"));
        };
        let body: Body<'_> = serde_json::from_str(&body_json).map_err(|_| broken(None, "not an audit record"))?;
        if self.mac_hex(body_json.as_bytes()) != mac {
            return Err(broken(Some(body.seq), "MAC mismatch: the record was altered or forged"));
        }
        match &self.prev {
            Some(p) => {
                let s = self.report.last_seq + 1;
                if body.seq != s {
                    return Err(broken(
                        Some(body.seq),
                        &format!("sequence gap: expected {s} (records deleted, inserted or reordered)"),
                    ));
                }
                if &body.prev != p {
                    return Err(broken(
                        Some(body.seq),
                        "hash chain broken: the previous record was changed, removed or reordered",
                    ));
                }
            }
            None => {
                if body.seq == 1 && body.prev != chain_start() {
                    return Err(broken(Some(1), "the first record does not start the chain"));
                }
                self.report.first_seq = body.seq;
                // The oldest retained record is in the head: a log that
                // starts later lost its oldest records or files.
                if let Some(a) = self.anchor.as_ref().filter(|a| a.first_seq > 0) {
                    if body.seq > a.first_seq {
                        return Err(broken(
                            Some(body.seq),
                            &format!(
                                "records deleted from the start: the retained log begins at seq {} but the \
                                 log given starts at seq {} (a deleted rotated file, or not every file was given, \
                                 oldest first)",
                                a.first_seq, body.seq
                            ),
                        ));
                    }
                }
            }
        }
        let h = line_hash(line.as_bytes());
        if let Some(a) = &self.anchor {
            if body.seq == a.seq {
                if h != a.hash {
                    return Err(broken(
                        Some(body.seq),
                        "this record differs from the one the audit head recorded",
                    ));
                }
                self.anchor_seen = true;
            }
        }
        self.report.records += 1;
        self.report.last_seq = body.seq;
        self.report.last_hash = h.clone();
        self.prev = Some(h);
        Ok(())
    }

    fn check_anchor(&self) -> Result<(), Broken> {
        let (Some(a), report) = (&self.anchor, &self.report) else {
            return Ok(());
        };
        // A head that knows the oldest retained record stands for the
        // whole retained log, which must then reach it (a deleted live log
        // or newest rotated file is a cut tail). Without it (an old head),
        // only the segment the anchor falls in can be checked against it:
        // rotated files alone end before the live file starts.
        let covers = a.first_seq > 0 || report.records == 0 || report.last_seq >= a.file_first_seq;
        if covers && !self.anchor_seen && a.seq > 0 && report.last_seq < a.seq {
            return Err(Broken {
                line: report.records + 1,
                seq: Some(report.last_seq + 1),
                reason: format!(
                    "truncated: the log ends at seq {} but seq {} was written",
                    report.last_seq, a.seq
                ),
            });
        }
        // The live file starts at the head's `file_first_seq`: records
        // missing from its start (or the whole file replaced by a later
        // piece) are cut records too.
        if report.records > 0 && report.last_seq >= a.file_first_seq && report.first_seq > a.file_first_seq {
            return Err(Broken {
                line: 1,
                seq: Some(report.first_seq),
                reason: format!(
                    "truncated at the start: the live log begins at seq {} but starts at seq {}",
                    a.file_first_seq, report.first_seq
                ),
            });
        }
        Ok(())
    }
}

/// Entry points for the fuzz targets in `fuzz/` and their stable replay in
/// `tests/fuzz_regressions.rs`: they reach the code behind the MAC and the
/// hash chain, which random bytes never pass. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Rewrites every line of `text` that has the record shape with a valid
    /// MAC under `key` (and, with `chain`, a `prev` that continues the chain
    /// from its start), so that what follows the MAC check is exercised.
    /// Other lines are kept as they are. Every line ends with `\n`.
    pub fn seal_lines(text: &str, key: &AuditKey, chain: bool) -> String {
        let mut out = String::with_capacity(text.len() + 64);
        let mut prev = chain_start();
        for line in text.lines() {
            let sealed = seal_line(line, key, chain.then_some(prev.as_str()));
            prev = super::line_hash(sealed.as_bytes());
            out.push_str(&sealed);
            out.push('\n');
        }
        out
    }

    fn seal_line(line: &str, key: &AuditKey, prev: Option<&str>) -> String {
        let Some((mut body_json, _)) = split_line(line) else {
            return line.to_owned();
        };
        if let Some(p) = prev {
            if let Ok(mut b) = serde_json::from_str::<Body<'_>>(&body_json) {
                p.clone_into(&mut b.prev);
                if let Ok(j) = serde_json::to_string(&b) {
                    body_json = j;
                }
            }
        }
        let Some(open) = body_json.strip_suffix('}') else {
            return line.to_owned();
        };
        format!("{open},\"mac\":\"{}\"}}", key.mac(body_json.as_bytes()))
    }

    /// The chain hash of a line, as a head file records it.
    pub fn line_hash(line: &str) -> String {
        super::line_hash(line.as_bytes())
    }

    /// Puts `log` (and, if given, a head file MAC'd under `key` recording
    /// `head`) at `dir/audit.log`, opens the writer on it (tail recovery),
    /// appends one durable record and returns the log's text and its head
    /// afterwards.
    pub fn recover_and_append(
        dir: &Path,
        log: &[u8],
        head: Option<&Anchor>,
        key: &[u8; 32],
    ) -> Result<(String, Anchor), AuditError> {
        let io = |e: std::io::Error| AuditError(e.to_string());
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let path = dir.join("audit.log");
        std::fs::write(&path, log).map_err(io)?;
        if let Some(h) = head {
            let k = AuditKey::from_bytes(key);
            let head = Head {
                seq: h.seq,
                hash: h.hash.clone(),
                file_first_seq: h.file_first_seq,
                first_seq: None,
                mac: k.mac(Head::mac_input(h.seq, &h.hash, h.file_first_seq, None).as_bytes()),
            };
            let text = serde_json::to_string(&head).map_err(|e| AuditError(e.to_string()))?;
            std::fs::write(head_path(&path), text).map_err(io)?;
        }
        let opts = Options {
            rotate_bytes: u64::MAX,
            ..Options::default()
        };
        let mut w = Writer::open_with(&path, AuditKey::from_bytes(key), &opts)?;
        let ev = Event {
            request_id: "fuzz".into(),
            identity: "fuzz".into(),
            op: "encrypt",
            result: "OK",
            peer: "unix".into(),
            ..Event::default()
        };
        w.write_batch(&[&ev], true).map_err(|e| e.error().clone())?;
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let head = read_head(&path, &AuditKey::from_bytes(key))
            .map_err(AuditError)?
            .ok_or_else(|| AuditError("no head after a durable write".into()))?;
        Ok((text, head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            std::sync::Arc::new(crate::metrics::Metrics::default()),
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
}
