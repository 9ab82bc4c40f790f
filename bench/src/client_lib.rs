//! `kmsd-bench client`: the client library (issue 14) against same-run
//! baselines.
//!
//! 1. Envelope seal of 1 KiB messages through `kmsd_client::Envelopes`
//!    with the data-key cache (default limits: one `GenerateDataKey` per
//!    2^32 messages or 5 minutes) against a direct `Encrypt` call per
//!    message, same daemon, same connection, same concurrency.
//! 2. Stream encryption (`kmsd_client::stream_io::StreamWriter`, 64 KiB
//!    segments) of 1 GiB into a sink, one thread, against `openssl speed
//!    -evp aes-256-gcm -bytes 65536` in the same run.
use super::*;
use kmsd::client::stream::SEGMENT_SIZE;
use kmsd::client::{ClientBuilder, Envelopes};
use tokio::io::AsyncWriteExt;

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Messages per second of `f` run by `conc` callers for `duration`.
pub(crate) async fn rate<F, Fut>(conc: usize, duration: Duration, f: F) -> Result<f64, BoxError>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), kmsd::client::Error>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < duration {
                f().await?;
                n += 1;
            }
            Ok::<u64, kmsd::client::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn client_bench(duration: Duration, repeat: usize, conc: &[usize], gib: u64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    pki(dir.path())?;
    let tcp = format!("127.0.0.1:{}", free_port()?);
    let (_kmsd, _) = start_kmsd(dir.path(), "kmsd", &tcp).await?;
    let sock = dir.path().join("kmsd.sock");
    let client = ClientBuilder::new()
        .endpoint(format!("unix:{}", sock.display()))
        .ca(dir.path().join("ca.pem"))
        .cert(dir.path().join("client.pem"))
        .key(dir.path().join("client.key"))
        .server_name("localhost")
        .connect()
        .await?;
    client
        .create_key(proto::CreateKeyRequest {
            name: "bench.envelope".into(),
            ..Default::default()
        })
        .await?;
    let msg = Arc::new(vec![0x42u8; 1024]);
    println!("## envelope seal of 1 KiB: cached data keys vs a direct Encrypt per message");
    println!("| conc | Envelopes::seal msg/s | Encrypt msg/s | ratio |");
    println!("|---:|---:|---:|---:|");
    for &c in conc {
        let (mut sealed, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let env = Envelopes::new(client.clone());
            let m = msg.clone();
            sealed.push(
                rate(c, duration, move || {
                    let (env, m) = (env.clone(), m.clone());
                    async move { env.seal("bench.envelope", &m, b"row").await.map(|_| ()) }
                })
                .await?,
            );
            let (cl, m) = (client.clone(), msg.clone());
            direct.push(
                rate(c, duration, move || {
                    let (cl, m) = (cl.clone(), m.clone());
                    async move {
                        cl.encrypt(proto::EncryptRequest {
                            key: "bench.envelope".into(),
                            plaintext: m.to_vec(),
                            associated_data: b"row".to_vec(),
                        })
                        .await
                        .map(|_| ())
                    }
                })
                .await?,
            );
        }
        let (s, d) = (median(sealed), median(direct));
        println!("| {c} | {s:.0} | {d:.0} | {:.1}x |", s / d);
    }

    println!("\n## stream encryption of {gib} GiB (64 KiB segments, one thread) vs openssl speed -evp aes-256-gcm -bytes 65536");
    println!("| run | stream MB/s | openssl MB/s | ratio |");
    println!("|---:|---:|---:|---:|");
    let env = Envelopes::new(client.clone());
    let chunk = vec![0x5au8; SEGMENT_SIZE as usize];
    let (mut ratios, mut streams, mut openssls) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..repeat {
        // the data key is fetched before the clock starts (one call per stream)
        let mut w = env.stream_writer("bench.envelope", tokio::io::sink(), b"").await?;
        let total = gib << 30;
        let started = Instant::now();
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(chunk.get(..n).unwrap_or_default()).await?;
            left -= n as u64;
        }
        w.shutdown().await?;
        let stream = total as f64 / started.elapsed().as_secs_f64() / 1e6;
        let openssl = openssl_mb_s(65536).ok_or("openssl speed failed")?;
        println!(
            "| {} | {stream:.0} | {openssl:.0} | {:.2}x |",
            run + 1,
            stream / openssl
        );
        ratios.push(stream / openssl);
        streams.push(stream);
        openssls.push(openssl);
    }
    println!(
        "| median | {:.0} | {:.0} | {:.2}x |",
        median(streams),
        median(openssls),
        median(ratios)
    );
    Ok(())
}
