//! `[store]`: which backend holds the sealed records (sled on this host,
//! or etcd for several nodes), and the etcd cluster's endpoints, prefix,
//! client TLS and timers, each validated as it is parsed.
use super::{ConfigError, Path, PathBuf};
use serde::Deserialize;
use std::net::IpAddr;
use std::time::Duration;

/// Key store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// Where the sealed records live: `"sled"` (default: an embedded
    /// database in `path`, one host) or `"etcd"` (an etcd cluster several
    /// kmsd nodes share, configured in `[store.etcd]`).
    #[serde(default)]
    pub backend: Backend,
    /// sled database directory (the sled backend only, where it is
    /// required).
    pub path: Option<PathBuf>,
    /// Master key file (32 raw bytes or 64 hex digits). Default:
    /// `$CREDENTIALS_DIRECTORY/master-key` (a systemd credential).
    pub master_key: Option<PathBuf>,
    /// The previous master key, only while a `kmsd rekey` is incomplete:
    /// records still sealed under it open; new ones use `master_key`.
    pub previous_master_key: Option<PathBuf>,
    /// The etcd cluster (the etcd backend only, where it is required).
    pub etcd: Option<Etcd>,
}

impl Store {
    /// A sled store at `path` with the master key in `master_key`.
    pub fn sled(path: PathBuf, master_key: Option<PathBuf>) -> Self {
        Store {
            backend: Backend::Sled,
            path: Some(path),
            master_key,
            previous_master_key: None,
            etcd: None,
        }
    }

    /// The sled directory, or why there is none.
    pub fn sled_path(&self) -> Result<&Path, ConfigError> {
        match (self.backend, &self.path) {
            (Backend::Sled, Some(p)) => Ok(p),
            (Backend::Sled, None) => Err(ConfigError::Invalid("store.path: the sled backend needs a path".into())),
            (Backend::Etcd, _) => Err(ConfigError::Invalid(
                "store.backend is \"etcd\": there is no sled path".into(),
            )),
        }
    }

    /// Where the records are, for logs and messages (no secret).
    pub fn describe(&self) -> String {
        match (self.backend, &self.path, &self.etcd) {
            (Backend::Etcd, _, Some(e)) => {
                let eps: Vec<String> = e.endpoints.iter().map(|x| x.to_string()).collect();
                format!("etcd {} prefix {}", eps.join(","), e.prefix())
            }
            (Backend::Etcd, _, None) => "etcd (unconfigured)".into(),
            (Backend::Sled, Some(p), _) => format!("sled {}", p.display()),
            (Backend::Sled, None, _) => "sled (no path)".into(),
        }
    }

    /// Every semantic problem of this section.
    pub(super) fn problems(&self, out: &mut Vec<String>) {
        match self.backend {
            Backend::Sled => {
                if self.path.is_none() {
                    out.push("store.path: the sled backend (the default) needs a path".into());
                }
                if self.etcd.is_some() {
                    out.push("store.etcd is set but store.backend is \"sled\": set backend = \"etcd\" or remove [store.etcd]".into());
                }
            }
            Backend::Etcd => {
                if self.path.is_some() {
                    out.push(
                        "store.path is for the sled backend; with backend = \"etcd\" the records are in etcd \
                         (remove store.path; `kmsd migrate` copies a sled store into etcd)"
                            .into(),
                    );
                }
                match &self.etcd {
                    None => out.push("store.backend is \"etcd\" but there is no [store.etcd] section".into()),
                    Some(e) => e.problems(out),
                }
            }
        }
    }
}

/// The storage backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An embedded sled database: one host.
    #[default]
    Sled,
    /// An etcd v3 cluster shared by several kmsd nodes.
    Etcd,
}

