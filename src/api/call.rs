//! The per-call pipeline every handler goes through: [`Shared::begin`]
//! (identity from the verified certificate, policy, second factor, durable
//! intent record for administrative calls) and [`Shared::finish`] (metrics,
//! one log line and one audit record — identity, operation, key, result;
//! never plaintext, ciphertext, tokens, codes or key material — and the one
//! `From<Error> for Status`). Also the batch bookkeeping shared by the
//! batch calls, and `blocking` for work that may touch the store.
//!
//! Never decides policy itself (that is [`crate::authz`]) and never touches
//! key material.
use crate::authz::{Access, Call, Op};
use crate::error::{Cancel, Error, Forbidden, Limit};
use crate::ops::metrics::Metrics;
use crate::proto;
use crate::rings::Rings;
use crate::tls::PeerIdentity;
use rand::RngCore;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tonic::{Request, Status};

/// The caller's identity, or `UNAUTHENTICATED` if the connection did not
/// come through the mTLS acceptor (it always does).
pub fn identity<T>(req: &Request<T>) -> Result<Arc<PeerIdentity>, Error> {
    req.extensions()
        .get::<Arc<PeerIdentity>>()
        .cloned()
        .ok_or(Error::NoClientCertificate)
}

/// State every service shares: the key rings and access control (set
/// once the store is loaded; until then calls answer UNAVAILABLE and
/// health NOT_SERVING) and the metrics.
#[derive(Debug, Default)]
pub struct Shared {
    /// The key rings, once loaded.
    pub rings: OnceLock<Arc<Rings>>,
    /// Policy, second factor, dual control, audit; once loaded.
    pub access: OnceLock<Arc<Access>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Batches larger than this run in `block_in_place`.
const BLOCK_IN_PLACE_ITEMS: usize = 256;

impl Shared {
    /// The key rings, or UNAVAILABLE while starting.
    pub fn rings(&self) -> Result<&Arc<Rings>, Error> {
        self.rings.get().ok_or(Error::Starting)
    }

    /// Access control, or UNAVAILABLE while starting.
    pub fn access(&self) -> Result<&Arc<Access>, Error> {
        self.access.get().ok_or(Error::Starting)
    }

    /// Starts a call: identity, policy, second factor, and (administrative
    /// calls) the durable intent record. Refusals are audited.
    pub fn begin<T>(&self, req: &Request<T>, op: Op, key: Option<&str>) -> Result<Call, Error> {
        let peer = identity(req)?;
        let call = Call {
            peer,
            op,
            key: key.map(str::to_owned),
            request_id: request_id(req),
            started: Instant::now(),
            version: Default::default(),
            detail: Mutex::new(None),
            batch: Default::default(),
            owed: Default::default(),
        };
        let access = self.access()?;
        // (a pre-parsed header name: no per-call parsing of the name)
        static OTP: http::HeaderName = http::HeaderName::from_static(crate::authz::OTP_HEADER);
        let otp = req.metadata().as_ref().get(&OTP).and_then(|v| v.to_str().ok());
        if let Err(e) = access.authorize(&call, otp) {
            self.observe(&call, Some(&e));
            return Err(e);
        }
        call.owe_outcome(access.clone());
        Ok(call)
    }

    fn observe(&self, call: &Call, error: Option<&Error>) {
        let elapsed = call.started.elapsed();
        let code = error.map_or(tonic::Code::Ok, Error::code);
        self.metrics.observe(call.op.as_str(), code, elapsed);
        let (id, op, key) = (call.peer.id(), call.op.as_str(), call.key.as_deref().unwrap_or(""));
        let micros = elapsed.as_micros() as u64;
        match error {
            Some(e) => {
                tracing::info!(identity = id, peer = %call.peer.peer_addr, request_id = %call.request_id, op, key, code = ?code, error = %e, micros, "request")
            }
            None if call.op.is_admin() => {
                tracing::info!(identity = id, peer = %call.peer.peer_addr, request_id = %call.request_id, op, key, code = "OK", micros, "request")
            }
            None => {
                tracing::debug!(identity = id, peer = %call.peer.peer_addr, request_id = %call.request_id, op, key, code = "OK", micros, "request")
            }
        }
    }

