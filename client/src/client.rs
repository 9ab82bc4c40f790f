//! The typed client: one [`Client`] for the whole API, over one or more
//! endpoints.
//!
//! - **Configuration**: a [`ClientBuilder`], or [`ClientBuilder::from_env`]
//!   with the variables `kmsctl` reads ([`env`](mod@env)); `KMSD_ADDR` may list
//!   several endpoints separated by commas.
//! - **Failover**: calls go to the current endpoint; when it cannot be
//!   reached or answers `UNAVAILABLE`, the client moves to the next one and
//!   stays there.
//! - **Retries**: a call that never reached a daemon (no connection) is
//!   retried on the next endpoint whatever it is; a call answered
//!   `UNAVAILABLE` (or cut by the connection) is retried only on the data
//!   path (Encrypt, Decrypt, Rewrap, their batches, GenerateDataKey), where
//!   every call is safe to repeat. Exponential backoff with full jitter
//!   ([`RetryPolicy`]); never past the call's deadline.
//! - **Deadlines**: one per logical call, across its retries (the
//!   builder's default, or [`CallOptions::timeout`]); each attempt also
//!   sends the remaining time as `grpc-timeout`.
//! - **Request ids**: `x-request-id` from [`CallOptions::request_id`], or
//!   a fresh random one per logical call; the same on every retry, so the
//!   daemons' audit records of one call share it.
//! - **One-time codes**: [`CallOptions::otp`] sends an officer's code.
use crate::connect::{check_client_certificate, connect_with, tls_config, ClientSettings};
use crate::error::Error;
use crate::metadata;
use crate::proto::{
    self, admin_client::AdminClient, crypto_client::CryptoClient, keys_client::KeysClient, mask_client::MaskClient,
};
use rand::Rng;
use rustls::ClientConfig;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// The environment variables the client (and `kmsctl`) read.
pub mod env {
    /// Daemon address(es): `unix:/path` or `host:port`, several separated
    /// by commas (tried in order, failing over).
    pub const ADDR: &str = "KMSD_ADDR";
    /// The CA certificate that signed the daemon's certificate.
    pub const CA: &str = "KMSD_CA";
    /// The client certificate.
    pub const CERT: &str = "KMSD_CERT";
    /// The client certificate's private key.
    pub const KEY: &str = "KMSD_KEY";
    /// The name to verify the daemon's certificate against (optional).
    pub const SERVER_NAME: &str = "KMSD_SERVER_NAME";
}

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// Retries with exponential backoff and full jitter: before retry *n*
/// (from 0) the client sleeps a uniformly random time in
/// `0 ..= min(max_backoff, initial_backoff * 2^n)` (the "full jitter" of
/// the AWS architecture blog: clients that failed together do not retry
/// together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The backoff cap before the first retry.
    pub initial_backoff: Duration,
    /// The largest backoff cap.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, 20 ms doubling to at most 1 s: a node restart or a
    /// failover to the next endpoint is ridden out within about 2 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The backoff before retry `n` (from 0), jittered.
    fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }
}

/// Options for one call (or every call of a [`Client::with`] view).
#[derive(Clone, Default)]
pub struct CallOptions {
    timeout: Option<Duration>,
    request_id: Option<String>,
    otp: Option<String>,
}

