//! `kmsd.v1.Mask`: masking and redaction (pure functions of
//! [`crate::masking`], shared with `kmsctl redact`), and tokenization
//! under ordinary kmsd key rings.
//!
//! What one redaction may cost is bounded here: the scan is linear in the
//! text (see [`crate::masking::detect`]); texts over `INLINE_REDACT_BYTES`
//! run on the blocking pool, never on the async workers that serve every
//! other call; the scan stops at the request's deadline or when the caller
//! goes away (it is asked every [`masking::detect::STOP_CHECK_BYTES`]); and
//! the bytes being redacted or waiting to be sent back are bounded per
//! stream and over the process ([`RedactionLimits`]).
use super::call::Shared;
use crate::authz::Op;
use crate::config::Limits;
use crate::deadline::RequestDeadline;
use crate::error::{Cancel, Deadline, Error, Invalid, Limit};
use crate::masking::{self, Kind};
use crate::proto;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

/// Texts larger than this are redacted off the async workers (a linear scan
/// of 64 KiB is well under a millisecond).
const INLINE_REDACT_BYTES: usize = 64 * 1024;

/// `kmsd.v1.Mask`.
#[derive(Debug, Clone)]
pub struct MaskService {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// What a redaction may cost in time and memory.
    pub limits: Arc<RedactionLimits>,
    /// Tokenize calls per identity (`limits.tokenize_rate`): a caller
    /// with only `tokenize` can otherwise recover values of a small
    /// domain by tokenizing every candidate (tokens are deterministic).
    pub tokenize_limit: Arc<crate::rate::RateLimiter>,
    /// The operator's own redaction rules (`[redaction]`).
    pub rules: Arc<masking::Rules>,
}

/// Time and memory bounds of redaction.
#[derive(Debug)]
pub struct RedactionLimits {
    /// The request timeout: each `Redact` call, and each message of a
    /// `RedactStream`, must be redacted within it.
    timeout: Duration,
    /// KiB of redaction in flight over the process: a message holds
    /// [`cost_kib`] of it from before it is redacted until its response is
    /// handed to the transport.
    memory: Arc<Semaphore>,
    /// `memory`'s size, the most one message may take.
    total_kib: u32,
    /// Each stream's own share: two maximum-size messages, so one stream
    /// that does not read its responses holds at most that much.
    per_stream_kib: u32,
}

impl RedactionLimits {
    /// Limits from the configuration.
    pub fn new(limits: &Limits) -> Self {
        let total_kib = u32::try_from(limits.max_redaction_bytes_in_flight / 1024)
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u32);
        let per_stream_kib = cost_kib(limits.max_message_bytes).saturating_mul(2).min(total_kib);
        RedactionLimits {
            timeout: limits.request_timeout,
            memory: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            per_stream_kib,
        }
    }

    /// When the work for `req` must stop: its deadline (the request
    /// timeout, or the caller's `grpc-timeout` if shorter, counted from
    /// when the request arrived) less a small margin, so that this call
    /// answers `DEADLINE_EXCEEDED` itself, with its audit record, just
    /// before the deadline layer would.
    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        let deadline = RequestDeadline::of(req, self.timeout);
        let margin = (self.timeout / 10).min(Duration::from_millis(50));
        deadline.checked_sub(margin).unwrap_or(deadline)
    }
}

/// What redacting a text of `len` bytes holds, in KiB: the text, and its
/// redacted copy about as long.
fn cost_kib(len: usize) -> u32 {
    u32::try_from(len.saturating_mul(2) / 1024 + 1).unwrap_or(u32::MAX)
}

/// Sets the flag when the call that owns it is dropped (the client went
/// away, or the transport's timeout fired), so the scan on the blocking
/// pool stops.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Memory taken for one message; released when dropped.
#[derive(Debug)]
struct Held {
    _stream: Option<OwnedSemaphorePermit>,
    _process: OwnedSemaphorePermit,
}

