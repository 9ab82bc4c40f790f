//! [`EtcdClient`]: a small typed async client for etcd's v3 API.
//!
//! # Endpoints and failover
//! One lazily connected HTTP/2 channel per endpoint. A call goes to the
//! endpoint that answered last; when it cannot be reached the call moves
//! on to the next one. Reads, watches and status calls (idempotent) are
//! retried on the other endpoints on any unavailability until the request
//! timeout; writes (transactions, lease grants) only when the request
//! never left (the connection to that endpoint could not be made) or the
//! member refused it for want of a leader (etcd checks that before taking
//! a request), since a write that reached a member and then timed out may
//! have been applied. So a leader election delays a write rather than
//! failing it, within the request timeout.
//!
//! # Timeouts
//! Every call ends within [`Settings::request_timeout`] (with
//! [`Error::Timeout`] or [`Error::Unavailable`]): a member that lost
//! quorum, or a stopped process whose socket still accepts connections,
//! never hangs a caller. Connections (TCP, TLS handshake, and the server's
//! first bytes) are bounded by [`Settings::connect_timeout`]; HTTP/2 pings
//! every second detect a member that stopped answering on an open
//! connection.
//!
//! # TLS
//! With [`TlsSettings`], on the workspace's rustls (ring): the server
//! certificate is verified against the CA for the endpoint's host (an IP
//! address or a DNS name), and a client certificate is presented when
//! configured (etcd's `--client-cert-auth`; with etcd's auth enabled the
//! certificate's CN names the etcd user). After the handshake the
//! connector waits for etcd's first HTTP/2 bytes: in TLS 1.3 etcd judges
//! the client certificate after the client's side of the handshake ended,
//! so a refusal is read here and reported as [`Error::Tls`] naming the
//! endpoint and the alert, instead of a bare transport error at the
//! first call.
//!
//! # Layout
//! This file: the settings, [`EtcdClient`] (connections, failover, the
//! calls); `types`: the values calls take and return (ranges,
//! transactions, members); `lease`: leases and their keep-alive; `dial`:
//! one connection attempt (endpoint, rustls configuration, handshake).
mod dial;
mod lease;
mod types;

pub use dial::tls_config;
pub use lease::{Lease, LeaseKeeper};
pub use types::{Cmp, Compare, KeyValue, Member, MemberStatus, Range, RangeResult, Txn, TxnOp, TxnOpResult, TxnResult};

use crate::error::Error;
use crate::proto::authpb;
use crate::proto::etcdserverpb as pb;
use crate::watch::Watcher;
use dial::{host_port, Dial};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};

/// Largest answer accepted from etcd (a page of [`EtcdClient::range`]).
/// etcd refuses requests over its `--max-request-bytes` (1.5 MiB by
/// default) so no single value is larger than that; a page of many values
/// can be, and [`crate::EtcdStore`] halves its page size when a page is
/// refused as too large.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Where and how to reach etcd.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client URLs of the members: `host:port`, `http://host:port` or
    /// `https://host:port` (the scheme must agree with [`Settings::tls`]).
    pub endpoints: Vec<String>,
    /// TLS towards etcd; `None` for plain TCP (loopback tests only).
    pub tls: Option<TlsSettings>,
    /// Bound on one connection attempt: TCP, TLS handshake and etcd's first
    /// bytes.
    pub connect_timeout: Duration,
    /// Bound on every call, all failover attempts included.
    pub request_timeout: Duration,
}

impl Settings {
    /// Plain TCP to `endpoints` with a 1 s connect and a 5 s request timeout.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Settings {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// TLS towards etcd (PEM files).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The CA that signed etcd's server certificates.
    pub ca: PathBuf,
    /// The client certificate (etcd `--client-cert-auth`); with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
    /// The name to verify the server certificates against (default: each
    /// endpoint's host).
    pub server_name: Option<String>,
}

/// Whether a failed call may be sent again to another endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, watches, status: on any unavailability.
    Idempotent,
    /// Writes: only when the request never left.
    Unsent,
}

/// One endpoint.
struct Member_ {
    /// As configured, for messages.
    addr: String,
    channel: Channel,
    /// The last connection failure of this endpoint (typed: tonic passes
    /// on only a boxed, stringly cause).
    failure: Arc<Mutex<Option<Error>>>,
    /// Incremented by every connection failure: a call that saw it change
    /// was never sent.
    failures: Arc<AtomicU64>,
}

impl Member_ {
    fn take_failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

struct Inner {
    members: Vec<Member_>,
    /// The endpoint that answered last: calls start there.
    preferred: AtomicUsize,
    request_timeout: Duration,
}

/// A typed etcd v3 client over one or more endpoints. Cheap to clone;
/// every clone shares the connections.
///
/// It must be created inside a tokio runtime (its connections' tasks run
/// there) and that runtime must outlive it; calls may come from any
/// runtime.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<&str> = self.inner.members.iter().map(|m| m.addr.as_str()).collect();
        write!(f, "EtcdClient({addrs:?})")
    }
}

