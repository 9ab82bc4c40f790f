//! `kmsd-bench`: drives a real kmsd over mTLS and reports every result as
//! a ratio to baselines measured in the same run with the same harness:
//! (1) a bare tonic echo service over the same mTLS transport and message
//! shape (the transport floor), (2) in-process AES-256-GCM envelopes (the
//! crypto floor), and (3) `openssl speed` for the raw AEAD.
//!
//! `kmsd-bench` alone starts its own daemon and echo server (audit trail
//! on), runs the matrix and prints a table; see `--help` and BENCHMARKS.md.
#![forbid(unsafe_code)]
use clap::{Parser, Subcommand};
use kmsd::dev::{write_file, Ca};
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient, mask_client::MaskClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "kmsd-bench", about = "Benchmark kmsd against same-run baselines")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Measuring time per case.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent callers (comma-separated list).
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// HTTP/2 connections the callers are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Payload sizes in bytes.
    #[arg(long, default_value = "64,1024,16384,65536", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Operations: encrypt, decrypt, rewrap, redact, batch.
    #[arg(long, default_value = "encrypt,decrypt,rewrap,redact,batch", value_delimiter = ',')]
    ops: Vec<String>,
    /// unix or tcp.
    #[arg(long, default_value = "unix")]
    transport: String,
    /// Runs per case; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Items per batch for the batch case.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Also measure a store with this many keys (ready time, RSS, throughput ratio).
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Also measure a key with this many versions.
    #[arg(long, default_value_t = 0)]
    versions: u32,
    /// Skip `openssl speed`.
    #[arg(long)]
    no_openssl: bool,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Drive a running `kmsd dev` in this directory (its socket and dev
    /// client certificate) instead of starting a daemon.
    #[arg(long)]
    dev_dir: Option<PathBuf>,
    /// The running daemon's pid, for its CPU seconds (with --dev-dir).
    #[arg(long)]
    daemon_pid: Option<u32>,
}

#[derive(Subcommand)]
enum Sub {
    /// (internal) The echo baseline server.
    EchoServer {
        /// Directory with the PKI.
        #[arg(long)]
        dir: PathBuf,
        /// Unix socket to serve on.
        #[arg(long)]
        socket: PathBuf,
        /// TCP address to serve on.
        #[arg(long)]
        tcp: String,
    },
}

// ---------------------------------------------------------------- echo server

/// The transport floor: the kmsd API shape, no work.
#[derive(Debug, Clone, Copy)]
struct Echo;

fn pad(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + kmsd::crypto::OVERHEAD);
    out.extend_from_slice(v);
    out.resize(v.len() + kmsd::crypto::OVERHEAD, 0);
    out
}

fn unpad(v: &[u8]) -> Vec<u8> {
    v.get(..v.len().saturating_sub(kmsd::crypto::OVERHEAD))
        .unwrap_or_default()
        .to_vec()
}