impl fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOptions")
            .field("timeout", &self.timeout)
            .field("request_id", &self.request_id)
            .field("otp", &self.otp.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl CallOptions {
    /// No options: the client's defaults.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// The call's deadline, across its retries.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The `x-request-id` to send (1 ..= 64 of `[A-Za-z0-9-_.:]`, the
    /// daemon's rule; a call with another is refused locally).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// An officer's one-time code (TOTP), sent as `x-kmsd-otp`.
    pub fn otp(mut self, code: impl Into<String>) -> Self {
        self.otp = Some(code.into().trim().to_owned());
        self
    }

    /// Whether a one-time code is set.
    pub fn has_otp(&self) -> bool {
        self.otp.is_some()
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// No endpoint yet; a 30 s deadline per call; [`RetryPolicy::default`].
    pub fn new() -> Self {
        ClientBuilder {
            endpoints: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            server_name: None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }

    /// From the environment ([`env`](mod@env)), as `kmsctl` reads it.
    pub fn from_env() -> Result<Self, Error> {
        let var = |name: &'static str| std::env::var_os(name).filter(|v| !v.is_empty());
        let need = |name: &'static str| var(name).ok_or(Error::NotSet { var: name });
        let addr = need(env::ADDR)?
            .into_string()
            .map_err(|_| Error::Settings(format!("{} is not valid UTF-8", env::ADDR)))?;
        let mut b = ClientBuilder::new()
            .endpoints_from_list(&addr)
            .ca(need(env::CA)?)
            .cert(need(env::CERT)?)
            .key(need(env::KEY)?);
        if let Some(name) = var(env::SERVER_NAME).and_then(|v| v.into_string().ok()) {
            b = b.server_name(name);
        }
        Ok(b)
    }

    /// Adds an endpoint (`unix:/path` or `host:port`); endpoints are tried
    /// in the order added.
    pub fn endpoint(mut self, addr: impl Into<String>) -> Self {
        self.endpoints.push(addr.into());
        self
    }

    /// Adds the endpoints of a comma-separated list (`KMSD_ADDR`'s form).
    pub fn endpoints_from_list(mut self, list: &str) -> Self {
        self.endpoints.extend(
            list.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
        );
        self
    }

    /// The CA certificate that signed the daemons' certificates.
    pub fn ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(path.into());
        self
    }

    /// The client certificate.
    pub fn cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.cert = Some(path.into());
        self
    }

    /// The client certificate's private key.
    pub fn key(mut self, path: impl Into<PathBuf>) -> Self {
        self.key = Some(path.into());
        self
    }

    /// The name to verify the daemons' certificates against (default: the
    /// TCP host, or `localhost` for a Unix socket).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The default deadline of a call, across its retries.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The retry policy of the data-path calls.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Checks the client certificate, builds the TLS configuration and
    /// connects to the first endpoint that answers (trying each in turn).
    /// Fails with the first endpoint's error if none does.
    pub async fn connect(self) -> Result<Client, Error> {
        let client = self.build()?;
        client.channel().await?;
        Ok(client)
    }

    /// As [`connect`](Self::connect), but connects at the first call.
    pub fn build(self) -> Result<Client, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::NotSet { var: env::ADDR });
        }
        let ca = self.ca.ok_or(Error::NotSet { var: env::CA })?;
        let cert = self.cert.ok_or(Error::NotSet { var: env::CERT })?;
        let key = self.key.ok_or(Error::NotSet { var: env::KEY })?;
        check_client_certificate(&cert, SystemTime::now())?;
        let tls = tls_config(&ca, &cert, &key)?;
        let nodes = self
            .endpoints
            .into_iter()
            .map(|addr| Node {
                settings: ClientSettings {
                    addr,
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    server_name: self.server_name.clone(),
                },
                channel: Mutex::new(None),
            })
            .collect();
        Ok(Client {
            shared: Arc::new(Shared {
                nodes,
                tls,
                current: AtomicUsize::new(0),
                timeout: self.timeout,
                retry: self.retry,
                retries: AtomicU64::new(0),
                failovers: AtomicU64::new(0),
            }),
            opts: CallOptions::default(),
        })
    }
}

/// One endpoint and its channel once connected (tonic reconnects a
/// channel by itself after the connection breaks).
struct Node {
    settings: ClientSettings,
    channel: Mutex<Option<Channel>>,
}

