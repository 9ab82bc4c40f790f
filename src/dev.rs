//! The embedded dev setup: a dev CA, server and client certificates, a
//! random master key and a configuration under one directory, created on
//! first start and reused afterwards (so keys survive restarts).
//!
//! Also used by the integration tests to make real certificates.
use crate::config::{Config, Limits, Listen, Log, Store, Tls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A dev setup problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DevError(pub String);

fn e(context: &str, err: impl std::fmt::Display) -> DevError {
    DevError(format!("{context}: {err}"))
}

/// A certificate authority able to issue certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

/// An issued certificate and its private key, PEM.
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (secret).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued([key redacted])")
    }
}

impl Ca {
    /// A new self-signed CA.
    pub fn new(common_name: &str) -> Result<Self, DevError> {
        let key = KeyPair::generate().map_err(|x| e("CA key", x))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|x| e("CA params", x))?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).map_err(|x| e("CA certificate", x))?;
        Ok(Ca { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a server certificate for DNS names and IP addresses.
    pub fn issue_server(&self, names: &[&str], ips: &[std::net::IpAddr]) -> Result<Issued, DevError> {
        let mut sans: Vec<SanType> = Vec::new();
        for n in names {
            sans.push(SanType::DnsName((*n).try_into().map_err(|x| e("server name", x))?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue("kmsd server", sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate, with a URI SAN (e.g. a SPIFFE ID) if given.
    pub fn issue_client(&self, common_name: &str, uri: Option<&str>) -> Result<Issued, DevError> {
        self.issue_client_uris(common_name, uri.as_slice())
    }

    /// Issues a client certificate with these URI SANs, in this order.
    pub fn issue_client_uris(&self, common_name: &str, uris: &[&str]) -> Result<Issued, DevError> {
        let mut sans = Vec::new();
        for u in uris {
            sans.push(SanType::URI((*u).try_into().map_err(|x| e("client URI", x))?));
        }
        self.issue(common_name, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A certificate revocation list (PEM) signed by this CA, revoking the
    /// given certificates (PEM), valid from 2020 to 2099.
    pub fn crl(&self, revoked_cert_pems: &[&str], number: u64) -> Result<String, DevError> {
        let mut revoked = Vec::new();
        for pem in revoked_cert_pems {
            let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|x| e("revoked certificate", x))?;
            let cert = pem.parse_x509().map_err(|x| e("revoked certificate", x))?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .and_then(|c| c.pem())
            .map_err(|x| e("signing the CRL", x))
    }

    /// The CA's private key, PEM (secret: for tests that present the CA
    /// itself as a client).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a client certificate (one URI SAN if given) whose parameters
    /// `customize` changes first (validity, key usages): for tests of what
    /// the daemon must refuse.
    pub fn issue_custom(
        &self,
        common_name: &str,
        uri: Option<&str>,
        customize: impl FnOnce(&mut CertificateParams),
    ) -> Result<Issued, DevError> {
        let mut sans = Vec::new();
        if let Some(u) = uri {
            sans.push(SanType::URI(u.try_into().map_err(|x| e("client URI", x))?));
        }
        self.issue_with(common_name, sans, ExtendedKeyUsagePurpose::ClientAuth, customize)
    }

    fn issue(&self, cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> Result<Issued, DevError> {
        self.issue_with(cn, sans, eku, |_| {})
    }

    fn issue_with(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        eku: ExtendedKeyUsagePurpose,
        customize: impl FnOnce(&mut CertificateParams),
    ) -> Result<Issued, DevError> {
        let key = KeyPair::generate().map_err(|x| e("key", x))?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|x| e("params", x))?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        customize(&mut p);
        let cert = p.signed_by(&key, &self.cert, &self.key).map_err(|x| e("signing", x))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a file with mode 0600 (keys) or 0644.
pub fn write_file(path: &Path, content: &[u8], secret: bool) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|x| e(&format!("creating {}", path.display()), x))?;
    f.write_all(content)
        .map_err(|x| e(&format!("writing {}", path.display()), x))
}

/// The dev client identity (URI SAN of the dev client certificate).
pub const DEV_CLIENT_ID: &str = "spiffe://kmsd.dev/client";
/// The dev officer identity.
pub const DEV_OFFICER_ID: &str = "spiffe://kmsd.dev/officer";

/// Enrols the dev officer on first start (opening the store briefly) and
/// returns its otpauth URI, to be printed at every dev start.
pub fn dev_officer_totp(config: &Config) -> Result<String, DevError> {
    let mk = kmsd_keystore::MasterKey::load(&config.master_key_path().map_err(|x| e("master key", x))?)
        .map_err(|x| e("master key", x))?;
    let raw = kmsd_keystore::SledStore::open(config.store.sled_path().map_err(|x| e("store", x))?)
        .map_err(|x| e("store", x))?;
    let rings = kmsd_keystore::RingStore::open(std::sync::Arc::new(raw), kmsd_keystore::Sealer::new(mk))
        .map_err(|x| e("store", x))?;
    let (store, sealer) = (rings.raw().as_ref(), rings.sealer());
    let name = format!("totp:{DEV_OFFICER_ID}");
    let existing = store
        .get(kmsd_keystore::RecordKind::Secret, &name)
        .map_err(|x| e("store", x))?;
    let secret = match existing {
        Some(entry) => {
            crate::authz::otp::TotpSecret::open_sealed(
                sealer,
                kmsd_keystore::RecordKind::Secret,
                &name,
                &entry.value,
                0,
            )
            .map_err(|x| e("store", x))?
            .ok_or_else(|| DevError("dev officer secret is malformed".into()))?
            .1
        }
        None => crate::authz::officer::enroll(store, sealer, DEV_OFFICER_ID, false)
            .map_err(|x| e("enrolling the dev officer", x))?,
    };
    store.sync().map_err(|x| e("store", x))?;
    Ok(secret.otpauth_uri(DEV_OFFICER_ID))
}

/// The files of a dev setup.
#[derive(Debug, Clone)]
pub struct DevPaths {
    /// The directory.
    pub dir: PathBuf,
    /// Unix socket.
    pub socket: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

/// Creates (on first run) or reuses the dev setup in `dir`, returning the
/// configuration to serve with. `tcp` is the TCP listener (loopback).
pub fn setup(dir: &Path, tcp: Option<SocketAddr>) -> Result<(Config, DevPaths), DevError> {
    std::fs::create_dir_all(dir).map_err(|x| e(&format!("creating {}", dir.display()), x))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|x| e("chmod", x))?;
    }
    let dir = dir.canonicalize().map_err(|x| e("dev dir", x))?;
    let p = |n: &str| dir.join(n);
    if !p("ca.pem").exists() || !p("server.pem").exists() || !p("client.pem").exists() {
        let ca = Ca::new("kmsd dev CA")?;
        let server = ca.issue_server(
            &["localhost", "kmsd.dev"],
            &[
                "127.0.0.1".parse().map_err(|x| e("ip", x))?,
                "::1".parse().map_err(|x| e("ip", x))?,
            ],
        )?;
        let client = ca.issue_client("kmsd dev client", Some(DEV_CLIENT_ID))?;
        let officer = ca.issue_client("kmsd dev officer", Some(DEV_OFFICER_ID))?;
        write_file(&p("officer.pem"), officer.cert_pem.as_bytes(), false)?;
        write_file(&p("officer.key"), officer.key_pem.as_bytes(), true)?;
        write_file(&p("ca.pem"), ca.cert_pem().as_bytes(), false)?;
        write_file(&p("server.pem"), server.cert_pem.as_bytes(), false)?;
        write_file(&p("server.key"), server.key_pem.as_bytes(), true)?;
        write_file(&p("client.pem"), client.cert_pem.as_bytes(), false)?;
        write_file(&p("client.key"), client.key_pem.as_bytes(), true)?;
    }
    if !p("master-key").exists() {
        kmsd_keystore::MasterKey::create_file(&p("master-key")).map_err(|x| e("master key", x))?;
    }
    if !p("policy.toml").exists() {
        write_file(
            &p("policy.toml"),
            crate::authz::dev_policy(DEV_CLIENT_ID, DEV_OFFICER_ID).as_bytes(),
            false,
        )?;
    }
    let config = Config {
        dev_mode: true,
        policy: p("policy.toml"),
        audit: crate::config::AuditConfig::at(p("audit.log")),
        redaction: Default::default(),
        listen: Listen {
            unix: Some(p("kmsd.sock")),
            tcp: tcp.into_iter().collect(),
        },
        tls: Tls {
            cert: p("server.pem"),
            key: p("server.key"),
            client_ca: p("ca.pem"),
            client_crls: Vec::new(),
            trust_domains: Vec::new(),
            allow_multiple_uri_sans: false,
        },
        store: Store::sled(p("store"), Some(p("master-key"))),
        limits: Limits::default(),
        log: Log::default(),
        metrics: crate::config::MetricsConfig {
            listen: Some(format!("unix:{}", p("metrics.sock").display())),
            key_labels: false,
        },
    };
    config.validate().map_err(|x| e("dev config", x))?;
    let paths = DevPaths {
        socket: p("kmsd.sock"),
        ca: p("ca.pem"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        dir,
    };
    Ok((config, paths))
}

/// Prints the `export` lines that point `kmsctl` at the dev daemon, and the
/// dev officer's TOTP URI (DEV ONLY), on stdout.
pub fn print_exports(p: &DevPaths, config: &Config) -> Result<(), DevError> {
    // Never panic on a closed stdout (a parent that read what it needed).
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "# kmsd dev setup in {} (DEV ONLY: dev CA and keys on disk)",
        p.dir.display()
    );
    let _ = writeln!(out, "export KMSD_ADDR=unix:{}", p.socket.display());
    let _ = writeln!(out, "export KMSD_CA={}", p.ca.display());
    let _ = writeln!(out, "export KMSD_CERT={}", p.client_cert.display());
    let _ = writeln!(out, "export KMSD_KEY={}", p.client_key.display());
    if let Some(tcp) = config.listen.tcp.first() {
        let _ = writeln!(out, "# or over TCP: export KMSD_ADDR={tcp}");
    }
    let uri = dev_officer_totp(config)?;
    let _ = writeln!(
        out,
        "# dev officer ({}): certificate {}/officer.pem, key {}/officer.key",
        DEV_OFFICER_ID,
        p.dir.display(),
        p.dir.display()
    );
    let _ = writeln!(out, "# dev officer TOTP (DEV ONLY; add to an authenticator app): {uri}");
    let _ = out.flush();
    Ok(())
}