type R<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl proto::crypto_server::Crypto for Echo {
    async fn encrypt(&self, r: tonic::Request<proto::EncryptRequest>) -> R<proto::EncryptResponse> {
        Ok(tonic::Response::new(proto::EncryptResponse {
            ciphertext: pad(&r.get_ref().plaintext),
            key_version: 1,
        }))
    }
    async fn decrypt(&self, r: tonic::Request<proto::DecryptRequest>) -> R<proto::DecryptResponse> {
        Ok(tonic::Response::new(proto::DecryptResponse {
            plaintext: unpad(&r.get_ref().ciphertext),
            key_version: 1,
        }))
    }
    async fn rewrap(&self, r: tonic::Request<proto::RewrapRequest>) -> R<proto::RewrapResponse> {
        let ciphertext = r.get_ref().ciphertext.clone();
        Ok(tonic::Response::new(proto::RewrapResponse {
            ciphertext,
            key_version: 1,
            source_key_version: 1,
        }))
    }
    async fn encrypt_batch(&self, r: tonic::Request<proto::EncryptBatchRequest>) -> R<proto::EncryptBatchResponse> {
        let items = r
            .get_ref()
            .items
            .iter()
            .map(|i| proto::EncryptBatchItem {
                result: Some(proto::encrypt_batch_item::Result::Ok(proto::EncryptResponse {
                    ciphertext: pad(&i.plaintext),
                    key_version: 1,
                })),
            })
            .collect();
        Ok(tonic::Response::new(proto::EncryptBatchResponse { items }))
    }
    async fn decrypt_batch(&self, _: tonic::Request<proto::DecryptBatchRequest>) -> R<proto::DecryptBatchResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn rewrap_batch(&self, _: tonic::Request<proto::RewrapBatchRequest>) -> R<proto::RewrapBatchResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn generate_data_key(
        &self,
        _: tonic::Request<proto::GenerateDataKeyRequest>,
    ) -> R<proto::GenerateDataKeyResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn generate_data_key_without_plaintext(
        &self,
        _: tonic::Request<proto::GenerateDataKeyRequest>,
    ) -> R<proto::GenerateDataKeyResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
}

#[tonic::async_trait]
impl proto::mask_server::Mask for Echo {
    async fn mask(&self, _: tonic::Request<proto::MaskRequest>) -> R<proto::MaskResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn redact(&self, r: tonic::Request<proto::RedactRequest>) -> R<proto::RedactResponse> {
        Ok(tonic::Response::new(proto::RedactResponse {
            text: r.into_inner().text,
            findings: vec![],
        }))
    }
    type RedactStreamStream = tokio_stream::Empty<Result<proto::RedactResponse, tonic::Status>>;
    async fn redact_stream(
        &self,
        _: tonic::Request<tonic::Streaming<proto::RedactRequest>>,
    ) -> R<Self::RedactStreamStream> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn tokenize(&self, _: tonic::Request<proto::TokenizeRequest>) -> R<proto::TokenizeResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn detokenize(&self, _: tonic::Request<proto::DetokenizeRequest>) -> R<proto::DetokenizeResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
}

/// Serves `Echo` through the same acceptor (TLS 1.3, client certificates,
/// connection cap, handshake timeout) and server settings as kmsd.
async fn echo_server(dir: &Path, socket: &Path, tcp: &str) -> Result<(), BoxError> {
    use tokio_stream::StreamExt as _;
    let limits = kmsd::config::Limits::default();
    let tls = kmsd::config::Tls {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: dir.join("ca.pem"),
        client_crls: Vec::new(),
        trust_domains: Vec::new(),
        allow_multiple_uri_sans: false,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = kmsd::tls::acceptor::Acceptor::new(
        Arc::new(std::sync::RwLock::new(kmsd::tls::server_config(&tls.server_tls())?)),
        tls.identity_rules(),
        limits.admission(),
        Arc::new(kmsd::ops::metrics::Metrics::default()),
        tx,
    );
    let _ = std::fs::remove_file(socket);
    let unix = tokio::net::UnixListener::bind(socket)?;
    let tcp = tokio::net::TcpListener::bind(tcp).await?;
    let a = acceptor.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = unix.accept().await {
            a.admit(kmsd::tls::RawStream::Unix(s), "unix".into());
        }
    });
    tokio::spawn(async move {
        while let Ok((s, peer)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            acceptor.admit(kmsd::tls::RawStream::Tcp(s), peer.to_string());
        }
    });
    let max = limits.max_message_bytes;
    tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(kmsd::tls::acceptor::ConnLayer)
        .add_service(
            proto::crypto_server::CryptoServer::new(Echo)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max + 4096),
        )
        .add_service(proto::mask_server::MaskServer::new(Echo).max_decoding_message_size(max))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>))
        .await?;
    Ok(())
}

