//! Setting up a run: PKI, configuration, starting `kmsd serve`, client
//! settings, and the daemon's CPU and memory.
use super::*;

pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn pki(dir: &Path) -> Result<(), BoxError> {
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
    // kept when present: stores seeded by an earlier run (--work-dir) stay readable
    if !dir.join("master-key").exists() {
        kmsd_keystore::MasterKey::create_file(&dir.join("master-key"))?;
    }
    Ok(())
}

pub(crate) fn write_config(dir: &Path, name: &str, tcp: &str) -> Result<PathBuf, BoxError> {
    write_config_store(
        dir,
        name,
        tcp,
        &format!("path = \"{name}-store\"\nmaster_key = \"master-key\"\n"),
    )
}

/// [`write_config`] with these `[store]` lines (and sub-tables).
pub(crate) fn write_config_store(dir: &Path, name: &str, tcp: &str, store: &str) -> Result<PathBuf, BoxError> {
    let cfg = format!(
        "dev_mode = true\npolicy = \"policy.toml\"\n[listen]\nunix = \"{name}.sock\"\ntcp = [\"{tcp}\"]\n[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n[audit]\npath = \"{name}-audit.log\"\n[limits]\nmax_message_bytes = 16777216\n[store]\n{store}"
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, cfg)?;
    Ok(p)
}

pub(crate) fn sibling(bin: &str) -> Result<PathBuf, BoxError> {
    let me = std::env::current_exe()?;
    Ok(me.parent().ok_or("no parent dir")?.join(bin))
}

/// Starts `kmsd serve` and waits until it answers; returns the process and
/// the time from spawn to ready.
pub(crate) async fn start_kmsd(dir: &Path, name: &str, tcp: &str) -> Result<(Proc, Duration), BoxError> {
    spawn_kmsd(dir, name, write_config(dir, name, tcp)?).await
}

/// [`start_kmsd`] on a store given by its `[store]` lines (etcd).
pub(crate) async fn start_kmsd_store(
    dir: &Path,
    name: &str,
    tcp: &str,
    store: &str,
) -> Result<(Proc, Duration), BoxError> {
    spawn_kmsd(dir, name, write_config_store(dir, name, tcp, store)?).await
}

async fn spawn_kmsd(dir: &Path, name: &str, config: PathBuf) -> Result<(Proc, Duration), BoxError> {
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

pub(crate) fn settings(dir: &Path, addr: &str) -> kmsd::client::ClientSettings {
    kmsd::client::ClientSettings {
        addr: addr.to_owned(),
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
        server_name: Some("localhost".into()),
    }
}

/// CPU seconds (user + system) used by `pid` so far.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
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

pub(crate) fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}
