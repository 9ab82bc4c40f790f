//! Admission of connections: the TLS handshake with its own budget, the
//! cap on authenticated connections, and the idle timeout.
//!
//! A peer without a certificate must never hold what a client with one
//! needs. So connections still in the handshake (unauthenticated) and
//! established ones (authenticated) have separate budgets:
//! - `limits.max_handshakes` connections may be in the handshake at once.
//!   When that budget is full, a new connection evicts a pending one: the
//!   oldest that has not sent a single byte yet, else the oldest. Sockets
//!   opened and left silent (or stalled mid-handshake) thus evict their own
//!   kind, while a real client, which sends its ClientHello at once and
//!   finishes in milliseconds, goes through. Each handshake also ends at
//!   `limits.handshake_timeout`.
//! - `limits.max_connections` authenticated connections may be open; the
//!   slot is taken only once the client certificate has been verified.
//!   An authenticated connection with no request in flight for
//!   `limits.idle_timeout` is closed (gRPC's `MAX_CONNECTION_IDLE`), so idle
//!   clients do not keep slots forever; gRPC clients reconnect on their
//!   next call.
//!
//! TCP listeners also set `TCP_DEFER_ACCEPT` (in `server`), so the kernel
//! holds a connection until its client sends data.
//!
//! Evictions, refusals and idle closes are counted in [`Metrics`]. This
//! module never decides who may do what: it hands the verified identity to
//! the services through [`ConnLayer`].
use super::identity::{IdentityError, IdentityRules, PeerIdentity};
use super::SharedServerConfig;
use crate::ops::metrics::Metrics;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A raw stream that notes its first received byte: a handshake that has
/// heard nothing yet is the first to be evicted.
pub struct Watched {
    inner: RawStream,
    /// Set on the first byte read; shared with the pending-handshake entry.
    heard: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !this.heard.load(Ordering::Relaxed) {
            this.heard.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One handshake in progress.
struct PendingEntry {
    /// Ends the handshake task (dropping, and so closing, its socket).
    abort: AbortHandle,
    /// Whether the handshake task has read anything yet.
    heard: Arc<AtomicBool>,
    /// A duplicate of the socket's descriptor, to look for input the task
    /// has not read yet: under a flood of connections the task of a client
    /// whose ClientHello is already waiting may not have run yet.
    probe: Option<OwnedFd>,
}

impl PendingEntry {
    fn silent(&self) -> bool {
        if self.heard.load(Ordering::Relaxed) {
            return false;
        }
        match &self.probe {
            Some(fd) if crate::ops::os::has_input(fd.as_fd()) => {
                self.heard.store(true, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }
}

/// The handshakes in progress, oldest first.
#[derive(Default)]
struct Pending {
    next: u64,
    by_age: BTreeMap<u64, PendingEntry>,
}

impl Pending {
    /// Takes out the handshake to drop when the budget is full: the oldest
    /// silent one, else the oldest.
    fn evict(&mut self) -> Option<PendingEntry> {
        let seq = self
            .by_age
            .iter()
            .find(|(_, e)| e.silent())
            .or_else(|| self.by_age.iter().next())
            .map(|(seq, _)| *seq)?;
        self.by_age.remove(&seq)
    }
}

/// Removes a finished handshake from [`Pending`] (a no-op if it was
/// evicted), however its task ends.
struct PendingDone {
    pending: Arc<Mutex<Pending>>,
    metrics: Arc<Metrics>,
    seq: u64,
}

impl Drop for PendingDone {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            if p.by_age.remove(&self.seq).is_some() {
                self.metrics.handshakes_in_progress.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// An authenticated connection's slot under `limits.max_connections`.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connections_established.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The admission limits (from `[limits]`: `config::Limits::admission`).
#[derive(Debug, Clone)]
pub struct Admission {
    /// Authenticated connections open at once, over all listeners.
    pub max_connections: usize,
    /// Connections in the TLS handshake at once, over all listeners.
    pub max_handshakes: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout: std::time::Duration,
    /// An authenticated connection with no request in flight this long is closed.
    pub idle_timeout: std::time::Duration,
}

/// A plain stream from any listener.
pub enum RawStream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            RawStream::Tcp($s) => $e,
            RawStream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for RawStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for RawStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            RawStream::Tcp(s) => s.is_write_vectored(),
            RawStream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// Shared state of every accept loop.
#[derive(Clone)]
pub struct Acceptor {
    /// TLS configuration (reloadable).
    config: SharedServerConfig,
    /// Authenticated connections, over all listeners.
    established: Arc<Semaphore>,
    /// Handshakes in progress, over all listeners.
    pending: Arc<Mutex<Pending>>,
    /// Handshake budget and timeout, idle timeout.
    limits: Admission,
    /// URI SAN rules (also enforced in the handshake by the verifier).
    rules: Arc<IdentityRules>,
    /// Counters and gauges.
    metrics: Arc<Metrics>,
    /// Where authenticated connections go (to the gRPC server).
    out: mpsc::Sender<Conn>,
}

impl Acceptor {
    /// An acceptor handing authenticated connections to `out`.
    pub fn new(
        config: SharedServerConfig,
        rules: IdentityRules,
        limits: Admission,
        metrics: Arc<Metrics>,
        out: mpsc::Sender<Conn>,
    ) -> Self {
        Acceptor {
            config,
            rules: Arc::new(rules),
            established: Arc::new(Semaphore::new(limits.max_connections)),
            pending: Arc::default(),
            limits,
            metrics,
            out,
        }
    }

    /// Starts the handshake of one accepted stream in its own task, within
    /// the handshake budget (evicting a pending handshake if it is full).
    pub fn admit(&self, raw: RawStream, peer_addr: String) {
        let cfg = match self.config.read() {
            Ok(c) => c.clone(),
            Err(_) => return,
        };
        let heard = Arc::new(AtomicBool::new(false));
        let probe = match &raw {
            RawStream::Tcp(s) => s.as_fd().try_clone_to_owned().ok(),
            RawStream::Unix(s) => s.as_fd().try_clone_to_owned().ok(),
        };
        let stream = Watched {
            inner: raw,
            heard: heard.clone(),
        };
        let victim = {
            let Ok(mut pending) = self.pending.lock() else { return };
            let victim = if pending.by_age.len() >= self.limits.max_handshakes {
                pending.evict()
            } else {
                None
            };
            let seq = pending.next;
            pending.next += 1;
            let this = self.clone();
            // The task's PendingDone needs the lock held here, so it cannot
            // remove its entry before the entry is inserted below.
            let task = tokio::spawn(async move {
                let done = PendingDone {
                    pending: this.pending.clone(),
                    metrics: this.metrics.clone(),
                    seq,
                };
                let tls = this.handshake(stream, &peer_addr, cfg).await;
                drop(done);
                if let Some(tls) = tls {
                    this.establish(tls, peer_addr).await;
                }
            });
            pending.by_age.insert(
                seq,
                PendingEntry {
                    abort: task.abort_handle(),
                    heard,
                    probe,
                },
            );
            if victim.is_none() {
                self.metrics.handshakes_in_progress.fetch_add(1, Ordering::Relaxed);
            }
            victim
        };
        if let Some(v) = victim {
            // outside the lock: an aborted task's PendingDone takes it
            // (dropping `v` closes the probe descriptor)
            v.abort.abort();
            self.metrics.handshakes_evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("handshake budget full: the oldest pending handshake was dropped");
        }
    }

    /// The TLS handshake, within the handshake timeout.
    async fn handshake(
        &self,
        stream: Watched,
        peer_addr: &str,
        cfg: Arc<rustls::ServerConfig>,
    ) -> Option<TlsStream<Watched>> {
        let accept = TlsAcceptor::from(cfg).accept(stream);
        match tokio::time::timeout(self.limits.handshake_timeout, accept).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                self.metrics.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %peer_addr, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.metrics.tls_handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %peer_addr, "TLS handshake timed out; connection dropped");
                None
            }
        }
    }

    /// Takes a slot for an authenticated connection and hands it to the
    /// gRPC server.
    async fn establish(&self, tls: TlsStream<Watched>, peer_addr: String) {
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(IdentityError::Unparseable)
            .and_then(|c| PeerIdentity::from_cert_checked(c, peer_addr.clone(), &self.rules));
        let peer = match identity {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(peer = %peer_addr, error = %e, "client certificate refused; connection dropped");
                return;
            }
        };
        let Ok(permit) = self.established.clone().try_acquire_owned() else {
            self.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer_addr, identity = peer.id(), "connection refused: connection limit reached");
            return;
        };
        self.metrics.connections_established.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        tracing::debug!(peer = %peer_addr, identity = peer.id(), "client connected");
        let activity = Arc::new(Activity::new());
        let idle = Idle {
            after: self.limits.idle_timeout,
            sleep: Box::pin(tokio::time::sleep(self.limits.idle_timeout)),
            metrics: self.metrics.clone(),
            closed: false,
        };
        let _ = self
            .out
            .send(Conn {
                tls,
                info: ConnInfo {
                    peer: Arc::new(peer),
                    activity,
                },
                _slot: slot,
                idle,
                linger: None,
            })
            .await;
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `since` of the last request start or end.
    last_ms: AtomicU64,
    since: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection becomes idle for `after`, given what is in
    /// flight now (a busy connection is looked at again `after` from now).
    fn idle_deadline(&self, after: std::time::Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Instant::now() + after;
        }
        self.since + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + after
    }
}

/// One request (and its response body) in flight.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What tonic attaches to every request of a connection; [`ConnLayer`]
/// turns it into the `Arc<PeerIdentity>` the services read.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The verified client identity.
    pub peer: Arc<PeerIdentity>,
    /// Requests in flight, for the idle timeout.
    activity: Arc<Activity>,
}

/// The idle timer of an authenticated connection.
struct Idle {
    after: std::time::Duration,
    sleep: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    /// Once closed for idleness, reads keep returning end of stream.
    closed: bool,
}

/// An accepted, authenticated connection. Holds its slot for as long as
/// it lives.
pub struct Conn {
    tls: TlsStream<Watched>,
    info: ConnInfo,
    _slot: Slot,
    idle: Idle,
    /// Set once our side is shut down: how long we keep reading.
    linger: Option<Pin<Box<Sleep>>>,
}

/// How long a closing connection keeps reading what the client still
/// sends (its last WINDOW_UPDATEs, its close_notify) before the socket is
/// dropped. Closing a socket with unread input makes the peer's next write
/// fail (EPIPE, or a TCP RST that can discard our last response frames
/// from its receive buffer); a lingering close lets the client read every
/// response of a graceful shutdown.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.idle.closed {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(r) = Pin::new(&mut this.tls).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        // Nothing to read: the HTTP/2 server waits here between requests,
        // so this is where an idle connection is noticed and ended (end of
        // stream: the server closes the connection with no call in flight).
        while this.idle.sleep.as_mut().poll(cx).is_ready() {
            let deadline = this.info.activity.idle_deadline(this.idle.after);
            if deadline <= Instant::now() {
                this.idle.closed = true;
                this.idle.metrics.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    identity = this.info.peer.id(),
                    peer = %this.info.peer.peer_addr,
                    "idle connection closed"
                );
                return Poll::Ready(Ok(()));
            }
            this.idle.sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            // close_notify, flush, and shut down our write side
            std::task::ready!(Pin::new(&mut this.tls).poll_shutdown(cx))?;
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        // Lingering close: discard input until the peer closes, fails or
        // the deadline passes.
        let mut scratch = [0u8; 4096];
        loop {
            if let Some(deadline) = this.linger.as_mut() {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.tls).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// Tower layer (outermost of the server's layers) that gives every request
/// its caller's `Arc<PeerIdentity>` and counts it in flight on its
/// connection until its response body ends. A request without
/// [`ConnInfo`] gets no identity, and the services answer UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnLayer;

impl<S> tower::Layer<S> for ConnLayer {
    type Service = ConnService<S>;
    fn layer(&self, inner: S) -> ConnService<S> {
        ConnService { inner }
    }
}

/// See [`ConnLayer`].
#[derive(Debug, Clone)]
pub struct ConnService<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for ConnService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = ConnFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let info = req.extensions_mut().remove::<ConnInfo>();
        let guard = info.map(|info| {
            req.extensions_mut().insert(info.peer.clone());
            info.activity.begin()
        });
        ConnFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`ConnService`].
    #[derive(Debug)]
    pub struct ConnFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F, RB, E> Future for ConnFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<TrackedBody<RB>>, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(resp.map(|inner| TrackedBody { inner, _guard: guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it ends
    /// (streaming responses outlive the handler's future).
    #[derive(Debug)]
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: hyper::body::Body> hyper::body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