// ---------------------------------------------------------------- setup

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn pki(dir: &Path) -> Result<(), BoxError> {
    let ca = Ca::new("bench CA")?;
    write_file(&dir.join("ca.pem"), ca.cert_pem().as_bytes(), false)?;
    let s = ca.issue_server(&["localhost"], &["127.0.0.1".parse()?])?;
    write_file(&dir.join("server.pem"), s.cert_pem.as_bytes(), false)?;
    write_file(&dir.join("server.key"), s.key_pem.as_bytes(), true)?;
    let c = ca.issue_client("bench", Some("spiffe://bench/client"))?;
    write_file(&dir.join("client.pem"), c.cert_pem.as_bytes(), false)?;
    write_file(&dir.join("client.key"), c.key_pem.as_bytes(), true)?;
    std::fs::write(
        dir.join("policy.toml"),
        "[identities]\n\"spiffe://bench/client\" = [\"bench\"]\n[roles.bench]\nallow = [{ ops = [\"*\"], keys = [\"*\"] }]\ndev_no_second_factor = true\n",
    )?;
    kmsd_keystore::MasterKey::create_file(&dir.join("master-key"))?;
    Ok(())
}

fn write_config(dir: &Path, name: &str, tcp: &str) -> Result<PathBuf, BoxError> {
    let cfg = format!(
        "dev_mode = true\npolicy = \"policy.toml\"\n[listen]\nunix = \"{name}.sock\"\ntcp = [\"{tcp}\"]\n[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n[store]\npath = \"{name}-store\"\nmaster_key = \"master-key\"\n[audit]\npath = \"{name}-audit.log\"\n[limits]\nmax_message_bytes = 16777216\n"
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, cfg)?;
    Ok(p)
}

fn sibling(bin: &str) -> Result<PathBuf, BoxError> {
    let me = std::env::current_exe()?;
    Ok(me.parent().ok_or("no parent dir")?.join(bin))
}

