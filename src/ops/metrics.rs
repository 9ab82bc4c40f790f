//! Prometheus metrics, kept in atomics (no lock on the request path) and
//! rendered in the text exposition format on a separate, internal-only
//! listener. Labels never carry secrets; key names appear only when the
//! operator enables `metrics.key_labels`.
use kmsd_keystore::UnixTime;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The key rings at one moment, as the metrics show them. The caller takes
/// it (`server`), so this module never reads the key rings.
#[derive(Debug, Clone, Default)]
pub struct KeySnapshot {
    /// Key rings.
    pub keys: u64,
    /// Versions by state: active, decrypt-only, disabled, scheduled for
    /// destruction, destroyed.
    pub versions_by_state: [u64; 5],
    /// Rotations since start: manual, scheduled, usage.
    pub rotations_by_reason: [u64; 3],
    /// Store reads caused by ciphertexts naming versions not in memory.
    pub version_miss_reads: u64,
    /// Whether this node runs scheduled work (always, alone on sled; the
    /// elected leader on etcd).
    pub scheduler_leader: bool,
    /// Scheduled writes refused by their fence (another node leads).
    pub fenced_writes: u64,
    /// The keys' clock at the snapshot.
    pub now: UnixTime,
    /// The earliest scheduled deadline (rotation or destruction).
    pub next_deadline: Option<UnixTime>,
    /// Each key's deadline: empty unless `metrics.key_labels` is on (key
    /// names appear in labels only then).
    pub scheduled: Vec<(String, UnixTime)>,
}