impl EtcdClient {
    /// Builds the client (connections are made at the first call: it
    /// fails here only on bad settings or unreadable TLS files). Must run
    /// inside a tokio runtime.
    pub fn connect(settings: &Settings) -> Result<Self, Error> {
        if settings.endpoints.is_empty() {
            return Err(Error::Settings("no endpoint".into()));
        }
        if settings.request_timeout.is_zero() || settings.connect_timeout.is_zero() {
            return Err(Error::Settings("timeouts must be above zero".into()));
        }
        let tls = settings.tls.as_ref().map(tls_config).transpose()?;
        let mut members = Vec::with_capacity(settings.endpoints.len());
        for endpoint in &settings.endpoints {
            let addr = host_port(endpoint, tls.is_some())?;
            let tls = match &tls {
                None => None,
                Some(cfg) => {
                    let host = match &settings.tls.as_ref().and_then(|t| t.server_name.clone()) {
                        Some(n) => n.clone(),
                        None => addr
                            .rsplit_once(':')
                            .map(|(h, _)| h)
                            .unwrap_or(&addr)
                            .trim_matches(['[', ']'])
                            .to_owned(),
                    };
                    let name = ServerName::try_from(host.clone())
                        .map_err(|_| Error::Settings(format!("invalid server name {host:?}")))?;
                    Some((cfg.clone(), name))
                }
            };
            let failure: Arc<Mutex<Option<Error>>> = Arc::default();
            let failures: Arc<AtomicU64> = Arc::default();
            let dial = Arc::new(Dial {
                addr: addr.clone(),
                tls,
                timeout: settings.connect_timeout,
            });
            let (slot, count) = (failure.clone(), failures.clone());
            let connector = tower::service_fn(move |_: Uri| {
                let (dial, slot, count) = (dial.clone(), slot.clone(), count.clone());
                async move {
                    match dial.run().await {
                        Ok(conn) => Ok(TokioIo::new(conn)),
                        Err(e) => {
                            let line = e.to_string();
                            if let Ok(mut slot) = slot.lock() {
                                *slot = Some(e);
                            }
                            count.fetch_add(1, Ordering::SeqCst);
                            Err(io::Error::other(line))
                        }
                    }
                }
            });
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Error::Settings(format!("endpoint {endpoint:?}: {e}")))?
                .connect_timeout(settings.connect_timeout + Duration::from_millis(100))
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(settings.connect_timeout)
                .keep_alive_while_idle(true)
                .connect_with_connector_lazy(connector);
            members.push(Member_ {
                addr,
                channel,
                failure,
                failures,
            });
        }
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                members,
                preferred: AtomicUsize::new(0),
                request_timeout: settings.request_timeout,
            }),
        })
    }

    /// The request timeout every call is bounded by.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Moves the next calls on to the next endpoint (a caller that gave
    /// up waiting on the current one: the client saw no failure of it).
    pub fn prefer_next(&self) {
        let n = self.inner.members.len().max(1);
        let cur = self.inner.preferred.load(Ordering::Relaxed);
        self.inner.preferred.store((cur + 1) % n, Ordering::Relaxed);
    }

    /// The endpoints, as `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.members.iter().map(|m| m.addr.clone()).collect()
    }

    /// Runs `f` against the endpoints, failing over as the module
    /// documentation says, within the request timeout.
    async fn call<T, F, Fut>(&self, what: &'static str, retry: Retry, mut f: F) -> Result<T, Error>
    where
        F: FnMut(Channel, String) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let inner = &*self.inner;
        let n = inner.members.len();
        let deadline = Instant::now() + inner.request_timeout;
        let start = inner.preferred.load(Ordering::Relaxed);
        let mut last: Option<Error> = None;
        let mut all_tls = true;
        for attempt in 0.. {
            let idx = (start + attempt) % n;
            let Some(m) = inner.members.get(idx) else {
                return Err(Error::Settings("no endpoint".into()));
            };
            if attempt > 0 && attempt % n == 0 {
                // a full round failed: a refused certificate will not
                // change; else pause before the next round
                if all_tls {
                    break;
                }
                all_tls = true;
                let pause = Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // an idempotent call leaves time for another endpoint
            let budget = if retry == Retry::Idempotent && n > 1 && remaining > Duration::from_millis(400) {
                remaining / 2
            } else {
                remaining
            };
            let failures_before = m.failures.load(Ordering::SeqCst);
            let err = match tokio::time::timeout(budget, f(m.channel.clone(), m.addr.clone())).await {
                Ok(Ok(v)) => {
                    inner.preferred.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(status)) => {
                    let unsent = m.failures.load(Ordering::SeqCst) != failures_before
                        && matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown);
                    // etcd checks for a leader before it takes a request
                    // (its gRPC interceptor): refused so, it was not applied
                    let no_leader =
                        status.code() == tonic::Code::Unavailable && status.message() == "etcdserver: no leader";
                    let err = if unsent {
                        m.take_failure().unwrap_or_else(|| Error::from_status(&m.addr, status))
                    } else {
                        Error::from_status(&m.addr, status)
                    };
                    if !(err.is_unavailable() && (retry == Retry::Idempotent || unsent || no_leader)) {
                        return Err(err);
                    }
                    err
                }
                Err(_) if retry == Retry::Idempotent => Error::Timeout { timeout: budget, what },
                Err(_) => {
                    return Err(Error::Timeout {
                        timeout: inner.request_timeout,
                        what,
                    })
                }
            };
            if !matches!(err, Error::Tls { .. }) {
                all_tls = false;
            }
            tracing::debug!(endpoint = %m.addr, error = %err, what, "etcd call failed; trying the next endpoint");
            inner.preferred.store((idx + 1) % n, Ordering::Relaxed);
            last = Some(err);
        }
        Err(match last {
            Some(e @ Error::Tls { .. }) => e,
            Some(e) => Error::unavailable(format!(
                "no endpoint answered {what} within {:?} (last: {e})",
                inner.request_timeout
            )),
            None => Error::Timeout {
                timeout: inner.request_timeout,
                what,
            },
        })
    }

    /// Reads a range (linearizable unless [`Range::serializable`]).
    pub async fn range(&self, range: Range) -> Result<RangeResult, Error> {
        let req = range.into_proto();
        let r = self
            .call("range", Retry::Idempotent, |ch, _| {
                let req = req.clone();
                async move {
                    pb::kv_client::KvClient::new(ch)
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .range(leader_required(req))
                        .await
                }
            })
            .await
            .map_err(|e| match e {
                Error::Compacted { .. } => Error::Compacted {
                    requested: req.revision,
                    compacted: 0,
                },
                e => e,
            })?;
        Ok(r.into_inner().into())
    }

    /// Reads one key (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        Ok(self.range(Range::key(key)).await?.kvs.into_iter().next())
    }

    /// The store's current revision (a linearizable read).
    pub async fn revision(&self) -> Result<i64, Error> {
        let r = self
            .range(Range {
                key: vec![0],
                count_only: true,
                ..Range::default()
            })
            .await?;
        Ok(r.revision)
    }

    /// Runs a transaction. Not retried once sent: after
    /// [`Error::Unavailable`]/[`Error::Timeout`] it may or may not have
    /// been applied (its comparisons, read again, tell).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, Error> {
        let req = txn.into_proto();
        let r = self
            .call("transaction", Retry::Unsent, |ch, _| {
                let req = req.clone();
                async move {
                    pb::kv_client::KvClient::new(ch)
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .txn(leader_required(req))
                        .await
                }
            })
            .await?;
        Ok(r.into_inner().into())
    }

    /// Compacts the history up to `revision` (etcd keeps every older
    /// version of every key until then). Needs etcd's root role when auth
    /// is on.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<(), Error> {
        let req = pb::CompactionRequest { revision, physical };
        self.call("compaction", Retry::Idempotent, |ch, _| async move {
            pb::kv_client::KvClient::new(ch).compact(leader_required(req)).await
        })
        .await?;
        Ok(())
    }

    /// Watches `range` (its key and range end) from `start_revision`
    /// (0: from now), with progress notifications requested. See
    /// [`Watcher`].
    pub async fn watch(&self, range: Range, start_revision: i64) -> Result<Watcher, Error> {
        let create = pb::WatchCreateRequest {
            key: range.key,
            range_end: range.range_end,
            start_revision,
            progress_notify: true,
            prev_kv: false,
            ..Default::default()
        };
        let timeout = self.inner.request_timeout;
        let (endpoint, requests, responses, first) = self
            .call("watch", Retry::Idempotent, |ch, endpoint| {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let create = create.clone();
                async move {
                    let _ = tx
                        .send(pb::WatchRequest {
                            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
                        })
                        .await;
                    let resp = pb::watch_client::WatchClient::new(ch)
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .watch(leader_required(tokio_stream::wrappers::ReceiverStream::new(rx)))
                        .await?;
                    let mut stream = resp.into_inner();
                    let first = stream
                        .message()
                        .await?
                        .ok_or_else(|| tonic::Status::unavailable("watch stream ended before it was created"))?;
                    Ok((endpoint, tx, stream, first))
                }
            })
            .await?;
        Ok(Watcher::new(
            endpoint,
            requests,
            responses,
            first,
            timeout,
            start_revision,
        ))
    }

    /// The cluster's members.
    pub async fn member_list(&self) -> Result<Vec<Member>, Error> {
        let r = self
            .call("member list", Retry::Idempotent, |ch, _| async move {
                pb::cluster_client::ClusterClient::new(ch)
                    .member_list(pb::MemberListRequest {})
                    .await
            })
            .await?
            .into_inner();
        Ok(r.members
            .into_iter()
            .map(|m| Member {
                id: m.id,
                name: m.name,
                client_urls: m.client_ur_ls,
                peer_urls: m.peer_ur_ls,
            })
            .collect())
    }

    /// Each endpoint's own status (no failover: one answer per endpoint,
    /// in the order of the settings).
    pub async fn member_status(&self) -> Vec<(String, Result<MemberStatus, Error>)> {
        let timeout = self.inner.request_timeout;
        let calls = self.inner.members.iter().map(|m| {
            let ch = m.channel.clone();
            let addr = m.addr.clone();
            async move {
                let r = tokio::time::timeout(
                    timeout,
                    pb::maintenance_client::MaintenanceClient::new(ch).status(pb::StatusRequest {}),
                )
                .await;
                let r = match r {
                    Err(_) => Err(Error::Timeout {
                        timeout,
                        what: "status",
                    }),
                    Ok(Err(s)) => Err(m.take_failure().unwrap_or_else(|| Error::from_status(&addr, s))),
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        Ok(MemberStatus {
                            member_id: r.header.as_ref().map(|h| h.member_id).unwrap_or(0),
                            revision: r.header.as_ref().map(|h| h.revision).unwrap_or(0),
                            leader: r.leader,
                            version: r.version,
                            db_size: r.db_size,
                            raft_term: r.raft_term,
                            raft_applied_index: r.raft_applied_index,
                            errors: r.errors,
                        })
                    }
                };
                (addr, r)
            }
        });
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await);
        }
        out
    }

    /// Operator: adds an etcd user. With client-certificate
    /// authentication the certificate's CN names the user, so it gets no
    /// password.
    pub async fn user_add(&self, name: &str) -> Result<(), Error> {
        let req = pb::AuthUserAddRequest {
            name: name.to_owned(),
            password: String::new(),
            options: Some(authpb::UserAddOptions { no_password: true }),
        };
        self.call("user add", Retry::Unsent, |ch, _| {
            let req = req.clone();
            async move { pb::auth_client::AuthClient::new(ch).user_add(req).await }
        })
        .await?;
        Ok(())
    }

    /// Operator: adds a role allowed to read and write every key under
    /// `prefix`, and nothing else.
    pub async fn role_add_for_prefix(&self, role: &str, prefix: &[u8]) -> Result<(), Error> {
        let add = pb::AuthRoleAddRequest { name: role.to_owned() };
        self.call("role add", Retry::Unsent, |ch, _| {
            let add = add.clone();
            async move { pb::auth_client::AuthClient::new(ch).role_add(add).await }
        })
        .await?;
        let grant = pb::AuthRoleGrantPermissionRequest {
            name: role.to_owned(),
            perm: Some(authpb::Permission {
                perm_type: authpb::permission::Type::Readwrite as i32,
                key: prefix.to_vec(),
                range_end: crate::prefix_end(prefix),
            }),
        };
        self.call("role grant", Retry::Unsent, |ch, _| {
            let grant = grant.clone();
            async move { pb::auth_client::AuthClient::new(ch).role_grant_permission(grant).await }
        })
        .await?;
        Ok(())
    }

    /// Operator: grants `role` to `user`.
    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<(), Error> {
        let req = pb::AuthUserGrantRoleRequest {
            user: user.to_owned(),
            role: role.to_owned(),
        };
        self.call("user grant role", Retry::Unsent, |ch, _| {
            let req = req.clone();
            async move { pb::auth_client::AuthClient::new(ch).user_grant_role(req).await }
        })
        .await?;
        Ok(())
    }

    /// Operator: turns etcd's authentication on (a `root` user with the
    /// `root` role must exist).
    pub async fn auth_enable(&self) -> Result<(), Error> {
        self.call("auth enable", Retry::Unsent, |ch, _| async move {
            pb::auth_client::AuthClient::new(ch)
                .auth_enable(pb::AuthEnableRequest {})
                .await
        })
        .await?;
        Ok(())
    }
}

/// `message` with etcd's "require leader" mark (`hasleader: true`, as
/// etcd's own client sends on watches): a member without a leader refuses
/// the request at once with "etcdserver: no leader", before taking it (so
/// a write is retried on another member), and ends such a stream when it
/// loses its leader (so a watch on a member cut off from the quorum
/// breaks instead of going silent).
fn leader_required<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
    r
}
