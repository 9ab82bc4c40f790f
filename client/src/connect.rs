//! Connecting to kmsd: over a Unix socket or TCP, TLS 1.3 with a client
//! certificate, the server verified against the CA, HTTP/2 (ALPN h2).
//!
//! [`connect`] checks the client's own certificate first
//! ([`crate::certificate`]), then, after the TLS handshake, waits for the
//! daemon's first bytes: in TLS 1.3 the client's side of the handshake
//! ends before the daemon has judged the client certificate, so a refusal
//! would otherwise surface at the first call as `transport error` or
//! `Broken pipe`. The bytes read are replayed to the HTTP/2 client.
use crate::certificate;
use crate::error::{classify, Error};
use hyper_util::rt::TokioIo;
use kmsd_tlsconn::{load_certs, load_key, load_roots, provider, HandshakeError, Rewind, Socket};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `unix:/path/to/socket` or `host:port`.
    pub addr: String,
    /// CA that signed the server certificate.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client private key.
    pub key: PathBuf,
    /// Name to verify the server certificate against (default: the TCP
    /// host, or `localhost` for a Unix socket).
    pub server_name: Option<String>,
}

enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// Builds the rustls client configuration (TLS 1.3, ALPN h2, client
/// certificate). It does not judge the certificate's validity: [`connect`]
/// does, before connecting.
pub fn tls_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, Error> {
    let roots = load_roots(ca)?;
    let chain = load_certs(cert, "client certificate")?;
    let private = load_key(key)?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Settings(format!("TLS 1.3: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => Error::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            e => Error::File {
                what: "client certificate",
                path: cert.to_owned(),
                reason: e.to_string(),
            },
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Checks the client certificate at `now` (validity period, extended key
/// usage), so a certificate the daemon would refuse is named locally.
pub fn check_client_certificate(cert: &Path, now: SystemTime) -> Result<(), Error> {
    let chain = load_certs(cert, "client certificate")?;
    let leaf = chain.first().ok_or_else(|| Error::File {
        what: "client certificate",
        path: cert.to_owned(),
        reason: "no certificate in it".to_owned(),
    })?;
    certificate::check(leaf, now).map_err(|problem| Error::ClientCertificate {
        cert: cert.to_owned(),
        problem,
    })
}

/// Checks the client certificate, connects and returns a gRPC channel.
pub async fn connect(s: &ClientSettings) -> Result<Channel, Error> {
    check_client_certificate(&s.cert, SystemTime::now())?;
    let cfg = tls_config(&s.ca, &s.cert, &s.key)?;
    connect_with(s, cfg).await
}

/// Connects with an already built TLS configuration (no local check of
/// the client certificate: tests use it to see the daemon refuse one).
pub async fn connect_with(s: &ClientSettings, cfg: Arc<ClientConfig>) -> Result<Channel, Error> {
    let (target, default_name) = match s.addr.strip_prefix("unix:") {
        Some(p) => (Target::Unix(PathBuf::from(p)), "localhost".to_owned()),
        None => {
            let host = s.addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&s.addr);
            (Target::Tcp(s.addr.clone()), host.trim_matches(['[', ']']).to_owned())
        }
    };
    let name = s.server_name.clone().unwrap_or(default_name);
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| Error::Settings(format!("invalid server name {name:?}")))?;
    // The connector's own error, kept whole for the caller: tonic only
    // passes on a boxed, stringly cause.
    let failure: Arc<Mutex<Option<Error>>> = Arc::default();
    let ctx = Arc::new(Handshake {
        cfg,
        target,
        server_name,
        addr: s.addr.clone(),
        name,
        ca: s.ca.clone(),
        cert: s.cert.clone(),
    });
    let slot = failure.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (ctx, slot) = (ctx.clone(), slot.clone());
        async move {
            match ctx.run().await {
                Ok(stream) => Ok(TokioIo::new(stream)),
                Err(e) => {
                    let line = e.to_string();
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(e);
                    }
                    Err(std::io::Error::other(line))
                }
            }
        }
    });
    match Endpoint::from_static("http://kmsd")
        .connect_with_connector(connector)
        .await
    {
        Ok(channel) => Ok(channel),
        Err(cause) => Err(failure
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or(Error::Transport {
                addr: s.addr.clone(),
                cause,
            })),
    }
}

/// Everything one connection attempt needs (tonic reconnects with it).
struct Handshake {
    cfg: Arc<ClientConfig>,
    target: Target,
    server_name: ServerName<'static>,
    addr: String,
    name: String,
    ca: PathBuf,
    cert: PathBuf,
}

type Stream = Rewind<tokio_rustls::client::TlsStream<Box<dyn Socket>>>;

impl Handshake {
    async fn run(&self) -> Result<Stream, Error> {
        let unreachable = |cause| Error::Unreachable {
            addr: self.addr.clone(),
            cause,
        };
        let raw: Box<dyn Socket> = match &self.target {
            Target::Unix(p) => Box::new(UnixStream::connect(p).await.map_err(unreachable)?),
            Target::Tcp(a) => {
                let s = TcpStream::connect(a).await.map_err(unreachable)?;
                s.set_nodelay(true).map_err(unreachable)?;
                Box::new(s)
            }
        };
        // The daemon speaks first (its HTTP/2 SETTINGS) once it has
        // accepted the client certificate, or sends an alert, or closes.
        kmsd_tlsconn::handshake(self.cfg.clone(), self.server_name.clone(), raw)
            .await
            .map_err(|e| match e {
                HandshakeError::Io(e) => classify(e, &self.addr, &self.cert, &self.name, &self.ca),
                HandshakeError::Closed => Error::Closed {
                    addr: self.addr.clone(),
                    cert: self.cert.clone(),
                },
            })
    }
}
