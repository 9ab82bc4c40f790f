//! Typed configuration, read from TOML. Unknown fields are rejected.
//! Secrets are only ever referenced by file path, never inline.
//! Relative paths are resolved against the configuration file's directory.
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod store;
pub use store::*;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Dev mode: relaxes minimum periods (rotation, destruction) so
    /// behaviour can be watched. Never set in production.
    #[serde(default)]
    pub dev_mode: bool,
    /// The access policy file (TOML; see `policy.example.toml`). Reloaded
    /// on SIGHUP; required: without it nobody may do anything.
    pub policy: PathBuf,
    /// Where to listen.
    pub listen: Listen,
    /// Server certificate and client CA.
    pub tls: Tls,
    /// Key store.
    pub store: Store,
    /// Abuse limits.
    #[serde(default)]
    pub limits: Limits,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Redaction: the operator's own pattern and field rules.
    #[serde(default)]
    pub redaction: RedactionConfig,
}

/// `[redaction]`: the operator's own rules for `Redact` and
/// `RedactStream`, added to the built-in detectors (issue 16). Inline
/// `[[redaction.rules]]` / `[[redaction.fields]]` and, or, a `rules_file` in
/// the `kmsctl redact --rules` format. A rule that cannot be used stops the
/// daemon at start (and `check-config` names its line).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// A rules file (`[[rules]]`, `[[fields]]`), relative to this file.
    pub rules_file: Option<PathBuf>,
    /// Pattern rules.
    pub rules: Vec<toml::Spanned<crate::masking::rules::RuleToml>>,
    /// Field rules.
    pub fields: Vec<toml::Spanned<crate::masking::rules::FieldToml>>,
    /// The configuration text the spans point into, for line numbers.
    #[serde(skip)]
    source: std::sync::Arc<str>,
}

impl RedactionConfig {
    /// Compiles the inline rules and the rules file into one rule set; an
    /// unusable rule is named with its file and line.
    pub fn compile(&self) -> Result<crate::masking::Rules, String> {
        use crate::masking::rules::{self, line_of, Rules};
        let mut specs = Vec::new();
        let mut fields = Vec::new();
        for r in &self.rules {
            specs.push(
                r.get_ref()
                    .spec(Some(line_of(&self.source, r.span().start)))
                    .map_err(|e| format!("redaction.rules: {e}"))?,
            );
        }
        for f in &self.fields {
            fields.push(
                f.get_ref()
                    .spec(Some(line_of(&self.source, f.span().start)))
                    .map_err(|e| format!("redaction.fields: {e}"))?,
            );
        }
        Rules::new(&specs, &fields).map_err(|e| format!("redaction: {e}"))?;
        if let Some(path) = &self.rules_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("redaction.rules_file {}: {e}", path.display()))?;
            let (file_specs, file_fields) =
                rules::specs_from_toml(&text).map_err(|e| format!("redaction.rules_file {}: {e}", path.display()))?;
            specs.extend(file_specs);
            fields.extend(file_fields);
        }
        Rules::new(&specs, &fields).map_err(|e| format!("redaction: {e}"))
    }
}

/// The audit trail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The live audit log (JSON lines, hash-chained, MAC'd).
    pub path: PathBuf,
    /// Rotate the log when it reaches this size (default 64 MiB).
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// When records cannot be queued or written: `"fail"` (default: the
    /// call gets UNAVAILABLE, nothing completes unaudited) or
    /// `"log-and-continue"` (records are dropped, counted and logged).
    #[serde(default)]
    pub on_failure: crate::audit::OnFailure,
    /// Records waiting for the writer at most (default 65,536).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// With `on_failure = "fail"`, how long a call waits for room in a full
    /// queue before it gets UNAVAILABLE (default 2 s).
    #[serde(default = "default_queue_wait", with = "humantime_serde")]
    pub queue_wait: Duration,
    /// Retention: keep at most this many rotated files (default: all).
    #[serde(default)]
    pub keep_files: Option<usize>,
    /// Retention: delete rotated files last written more than this many
    /// days ago (default: never).
    #[serde(default)]
    pub keep_days: Option<u64>,
}