/// Takes `len`'s cost from the stream's share (if any) and the process's,
/// waiting at most until `deadline`.
async fn hold(
    limits: &RedactionLimits,
    stream: Option<&Arc<Semaphore>>,
    len: usize,
    deadline: Instant,
) -> Result<Held, Error> {
    let cost = cost_kib(len);
    let wait = async {
        let stream = match stream {
            Some(s) => Some(s.clone().acquire_many_owned(cost.min(limits.per_stream_kib)).await),
            None => None,
        };
        let process = limits
            .memory
            .clone()
            .acquire_many_owned(cost.min(limits.total_kib))
            .await;
        (stream, process)
    };
    match tokio::time::timeout_at(deadline.into(), wait).await {
        Ok((Some(Ok(s)), Ok(p))) => Ok(Held {
            _stream: Some(s),
            _process: p,
        }),
        Ok((None, Ok(p))) => Ok(Held {
            _stream: None,
            _process: p,
        }),
        // The semaphores are never closed.
        Ok(_) => Err(Error::StoreUnavailable),
        Err(_) => Err(Error::DeadlineExceeded(Deadline::RedactionRoom)),
    }
}

/// Redacts one request within `deadline`: inline when small, on the
/// blocking pool otherwise; stops when `deadline` passes or `gone` says the
/// caller went away.
async fn redact_bounded(
    req: proto::RedactRequest,
    rules: Arc<masking::Rules>,
    deadline: Instant,
    gone: impl Fn() -> bool + Send + 'static,
) -> Result<proto::RedactResponse, Error> {
    if req.text.len() <= INLINE_REDACT_BYTES {
        return redact_until(&req, &rules, deadline, &gone);
    }
    tokio::task::spawn_blocking(move || redact_until(&req, &rules, deadline, &gone))
        .await
        .unwrap_or(Err(Error::StoreUnavailable))
}

fn redact_until(
    req: &proto::RedactRequest,
    rules: &masking::Rules,
    deadline: Instant,
    gone: &dyn Fn() -> bool,
) -> Result<proto::RedactResponse, Error> {
    let stop = || gone() || Instant::now() >= deadline;
    let stopped = || {
        if gone() {
            Error::Cancelled(Cancel::Redaction)
        } else {
            Error::DeadlineExceeded(Deadline::Redaction)
        }
    };
    redact_with(req, rules, &stop, &stopped)
}

/// The wire kind as a masking kind.
pub fn kind_from_proto(k: i32) -> Result<Kind, Error> {
    use proto::DataKind as D;
    Ok(match D::try_from(k).unwrap_or(D::Unspecified) {
        D::Pan => Kind::Pan,
        D::Iban => Kind::Iban,
        D::UkSortCode => Kind::UkSortCode,
        D::UkAccountNumber => Kind::UkAccountNumber,
        D::Email => Kind::Email,
        D::Phone => Kind::Phone,
        D::Name => Kind::Name,
        D::Secret => Kind::Secret,
        D::Jwt => Kind::Jwt,
        D::BearerToken => Kind::BearerToken,
        D::ApiKey => Kind::ApiKey,
        D::Password => Kind::Password,
        D::TrackData => Kind::TrackData,
        D::NationalId => Kind::NationalId,
        D::DateOfBirth => Kind::DateOfBirth,
        D::Address => Kind::Address,
        D::Custom => Kind::Custom,
        D::Unspecified => return Err(Error::InvalidArgument(Invalid::DataKind)),
    })
}