struct Shared {
    nodes: Vec<Node>,
    tls: Arc<ClientConfig>,
    /// The endpoint calls go to; moves on when it fails.
    current: AtomicUsize,
    timeout: Duration,
    retry: RetryPolicy,
    /// Attempts repeated after a failure (for [`Client::retries`]).
    retries: AtomicU64,
    /// Moves to the next endpoint (for [`Client::failovers`]).
    failovers: AtomicU64,
}

/// The typed kmsd client. Cheap to clone (one set of connections shared);
/// [`Client::with`] gives a view with per-call options.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    opts: CallOptions,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field(
                "endpoints",
                &self
                    .shared
                    .nodes
                    .iter()
                    .map(|n| n.settings.addr.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("current", &self.shared.current.load(Ordering::Relaxed))
            .field("retries", &self.retries())
            .field("failovers", &self.failovers())
            .field("options", &self.opts)
            .finish()
    }
}

/// Whether a failed call may be repeated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Data path: safe to repeat after `UNAVAILABLE`.
    Safe,
    /// Anything else: only a call that never reached a daemon is repeated.
    ConnectOnly,
}

/// A call that a broken connection cut: tonic reports it as `UNAVAILABLE`
/// or, for some HTTP/2 failures, `UNKNOWN`/`INTERNAL` with the transport
/// error as source; all mean "this daemon did not answer".
fn is_unavailable(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => std::error::Error::source(s)
            .is_some_and(|src| {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(src);
                while let Some(e) = cur {
                    if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
                        return true;
                    }
                    cur = e.source();
                }
                false
            }),
        _ => false,
    }
}

