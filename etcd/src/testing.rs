//! A real etcd cluster on loopback, for tests (feature `testing`).
//!
//! [`Cluster::start`] runs N `etcd` members (the binary at `$KMSD_ETCD`,
//! `/usr/bin/etcd` or on `PATH`; Debian/Ubuntu: `apt-get install
//! etcd-server etcd-client`) with ephemeral ports, data directories in a
//! temporary directory and short raft timers (`--heartbeat-interval=10
//! --election-timeout=100`: healthy in about 0.2 s), and waits until every
//! member serves a linearizable read. Members can be killed (`SIGKILL`),
//! stopped and continued (`SIGSTOP`/`SIGCONT`: the process keeps its
//! sockets but answers nothing, like a hung host), and restarted on their
//! data. [`Cluster::start_tls`] serves clients over TLS with
//! `--client-cert-auth`: certificates come from a test CA (rcgen), the
//! client certificate's CN names the etcd user. Every member is killed
//! when the [`Cluster`] is dropped.
//!
//! Peers talk plain HTTP to each other (loopback only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use crate::client::{EtcdClient, Settings, TlsSettings};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the harness reports when it cannot run etcd.
pub type HarnessError = io::Error;

/// How long a cluster (or one restarted member) may take to become healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The etcd binary: `$KMSD_ETCD`, `/usr/bin/etcd`, or `etcd` on `PATH`.
pub fn etcd_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("KMSD_ETCD") {
        return Ok(PathBuf::from(p));
    }
    let default = PathBuf::from("/usr/bin/etcd");
    if default.exists() {
        return Ok(default);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("etcd");
            if p.exists() {
                return Ok(p);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "etcd is not installed (no /usr/bin/etcd, none on PATH, KMSD_ETCD unset): the etcd tests need a real etcd; \
         install it with `apt-get install etcd-server etcd-client` (etcd 3.4 or later)",
    ))
}

/// A test certificate authority and the certificates it issued.
struct Pki {
    dir: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

fn rc(what: &str, e: rcgen::Error) -> HarnessError {
    io::Error::other(format!("{what}: {e}"))
}

impl Pki {
    fn new(dir: PathBuf, name: &str) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(&dir)?;
        let ca_key = KeyPair::generate().map_err(|e| rc("CA key", e))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| rc("CA", e))?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = p.self_signed(&ca_key).map_err(|e| rc("CA", e))?;
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        Ok(Pki { dir, ca_cert, ca_key })
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate; returns (certificate, key) paths.
    fn issue(&self, file: &str, cn: &str, server: bool) -> Result<(PathBuf, PathBuf), HarnessError> {
        let key = KeyPair::generate().map_err(|e| rc("key", e))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| rc("certificate", e))?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if server {
            p.subject_alt_names = vec![
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                SanType::DnsName("localhost".try_into().map_err(|e| rc("SAN", e))?),
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = p
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .map_err(|e| rc("signing", e))?;
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}

/// One etcd process.
struct Proc {
    name: String,
    client_port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster (see the module documentation).
pub struct Cluster {
    dir: tempfile::TempDir,
    etcd: PathBuf,
    members: Vec<Proc>,
    pki: Option<Pki>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({:?})", self.endpoints())
    }
}

/// `n` free loopback ports (bound to port 0, then released together).
fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Runs `f` on a fresh runtime in its own thread (so it works from a test
/// that is itself inside a runtime).
pub fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime")
            .block_on(f)
    })
    .join()
    .expect("the harness thread panicked")
}

impl Cluster {
    /// Starts `n` members over plain TCP and waits until all are healthy.
    pub fn start(n: usize) -> Result<Self, HarnessError> {
        Self::start_with(n, false)
    }

    /// Starts `n` members serving clients over TLS with
    /// `--client-cert-auth` (see [`Cluster::identity`]).
    pub fn start_tls(n: usize) -> Result<Self, HarnessError> {
        Self::start_with(n, true)
    }

