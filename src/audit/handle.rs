//! What callers hold: [`AuditHandle`] queues records for the writer
//! thread (data path: no wait; administrative calls: wait until durable)
//! and applies `[audit] on_failure` when it cannot.
use super::chain::Anchor;
use super::record::Event;
use super::writer::OnFailure;
use super::AuditError;
use std::sync::mpsc;

pub(super) struct Job {
    /// None: a flush (everything before it durable, nothing written).
    pub(super) event: Option<Event>,
    pub(super) done: Option<mpsc::SyncSender<Result<(), AuditError>>>,
}

/// The writer's health, shared with every handle.
#[derive(Default)]
pub(super) struct Health {
    /// The last write (or sync) failed and nothing has been written since.
    pub(super) failed: std::sync::atomic::AtomicBool,
    /// Why (for the callers' message and the daemon's log).
    pub(super) error: std::sync::Mutex<String>,
}

/// Hands records to the writer thread.
#[derive(Clone)]
pub struct AuditHandle {
    pub(super) tx: mpsc::SyncSender<Job>,
    pub(super) metrics: std::sync::Arc<crate::ops::metrics::Metrics>,
    pub(super) head: std::sync::Arc<std::sync::Mutex<Anchor>>,
    pub(super) health: std::sync::Arc<Health>,
    pub(super) on_failure: OnFailure,
    pub(super) queue_wait: std::time::Duration,
    /// The writer thread, unparked for durable records only: data-path
    /// records are picked up on its next tick, so a request never pays for
    /// waking it.
    pub(super) writer: std::thread::Thread,
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