/// Starts `kmsd serve` and waits until it answers; returns the process and
/// the time from spawn to ready.
async fn start_kmsd(dir: &Path, name: &str, tcp: &str) -> Result<(Proc, Duration), BoxError> {
    let config = write_config(dir, name, tcp)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let started = Instant::now();
    let child = Command::new(sibling("kmsd")?)
        .args(["serve", "--config"])
        .arg(&config)
        .env("KMSD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let p = Proc { child };
    let sock = dir.join(format!("{name}.sock"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            if let Ok(ch) = kmsd::client::connect(&settings(dir, &format!("unix:{}", sock.display()))).await {
                let mut k = KeysClient::new(ch);
                if k.list_keys(proto::ListKeysRequest {
                    page_size: 1,
                    ..Default::default()
                })
                .await
                .is_ok()
                {
                    return Ok((p, started.elapsed()));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("kmsd {name} did not become ready").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn settings(dir: &Path, addr: &str) -> kmsd::client::ClientSettings {
    kmsd::client::ClientSettings {
        addr: addr.to_owned(),
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
        server_name: Some("localhost".into()),
    }
}

/// CPU seconds (user + system) used by `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // fields after the parenthesised command name; utime and stime are 14 and 15
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // CLK_TCK is 100 on Linux x86_64 and aarch64.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

// ---------------------------------------------------------------- load

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Stats {
    ops_per_s: f64,
    mb_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_s: f64,
    /// Server CPU per call, microseconds (0 when the pid is unknown).
    cpu_us_per_op: f64,
}

#[derive(Clone)]
struct Target {
    channels: Vec<Channel>,
    pid: u32,
}

async fn connect_n(dir: &Path, addr: &str, n: usize) -> Result<Vec<Channel>, BoxError> {
    let mut v = Vec::new();
    for _ in 0..n.max(1) {
        v.push(kmsd::client::connect(&settings(dir, addr)).await?);
    }
    Ok(v)
}

/// What one caller sends.
#[derive(Clone)]
enum Work {
    Encrypt(Vec<u8>),
    Decrypt(Vec<u8>),
    Rewrap(Vec<u8>),
    Redact(String),
    Batch(Vec<proto::EncryptRequest>),
}

async fn one_call(ch: &Channel, key: &str, w: &Work) -> Result<(), tonic::Status> {
    let big = 64 << 20;
    match w {
        Work::Encrypt(p) => {
            let mut c = CryptoClient::new(ch.clone()).max_decoding_message_size(big);
            c.encrypt(proto::EncryptRequest {
                key: key.into(),
                plaintext: p.clone(),
                associated_data: vec![],
            })
            .await?;
        }
        Work::Decrypt(ct) => {
            let mut c = CryptoClient::new(ch.clone()).max_decoding_message_size(big);
            c.decrypt(proto::DecryptRequest {
                key: key.into(),
                ciphertext: ct.clone(),
                associated_data: vec![],
            })
            .await?;
        }
        Work::Rewrap(ct) => {
            let mut c = CryptoClient::new(ch.clone()).max_decoding_message_size(big);
            c.rewrap(proto::RewrapRequest {
                key: key.into(),
                ciphertext: ct.clone(),
                associated_data: vec![],
            })
            .await?;
        }
        Work::Redact(t) => {
            let mut c = MaskClient::new(ch.clone()).max_decoding_message_size(big);
            c.redact(proto::RedactRequest {
                text: t.clone(),
                kinds: vec![],
            })
            .await?;
        }
        Work::Batch(items) => {
            let mut c = CryptoClient::new(ch.clone())
                .max_decoding_message_size(big)
                .max_encoding_message_size(big);
            c.encrypt_batch(proto::EncryptBatchRequest { items: items.clone() })
                .await?;
        }
    }
    Ok(())
}

/// Runs `concurrency` callers for `duration`; `units` = payload bytes (or
/// items) per call, for MB/s (or items/s).
async fn load(
    t: &Target,
    key: &str,
    w: Work,
    concurrency: usize,
    duration: Duration,
    units: usize,
) -> Result<Stats, BoxError> {
    // warm up every connection
    for ch in &t.channels {
        one_call(ch, key, &w).await?;
    }
    let cpu0 = cpu_seconds(t.pid);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let ch = t.channels[i % t.channels.len()].clone();
        let (key, w) = (key.to_owned(), w.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let s = Instant::now();
                if one_call(&ch, &key, &w).await.is_err() {
                    return Err(());
                }
                lat.push(s.elapsed().as_micros() as u32);
            }
            Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?.map_err(|_| "a call failed")?);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(t.pid) - cpu0;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    let n = lat.len() as f64;
    Ok(Stats {
        ops_per_s: n / secs,
        mb_per_s: n * units as f64 / secs / 1e6,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        cpu_s: cpu,
        cpu_us_per_op: if n > 0.0 { cpu / n * 1e6 } else { 0.0 },
    })
}

fn median(mut v: Vec<Stats>) -> Stats {
    let mid = v.len() / 2;
    v.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
    let mut m = v.get(mid).copied().unwrap_or_default();
    let mut p99: Vec<f64> = v.iter().map(|s| s.p99_us).collect();
    p99.sort_by(f64::total_cmp);
    m.p99_us = p99.get(mid).copied().unwrap_or(m.p99_us);
    m
}

/// In-process envelope encryption: the crypto floor (one thread).
fn crypto_floor(size: usize, duration: Duration) -> f64 {
    let key = kmsd_keystore::KeyMaterial::generate();
    let p = vec![7u8; size];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        for _ in 0..64 {
            let _ = std::hint::black_box(kmsd::crypto::encrypt(&key, "bench", 1, &p, b""));
        }
        n += 64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// MB/s of the AEAD alone at `size` (one thread).
fn aead_mb_s(size: usize) -> f64 {
    let mut buf = vec![7u8; size];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        buf.truncate(size);
        let _ = kmsd_keystore::aead::seal(&[9; 32], &[1; 12], b"", &mut buf);
        n += 1;
    }
    (n as f64 * size as f64) / started.elapsed().as_secs_f64() / 1e6
}

fn openssl_mb_s(size: usize) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-gcm",
            "-seconds",
            "2",
            "-bytes",
            &size.to_string(),
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with("aes-256-gcm"))?;
    let k = line
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse::<f64>()
        .ok()?;
    Some(k * 1000.0 / 1e6)
}

fn log_text(size: usize) -> String {
    let base = "2026-11-24T06:00:00Z INFO payment accepted card=4111 1111 1111 1111 iban=GB82 WEST 1234 5698 7654 32 \
                email=lucy.j@example.co.uk order=ORD-20261124-0042 amount=1,234.56 request_id=a6cecc1b-78e5-1061-7311-d8a3c2ce6f44 ";
    base.repeat(size / base.len() + 1).chars().take(size).collect()
}

// ---------------------------------------------------------------- main

#[derive(serde::Serialize)]
struct Row {
    op: String,
    size: usize,
    concurrency: usize,
    kmsd: Stats,
    echo: Stats,
    ratio: f64,
    p99_ratio: f64,
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    pki(dir)?;
    let kmsd_tcp = format!("127.0.0.1:{}", free_port()?);
    let echo_tcp = format!("127.0.0.1:{}", free_port()?);
    let (kmsd_proc, ready) = match &cli.dev_dir {
        Some(_) => (None, Duration::ZERO),
        None => {
            let (p, r) = start_kmsd(dir, "kmsd", &kmsd_tcp).await?;
            (Some(p), r)
        }
    };
    let echo_sock = dir.join("echo.sock");
    let echo_proc = Proc {
        child: Command::new(std::env::current_exe()?)
            .args(["echo-server", "--dir"])
            .arg(dir)
            .arg("--socket")
            .arg(&echo_sock)
            .args(["--tcp", &echo_tcp])
            .stdout(Stdio::null())
            .spawn()?,
    };
    while std::os::unix::net::UnixStream::connect(&echo_sock).is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (kaddr, eaddr) = if cli.transport == "tcp" {
        (kmsd_tcp.clone(), echo_tcp.clone())
    } else {
        (
            format!("unix:{}", dir.join("kmsd.sock").display()),
            format!("unix:{}", echo_sock.display()),
        )
    };
    let kmsd_t = match &cli.dev_dir {
        Some(dev) => {
            let dev = dev.canonicalize()?;
            let s = kmsd::client::ClientSettings {
                addr: format!("unix:{}", dev.join("kmsd.sock").display()),
                ca: dev.join("ca.pem"),
                cert: dev.join("client.pem"),
                key: dev.join("client.key"),
                server_name: Some("localhost".into()),
            };
            let mut channels = Vec::new();
            for _ in 0..cli.connections.max(1) {
                channels.push(kmsd::client::connect(&s).await?);
            }
            Target {
                channels,
                pid: cli.daemon_pid.unwrap_or(0),
            }
        }
        None => Target {
            channels: connect_n(dir, &kaddr, cli.connections).await?,
            pid: kmsd_proc.as_ref().map_or(0, |p| p.child.id()),
        },
    };
    let echo_t = Target {
        channels: connect_n(dir, &eaddr, cli.connections).await?,
        pid: echo_proc.child.id(),
    };
    let mut keys = KeysClient::new(kmsd_t.channels[0].clone());
    match keys
        .create_key(proto::CreateKeyRequest {
            name: "bench".into(),
            algorithm: 0,
            policy: None,
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => return Err(s.into()),
    }
    println!(
        "# kmsd-bench: {} transport, {} connections, {:?} per case, median of {}",
        cli.transport, cli.connections, cli.duration, cli.repeat
    );
    match &cli.dev_dir {
        Some(d) => println!("# driving the running kmsd dev in {}", d.display()),
        None => println!(
            "# kmsd ready in {:.0} ms (empty store); audit trail on",
            ready.as_secs_f64() * 1000.0
        ),
    }
    println!(
        "{:<8} {:>6} {:>5} | {:>10} {:>8} {:>8} {:>8} {:>6} {:>7} | {:>10} {:>8} {:>7} | {:>6} {:>7} | {:>10}",
        "op",
        "size",
        "conc",
        "kmsd op/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "cpu s",
        "cpu/op",
        "echo op/s",
        "p99 us",
        "cpu/op",
        "ratio",
        "p99 x",
        "crypto op/s"
    );
    let mut rows = Vec::new();
    let mut crypto = CryptoClient::new(kmsd_t.channels[0].clone()).max_decoding_message_size(64 << 20);
    for op in &cli.ops {
        let sizes: Vec<usize> = if op == "batch" { vec![64] } else { cli.sizes.clone() };
        for &size in &sizes {
            let payload = vec![0x5au8; size];
            let (work_k, work_e, units) = match op.as_str() {
                "encrypt" => (Work::Encrypt(payload.clone()), Work::Encrypt(payload.clone()), size),
                "decrypt" | "rewrap" => {
                    let ct = crypto
                        .encrypt(proto::EncryptRequest {
                            key: "bench".into(),
                            plaintext: payload.clone(),
                            associated_data: vec![],
                        })
                        .await?
                        .into_inner()
                        .ciphertext;
                    if op == "decrypt" {
                        (Work::Decrypt(ct), Work::Decrypt(pad(&payload)), size)
                    } else {
                        (Work::Rewrap(ct), Work::Rewrap(pad(&payload)), size)
                    }
                }
                "redact" => (Work::Redact(log_text(size)), Work::Redact(log_text(size)), size),
                "batch" => {
                    let items: Vec<proto::EncryptRequest> = (0..cli.batch)
                        .map(|_| proto::EncryptRequest {
                            key: "bench".into(),
                            plaintext: vec![1; size],
                            associated_data: vec![],
                        })
                        .collect();
                    (Work::Batch(items.clone()), Work::Batch(items), cli.batch)
                }
                other => return Err(format!("unknown op {other}").into()),
            };
            for &conc in &cli.concurrency {
                let mut ks = Vec::new();
                let mut es = Vec::new();
                for _ in 0..cli.repeat.max(1) {
                    // interleave, so drift on a shared machine hits both alike
                    es.push(load(&echo_t, "bench", work_e.clone(), conc, cli.duration, units).await?);
                    ks.push(load(&kmsd_t, "bench", work_k.clone(), conc, cli.duration, units).await?);
                }
                let (k, e) = (median(ks), median(es));
                let floor = if matches!(op.as_str(), "encrypt" | "decrypt") {
                    crypto_floor(size, Duration::from_millis(300))
                } else {
                    0.0
                };
                let row = Row {
                    op: op.clone(),
                    size,
                    concurrency: conc,
                    kmsd: k,
                    echo: e,
                    ratio: k.ops_per_s / e.ops_per_s.max(1e-9),
                    p99_ratio: k.p99_us / e.p99_us.max(1e-9),
                };
                let unit = if op == "batch" {
                    format!("{:.0} items/s", k.mb_per_s * 1e6)
                } else {
                    format!("{:.1}", k.mb_per_s)
                };
                println!(
                    "{:<8} {:>6} {:>5} | {:>10.0} {:>8} {:>8.0} {:>8.0} {:>6.2} {:>7.1} | {:>10.0} {:>8.0} {:>7.1} | {:>5.2}x {:>6.2}x | {:>10.0}",
                    op,
                    size,
                    conc,
                    k.ops_per_s,
                    unit,
                    k.p50_us,
                    k.p99_us,
                    k.cpu_s,
                    k.cpu_us_per_op,
                    e.ops_per_s,
                    e.p99_us,
                    e.cpu_us_per_op,
                    row.ratio,
                    row.p99_ratio,
                    floor
                );
                rows.push(row);
            }
        }
    }
    // the AEAD against openssl, same machine, same run
    let ours = aead_mb_s(16384);
    if cli.no_openssl {
        println!("# AEAD 16 KiB: kmsd {ours:.0} MB/s (openssl skipped)");
    } else {
        match openssl_mb_s(16384) {
            Some(o) => println!(
                "# AEAD 16 KiB: kmsd {ours:.0} MB/s, openssl {o:.0} MB/s, ratio {:.2}x",
                ours / o
            ),
            None => println!("# AEAD 16 KiB: kmsd {ours:.0} MB/s (openssl not found)"),
        }
    }
    println!("# kmsd RSS {:.0} MiB", rss_mib(kmsd_t.pid));
    drop(kmsd_proc);
    if cli.keys > 0 || cli.versions > 0 {
        scale(&cli, dir, &kmsd_t).await?;
    }
    if let Some(p) = &cli.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

/// Readiness, memory and throughput with many keys / many versions,
/// against one key measured in the same run.
async fn scale(cli: &Cli, dir: &Path, _single: &Target) -> Result<(), BoxError> {
    use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
    use kmsd_keystore::{Algorithm, KeyName, KeyRing, KeyStore, MasterKey, RingStore, Sealer, SledStore};
    let name = "scale";
    {
        let store = Arc::new(SledStore::open(&dir.join(format!("{name}-store")))?);
        store.danger_unsynced_writes(true);
        let rings = RingStore::open(store.clone(), Sealer::new(MasterKey::load(&dir.join("master-key"))?))?;
        let started = Instant::now();
        for i in 0..cli.keys {
            rings.create(KeyRing::new(
                KeyName::parse(&format!("k{i:06}"))?,
                Algorithm::Aes256Gcm,
                KeyPolicy::default(),
                0,
            ))?;
        }
        let mut big = KeyRing::new(
            KeyName::parse("many-versions")?,
            Algorithm::Aes256Gcm,
            KeyPolicy::default(),
            0,
        );
        for t in 0..cli.versions {
            big.rotate(i64::from(t), RotationReason::Manual)?;
        }
        rings.create(big)?;
        store.sync()?;
        println!(
            "# seeded {} keys + one key of {} versions in {:.1} s",
            cli.keys,
            cli.versions + 1,
            started.elapsed().as_secs_f64()
        );
    }
    let tcp = format!("127.0.0.1:{}", free_port()?);
    let (proc_, ready) = start_kmsd(dir, name, &tcp).await?;
    let pid = proc_.child.id();
    println!(
        "# with {} keys: ready in {:.0} ms, RSS {:.0} MiB",
        cli.keys,
        ready.as_secs_f64() * 1000.0,
        rss_mib(pid)
    );
    let addr = format!("unix:{}", dir.join(format!("{name}.sock")).display());
    let t = Target {
        channels: connect_n(dir, &addr, cli.connections).await?,
        pid,
    };
    let mut keys = KeysClient::new(t.channels[0].clone());
    keys.create_key(proto::CreateKeyRequest {
        name: "one".into(),
        algorithm: 0,
        policy: None,
    })
    .await?;
    let w = Work::Encrypt(vec![1; 64]);
    let conc = cli.concurrency.iter().copied().max().unwrap_or(64);
    for (label, key) in [
        ("a key among many", "k000042"),
        ("the 1,000-version key", "many-versions"),
    ] {
        let mut base = Vec::new();
        let mut many = Vec::new();
        for _ in 0..cli.repeat.max(1) {
            base.push(load(&t, "one", w.clone(), conc, cli.duration, 64).await?);
            many.push(load(&t, key, w.clone(), conc, cli.duration, 64).await?);
        }
        let (b, m) = (median(base), median(many));
        println!(
            "# encrypt 64 B c={conc}: {label} {:.0} op/s vs a lone key {:.0} op/s: ratio {:.2}x",
            m.ops_per_s,
            b.ops_per_s,
            m.ops_per_s / b.ops_per_s.max(1e-9)
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kmsd-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match &cli.cmd {
        Some(Sub::EchoServer { dir, socket, tcp }) => rt.block_on(echo_server(dir, socket, tcp)),
        None => rt.block_on(run(cli)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmsd-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