    fn start_with(n: usize, tls: bool) -> Result<Self, HarnessError> {
        let etcd = etcd_binary()?;
        let mut last = None;
        // a port taken between its release and etcd's bind: try again
        for _ in 0..3 {
            match Self::try_start(&etcd, n, tls) {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    fn try_start(etcd: &Path, n: usize, tls: bool) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new().prefix("kmsd-etcd-").tempdir()?;
        let ports = free_ports(2 * n)?;
        let pki = if tls {
            let pki = Pki::new(dir.path().join("pki"), "kmsd test etcd CA")?;
            pki.issue("server", "etcd", true)?;
            Some(pki)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports.get(2 * i + 1).copied().unwrap_or(0));
        let initial: Vec<String> = (0..n).map(|i| format!("m{i}={}", peer(i))).collect();
        let token = format!("kmsd-test-{}", std::process::id());
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let client_port = ports.get(2 * i).copied().unwrap_or(0);
            let client = format!("{scheme}://127.0.0.1:{client_port}");
            let mut args = vec![
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.path().join(format!("m{i}.etcd")).display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={}", peer(i)),
                format!("--initial-advertise-peer-urls={}", peer(i)),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token={token}"),
                "--heartbeat-interval=10".into(),
                "--election-timeout=100".into(),
                "--logger=zap".into(),
                "--log-outputs=stderr".into(),
            ];
            if let Some(pki) = &pki {
                args.extend([
                    format!("--cert-file={}", pki.dir.join("server.pem").display()),
                    format!("--key-file={}", pki.dir.join("server.key").display()),
                    "--client-cert-auth".into(),
                    format!("--trusted-ca-file={}", pki.ca().display()),
                ]);
            }
            members.push(Proc {
                name: format!("m{i}"),
                client_port,
                args,
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            });
        }
        let mut cluster = Cluster {
            dir,
            etcd: etcd.to_owned(),
            members,
            pki,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(0..n)?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), HarnessError> {
        let etcd = self.etcd.clone();
        let m = self.member(i)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log)?;
        let child = Command::new(&etcd)
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", etcd.display())))?;
        m.child = Some(child);
        Ok(())
    }

    fn member(&mut self, i: usize) -> Result<&mut Proc, HarnessError> {
        self.members
            .get_mut(i)
            .ok_or_else(|| io::Error::other(format!("no member {i}")))
    }

    /// Waits until each member in `which` serves a linearizable read on its
    /// own (or one of them exited: its log tail is in the error).
    fn wait_ready(&mut self, which: std::ops::Range<usize>) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in which {
            let settings = self.member_settings(i)?;
            loop {
                let m = self.member(i)?;
                if let Some(child) = m.child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        m.child = None;
                        let tail = log_tail(&m.log);
                        return Err(io::Error::other(format!("etcd {} exited ({status}):\n{tail}", m.name)));
                    }
                }
                let s = settings.clone();
                let ok = block_on(async move {
                    let Ok(c) = EtcdClient::connect(&s) else { return false };
                    c.get(b"kmsd-harness-health".to_vec()).await.is_ok()
                });
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    let m = self.member(i)?;
                    let tail = log_tail(&m.log);
                    return Err(io::Error::other(format!(
                        "etcd {} not healthy within {READY_TIMEOUT:?}:\n{tail}",
                        m.name
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Client endpoints (`127.0.0.1:port`), member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Settings reaching every member (short timeouts: 500 ms connect,
    /// 2 s request); in TLS mode with the `root` identity.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::new(self.endpoints());
        s.connect_timeout = Duration::from_millis(500);
        s.request_timeout = Duration::from_secs(2);
        if self.pki.is_some() {
            s.tls = self.identity("root").ok().map(|(cert, key)| TlsSettings {
                ca: self.ca().unwrap_or_default(),
                cert: Some(cert),
                key: Some(key),
                server_name: None,
            });
        }
        s
    }

    /// [`Cluster::settings`] for member `i` alone.
    pub fn member_settings(&self, i: usize) -> Result<Settings, HarnessError> {
        let mut s = self.settings();
        let e = self
            .endpoints()
            .get(i)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("no member {i}")))?;
        s.endpoints = vec![e];
        Ok(s)
    }

    /// The CA etcd's server certificate chains to, and the one etcd
    /// trusts for client certificates (TLS mode).
    pub fn ca(&self) -> Option<PathBuf> {
        self.pki.as_ref().map(Pki::ca)
    }

    /// A client certificate and key with CN `cn`, signed by the CA etcd
    /// trusts (TLS mode).
    pub fn identity(&self, cn: &str) -> Result<(PathBuf, PathBuf), HarnessError> {
        let pki = self
            .pki
            .as_ref()
            .ok_or_else(|| io::Error::other("the cluster runs without TLS"))?;
        let (c, k) = (
            pki.dir.join(format!("client-{cn}.pem")),
            pki.dir.join(format!("client-{cn}.key")),
        );
        if c.exists() && k.exists() {
            return Ok((c, k));
        }
        pki.issue(&format!("client-{cn}"), cn, false)
    }

    /// A client certificate with CN `cn` from a CA etcd does not trust.
    pub fn untrusted_identity(&self, cn: &str) -> Result<(PathBuf, PathBuf), HarnessError> {
        let other = Pki::new(self.dir.path().join("untrusted-pki"), "a CA etcd does not trust")?;
        other.issue(&format!("client-{cn}"), cn, false)
    }

    /// TLS mode: creates the etcd user `user` (the CN of its certificate)
    /// with a role of the same name allowed to read and write under
    /// `prefix` only, creates `root`, and turns etcd's authentication on.
    pub fn enable_auth_with_prefix_user(&self, user: &str, prefix: &str) -> Result<(), HarnessError> {
        let s = self.settings();
        let (user, prefix) = (user.to_owned(), prefix.to_owned());
        block_on(async move {
            let c = EtcdClient::connect(&s)?;
            c.user_add("root").await?;
            c.user_grant_role("root", "root").await?;
            c.role_add_for_prefix(&user, prefix.as_bytes()).await?;
            c.user_add(&user).await?;
            c.user_grant_role(&user, &user).await?;
            c.auth_enable().await
        })
        .map_err(|e| io::Error::other(e.to_string()))
    }

    fn pid(&mut self, i: usize) -> Result<u32, HarnessError> {
        self.member(i)?
            .child
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| io::Error::other(format!("member {i} is not running")))
    }

    fn signal(&mut self, i: usize, sig: &str) -> Result<(), HarnessError> {
        let pid = self.pid(i)?;
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()?;
        if !st.success() {
            return Err(io::Error::other(format!("kill -{sig} {pid} failed: {st}")));
        }
        Ok(())
    }

    /// Kills member `i` (`SIGKILL`) and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        if let Some(mut child) = self.member(i)?.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops member `i` (`SIGSTOP`): its sockets stay open, nothing answers.
    pub fn stop(&mut self, i: usize) -> Result<(), HarnessError> {
        self.signal(i, "STOP")
    }

    /// Continues a stopped member `i` (`SIGCONT`).
    pub fn cont(&mut self, i: usize) -> Result<(), HarnessError> {
        self.signal(i, "CONT")
    }

    /// Starts member `i` again on its data directory (killing it first if
    /// it runs) and waits until it is healthy.
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        self.kill(i)?;
        self.spawn(i)?;
        self.wait_ready(i..i + 1)
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