impl AuditConfig {
    /// The log at `path` with every default.
    pub fn at(path: PathBuf) -> Self {
        AuditConfig {
            path,
            rotate_bytes: default_rotate_bytes(),
            on_failure: Default::default(),
            queue_size: default_queue_size(),
            queue_wait: default_queue_wait(),
            keep_files: None,
            keep_days: None,
        }
    }

    /// The writer's options.
    pub fn options(&self) -> crate::audit::Options {
        crate::audit::Options {
            rotate_bytes: self.rotate_bytes,
            queue_size: self.queue_size,
            queue_wait: self.queue_wait,
            on_failure: self.on_failure,
            keep_files: self.keep_files,
            keep_age: self.keep_days.map(|d| Duration::from_secs(d.saturating_mul(86_400))),
        }
    }
}

fn default_rotate_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_queue_size() -> usize {
    65_536
}

fn default_queue_wait() -> Duration {
    Duration::from_secs(2)
}

/// Prometheus metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `unix:/path` or a loopback `host:port`; unset = no metrics listener.
    pub listen: Option<String>,
    /// Label per-key series (next rotation) with key names. Off by default:
    /// key names can be sensitive.
    pub key_labels: bool,
}

/// Listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Unix socket path (the default transport).
    pub unix: Option<PathBuf>,
    /// TCP addresses; each must be loopback or private.
    #[serde(default)]
    pub tcp: Vec<SocketAddr>,
}

/// TLS files (PEM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Certificate revocation lists (PEM or DER) of the client CA and any
    /// intermediate CA. With any configured, a client certificate whose
    /// status they cannot tell is refused. Reloaded on SIGHUP.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
    /// When not empty, a client certificate's URI SANs must each start with
    /// one of these (`spiffe://bank.internal/`, ending in `/`).
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// Accept client certificates with more than one URI SAN (the first is
    /// the identity). Off: such certificates are refused as ambiguous.
    #[serde(default)]
    pub allow_multiple_uri_sans: bool,
}

impl Tls {
    /// The URI SAN rules this section configures.
    pub fn identity_rules(&self) -> crate::tls::IdentityRules {
        crate::tls::IdentityRules {
            allow_multiple_uri_sans: self.allow_multiple_uri_sans,
            trust_domains: self.trust_domains.clone(),
        }
    }

    /// What the TLS server configuration is built from.
    pub fn server_tls(&self) -> crate::tls::ServerTls {
        crate::tls::ServerTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
            client_crls: self.client_crls.clone(),
            rules: self.identity_rules(),
        }
    }
}