    /// Ends a call: metrics, log line, audit record, and the error as a
    /// status (the one `From<Error> for Status`). A result whose audit
    /// record cannot be written (`on_failure = "fail"`) is not given out:
    /// UNAVAILABLE.
    pub fn finish<T>(&self, call: &Call, result: Result<T, Error>) -> Result<T, Status> {
        self.end(call, result).map_err(Status::from)
    }

    /// Ends a call that failed with `e`: [`Shared::finish`] of an error.
    pub fn fail(&self, call: &Call, e: Error) -> Status {
        match self.end::<std::convert::Infallible>(call, Err(e)) {
            Ok(never) => match never {},
            Err(e) => e.into(),
        }
    }

    fn end<T>(&self, call: &Call, mut result: Result<T, Error>) -> Result<T, Error> {
        let code = result.as_ref().map_or_else(Error::code, |_| tonic::Code::Ok);
        if let Some(access) = self.access.get() {
            if let Err(e) = access.record_outcome(call, code) {
                if result.is_ok() {
                    result = Err(Error::AuditOutcome(e));
                }
            }
        }
        self.observe(call, result.as_ref().err());
        result
    }

    /// A request stream that failed mid-call (reset by the client, the
    /// connection lost): the call ends CANCELLED in the audit trail, with
    /// the stream's error as detail; the caller gets the stream's status.
    pub fn stream_failed(&self, call: &Call, status: Status) -> Status {
        let why: String = status.message().chars().take(200).collect();
        *call.detail.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("request stream failed ({:?}): {why}", status.code()));
        let _ = self.end::<()>(call, Err(Error::Cancelled(Cancel::RequestStream)));
        Error::RequestStream(status).into()
    }

    /// A call whose policy decision is made per item (batches, listings):
    /// still logged, measured and audited by `finish`.
    pub fn begin_unchecked<T>(&self, req: &Request<T>, op: Op, detail: &str) -> Result<Call, Error> {
        let call = Call {
            peer: identity(req)?,
            op,
            key: None,
            request_id: request_id(req),
            started: Instant::now(),
            version: Default::default(),
            detail: Mutex::new(Some(detail.to_owned())),
            batch: Default::default(),
            owed: Default::default(),
        };
        if let Some(access) = self.access.get() {
            if let Some(source) = access.audit.unavailable() {
                let e = Error::AuditRefused { source, what: "call" };
                self.observe(&call, Some(&e));
                return Err(e);
            }
            call.owe_outcome(access.clone());
        }
        Ok(call)
    }

    /// Whether the caller may do `op` on `key` (batch items, list filtering).
    pub fn allowed(&self, call: &Call, op: Op, key: &str) -> bool {
        self.access
            .get()
            .is_some_and(|a| a.policy().check(call.peer.id(), op, Some(key)).is_ok())
    }
}

/// Runs work that may touch the store (fsync) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(Error::StoreUnavailable))
}

/// One batch call (`EncryptBatch`, `DecryptBatch`, `RewrapBatch`): the
/// one place their items are checked, run, counted and answered.
pub(super) struct Batch<'a> {
    /// Shared state (policy for each item, the call's end).
    pub(super) shared: &'a Shared,
    /// The batch's own call.
    pub(super) call: &'a Call,
    /// Most items accepted in one call (`limits.max_batch_items`).
    pub(super) max_items: usize,
}