/// The etcd cluster of the etcd backend (`[store.etcd]`).
///
/// kmsd authenticates to etcd with a client certificate (mTLS); etcd
/// maps its common name to an etcd user whose role is limited to
/// `prefix`. Records stay sealed under the master key: etcd never sees
/// clear material.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// Client URLs of the etcd members, `https://host:port` (or
    /// `http://` on loopback only).
    pub endpoints: Vec<EtcdEndpoint>,
    /// The cluster name: the default prefix is `/kmsd/<cluster>/`
    /// (default `default`).
    #[serde(default = "default_cluster")]
    pub cluster: ClusterName,
    /// The key prefix under which every record lives (default
    /// `/kmsd/<cluster>/`): absolute, ending in `/`, no `..`.
    pub prefix: Option<EtcdPrefix>,
    /// The CA that signed the etcd members' server certificates (PEM);
    /// required with `https://`.
    pub ca: Option<PathBuf>,
    /// kmsd's client certificate (PEM); required with `https://`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600: the rule of every key file).
    pub key: Option<PathBuf>,
    /// How long to wait for a connection to a member (default 5 s;
    /// 100 ms to 60 s).
    #[serde(default = "default_etcd_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one etcd request may take before the call gets
    /// UNAVAILABLE (default 5 s; 100 ms to 60 s).
    #[serde(default = "default_etcd_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a node may serve decryption from its cache after its
    /// last word from etcd (default 10 s; 1 s to 10 min).
    #[serde(default = "default_max_staleness", with = "humantime_serde")]
    pub max_staleness: Duration,
    /// The TTL of the etcd lease that holds the scheduler leadership
    /// (default 5 s; 1 s to 60 s, whole seconds: etcd's unit). A leader
    /// that cannot renew it stops scheduled work before it runs out;
    /// another node takes over at most about this long after a leader
    /// dies.
    #[serde(default = "default_leader_lease_ttl", with = "humantime_serde")]
    pub leader_lease_ttl: Duration,
    /// Accept `http://` endpoints that are not loopback. Off: plain HTTP
    /// carries kmsd's etcd traffic unauthenticated (no client
    /// certificate, so etcd cannot limit kmsd to its prefix, and anyone on
    /// the path can replace records). Only for a network that is itself
    /// encrypted and authenticated (WireGuard, IPsec).
    #[serde(default)]
    pub insecure_plaintext: bool,
}

/// Bounds of `[store.etcd]` durations.
const ETCD_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const ETCD_TIMEOUT_MAX: Duration = Duration::from_secs(60);
const STALENESS_MIN: Duration = Duration::from_secs(1);
const STALENESS_MAX: Duration = Duration::from_secs(600);
const LEASE_TTL_MIN: Duration = Duration::from_secs(1);
const LEASE_TTL_MAX: Duration = Duration::from_secs(60);

fn default_cluster() -> ClusterName {
    ClusterName("default".into())
}

fn default_etcd_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_etcd_request_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_staleness() -> Duration {
    Duration::from_secs(10)
}

fn default_leader_lease_ttl() -> Duration {
    Duration::from_secs(5)
}

impl Etcd {
    /// The key prefix of every record: `prefix`, or `/kmsd/<cluster>/`.
    pub fn prefix(&self) -> String {
        match &self.prefix {
            Some(p) => p.0.clone(),
            None => format!("/kmsd/{}/", self.cluster.0),
        }
    }

    /// Whether the endpoints use TLS (all do, or none: mixing is refused).
    pub fn tls(&self) -> bool {
        self.endpoints.first().is_some_and(|e| e.tls)
    }

    fn problems(&self, out: &mut Vec<String>) {
        if self.endpoints.is_empty() {
            out.push("store.etcd.endpoints: name at least one etcd member (https://host:2379)".into());
        }
        if self.endpoints.iter().any(|e| e.tls) && self.endpoints.iter().any(|e| !e.tls) {
            out.push(
                "store.etcd.endpoints: mixing https:// and http:// endpoints is refused (use https:// for all)".into(),
            );
        }
        if !self.insecure_plaintext {
            for e in self.endpoints.iter().filter(|e| !e.tls && !e.is_loopback()) {
                out.push(format!(
                    "store.etcd.endpoints: refusing plain {e}: http:// is allowed on loopback only (127.0.0.0/8, \
                     ::1, localhost); use https:// with ca, cert and key (or insecure_plaintext = true on a \
                     network that is itself encrypted and authenticated)"
                ));
            }
        }
        let tls = self.tls();
        if tls && self.ca.is_none() {
            out.push("store.etcd.ca: https:// endpoints need the CA that signed the etcd members' certificates".into());
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => out.push("store.etcd.cert is set without store.etcd.key".into()),
            (None, Some(_)) => out.push("store.etcd.key is set without store.etcd.cert".into()),
            (None, None) if tls => out.push(
                "store.etcd.cert and store.etcd.key: kmsd authenticates to etcd with a client certificate \
                 (etcd --client-cert-auth); set both"
                    .into(),
            ),
            _ => {}
        }
        if !tls && (self.ca.is_some() || self.cert.is_some() || self.key.is_some()) {
            out.push("store.etcd: ca, cert and key need https:// endpoints (they are ignored over http://)".into());
        }
        for (name, d, min, max) in [
            (
                "connect_timeout",
                self.connect_timeout,
                ETCD_TIMEOUT_MIN,
                ETCD_TIMEOUT_MAX,
            ),
            (
                "request_timeout",
                self.request_timeout,
                ETCD_TIMEOUT_MIN,
                ETCD_TIMEOUT_MAX,
            ),
            ("max_staleness", self.max_staleness, STALENESS_MIN, STALENESS_MAX),
            ("leader_lease_ttl", self.leader_lease_ttl, LEASE_TTL_MIN, LEASE_TTL_MAX),
        ] {
            if d < min || d > max {
                out.push(format!(
                    "store.etcd.{name} must be between {} and {} (is {})",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(d)
                ));
            }
        }
        if self.leader_lease_ttl.subsec_nanos() != 0 {
            out.push(format!(
                "store.etcd.leader_lease_ttl must be whole seconds (etcd grants leases in seconds; is {})",
                humantime::format_duration(self.leader_lease_ttl)
            ));
        }
    }