impl Limits {
    /// The admission limits of the TLS acceptor.
    pub fn admission(&self) -> crate::tls::Admission {
        crate::tls::Admission {
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// Abuse limits, each with a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest gRPC message accepted, in bytes (default 4 MiB).
    pub max_message_bytes: usize,
    /// Authenticated connections (client certificate verified), over all
    /// listeners (default 1024). Connections still in the TLS handshake do
    /// not count: they have `max_handshakes`.
    pub max_connections: usize,
    /// Connections in the TLS handshake at once, over all listeners
    /// (default 256). When full, a new connection evicts the oldest
    /// pending handshake that has not sent a byte, else the oldest.
    pub max_handshakes: usize,
    /// A TLS handshake must finish within this (default 10 s).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// An authenticated connection with no request in flight for this long
    /// is closed (default 5 min); clients reconnect on their next call.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Each request must finish within this (default 30 s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Concurrent requests (HTTP/2 streams) per connection (default 256).
    pub max_concurrent_streams: u32,
    /// Items in one batch call (default 10,000).
    pub max_batch_items: usize,
    /// On SIGTERM, in-flight calls get this long to finish (default 10 s).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Usage rotations (a version reaching `max_encryptions_per_version`)
    /// one call may cause; items beyond get RESOURCE_EXHAUSTED (default 16).
    pub max_rotations_per_call: u32,
    /// Encryptions reserved per durable store write (default 16,384).
    /// After a crash a version's count resumes from its reservation, so it
    /// may over-count by less than one and a half blocks (never
    /// under-count); smaller blocks over-count less and write (and seal)
    /// more often.
    pub usage_reservation_block: u64,
    /// Bytes of text being redacted or waiting to be sent back, over all
    /// `Redact` and `RedactStream` calls of the process (default 256 MiB).
    /// A message that finds no room waits (its request deadline at most).
    pub max_redaction_bytes_in_flight: usize,
    /// Dual-control requests pending at once (default 64); more get
    /// RESOURCE_EXHAUSTED.
    pub max_pending_approvals: usize,
    /// Bytes pending dual-control requests may hold in memory together
    /// (restore snapshots; default 256 MiB); more get RESOURCE_EXHAUSTED.
    pub max_pending_bytes: usize,
    /// Import jobs live at once, over the whole store (default 64); more
    /// get RESOURCE_EXHAUSTED. Each holds a sealed RSA-3072 private key.
    pub max_import_jobs: usize,
    /// Tokenize calls per second per identity (default 1000; 0 = no limit).
    pub tokenize_rate: u32,
    /// Tokenize calls an identity may make at once above the rate (default 1000).
    pub tokenize_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 * 1024 * 1024,
            max_connections: 1024,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            max_concurrent_streams: 256,
            max_batch_items: 10_000,
            shutdown_timeout: Duration::from_secs(10),
            max_rotations_per_call: crate::rings::DEFAULT_MAX_ROTATIONS_PER_CALL,
            usage_reservation_block: crate::rings::RESERVATION_BLOCK,
            max_redaction_bytes_in_flight: 256 * 1024 * 1024,
            max_pending_approvals: 64,
            max_pending_bytes: 256 << 20,
            max_import_jobs: crate::import::DEFAULT_MAX_JOBS,
            tokenize_rate: 1000,
            tokenize_burst: 1000,
        }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Output format.
    pub format: LogFormat,
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message (with line and column).
        message: String,
    },
    /// A semantic problem.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.redaction.source = text.as_str().into();
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Makes relative paths relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(u) = self.listen.unix.as_mut() {
            fix(u);
        }
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.client_ca);
        for crl in &mut self.tls.client_crls {
            fix(crl);
        }
        if let Some(p) = self.store.path.as_mut() {
            fix(p);
        }
        if let Some(e) = self.store.etcd.as_mut() {
            for p in [&mut e.ca, &mut e.cert, &mut e.key].into_iter().flatten() {
                fix(p);
            }
        }
        fix(&mut self.policy);
        fix(&mut self.audit.path);
        if let Some(p) = self.redaction.rules_file.as_mut() {
            fix(p);
        }
        if let Some(m) = self.store.master_key.as_mut() {
            fix(m);
        }
        if let Some(m) = self.store.previous_master_key.as_mut() {
            fix(m);
        }
    }

    /// Checks what types cannot: at least one listener, internal-only TCP
    /// addresses, sane limits. Returns the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(p) => Err(ConfigError::Invalid(p)),
            None => Ok(()),
        }
    }

    /// Every semantic problem of the configuration.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.listen.unix.is_none() && self.listen.tcp.is_empty() {
            out.push("listen: configure a unix socket or a tcp address".into());
        }
        for addr in &self.listen.tcp {
            if let Err(e) = check_internal(addr) {
                out.push(e.to_string());
            }
        }
        if let Some(m) = &self.metrics.listen {
            match m.strip_prefix("unix:") {
                Some("") => out.push("metrics.listen: empty unix socket path".into()),
                Some(_) => {}
                None => match m.parse::<SocketAddr>() {
                    Err(_) => out.push(format!("metrics.listen: {m:?} is not unix:/path or host:port")),
                    Ok(addr) if !addr.ip().is_loopback() => out.push(format!(
                        "refusing metrics on {addr}: only a Unix socket or a loopback address is allowed"
                    )),
                    Ok(_) => {}
                },
            }
        }
        for d in &self.tls.trust_domains {
            if let Err(e) = crate::tls::check_uri_san(d) {
                out.push(format!("tls.trust_domains: {d:?}: {e}"));
            } else if !d.ends_with('/') || d.split_once("://").is_some_and(|(_, rest)| !rest.contains('/')) {
                out.push(format!(
                    "tls.trust_domains: {d:?} must end with '/' after the authority (\"spiffe://bank.internal/\"), \
                     or \"spiffe://bank.internal\" would also admit \"spiffe://bank.internal.evil/\""
                ));
            }
        }
        self.store.problems(&mut out);
        if self.limits.max_message_bytes < 1024 {
            out.push("limits.max_message_bytes must be at least 1024".into());
        }
        if self.limits.max_connections == 0 || self.limits.max_concurrent_streams == 0 {
            out.push("limits: connection and stream limits must be positive".into());
        }
        if self.limits.max_handshakes == 0 {
            out.push("limits.max_handshakes must be positive".into());
        }
        if self.limits.idle_timeout < Duration::from_secs(1) {
            out.push("limits.idle_timeout must be at least 1s".into());
        }
        if self.limits.max_batch_items == 0 {
            out.push("limits.max_batch_items must be positive".into());
        }
        if self.limits.tokenize_rate > 0 && self.limits.tokenize_burst == 0 {
            out.push("limits.tokenize_burst must be positive when tokenize_rate is set".into());
        }
        if self.limits.max_import_jobs == 0 {
            out.push("limits.max_import_jobs must be positive".into());
        }
        if self.limits.max_pending_approvals == 0 {
            out.push("limits.max_pending_approvals must be positive".into());
        }
        if self.limits.max_rotations_per_call == 0 {
            out.push("limits.max_rotations_per_call must be positive".into());
        }
        if self.limits.usage_reservation_block == 0 {
            out.push("limits.usage_reservation_block must be positive".into());
        }
        if self.audit.queue_size == 0 {
            out.push("audit.queue_size must be positive".into());
        }
        if self.audit.keep_files == Some(0) || self.audit.keep_days == Some(0) {
            out.push(
                "audit.keep_files and audit.keep_days must be positive (leave them out to keep every file)".into(),
            );
        }
        if self.limits.max_redaction_bytes_in_flight < 64 * 1024 {
            out.push("limits.max_redaction_bytes_in_flight must be at least 65536".into());
        }
        if let Err(e) = self.redaction.compile() {
            out.push(e);
        }
        out
    }

    /// Parses configuration text (read from `path`, which only names it in
    /// messages), reporting each TOML or schema error with its line: the
    /// offending line is set aside and parsing goes on (at most 50 errors).
    /// Returns the configuration if some version of the text parsed.
    pub fn parse_reporting(mut text: String, path: &Path) -> (Option<Self>, Vec<String>) {
        let mut problems = Vec::new();
        let cfg = loop {
            match toml::from_str::<Config>(&text) {
                Ok(mut cfg) => {
                    cfg.redaction.source = text.as_str().into();
                    break Some(cfg);
                }
                Err(e) => {
                    let line = e
                        .span()
                        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                    let msg = e.message().trim().to_owned();
                    problems.push(match line {
                        Some(l) => format!("{}:{l}: {msg}", path.display()),
                        None => format!("{}: {msg}", path.display()),
                    });
                    // Set the offending line aside and look for more problems.
                    let Some(l) = line else { break None };
                    let mut lines: Vec<&str> = text.lines().collect();
                    match lines.get_mut(l - 1) {
                        Some(bad) if !bad.trim_start().starts_with('#') && !bad.trim().is_empty() => *bad = "",
                        _ => break None,
                    }
                    text = lines.join("\n");
                    if problems.len() > 50 {
                        break None;
                    }
                }
            }
        };
        (cfg, problems)
    }

    /// Checks a configuration file and reports every problem it can find:
    /// each TOML or schema error with its line (the offending line is set
    /// aside and parsing goes on), then every semantic problem, then files
    /// that cannot be read (TLS certificates and keys, master key).
    pub fn check_file(path: &Path) -> Vec<String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return vec![format!("cannot read {}: {e}", path.display())],
        };
        let (cfg, mut problems) = Self::parse_reporting(text, path);
        let Some(mut cfg) = cfg else { return problems };
        cfg.resolve(path.parent().unwrap_or(Path::new(".")));
        problems.extend(cfg.problems().into_iter().map(|p| format!("{}: {p}", path.display())));
        match crate::authz::Policy::load(&cfg.policy) {
            Ok(policy) => {
                if let Err(e) = policy.check_mode(cfg.dev_mode) {
                    problems.push(format!("{}: policy {}: {e}", path.display(), cfg.policy.display()));
                }
            }
            Err(e) => problems.push(format!("{}: policy: {e}", path.display())),
        }
        if let Err(e) = crate::tls::server_config(&cfg.tls.server_tls()) {
            problems.push(format!("{}: tls: {e}", path.display()));
        }
        if let Some(etcd) = &cfg.store.etcd {
            problems.extend(
                etcd.file_problems()
                    .into_iter()
                    .map(|p| format!("{}: {p}", path.display())),
            );
        }
        if let Some(prev) = &cfg.store.previous_master_key {
            if let Err(e) = load_master_key(prev) {
                problems.push(format!("{}: previous master key: {e}", path.display()));
            }
        }
        match cfg.master_key_path() {
            Ok(mk) => {
                if let Err(e) = load_master_key(&mk) {
                    problems.push(format!("{}: {e}", path.display()));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
        problems
    }

    /// The master key path: configured, or the systemd credential.
    pub fn master_key_path(&self) -> Result<PathBuf, ConfigError> {
        if let Some(p) = &self.store.master_key {
            return Ok(p.clone());
        }
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(PathBuf::from(dir).join("master-key")),
            None => Err(ConfigError::Invalid(
                "store.master_key is not set and $CREDENTIALS_DIRECTORY is not set (no systemd credential; \
                 run offline commands with the credential, see kmsd_offline in the README's operator guide)"
                    .into(),
            )),
        }
    }
}