impl Batch<'_> {
    /// Runs a batch and ends its call: the size limit for the whole call,
    /// then each item on its own, checked against the policy (a denied or
    /// failing item gets its own error; one bad item never fails the
    /// batch); `wrap` makes each result the response's item.
    ///
    /// The audit trail gets one record per key, version and result of the
    /// items (`version_of`: the version an item used and, for rewrap, the
    /// one it came from), besides the call's own record.
    pub(super) fn run<I, O, W>(
        &self,
        items: &[I],
        key_of: impl Fn(&I) -> &str,
        f: impl FnMut(&I) -> Result<O, Error>,
        version_of: impl Fn(&O) -> (u32, Option<u32>),
        wrap: impl Fn(Result<O, proto::ItemError>) -> W,
    ) -> Result<Vec<W>, Status> {
        let out = self.items(items, key_of, f, version_of);
        let out = self.shared.finish(self.call, out)?;
        Ok(out.into_iter().map(wrap).collect())
    }

    fn items<I, O>(
        &self,
        items: &[I],
        key_of: impl Fn(&I) -> &str,
        mut f: impl FnMut(&I) -> Result<O, Error>,
        version_of: impl Fn(&O) -> (u32, Option<u32>),
    ) -> Result<Vec<Result<O, proto::ItemError>>, Error> {
        let n = items.len();
        if n > self.max_items {
            return Err(Error::TooLarge(Limit::BatchItems {
                items: n,
                max: self.max_items,
            }));
        }
        let call = self.call;
        let mut run = || -> Vec<Result<O, proto::ItemError>> {
            items
                .iter()
                .map(|it| {
                    let key = key_of(it);
                    if self.shared.allowed(call, call.op, key) {
                        f(it).map_err(item_error)
                    } else {
                        Err(item_error(Error::PermissionDenied(Forbidden::BatchItem {
                            op: call.op.as_str(),
                            key: key.to_owned(),
                        })))
                    }
                })
                .collect()
        };
        // A large batch is milliseconds of CPU: hand this worker's other
        // tasks (health, metrics, other callers) to another thread first.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let out = if n > BLOCK_IN_PLACE_ITEMS && multi_thread {
            tokio::task::block_in_place(run)
        } else {
            run()
        };
        let errors = out.iter().filter(|r| r.is_err()).count();
        if let Ok(mut d) = call.detail.lock() {
            *d = Some(format!("batch items={n} errors={errors}"));
        }
        *call.batch.lock().unwrap_or_else(|p| p.into_inner()) = batch_parts(items, &out, key_of, version_of);
        Ok(out)
    }
}

/// A failed item, as the batch response carries it.
fn item_error(e: Error) -> proto::ItemError {
    let s = Status::from(e);
    proto::ItemError {
        code: s.code() as i32,
        message: s.message().to_owned(),
    }
}

/// Counts a batch's items per key, version (and source version) and
/// result, in the order each combination first appears.
fn batch_parts<I, O>(
    items: &[I],
    out: &[Result<O, proto::ItemError>],
    key_of: impl Fn(&I) -> &str,
    version_of: impl Fn(&O) -> (u32, Option<u32>),
) -> Vec<crate::authz::BatchPart> {
    let mut parts: Vec<crate::authz::BatchPart> = Vec::new();
    // (key, version, source version, code) -> its part
    type Group<'a> = (&'a str, Option<u32>, Option<u32>, i32);
    let mut index: std::collections::HashMap<Group<'_>, usize> = Default::default();
    for (it, r) in items.iter().zip(out) {
        let (version, from, code) = match r {
            Ok(o) => {
                let (v, from) = version_of(o);
                (Some(v), from, tonic::Code::Ok)
            }
            Err(e) => (None, None, tonic::Code::from_i32(e.code)),
        };
        let key = key_of(it);
        let slot = *index.entry((key, version, from, code as i32)).or_insert_with(|| {
            parts.push(crate::authz::BatchPart {
                key: key.to_owned(),
                version,
                from_version: from,
                code,
                items: 0,
            });
            parts.len() - 1
        });
        if let Some(p) = parts.get_mut(slot) {
            p.items += 1;
        }
    }
    parts
}

/// A request id: the caller's `x-request-id` if it is short and plain,
/// else a random one.
pub fn request_id<T>(req: &Request<T>) -> String {
    static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    if let Some(v) = req.metadata().as_ref().get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
        if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
            return v.to_owned();
        }
    }
    // A per-process random prefix and a counter: unique, and no system
    // call on the data path.
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| rand::rngs::OsRng.next_u32());
    format!(
        "{prefix:08x}-{:x}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}