    /// Checks the files this section names can be read: the CA and the
    /// certificate parse, the key parses and is kmsd's alone.
    pub(super) fn file_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(ca) = &self.ca {
            if let Err(e) = crate::tls::pem::load_certs(ca) {
                out.push(format!("store.etcd.ca: {e}"));
            }
        }
        if let Some(cert) = &self.cert {
            if let Err(e) = crate::tls::pem::load_certs(cert) {
                out.push(format!("store.etcd.cert: {e}"));
            }
        }
        if let Some(key) = &self.key {
            if let Err(e) = crate::ops::secret_file::check(key, "TLS private key (etcd client)") {
                out.push(format!("store.etcd.key: {e}"));
            } else if let Err(e) = crate::tls::pem::load_key(key) {
                out.push(format!("store.etcd.key: {e}"));
            }
        }
        out
    }
}

/// One etcd member's client URL: `http(s)://host:port`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct EtcdEndpoint {
    /// `https://` (else `http://`).
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl EtcdEndpoint {
    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.host.eq_ignore_ascii_case("localhost"),
        }
    }
}

impl std::fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl TryFrom<String> for EtcdEndpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let bad = |why: &str| format!("etcd endpoint {s:?} is not http(s)://host:port: {why}");
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("the scheme must be https:// or http://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("no user, path, query or fragment"));
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, p) = v6
                    .split_once("]:")
                    .ok_or_else(|| bad("an IPv6 address is [addr]:port"))?;
                h.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| bad("not an IPv6 address in [ ]"))?;
                (h, p)
            }
            None => rest.rsplit_once(':').ok_or_else(|| bad("the port is missing"))?,
        };
        let dns = |h: &str| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !rest.starts_with('[') && !dns(host) {
            return Err(bad("the host must be a DNS name or an IP address"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be 1 to 65535"))?;
        Ok(EtcdEndpoint {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

/// An etcd key prefix: absolute, ending in `/`, without `..` or empty
/// segments, printable ASCII, at most 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct EtcdPrefix(String);

impl TryFrom<String> for EtcdPrefix {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let why = if !s.starts_with('/') {
            Some("it must be absolute (start with '/')")
        } else if !s.ends_with('/') || s.len() < 2 {
            Some("it must end with '/' below the root (\"/kmsd/prod/\"), or \"/kmsd/prod\" would also cover \"/kmsd/production/\"")
        } else if s.split('/').any(|seg| seg == ".." || seg == ".") {
            Some("no '.' or '..' segments")
        } else if s.contains("//") {
            Some("no empty segments ('//')")
        } else if s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            Some("printable ASCII without spaces, at most 256 bytes")
        } else {
            None
        };
        match why {
            Some(w) => Err(format!("store.etcd.prefix {s:?}: {w}")),
            None => Ok(EtcdPrefix(s)),
        }
    }
}

impl EtcdPrefix {
    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A cluster name: 1 to 63 of `a-z 0-9 - _`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ClusterName(String);

impl TryFrom<String> for ClusterName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(ClusterName(s))
        } else {
            Err(format!(
                "store.etcd.cluster {s:?}: 1 to 63 of a-z, 0-9, '-', '_', starting with a letter or digit"
            ))
        }
    }
}

impl ClusterName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