fn valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// A fresh request id: 16 random hex digits.
fn new_request_id() -> String {
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

impl Client {
    /// A view of this client whose calls carry `opts` (same connections).
    pub fn with(&self, opts: CallOptions) -> Client {
        Client {
            shared: self.shared.clone(),
            opts,
        }
    }

    /// The options this view's calls carry.
    pub fn options(&self) -> &CallOptions {
        &self.opts
    }

    /// The endpoints, in failover order.
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.shared.nodes.iter().map(|n| n.settings.addr.as_str())
    }

    /// The channel of the current endpoint, connecting (and failing over)
    /// if needed: for the streaming calls (`Backup`, `Restore`,
    /// `VerifyAudit`, `RedactStream`) and health checks, which this client
    /// does not wrap. Tries each endpoint once.
    pub async fn channel(&self) -> Result<Channel, Error> {
        let n = self.shared.nodes.len();
        let start = self.shared.current.load(Ordering::Relaxed);
        let mut first = None;
        for i in 0..n {
            let idx = (start + i) % n;
            match self.node_channel(idx).await {
                Ok(ch) => {
                    self.shared.current.store(idx, Ordering::Relaxed);
                    return Ok(ch);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.unwrap_or(Error::NotSet { var: env::ADDR }))
    }

    async fn node_channel(&self, idx: usize) -> Result<Channel, Error> {
        let node = self
            .shared
            .nodes
            .get(idx)
            .ok_or_else(|| Error::Settings("no such endpoint".into()))?;
        if let Some(ch) = node.channel.lock().ok().and_then(|c| c.clone()) {
            return Ok(ch);
        }
        // (two tasks may connect at once; the last one's channel is kept,
        // both work)
        let ch = connect_with(&node.settings, self.shared.tls.clone()).await?;
        if let Ok(mut slot) = node.channel.lock() {
            *slot = Some(ch.clone());
        }
        Ok(ch)
    }

    /// Moves to the next endpoint, unless another call already did.
    fn fail_over(&self, from: usize) {
        let n = self.shared.nodes.len();
        if n > 1
            && self
                .shared
                .current
                .compare_exchange(from, (from + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.shared.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts this client (all its views) repeated after a failure so
    /// far: for a service's metrics.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Times this client (all its views) moved to the next endpoint so far.
    pub fn failovers(&self) -> u64 {
        self.shared.failovers.load(Ordering::Relaxed)
    }

    /// One logical call: request id, deadline, one-time code, failover and
    /// retries.
    async fn call<Req, Resp, F, Fut>(&self, retry: Retry, req: Req, f: F) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let timeout = self.opts.timeout.unwrap_or(self.shared.timeout);
        let deadline = Instant::now() + timeout;
        let request_id = match &self.opts.request_id {
            Some(id) if valid_request_id(id) => id.clone(),
            Some(_) => {
                return Err(Error::Settings(
                    "a request id is 1..=64 characters of [A-Za-z0-9-_.:]".into(),
                ))
            }
            None => new_request_id(),
        };
        let request_id: MetadataValue<_> = request_id.parse().map_err(|_| Error::Settings("request id".into()))?;
        let otp: Option<MetadataValue<_>> = match &self.opts.otp {
            Some(code) => Some(
                code.parse()
                    .map_err(|_| Error::Settings("the one-time code is not valid text".into()))?,
            ),
            None => None,
        };
        let policy = self.shared.retry;
        let out_of_time = || {
            Error::from(tonic::Status::deadline_exceeded(format!(
                "no answer within the call's deadline of {}",
                humantime::format_duration(timeout)
            )))
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let idx = self.shared.current.load(Ordering::Relaxed);
            let last_attempt = attempt >= policy.max_attempts.max(1);
            let failure = match self.node_channel(idx).await {
                // nothing was sent: any call may go to the next endpoint
                Err(e) => e,
                Ok(channel) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(out_of_time());
                    }
                    let mut r = tonic::Request::new(req.clone());
                    r.set_timeout(remaining);
                    r.metadata_mut().insert(REQUEST_ID, request_id.clone());
                    if let Some(v) = &otp {
                        r.metadata_mut().insert(metadata::OTP, v.clone());
                    }
                    match tokio::time::timeout(remaining, f(channel, r)).await {
                        Err(_) => return Err(out_of_time()),
                        Ok(Ok(resp)) => return Ok(resp.into_inner()),
                        Ok(Err(status)) if is_unavailable(&status) => {
                            self.fail_over(idx);
                            if retry != Retry::Safe || last_attempt {
                                return Err(Error::Unavailable(Box::new(status)));
                            }
                            Error::Unavailable(Box::new(status))
                        }
                        Ok(Err(status)) => return Err(status.into()),
                    }
                }
            };
            if !matches!(failure, Error::Unavailable(_)) {
                self.fail_over(idx);
            }
            if last_attempt {
                return Err(failure);
            }
            let pause = policy.backoff(attempt - 1);
            if Instant::now() + pause >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(pause).await;
            self.shared.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Typed methods for the unary calls: `retry` says whether `UNAVAILABLE`
/// is retried (data path) or only failed-to-connect attempts are.
macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident: $stub:ident . $method:ident ($req:ty) -> $resp:ty, $retry:ident;)*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $name(&self, req: $req) -> Result<$resp, Error> {
                    self.call(Retry::$retry, req, |ch, r| async move { $stub::new(ch).$method(r).await })
                        .await
                }
            )*
        }
    };
}

