//! The writer thread: group commit (everything queued goes out with one
//! `write` and one `fdatasync`, then the head file moves), rotation,
//! retention, and retrying after a failed write.
use super::chain::{head_path, rotated_files, rotated_path, Anchor, Head, Rotated};
use super::handle::{AuditHandle, Health, Job};
use super::record::{AuditKey, Event, LineWriter};
use super::AuditError;
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

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

/// Why a batch failed: before its records reached the file (they are
/// kept and written again), or after (they are in the file; what failed
/// was the sync, the head or the rotation, which are retried).
#[derive(Debug)]
pub(super) enum WriteError {
    NotWritten(AuditError),
    Written(AuditError),
}

impl WriteError {
    pub(super) fn error(&self) -> &AuditError {
        match self {
            WriteError::NotWritten(e) | WriteError::Written(e) => e,
        }
    }
}

/// The writer's state.
pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) key: AuditKey,
    pub(super) lines: LineWriter,
    pub(super) buf: String,
    /// The open log and its inode (reopened if the path changes).
    pub(super) file: Option<(std::fs::File, u64)>,
    /// Written but not yet synced.
    pub(super) dirty: bool,
    /// Synced, but the head file does not say so yet.
    pub(super) head_stale: bool,
    /// A write failed part-way: the log must be cut back to this length
    /// before anything else is appended (a torn line would break the chain).
    pub(super) cut_to: Option<u64>,
    pub(super) last_sync: std::time::Instant,
    pub(super) rotate_bytes: u64,
    pub(super) keep_files: Option<usize>,
    pub(super) keep_age: Option<std::time::Duration>,
    pub(super) seq: u64,
    pub(super) last_hash: String,
    pub(super) file_first_seq: u64,
    /// First sequence number of the oldest retained file.
    pub(super) first_seq: u64,
}

impl Writer {
    /// Appends records. `durable`: sync before returning (an
    /// administrative call waits on it); otherwise the batch is synced
    /// within [`SYNC_EVERY`] (data-path records).
    pub(super) fn write_batch(&mut self, events: &[&Event], durable: bool) -> Result<(), WriteError> {
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
    pub(super) fn log_file(&mut self) -> Result<&mut std::fs::File, AuditError> {
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

    pub(super) fn append(&mut self, buf: &str, seq: u64, hash: String, durable: bool) -> Result<(), WriteError> {
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
    pub(super) fn retry(&mut self) -> Result<(), AuditError> {
        let len = self.log_file()?.metadata().map(|m| m.len()).unwrap_or(0);
        self.sync()?;
        if len >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Whether written records still wait for their sync or head.
    pub(super) fn needs_sync(&self) -> bool {
        self.dirty || self.head_stale
    }

    /// Makes everything written durable, then moves the head.
    pub(super) fn sync(&mut self) -> Result<(), AuditError> {
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

    pub(super) fn write_head(&self) -> Result<(), AuditError> {
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
    pub(super) fn rotate(&mut self) -> Result<(), AuditError> {
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
    pub(super) fn prune(&mut self) -> Result<(), AuditError> {
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
    metrics: std::sync::Arc<crate::ops::metrics::Metrics>,
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