/// Loads a master key file after [`crate::ops::secret_file::check`].
pub fn load_master_key(path: &Path) -> Result<kmsd_keystore::MasterKey, ConfigError> {
    crate::ops::secret_file::check(path, "master key").map_err(ConfigError::Invalid)?;
    kmsd_keystore::MasterKey::load(path).map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// Whether `ip` is loopback or in a private range: 127/8, ::1, 10/8,
/// 172.16/12, 192.168/16, fc00::/7.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

/// Refuses any TCP bind address that is not internal (including the
/// unspecified `0.0.0.0` / `::`, which would bind public interfaces).
pub fn check_internal(addr: &SocketAddr) -> Result<(), ConfigError> {
    if is_internal(addr.ip()) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "refusing to listen on {addr}: only loopback and private addresses are allowed \
             (127.0.0.0/8, ::1, 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7)"
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ok in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "fc00::5",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "169.254.1.1",
            "::",
            "2001:db8::1",
            "fe80::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn example_config_parses_and_unknown_fields_are_rejected() {
        let example = include_str!("../../kmsd.example.toml");
        let cfg: Config = toml::from_str(example).unwrap();
        cfg.validate().unwrap();
        let bad = format!("{example}\nsurprise = 1\n");
        assert!(toml::from_str::<Config>(&bad).is_err());
    }

    #[test]
    fn the_usage_reservation_block_defaults_to_the_example_and_must_be_positive() {
        let example = include_str!("../../kmsd.example.toml");
        let mut cfg: Config = toml::from_str(example).unwrap();
        assert_eq!(cfg.limits.usage_reservation_block, crate::rings::RESERVATION_BLOCK);
        assert_eq!(
            Limits::default().usage_reservation_block,
            crate::rings::RESERVATION_BLOCK
        );
        cfg.limits.usage_reservation_block = 0;
        let p = cfg.problems().join("\n");
        assert!(p.contains("limits.usage_reservation_block must be positive"), "{p}");
    }

    /// The example's commented `[store.etcd]` section, switched on, is a
    /// valid etcd configuration naming every field.
    #[test]
    fn the_example_etcd_section_is_valid_when_uncommented() {
        let example = include_str!("../../kmsd.example.toml");
        let mut text = String::new();
        let mut in_etcd = false;
        for line in example.lines() {
            if line == "# [store.etcd]" {
                in_etcd = true;
            } else if line.starts_with('[') {
                in_etcd = false;
            }
            let line = if line == "path = \"/var/lib/kmsd/store\"" {
                "backend = \"etcd\""
            } else if in_etcd && !line.starts_with("# ") {
                line
            } else if in_etcd && line.get(2..).is_some_and(|l| l.starts_with('[') || l.contains(" = ")) {
                &line[2..]
            } else {
                line
            };
            text.push_str(line);
            text.push('\n');
        }
        let cfg: Config = toml::from_str(&text).unwrap();
        let etcd = cfg.store.etcd.as_ref().unwrap();
        assert_eq!(etcd.endpoints.len(), 3);
        assert_eq!(etcd.prefix(), "/kmsd/payments/");
        assert_eq!(etcd.max_staleness, Duration::from_secs(10));
        assert_eq!(etcd.leader_lease_ttl, Duration::from_secs(5));
        assert!(etcd.key.is_some() && !etcd.insecure_plaintext);
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    }

    #[test]
    fn the_default_prefix_is_the_cluster_name_under_kmsd() {
        let e: Etcd = toml::from_str("endpoints = [\"http://[::1]:2379\"]\ncluster = \"blue\"").unwrap();
        assert_eq!(e.prefix(), "/kmsd/blue/");
        assert_eq!(e.endpoints[0].to_string(), "http://[::1]:2379");
        assert!(e.endpoints[0].is_loopback());
        let e: Etcd = toml::from_str("endpoints = [\"https://etcd.internal:2379/\"]").unwrap();
        assert_eq!(e.prefix(), "/kmsd/default/");
        assert!(!e.endpoints[0].is_loopback() && e.tls());
    }

    #[test]
    fn trust_domains_must_be_uris_ending_in_a_slash() {
        let example = include_str!("../../kmsd.example.toml");
        let mut cfg: Config = toml::from_str(example).unwrap();
        cfg.tls.trust_domains = vec!["spiffe://bank.internal/".into(), "spiffe://ops.internal/team/".into()];
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        for bad in ["spiffe://bank.internal", "bank.internal/", "sha256://x/", "spiffe://"] {
            cfg.tls.trust_domains = vec![bad.into()];
            let p = cfg.problems().join("\n");
            assert!(p.contains("tls.trust_domains"), "{bad}: {p}");
        }
        let unknown = example.replace("client_ca =", "allow_many_uris = true\nclient_ca =");
        assert!(toml::from_str::<Config>(&unknown).is_err());
    }

    #[test]
    fn check_file_reports_every_problem_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.toml");
        std::fs::write(
            &p,
            "policy = \"p.toml\"\n[listen]\ntcp = [\"8.8.8.8:1\"]\nbogus = 1\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\ncolour = \"red\"\n[store]\npath = \"s\"\nmaster_key = \"mk\"\n[audit]\npath = \"a.log\"\n",
        )
        .unwrap();
        let problems = Config::check_file(&p);
        let all = problems.join("\n");
        assert!(all.contains("k.toml:4: unknown field `bogus`"), "{all}");
        assert!(all.contains("k.toml:9: unknown field `colour`"), "{all}");
        assert!(all.contains("refusing to listen on 8.8.8.8:1"), "{all}");
        assert!(all.contains("tls:"), "{all}");
        assert!(all.contains("master key"), "{all}");
        assert!(all.contains("policy"), "{all}");
    }
}