unary! {
    /// `Encrypt` (retried on `UNAVAILABLE`).
    encrypt: CryptoClient.encrypt(proto::EncryptRequest) -> proto::EncryptResponse, Safe;
    /// `Decrypt` (retried on `UNAVAILABLE`).
    decrypt: CryptoClient.decrypt(proto::DecryptRequest) -> proto::DecryptResponse, Safe;
    /// `Rewrap` (retried on `UNAVAILABLE`).
    rewrap: CryptoClient.rewrap(proto::RewrapRequest) -> proto::RewrapResponse, Safe;
    /// `EncryptBatch` (retried on `UNAVAILABLE`).
    encrypt_batch: CryptoClient.encrypt_batch(proto::EncryptBatchRequest) -> proto::EncryptBatchResponse, Safe;
    /// `DecryptBatch` (retried on `UNAVAILABLE`).
    decrypt_batch: CryptoClient.decrypt_batch(proto::DecryptBatchRequest) -> proto::DecryptBatchResponse, Safe;
    /// `RewrapBatch` (retried on `UNAVAILABLE`).
    rewrap_batch: CryptoClient.rewrap_batch(proto::RewrapBatchRequest) -> proto::RewrapBatchResponse, Safe;
    /// `GenerateDataKey` (retried on `UNAVAILABLE`).
    generate_data_key: CryptoClient.generate_data_key(proto::GenerateDataKeyRequest)
        -> proto::GenerateDataKeyResponse, Safe;
    /// `GenerateDataKeyWithoutPlaintext` (retried on `UNAVAILABLE`).
    generate_data_key_without_plaintext: CryptoClient.generate_data_key_without_plaintext(
        proto::GenerateDataKeyRequest) -> proto::GenerateDataKeyResponse, Safe;

    /// `Mac` (retried on `UNAVAILABLE`).
    mac: CryptoClient.mac(proto::MacRequest) -> proto::MacResponse, Safe;
    /// `MacBatch` (retried on `UNAVAILABLE`).
    mac_batch: CryptoClient.mac_batch(proto::MacBatchRequest) -> proto::MacBatchResponse, Safe;
    /// `VerifyMac` (retried on `UNAVAILABLE`).
    verify_mac: CryptoClient.verify_mac(proto::VerifyMacRequest) -> proto::VerifyMacResponse, Safe;
    /// `Sign` (retried on `UNAVAILABLE`).
    sign: CryptoClient.sign(proto::SignRequest) -> proto::SignResponse, Safe;
    /// `Verify` (retried on `UNAVAILABLE`).
    verify: CryptoClient.verify(proto::VerifyRequest) -> proto::VerifyResponse, Safe;
    /// `GetPublicKey` (retried on `UNAVAILABLE`).
    get_public_key: CryptoClient.get_public_key(proto::GetPublicKeyRequest) -> proto::GetPublicKeyResponse, Safe;

    /// `CreateKey`.
    create_key: KeysClient.create_key(proto::CreateKeyRequest) -> proto::KeyInfo, ConnectOnly;
    /// `GetKey`.
    get_key: KeysClient.get_key(proto::GetKeyRequest) -> proto::KeyInfo, ConnectOnly;
    /// `ListKeys`.
    list_keys: KeysClient.list_keys(proto::ListKeysRequest) -> proto::ListKeysResponse, ConnectOnly;
    /// `RotateKey`.
    rotate_key: KeysClient.rotate_key(proto::RotateKeyRequest) -> proto::KeyInfo, ConnectOnly;
    /// `UpdateKeyPolicy`.
    update_key_policy: KeysClient.update_key_policy(proto::UpdateKeyPolicyRequest) -> proto::KeyInfo, ConnectOnly;
    /// `SetVersionState`.
    set_version_state: KeysClient.set_version_state(proto::SetVersionStateRequest) -> proto::KeyInfo, ConnectOnly;
    /// `ScheduleVersionDestruction`.
    schedule_version_destruction: KeysClient.schedule_version_destruction(
        proto::ScheduleVersionDestructionRequest) -> proto::KeyInfo, ConnectOnly;
    /// `CancelVersionDestruction`.
    cancel_version_destruction: KeysClient.cancel_version_destruction(
        proto::CancelVersionDestructionRequest) -> proto::KeyInfo, ConnectOnly;
    /// `ScheduleKeyDeletion`.
    schedule_key_deletion: KeysClient.schedule_key_deletion(proto::ScheduleKeyDeletionRequest)
        -> proto::KeyInfo, ConnectOnly;
    /// `CancelKeyDeletion`.
    cancel_key_deletion: KeysClient.cancel_key_deletion(proto::CancelKeyDeletionRequest)
        -> proto::KeyInfo, ConnectOnly;

    /// `Status`.
    status: AdminClient.status(proto::StatusRequest) -> proto::StatusResponse, ConnectOnly;
    /// `ReloadPolicy`.
    reload_policy: AdminClient.reload_policy(proto::ReloadPolicyRequest) -> proto::ReloadPolicyResponse, ConnectOnly;
    /// `EnrollOfficer`.
    enroll_officer: AdminClient.enroll_officer(proto::EnrollOfficerRequest) -> proto::EnrollOfficerResponse, ConnectOnly;
    /// `ClaimOfficerSecret`.
    claim_officer_secret: AdminClient.claim_officer_secret(proto::ClaimOfficerSecretRequest)
        -> proto::EnrollOfficerResponse, ConnectOnly;
    /// `ListApprovals`.
    list_approvals: AdminClient.list_approvals(proto::ListApprovalsRequest) -> proto::ListApprovalsResponse, ConnectOnly;
    /// `Approve`.
    approve: AdminClient.approve(proto::ApproveRequest) -> proto::ApproveResponse, ConnectOnly;
    /// `Reject`.
    reject: AdminClient.reject(proto::RejectRequest) -> proto::RejectResponse, ConnectOnly;
    /// `AuditHead`.
    audit_head: AdminClient.audit_head(proto::AuditHeadRequest) -> proto::AuditHeadResponse, ConnectOnly;

    /// `Mask`.
    mask: MaskClient.mask(proto::MaskRequest) -> proto::MaskResponse, ConnectOnly;
    /// `Redact`.
    redact: MaskClient.redact(proto::RedactRequest) -> proto::RedactResponse, ConnectOnly;
    /// `Tokenize`.
    tokenize: MaskClient.tokenize(proto::TokenizeRequest) -> proto::TokenizeResponse, ConnectOnly;
    /// `Detokenize`.
    detokenize: MaskClient.detokenize(proto::DetokenizeRequest) -> proto::DetokenizeResponse, ConnectOnly;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = RetryPolicy::default();
        for n in 0..40 {
            let cap = (Duration::from_millis(20) * 2u32.saturating_pow(n.min(20))).min(Duration::from_secs(1));
            for _ in 0..20 {
                assert!(p.backoff(n) <= cap, "retry {n}");
            }
        }
        // jitter: not all the same
        let samples: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(5)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn request_ids_follow_the_daemon_rule() {
        assert!(valid_request_id(&new_request_id()));
        assert_eq!(new_request_id().len(), 16);
        assert!(valid_request_id("order-42:retry.1_a"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id(&"a".repeat(65)));
        assert!(!valid_request_id("a b"));
    }

    #[test]
    fn transport_failures_count_as_unavailable() {
        assert!(is_unavailable(&tonic::Status::unavailable("down")));
        assert!(!is_unavailable(&tonic::Status::unknown("no transport cause")));
        let cut = tonic::Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        assert!(
            is_unavailable(&cut) || cut.code() == tonic::Code::Unavailable,
            "{cut:?}"
        );
        assert!(!is_unavailable(&tonic::Status::invalid_argument("bad")));
    }

    #[test]
    fn the_one_time_code_does_not_print() {
        let o = CallOptions::new().otp(" 123456 ");
        assert!(!format!("{o:?}").contains("123456"));
        assert_eq!(o.otp.as_deref(), Some("123456"));
    }

    #[test]
    fn builder_needs_everything() {
        let e = ClientBuilder::new().build().unwrap_err();
        assert!(matches!(e, Error::NotSet { var: "KMSD_ADDR" }));
        let e = ClientBuilder::new().endpoint("unix:/x").build().unwrap_err();
        assert!(matches!(e, Error::NotSet { var: "KMSD_CA" }));
        let b = ClientBuilder::new().endpoints_from_list(" unix:/a , 127.0.0.1:1,,");
        assert_eq!(b.endpoints, vec!["unix:/a".to_owned(), "127.0.0.1:1".to_owned()]);
    }
}
