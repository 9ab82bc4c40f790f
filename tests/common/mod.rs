//! Test harness: starts the real `kmsd` binary with certificates made in
//! the test, and connects real mTLS gRPC clients to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd::client::{self, ClientSettings};
use kmsd::dev::{write_file, Ca};
use kmsd::proto::{crypto_client::CryptoClient, keys_client::KeysClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub mod bank;
mod calls;
pub mod cluster;
pub mod faults;
pub mod lib_client;
// Not every test file makes gRPC calls through these helpers.
#[allow(unused_imports)]
pub use calls::*;

/// The `kmsctl` binary of this build. It is its own package, so cargo
/// defines no `CARGO_BIN_EXE_kmsctl` here; it sits beside `kmsd` in the
/// target directory, and `cargo test --workspace` builds it (with the
/// kmsctl package's own tests) before any test runs.
pub fn kmsctl_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_kmsd")).with_file_name("kmsctl");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p kmsctl`) first",
        path.display()
    );
    path
}

/// Certificates for one test: a CA, a server certificate, and clients.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ca = Ca::new("kmsd test CA").unwrap();
        write_file(&dir.join("ca.pem"), ca.cert_pem().as_bytes(), false).unwrap();
        let server = ca
            .issue_server(&["localhost"], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        write_file(&dir.join("server.pem"), server.cert_pem.as_bytes(), false).unwrap();
        write_file(&dir.join("server.key"), server.key_pem.as_bytes(), true).unwrap();
        let pki = Pki {
            dir: dir.to_owned(),
            ca,
        };
        pki.client("client", Some("spiffe://test.internal/app"));
        pki
    }

    /// Issues a client certificate `NAME.pem` / `NAME.key`.
    pub fn client(&self, name: &str, uri: Option<&str>) {
        let c = self.ca.issue_client(name, uri).unwrap();
        self.write_issued(name, &c);
    }

    /// Issues a client certificate `NAME.pem` / `NAME.key` whose
    /// parameters `customize` changes.
    pub fn client_custom(&self, name: &str, uri: Option<&str>, customize: impl FnOnce(&mut rcgen::CertificateParams)) {
        let c = self.ca.issue_custom(name, uri, customize).unwrap();
        self.write_issued(name, &c);
    }

    /// Issues the client certificates the daemon must refuse though its CA
    /// signed them: `expired` (2020 to 2021), `future` (2090 to 2099) and
    /// `server-auth` (for server authentication only).
    pub fn unusable_clients(&self, uri: Option<&str>) {
        self.client_custom("expired", uri, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        self.client_custom("future", uri, |p| {
            p.not_before = rcgen::date_time_ymd(2090, 1, 1);
            p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        });
        self.client_custom("server-auth", uri, |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        });
    }

    /// Writes a certificate issued by the test's CA as `NAME.pem` /
    /// `NAME.key`.
    pub fn write_issued(&self, name: &str, c: &kmsd::dev::Issued) {
        write_file(&self.dir.join(format!("{name}.pem")), c.cert_pem.as_bytes(), false).unwrap();
        write_file(&self.dir.join(format!("{name}.key")), c.key_pem.as_bytes(), true).unwrap();
    }
}

