//! The matrix: every operation, size and concurrency against the echo
//! baseline, printed as a table (and JSON).
use super::*;

#[derive(serde::Serialize)]
pub(crate) struct Row {
    pub(crate) op: String,
    pub(crate) size: usize,
    pub(crate) concurrency: usize,
    pub(crate) kmsd: Stats,
    pub(crate) echo: Stats,
    pub(crate) ratio: f64,
    pub(crate) p99_ratio: f64,
}

pub(crate) async fn run(cli: Cli) -> Result<(), BoxError> {
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
            exportable: false,
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
