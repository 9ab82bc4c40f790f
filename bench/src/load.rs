//! Driving load: callers over a few HTTP/2 connections, per-call work,
//! statistics and medians.
use super::*;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Stats {
    pub(crate) ops_per_s: f64,
    pub(crate) mb_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) cpu_s: f64,
    /// Server CPU per call, microseconds (0 when the pid is unknown).
    pub(crate) cpu_us_per_op: f64,
}

#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) channels: Vec<Channel>,
    pub(crate) pid: u32,
}

pub(crate) async fn connect_n(dir: &Path, addr: &str, n: usize) -> Result<Vec<Channel>, BoxError> {
    let mut v = Vec::new();
    for _ in 0..n.max(1) {
        v.push(kmsd::client::connect(&settings(dir, addr)).await?);
    }
    Ok(v)
}

/// What one caller sends.
#[derive(Clone)]
pub(crate) enum Work {
    Encrypt(Vec<u8>),
    Decrypt(Vec<u8>),
    Rewrap(Vec<u8>),
    Redact(String),
    Batch(Vec<proto::EncryptRequest>),
}

pub(crate) async fn one_call(ch: &Channel, key: &str, w: &Work) -> Result<(), tonic::Status> {
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
pub(crate) async fn load(
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

pub(crate) fn median(mut v: Vec<Stats>) -> Stats {
    let mid = v.len() / 2;
    v.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
    let mut m = v.get(mid).copied().unwrap_or_default();
    let mut p99: Vec<f64> = v.iter().map(|s| s.p99_us).collect();
    p99.sort_by(f64::total_cmp);
    m.p99_us = p99.get(mid).copied().unwrap_or(m.p99_us);
    m
}