/// A running daemon.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub tcp: Option<String>,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Where this run's log starts (the log file is appended across restarts).
    pub log_offset: usize,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The test client may do everything without a second factor (like the
/// dev client: DEV ONLY, so `write_config` sets `dev_mode = true`); tests
/// of access control write their own policy.
pub const TEST_POLICY: &str = r#"
[identities]
"spiffe://test.internal/app" = ["all"]
[roles.all]
dev_no_second_factor = true
allow = [{ ops = ["*"], keys = ["*"] }]
"#;

/// Writes a config for a daemon in `dir` (certificates from `Pki::new(dir)`).
pub fn write_config(dir: &Path, tcp: Option<&str>, extra: &str) -> PathBuf {
    write_config_tls(dir, tcp, "", extra)
}

/// [`write_config`] with more lines in its `[tls]` table.
pub fn write_config_tls(dir: &Path, tcp: Option<&str>, tls_extra: &str, extra: &str) -> PathBuf {
    if !dir.join("master-key").exists() {
        kmsd_keystore::MasterKey::create_file(&dir.join("master-key")).unwrap();
    }
    let tcp_line = tcp.map(|t| format!("tcp = [\"{t}\"]")).unwrap_or_default();
    if !dir.join("policy.toml").exists() {
        std::fs::write(dir.join("policy.toml"), TEST_POLICY).unwrap();
    }
    let cfg = format!(
        r#"
dev_mode = true
policy = "policy.toml"
[audit]
path = "audit.log"
[listen]
unix = "kmsd.sock"
{tcp_line}
[tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
{tls_extra}
[store]
path = "store"
master_key = "master-key"
{extra}
"#
    );
    let path = dir.join("kmsd.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// The records of an audit log's text: only lines the writer has finished
/// (ending in a newline), so a test reading while the daemon writes never
/// parses half a record.
pub fn audit_lines(text: &str) -> Vec<serde_json::Value> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// Writes a config like `write_config` (no TCP listener) with
/// `dev_mode = false`.
pub fn write_production_config(dir: &Path) -> PathBuf {
    let path = write_config(dir, None, "");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("dev_mode = true"));
    std::fs::write(&path, text.replace("dev_mode = true", "dev_mode = false")).unwrap();
    path
}

impl Daemon {
    /// A daemon in `dir`, not started yet.
    fn new(dir: &Path, tcp: Option<String>) -> Self {
        Daemon {
            dir: dir.to_owned(),
            socket: dir.join("kmsd.sock"),
            tcp,
            log: dir.join("kmsd.log"),
            child: None,
            log_offset: 0,
        }
    }

    /// Starts `kmsd serve` in `dir` (which must hold the PKI) with a TCP
    /// listener on a free loopback port.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "")
    }

    /// Starts `kmsd serve` in `dir` with `dev_mode = false` (production
    /// rules: no DEV ONLY roles, full minimum periods); Unix socket only.
    pub fn start_production(dir: &Path) -> Self {
        let config = write_production_config(dir);
        let mut d = Daemon::new(dir, None);
        d.spawn(&config);
        d
    }

    pub fn start_with(dir: &Path, extra: &str) -> Self {
        Self::start_with_tls(dir, "", extra)
    }

    /// [`Daemon::start_with`] plus a metrics endpoint on the Unix socket
    /// `DIR/metrics.sock` (returned); `extra` must not have a `[metrics]`
    /// table.
    pub fn start_with_metrics(dir: &Path, extra: &str) -> (Self, PathBuf) {
        let metrics = dir.join("metrics.sock");
        let d = Self::start_with(
            dir,
            &format!("{extra}[metrics]\nlisten = \"unix:{}\"\n", metrics.display()),
        );
        (d, metrics)
    }

    /// [`Daemon::start_with`], with more lines in the `[tls]` table.
    pub fn start_with_tls(dir: &Path, tls_extra: &str, extra: &str) -> Self {
        let tcp = format!("127.0.0.1:{}", free_port());
        let config = write_config_tls(dir, Some(&tcp), tls_extra, extra);
        let mut d = Daemon::new(dir, Some(tcp));
        d.spawn(&config);
        d
    }

    fn spawn(&mut self, config: &Path) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kmsd"));
        cmd.args(["serve", "--config"]).arg(config);
        self.spawn_command(cmd);
    }

    /// Starts `kmsd serve --config DIR/kmsd.toml` through `cmd` (e.g. a
    /// wrapper that sets up a private mount namespace and `exec`s kmsd, so
    /// that the child's pid is the daemon's).
    pub fn start_command(dir: &Path, extra: &str, make: impl FnOnce(&Path) -> Command) -> Self {
        let tcp = format!("127.0.0.1:{}", free_port());
        let config = write_config(dir, Some(&tcp), extra);
        let mut d = Daemon::new(dir, Some(tcp));
        d.spawn_command(make(&config));
        d
    }

    fn spawn_command(&mut self, mut cmd: Command) {
        self.log_offset = self.log_text().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .env("KMSD_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("kmsd exited during start-up ({status}); log:\n{}", self.log_text());
            }
            let fresh = self
                .log_text()
                .get(self.log_offset..)
                .unwrap_or_default()
                .contains("kmsd ready");
            if fresh && std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kmsd did not become ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn settings(&self, client: &str, addr: Option<&str>) -> ClientSettings {
        ClientSettings {
            addr: addr
                .map(str::to_owned)
                .unwrap_or_else(|| format!("unix:{}", self.socket.display())),
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{client}.pem")),
            key: self.dir.join(format!("{client}.key")),
            server_name: None,
        }
    }

    pub async fn channel(&self) -> Channel {
        client::connect(&self.settings("client", None)).await.unwrap()
    }

    pub async fn tcp_channel(&self) -> Channel {
        client::connect(&self.settings("client", self.tcp.as_deref()))
            .await
            .unwrap()
    }

    pub async fn clients(&self) -> (CryptoClient<Channel>, KeysClient<Channel>) {
        let ch = self.channel().await;
        (CryptoClient::new(ch.clone()), KeysClient::new(ch))
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "kmsd exited with {status}; log:\n{}", self.log_text());
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("kmsd did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL, no cleanup (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again with the same configuration and state.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.socket);
        self.spawn(&self.dir.join("kmsd.toml"));
    }

    /// Starts again after `stop`/`kill` through `cmd` (like
    /// [`Daemon::start_command`]: a wrapper that `exec`s `kmsd serve`).
    pub fn restart_command(&mut self, cmd: Command) {
        let _ = std::fs::remove_file(&self.socket);
        self.spawn_command(cmd);
    }

    /// Starts again after `stop`/`kill`.
    pub fn restart_after_stop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        self.spawn(&self.dir.join("kmsd.toml"));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every file under `p`.
pub fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Offline `kmsd rekey` of the stopped daemon in `dir` to a fresh master
/// key made with `kmsd init` at `<dir>/master-key.new`; asserts it
/// succeeded and returns its output (the new key stays at that path).
pub fn rekey_to_new_master_key(dir: &Path) -> std::process::Output {
    let kmsd = env!("CARGO_BIN_EXE_kmsd");
    let new_key = dir.join("master-key.new");
    assert!(std::process::Command::new(kmsd)
        .args(["init", "--master-key", new_key.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    let out = std::process::Command::new(kmsd)
        .args([
            "rekey",
            "--config",
            dir.join("kmsd.toml").to_str().unwrap(),
            "--new-master-key",
            new_key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends signal `sig` (e.g. `"HUP"`) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
}

/// Waits up to 20 s for `f` to hold.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `GET /metrics` from the metrics endpoint on Unix socket `path`:
/// the whole HTTP response.
pub fn scrape(path: &Path) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: kmsd\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Whether the tests run as root (mount namespaces, tmpfs).
/// The Python interpreter for a cross-language test (`KMSD_PYTHON`, else
/// `python3`) when it can import `modules` (comma-separated, as in an
/// `import` line). Otherwise the test fails where CI requires Python
/// (`KMSD_REQUIRE_PYTHON`) and is skipped, loudly, elsewhere: `None`.
pub fn python_with(modules: &str) -> Option<String> {
    let python = std::env::var("KMSD_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let have = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if have {
        return Some(python);
    }
    assert!(
        std::env::var_os("KMSD_REQUIRE_PYTHON").is_none(),
        "{python} with {modules} is required"
    );
    eprintln!("SKIPPED: {python} cannot import {modules}");
    None
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Decodes unpadded RFC 4648 base32 (an officer's TOTP secret).
pub fn b32decode(s: &str) -> Vec<u8> {
    let (mut out, mut buf, mut bits) = (vec![], 0u32, 0);
    for c in s.bytes() {
        let v = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
            .iter()
            .position(|&a| a == c)
            .unwrap() as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// Creates key `key` as the client whose certificate is `NAME.pem`: the
/// connection error or the gRPC status on failure. The client's own checks
/// of its certificate are skipped (`connect_with`): the tests that use it
/// are about what the daemon refuses.
pub async fn create_as(d: &Daemon, name: &str, key: &str) -> Result<(), String> {
    let s = d.settings(name, None);
    let cfg = kmsd::client::tls_config(&s.ca, &s.cert, &s.key).map_err(|e| format!("config: {e}"))?;
    let ch = kmsd::client::connect_with(&s, cfg)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    kmsd::proto::keys_client::KeysClient::new(ch)
        .create_key(kmsd::proto::CreateKeyRequest {
            name: key.into(),
            algorithm: 0,
            policy: None,
            exportable: false,
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Every key name the daemon holds (as the test client).
pub async fn key_names(d: &Daemon) -> Vec<String> {
    let mut keys = kmsd::proto::keys_client::KeysClient::new(d.channel().await);
    let r = keys
        .list_keys(kmsd::proto::ListKeysRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.names
}
