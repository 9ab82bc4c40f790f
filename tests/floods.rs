//! Floods at the transport, against the real daemon: silent connections
//! (the handshake flood), idle authenticated connections, a 1 MiB header,
//! HTTP/2 rapid reset and a CONTINUATION flood. Each leaves a client with
//! a certificate served throughout and afterwards, and the abusive
//! connection is closed or refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The value of a metric series (the whole line up to the value).
fn metric(path: &Path, series: &str) -> u64 {
    let body = scrape(path);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

fn wait_metric(path: &Path, series: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(path, series);
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection of the flood.
enum Sock {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// Holds `n` connections to `addr` (`unix:/path` or `host:port`) open
/// without ever sending a byte, reopening each one the daemon closes, until
/// `stop`. Returns how many connections it opened in all.
fn flood(
    addr: String,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    use std::io::Read;
    std::thread::spawn(move || {
        let open = || -> Option<Sock> {
            match addr.strip_prefix("unix:") {
                Some(path) => {
                    let s = std::os::unix::net::UnixStream::connect(path).ok()?;
                    s.set_nonblocking(true).ok()?;
                    Some(Sock::Unix(s))
                }
                None => {
                    let sa: std::net::SocketAddr = addr.parse().ok()?;
                    let s = std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)).ok()?;
                    s.set_nonblocking(true).ok()?;
                    Some(Sock::Tcp(s))
                }
            }
        };
        let mut socks: Vec<Option<Sock>> = (0..n).map(|_| open()).collect();
        let mut opened = n;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for s in socks.iter_mut() {
                let mut buf = [0u8; 16];
                let read = match s {
                    None => None,
                    Some(Sock::Tcp(t)) => Some(t.read(&mut buf)),
                    Some(Sock::Unix(u)) => Some(u.read(&mut buf)),
                };
                let closed = !matches!(read, Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock);
                if closed {
                    *s = open();
                    opened += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        opened
    })
}

/// A real client with a certificate completes a call within two seconds,
/// reconnecting if a connection attempt fails (as gRPC clients do).
async fn served_quickly(d: &Daemon, addr: Option<&str>, phase: &str) {
    for _ in 0..3 {
        let started = Instant::now();
        let mut last = String::new();
        let call = async {
            loop {
                let attempt = async {
                    let ch = kmsd::client::connect(&d.settings("client", addr))
                        .await
                        .map_err(|e| e.to_string())?;
                    kmsd::proto::keys_client::KeysClient::new(ch)
                        .list_keys(kmsd::proto::ListKeysRequest::default())
                        .await
                        .map_err(|s| s.to_string())
                };
                match attempt.await {
                    Ok(_) => return,
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), call).await.is_err() {
            panic!(
                "{phase}: a client with a certificate was kept out for {:?} ({last})",
                started.elapsed()
            );
        }
    }
}

/// 200 connections that never start a handshake, reopened as soon as they
/// are closed, do not keep a client with a certificate out when
/// `max_connections = 32`. Over TCP the kernel holds silent connections
/// (TCP_DEFER_ACCEPT); over the Unix socket, with a handshake budget of 32,
/// the oldest silent handshake is dropped for each new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_does_not_keep_a_real_client_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for (phase, limits) in [
        ("tcp", "max_connections = 32"),
        ("unix", "max_connections = 32\nmax_handshakes = 32"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        Pki::new(dir.path());
        let (d, metrics) = Daemon::start_with_metrics(dir.path(), &format!("[limits]\n{limits}\n"));
        let unix = format!("unix:{}", d.socket.display());
        let (target, client_addr) = match phase {
            "tcp" => (d.tcp.clone().unwrap(), d.tcp.clone()),
            _ => (unix.clone(), None),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = flood(target, 200, stop.clone());
        if phase == "unix" {
            wait_metric(&metrics, "kmsd_connections{state=\"handshake\"}", |v| v >= 32);
            wait_metric(&metrics, "kmsd_tls_handshakes_evicted_total", |v| v >= 168);
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
        served_quickly(&d, client_addr.as_deref(), phase).await;
        stop.store(true, Ordering::Relaxed);
        let opened = attacker.join().unwrap();
        eprintln!(
            "{phase}: the flood opened {opened} connections, {} handshakes evicted",
            metric(&metrics, "kmsd_tls_handshakes_evicted_total")
        );
        assert!(opened >= 200);
        if phase == "unix" {
            assert!(opened > 200, "the flood reopened the sockets the daemon dropped");
        }
        assert_eq!(metric(&metrics, "kmsd_connections_refused_total"), 0);
    }
}

/// An authenticated connection with no call in flight for `idle_timeout`
/// is closed (its slot freed); one that keeps calling is not; the client
/// reconnects on its next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_authenticated_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (d, metrics) = Daemon::start_with_metrics(dir.path(), "[limits]\nidle_timeout = \"1s\"\n");
    let mut keys = kmsd::proto::keys_client::KeysClient::new(d.channel().await);
    for _ in 0..8 {
        keys.list_keys(kmsd::proto::ListKeysRequest::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        metric(&metrics, "kmsd_idle_connections_closed_total"),
        0,
        "busy, not idle"
    );
    assert_eq!(metric(&metrics, "kmsd_connections{state=\"established\"}"), 1);
    wait_metric(&metrics, "kmsd_idle_connections_closed_total", |v| v == 1);
    wait_metric(&metrics, "kmsd_connections{state=\"established\"}", |v| v == 0);
    keys.list_keys(kmsd::proto::ListKeysRequest::default()).await.unwrap();
    assert_eq!(metric(&metrics, "kmsd_connections{state=\"established\"}"), 1);
}

/// A request carrying a 1 MiB `x-request-id` header is refused and leaves
/// the daemon serving other clients (and the abuser's next connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_header_leaves_other_clients_served() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let mut other = kmsd::proto::keys_client::KeysClient::new(d.channel().await);
    create(&mut other, "k1").await;
    let mut abuser = kmsd::proto::keys_client::KeysClient::new(d.channel().await);
    let mut req = tonic::Request::new(kmsd::proto::CreateKeyRequest {
        name: "by-abuser".into(),
        algorithm: 0,
        policy: None,
        exportable: false,
    });
    req.metadata_mut()
        .insert("x-request-id", "r".repeat(1 << 20).parse().unwrap());
    let r = tokio::time::timeout(Duration::from_secs(10), abuser.create_key(req))
        .await
        .expect("answered or closed, not hung");
    assert!(r.is_err(), "a 1 MiB header must be refused");
    for name in ["k2", "k3"] {
        create(&mut other, name).await;
    }
    create_as(&d, "client", "k4").await.unwrap();
    assert_eq!(key_names(&d).await, vec!["k1", "k2", "k3", "k4"]);
}

/// A raw TLS connection to the daemon's Unix socket with the client's
/// certificate (ALPN h2), for clients that speak HTTP/2 themselves.
async fn raw_tls(
    settings: &kmsd::client::ClientSettings,
    socket: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::UnixStream> {
    let cfg = kmsd::client::tls_config(&settings.ca, &settings.cert, &settings.key).unwrap();
    let sock = tokio::net::UnixStream::connect(socket).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect("localhost".try_into().unwrap(), sock)
        .await
        .unwrap()
}

/// A memory figure of the daemon in KiB from /proc/PID/status: `VmRSS`
/// (resident now) or `VmHWM` (peak resident).
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Rapid reset (CVE-2023-44487): one connection opens up to 10,000 streams
/// and resets each at once (RST_STREAM CANCEL). The daemon ends that
/// connection (GOAWAY) and a client with a certificate is served within two
/// seconds per call throughout and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_leaves_other_clients_served() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    served_quickly(&d, None, "before the rapid reset").await;
    let done = Arc::new(AtomicBool::new(false));
    let abuser = {
        let (settings, socket, done) = (d.settings("client", None), d.socket.clone(), done.clone());
        tokio::spawn(async move {
            let tls = raw_tls(&settings, &socket).await;
            let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
            let conn = tokio::spawn(conn);
            let mut reset = 0u32;
            let mut refused = None;
            while reset < 10_000 {
                let ready = tokio::time::timeout(Duration::from_secs(2), send.ready()).await;
                send = match ready {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        refused = Some(e);
                        break;
                    }
                    Err(_) => break,
                };
                let req = http::Request::post("http://localhost/kmsd.v1.Keys/ListKeys")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
                match send.send_request(req, false) {
                    Ok((_response, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                    Err(e) => {
                        refused = Some(e);
                        break;
                    }
                }
                reset += 1;
            }
            // the connection's own error, if the loop did not see it
            let conn = tokio::time::timeout(Duration::from_secs(2), conn).await;
            done.store(true, Ordering::Relaxed);
            (reset, refused, conn)
        })
    };
    let mut rounds = 0;
    while !done.load(Ordering::Relaxed) && rounds < 20 {
        served_quickly(&d, None, "during the rapid reset").await;
        rounds += 1;
    }
    let (reset, refused, conn) = tokio::time::timeout(Duration::from_secs(10), abuser)
        .await
        .expect("the abuser finished")
        .unwrap();
    let conn_err = match conn {
        Ok(Ok(Err(e))) => Some(e),
        _ => None,
    };
    // The client queues its 10,000 HEADERS + RST_STREAM pairs faster than
    // the daemon reads them; the daemon answers GOAWAY ENHANCE_YOUR_CALM,
    // "too_many_resets" once more than 20 streams were reset before it
    // accepted them (max_pending_accept_reset_streams) or
    // "too_many_internal_resets" once it reset 1024 streams itself
    // (max_local_error_reset_streams), whichever comes first.
    let calm = refused
        .iter()
        .chain(conn_err.iter())
        .any(|e| e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM));
    assert!(
        calm,
        "the daemon must end a connection that resets {reset} streams with GOAWAY ENHANCE_YOUR_CALM (loop: {refused:?}, connection: {conn_err:?})"
    );
    eprintln!("rapid reset: {reset} streams reset, {rounds} rounds of 3 calls served meanwhile; {conn_err:?}");
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon died"
    );
    served_quickly(&d, None, "after the rapid reset").await;
}

/// A CONTINUATION flood (CVE-2024-27316 class): HEADERS without
/// END_HEADERS on stream 1, then 8,000-byte CONTINUATION frames without end
/// (up to 64 MiB). The daemon refuses the header block with a GOAWAY after a
/// few frames and closes the connection (after its lingering close, which
/// discards input for at most 2 s); its peak memory does not grow with the
/// flood, and another client is served meanwhile and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_leaves_other_clients_served() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    served_quickly(&d, None, "before the flood").await;
    let rss_before = vm_kib(d.pid(), "VmRSS:");
    const LIMIT: usize = 64 << 20;
    let done = Arc::new(AtomicBool::new(false));
    let abuser = {
        let (settings, socket, done) = (d.settings("client", None), d.socket.clone(), done.clone());
        tokio::spawn(async move {
            let tls = raw_tls(&settings, &socket).await;
            let (mut rd, mut wr) = tokio::io::split(tls);
            // the server's frames until it closes: its GOAWAY's error code
            // and debug data, and whether it closed within 9 s
            let reader = tokio::spawn(async move {
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                let closed = loop {
                    match tokio::time::timeout(Duration::from_secs(9), rd.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break true,
                        Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                        Err(_) => break false,
                    }
                };
                let mut goaway = None;
                let mut at = 0;
                while at + 9 <= all.len() {
                    let len = usize::from(all[at]) << 16 | usize::from(all[at + 1]) << 8 | usize::from(all[at + 2]);
                    if all[at + 3] == 7 && at + 9 + len <= all.len() && len >= 8 {
                        let p = &all[at + 9..at + 9 + len];
                        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                        goaway = Some((code, String::from_utf8_lossy(&p[8..]).into_owned()));
                    }
                    at += 9 + len;
                }
                (goaway, closed)
            });
            let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
                let len = payload.len() as u32;
                let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
                f.extend_from_slice(&stream.to_be_bytes());
                f.extend_from_slice(payload);
                f
            };
            let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            start.extend(frame(4, 0, 0, &[])); // SETTINGS
                                               // HEADERS, END_STREAM but not END_HEADERS: :method POST, :scheme http, :path /
            start.extend(frame(1, 0x1, 1, &[0x83, 0x86, 0x84]));
            // CONTINUATION: 1,000 valid literal fields `x: aaaaa` (8 bytes each)
            let fields: Vec<u8> = (0..1000).flat_map(|_| *b"\x00\x01x\x05aaaaa").collect();
            let continuation = frame(9, 0, 1, &fields);
            let sent = std::sync::atomic::AtomicUsize::new(0);
            let write = async {
                wr.write_all(&start).await?;
                sent.fetch_add(start.len(), Ordering::Relaxed);
                while sent.load(Ordering::Relaxed) < LIMIT {
                    wr.write_all(&continuation).await?;
                    sent.fetch_add(continuation.len(), Ordering::Relaxed);
                }
                wr.flush().await
            };
            let ended = tokio::time::timeout(Duration::from_secs(8), write).await;
            let sent = sent.into_inner();
            let write_failed = matches!(ended, Ok(Err(_)));
            let (goaway, closed) = reader.await.unwrap();
            done.store(true, Ordering::Relaxed);
            (sent, write_failed, goaway, closed)
        })
    };
    let mut rounds = 0;
    while !done.load(Ordering::Relaxed) && rounds < 20 {
        served_quickly(&d, None, "during the flood").await;
        rounds += 1;
    }
    let (sent, write_failed, goaway, closed) = tokio::time::timeout(Duration::from_secs(20), abuser)
        .await
        .expect("the abuser finished")
        .unwrap();
    // h2 allows a header block at most max(5, 1.25 × header list size /
    // frame size) CONTINUATION frames, then GOAWAY ENHANCE_YOUR_CALM (0xb);
    // a block over the size limit that keeps growing gets COMPRESSION_ERROR
    // (0x9). After the GOAWAY the daemon discards input for at most
    // `conn::LINGER` (2 s), then closes the socket.
    assert!(
        matches!(&goaway, Some((0xb | 0x9, _))),
        "the daemon must refuse an endless header block with a GOAWAY: {goaway:?} after {sent} bytes"
    );
    assert!(
        closed,
        "the daemon must close the flooding connection ({sent} bytes sent)"
    );
    let rss_after = vm_kib(d.pid(), "VmHWM:");
    assert!(
        rss_after < rss_before + 100 * 1024,
        "the daemon's memory grew from {rss_before} KiB to a peak of {rss_after} KiB"
    );
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon died"
    );
    served_quickly(&d, None, "after the flood").await;
    eprintln!(
        "continuation flood: GOAWAY {goaway:?}; {sent} bytes sent, write failed {write_failed}; VmRSS {rss_before} KiB before, VmHWM {rss_after} KiB after"
    );
}