fn kind_to_proto(k: Kind) -> proto::DataKind {
    use proto::DataKind as D;
    match k {
        Kind::Pan => D::Pan,
        Kind::Iban => D::Iban,
        Kind::UkSortCode => D::UkSortCode,
        Kind::UkAccountNumber => D::UkAccountNumber,
        Kind::Email => D::Email,
        Kind::Phone => D::Phone,
        Kind::Name => D::Name,
        Kind::Secret => D::Secret,
        Kind::Jwt => D::Jwt,
        Kind::BearerToken => D::BearerToken,
        Kind::ApiKey => D::ApiKey,
        Kind::Password => D::Password,
        Kind::TrackData => D::TrackData,
        Kind::NationalId => D::NationalId,
        Kind::DateOfBirth => D::DateOfBirth,
        Kind::Address => D::Address,
        Kind::Custom => D::Custom,
    }
}

/// Redacts one request (pure).
pub fn redact(req: &proto::RedactRequest) -> Result<proto::RedactResponse, Error> {
    redact_with(req, &masking::Rules::default(), &|| false, &|| {
        Error::Cancelled(Cancel::RedactionStopped)
    })
}

/// Redacts one request, asking `stop` as it goes; `stopped` is the error
/// when it said to stop.
fn redact_with(
    req: &proto::RedactRequest,
    rules: &masking::Rules,
    stop: &dyn Fn() -> bool,
    stopped: &dyn Fn() -> Error,
) -> Result<proto::RedactResponse, Error> {
    let kinds = if req.kinds.is_empty() {
        None
    } else {
        Some(
            req.kinds
                .iter()
                .map(|k| kind_from_proto(*k))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let r =
        masking::redact_until_with(&req.text, &masking::RedactOptions { kinds }, rules, stop).map_err(|_| stopped())?;
    Ok(proto::RedactResponse {
        text: r.text,
        findings: r
            .findings
            .iter()
            .map(|f| proto::Finding {
                kind: kind_to_proto(f.kind) as i32,
                start: f.start as u32,
                end: f.end as u32,
            })
            .collect(),
    })
}

/// The tweak binding tokens to their key ring.
fn tweak(key: &str) -> Vec<u8> {
    let mut t = b"kmsd token v1:".to_vec();
    t.extend_from_slice(key.as_bytes());
    t
}

fn token_error(e: masking::TokenError) -> Error {
    Error::InvalidArgument(Invalid::Token(e))
}

#[tonic::async_trait]
impl proto::mask_server::Mask for MaskService {
    async fn mask(&self, req: Request<proto::MaskRequest>) -> Result<Response<proto::MaskResponse>, Status> {
        let call = self.shared.begin(&req, Op::Mask, None)?;
        let r = req.into_inner();
        let result = kind_from_proto(r.kind).and_then(|kind| {
            let bin = match r.pan_keep_bin {
                0 => None,
                6 | 8 => Some(r.pan_keep_bin as u8),
                _ => return Err(Error::InvalidArgument(Invalid::PanKeepBin)),
            };
            masking::mask(&r.value, kind, &masking::MaskOptions { pan_keep_bin: bin })
                .map(|m| proto::MaskResponse {
                    masked: m.masked,
                    valid: m.valid,
                })
                .map_err(|e| Error::InvalidArgument(Invalid::Mask(e)))
        });
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn redact(&self, req: Request<proto::RedactRequest>) -> Result<Response<proto::RedactResponse>, Status> {
        let call = self.shared.begin(&req, Op::Redact, None)?;
        let deadline = self.limits.deadline(&req);
        let r = req.into_inner();
        // Dropped with this future when the client cancels or the
        // transport's timeout fires: the scan then stops.
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let result = match hold(&self.limits, None, r.text.len(), deadline).await {
            Ok(_held) => {
                let flag = cancel.0.clone();
                redact_bounded(r, self.rules.clone(), deadline, move || flag.load(Ordering::Relaxed)).await
            }
            Err(e) => Err(e),
        };
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    type RedactStreamStream = Pin<Box<dyn Stream<Item = Result<proto::RedactResponse, Status>> + Send>>;

    async fn redact_stream(
        &self,
        req: Request<Streaming<proto::RedactRequest>>,
    ) -> Result<Response<Self::RedactStreamStream>, Status> {
        let call = self.shared.begin(&req, Op::Redact, None)?;
        let mut inbound = req.into_inner();
        // Responses carry the memory they hold (`Held`) until the transport
        // takes them: when the client stops reading, the stream's share
        // runs out, the task stops reading its input, and HTTP/2 flow
        // control pushes back. The channel's length bounds items, the
        // share bounds bytes.
        let (tx, rx) = tokio::sync::mpsc::channel::<(Result<proto::RedactResponse, Status>, Option<Held>)>(32);
        let shared = self.shared.clone();
        let limits = self.limits.clone();
        let rules = self.rules.clone();
        let share = Arc::new(Semaphore::new(limits.per_stream_kib as usize));
        tokio::spawn(async move {
            let mut lines = 0u64;
            let outcome = loop {
                match inbound.message().await {
                    Ok(Some(line)) => {
                        // Each message gets the request timeout; the scan
                        // also stops when the client goes away.
                        let deadline = Instant::now() + limits.timeout;
                        let (out, held) = match hold(&limits, Some(&share), line.text.len(), deadline).await {
                            Ok(held) => {
                                let responses = tx.clone();
                                let out =
                                    redact_bounded(line, rules.clone(), deadline, move || responses.is_closed()).await;
                                (out, Some(held))
                            }
                            Err(e) => (Err(e), None),
                        };
                        let out = out.map_err(Status::from);
                        let failed = out.is_err();
                        if tx.send((out, held)).await.is_err() || failed {
                            break Ok(());
                        }
                        lines += 1;
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = &outcome {
                let _ = tx.send((Err(e.clone()), None)).await;
            }
            if let Ok(mut d) = call.detail.lock() {
                *d = Some(format!("stream lines={lines}"));
            }
            let _ = shared.finish(
                &call,
                outcome.map_err(|_| Error::InvalidArgument(Invalid::RedactStream)),
            );
            tracing::debug!(lines, "redaction stream ended");
        });
        // The memory is released as each response is taken.
        let responses = tokio_stream::wrappers::ReceiverStream::new(rx).map(|(out, _held)| out);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn tokenize(
        &self,
        req: Request<proto::TokenizeRequest>,
    ) -> Result<Response<proto::TokenizeResponse>, Status> {
        let call = self.shared.begin(&req, Op::Tokenize, Some(&req.get_ref().key))?;
        if let Err(wait) = self.tokenize_limit.check(call.peer.id(), std::time::Instant::now()) {
            let e = Error::TooLarge(Limit::TokenizeRate {
                retry_ms: wait.as_millis().max(1),
            });
            return Err(self.shared.fail(&call, e));
        }
        let r = req.into_inner();
        let rings = self.shared.rings()?;
        let result = kind_from_proto(r.kind).and_then(|kind| {
            rings.with_token_key(&r.key, None, |key, version| {
                masking::tokenize(key, &tweak(&r.key), &r.value, kind)
                    .map(|token| proto::TokenizeResponse {
                        token,
                        key_version: version,
                    })
                    .map_err(token_error)
            })
        });
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn detokenize(
        &self,
        req: Request<proto::DetokenizeRequest>,
    ) -> Result<Response<proto::DetokenizeResponse>, Status> {
        let call = self.shared.begin(&req, Op::Detokenize, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let rings = self.shared.rings()?;
        let version = (r.key_version > 0).then_some(r.key_version);
        let result = kind_from_proto(r.kind).and_then(|kind| {
            if version.is_none() && masking::is_format_preserving(kind) {
                return Err(Error::InvalidArgument(Invalid::TokenVersionRequired));
            }
            rings.with_token_key(&r.key, Some(version), |key, _| {
                masking::detokenize(key, &tweak(&r.key), &r.token, kind)
                    .map(|value| proto::DetokenizeResponse { value })
                    .map_err(token_error)
            })
        });
        Ok(Response::new(self.shared.finish(&call, result)?))
    }
}