/// Operation names used as the `method` label.
pub const OPS: &[&str] = &[
    "encrypt",
    "decrypt",
    "rewrap",
    "datakey",
    "mask",
    "redact",
    "tokenize",
    "detokenize",
    "key.read",
    "key.create",
    "key.rotate",
    "key.policy",
    "key.version_state",
    "key.destroy",
    "master.rekey",
    "backup",
    "restore",
    "audit.read",
    "approval",
    "admin.reload",
    "mac",
    "sign",
    "verify",
    "other",
];

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`): the `code`
/// label here, and the result of audit records ([`crate::error::code_name`]).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Latency bucket upper bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// A fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            if let Some(b) = self.buckets.get(i) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Every metric the daemon keeps.
#[derive(Debug)]
pub struct Metrics {
    requests: Vec<[AtomicU64; 17]>,
    latency: Vec<Histogram>,
    /// TLS handshakes that failed (bad or missing client certificate, ...).
    pub tls_handshake_failures: AtomicU64,
    /// TLS handshakes dropped for taking too long.
    pub tls_handshake_timeouts: AtomicU64,
    /// Authenticated connections refused at the connection cap.
    pub connections_refused: AtomicU64,
    /// Pending handshakes dropped to make room for a newer connection.
    pub handshakes_evicted: AtomicU64,
    /// Authenticated connections closed after the idle timeout.
    pub idle_closed: AtomicU64,
    /// Connections in the TLS handshake now.
    pub handshakes_in_progress: AtomicU64,
    /// Authenticated connections open now.
    pub connections_established: AtomicU64,
    /// Audit record write latency (from enqueue to durable).
    pub audit_write: Histogram,
    /// Audit records that could not be written.
    pub audit_write_failures: AtomicU64,
    /// Configuration reloads, good and refused.
    pub reloads_ok: AtomicU64,
    /// Refused reloads (the old configuration stayed).
    pub reloads_failed: AtomicU64,
    /// Start time (Unix seconds).
    pub started_at: i64,
    /// gRPC requests the server has accepted and not yet answered.
    pub in_flight: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: OPS.iter().map(|_| Default::default()).collect(),
            latency: OPS.iter().map(|_| Histogram::default()).collect(),
            tls_handshake_failures: AtomicU64::new(0),
            tls_handshake_timeouts: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            handshakes_evicted: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            handshakes_in_progress: AtomicU64::new(0),
            connections_established: AtomicU64::new(0),
            audit_write: Histogram::default(),
            audit_write_failures: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            started_at: kmsd_keystore::Clock::now(&kmsd_keystore::SystemClock),
            in_flight: AtomicU64::new(0),
        }
    }
}

fn op_index(op: &str) -> usize {
    OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1)
}

impl Metrics {
    /// Records one finished request.
    pub fn observe(&self, op: &str, code: tonic::Code, elapsed: std::time::Duration) {
        let i = op_index(op);
        if let Some(row) = self.requests.get(i) {
            if let Some(c) = row.get(code as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(h) = self.latency.get(i) {
            h.observe(elapsed);
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self, keys: Option<&KeySnapshot>) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str(
            "# HELP kmsd_requests_total Requests by method and gRPC status.\n# TYPE kmsd_requests_total counter\n",
        );
        for (op, row) in OPS.iter().zip(&self.requests) {
            for (i, n) in row.iter().enumerate() {
                let code = code_name(tonic::Code::from_i32(i as i32));
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "kmsd_requests_total{{method=\"{op}\",code=\"{code}\"}} {n}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP kmsd_requests_in_flight gRPC requests accepted and not yet answered.\n# TYPE kmsd_requests_in_flight gauge\nkmsd_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP kmsd_request_duration_seconds Request latency by method.\n# TYPE kmsd_request_duration_seconds histogram\n");
        for (op, h) in OPS.iter().zip(&self.latency) {
            if h.count.load(Ordering::Relaxed) > 0 {
                h.render(&mut out, "kmsd_request_duration_seconds", &format!("method=\"{op}\""));
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut out,
            "kmsd_tls_handshake_failures_total",
            "TLS handshakes that failed.",
            self.tls_handshake_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kmsd_tls_handshake_timeouts_total",
            "TLS handshakes dropped after the timeout.",
            self.tls_handshake_timeouts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kmsd_connections_refused_total",
            "Authenticated connections refused at the connection cap.",
            self.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kmsd_tls_handshakes_evicted_total",
            "Pending TLS handshakes dropped because the handshake budget was full.",
            self.handshakes_evicted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kmsd_idle_connections_closed_total",
            "Authenticated connections closed after the idle timeout.",
            self.idle_closed.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP kmsd_connections Open connections by state.\n# TYPE kmsd_connections gauge\nkmsd_connections{{state=\"handshake\"}} {}\nkmsd_connections{{state=\"established\"}} {}",
            self.handshakes_in_progress.load(Ordering::Relaxed),
            self.connections_established.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "kmsd_audit_write_failures_total",
            "Audit records that could not be written.",
            self.audit_write_failures.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kmsd_reloads_total",
            "Configuration reloads applied.",
            self.reloads_ok.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kmsd_reload_failures_total",
            "Configuration reloads refused.",
            self.reloads_failed.load(Ordering::Relaxed),
        );
        out.push_str("# HELP kmsd_audit_write_seconds Audit record latency until durable.\n# TYPE kmsd_audit_write_seconds histogram\n");
        self.audit_write.render(&mut out, "kmsd_audit_write_seconds", "");
        let _ = writeln!(out, "# HELP kmsd_start_time_seconds Start time.\n# TYPE kmsd_start_time_seconds gauge\nkmsd_start_time_seconds {}", self.started_at);
        let _ = writeln!(
            out,
            "# HELP kmsd_ready Whether the daemon is serving.\n# TYPE kmsd_ready gauge\nkmsd_ready {}",
            u8::from(keys.is_some())
        );
        if let Some(s) = keys {
            let _ = writeln!(
                out,
                "# HELP kmsd_keys Key rings.\n# TYPE kmsd_keys gauge\nkmsd_keys {}",
                s.keys
            );
            out.push_str("# HELP kmsd_key_versions Key versions by state.\n# TYPE kmsd_key_versions gauge\n");
            for (state, n) in [
                "ACTIVE",
                "DECRYPT_ONLY",
                "DISABLED",
                "SCHEDULED_FOR_DESTRUCTION",
                "DESTROYED",
            ]
            .iter()
            .zip(s.versions_by_state)
            {
                let _ = writeln!(out, "kmsd_key_versions{{state=\"{state}\"}} {n}");
            }
            out.push_str("# HELP kmsd_rotations_total Rotations by reason.\n# TYPE kmsd_rotations_total counter\n");
            for (reason, n) in ["manual", "scheduled", "usage"].iter().zip(s.rotations_by_reason) {
                let _ = writeln!(out, "kmsd_rotations_total{{reason=\"{reason}\"}} {n}");
            }
            out.push_str("# HELP kmsd_version_miss_store_reads_total Store reads for ciphertexts naming a key version not in memory.\n# TYPE kmsd_version_miss_store_reads_total counter\n");
            let _ = writeln!(out, "kmsd_version_miss_store_reads_total {}", s.version_miss_reads);
            out.push_str("# HELP kmsd_scheduler_leader Whether this node runs scheduled rotations and destructions (1: alone on its store, or the elected leader).\n# TYPE kmsd_scheduler_leader gauge\n");
            let _ = writeln!(out, "kmsd_scheduler_leader {}", u8::from(s.scheduler_leader));
            out.push_str("# HELP kmsd_scheduler_fenced_writes_total Scheduled writes refused by their fence: this node had lost the leadership.\n# TYPE kmsd_scheduler_fenced_writes_total counter\n");
            let _ = writeln!(out, "kmsd_scheduler_fenced_writes_total {}", s.fenced_writes);
            let now = s.now;
            out.push_str("# HELP kmsd_next_rotation_seconds Seconds until the next scheduled rotation.\n# TYPE kmsd_next_rotation_seconds gauge\n");
            if let Some(t) = s.next_deadline {
                let _ = writeln!(out, "kmsd_next_rotation_seconds {}", t - now);
            }
            for (name, t) in &s.scheduled {
                let _ = writeln!(out, "kmsd_next_rotation_seconds{{key=\"{name}\"}} {}", t - now);
            }
        }
        out
    }
}

/// A tower layer that counts requests from the moment the server accepts
/// them (an HTTP/2 stream a graceful shutdown will let finish) until the
/// response is ready or the call is dropped.
#[derive(Debug, Clone)]
pub struct InFlightLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for InFlightLayer {
    type Service = InFlight<S>;
    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`InFlightLayer`].
#[derive(Debug, Clone)]
pub struct InFlight<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, R> tower::Service<R> for InFlight<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightFuture {
            inner: self.inner.call(req),
            _guard: InFlightGuard(self.metrics.clone()),
        }
    }
}

#[derive(Debug)]
struct InFlightGuard(Arc<Metrics>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`InFlight`].
    #[derive(Debug)]
    pub struct InFlightFuture<F> {
        #[pin]
        inner: F,
        _guard: InFlightGuard,
    }
}

impl<F: std::future::Future> std::future::Future for InFlightFuture<F> {
    type Output = F::Output;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}
