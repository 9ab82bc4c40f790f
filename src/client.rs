//! The mTLS gRPC client used by `kmsctl`, the integration tests and the
//! benchmark: connects over a Unix socket or TCP, presents a client
//! certificate, verifies the server against the CA, speaks HTTP/2 (ALPN h2).
use crate::tls::{self, RawStream};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
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

/// A connection problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

enum Target {
    Unix(PathBuf),
    Tcp(String),
}

/// Builds the rustls client configuration (TLS 1.3, ALPN h2, client cert).
pub fn tls_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for c in tls::load_certs(ca).map_err(|e| ClientError(e.0))? {
        roots
            .add(c)
            .map_err(|e| ClientError(format!("bad CA certificate {}: {e}", ca.display())))?;
    }
    let mut cfg = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            tls::load_certs(cert).map_err(|e| ClientError(e.0))?,
            tls::load_key(key).map_err(|e| ClientError(e.0))?,
        )
        .map_err(|e| ClientError(format!("client certificate {}: {e}", cert.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Connects and returns a gRPC channel.
pub async fn connect(s: &ClientSettings) -> Result<Channel, ClientError> {
    let cfg = tls_config(&s.ca, &s.cert, &s.key)?;
    connect_with(s, cfg).await
}

/// Connects with an already built TLS configuration.
pub async fn connect_with(s: &ClientSettings, cfg: Arc<ClientConfig>) -> Result<Channel, ClientError> {
    let (target, default_name) = match s.addr.strip_prefix("unix:") {
        Some(p) => (Target::Unix(PathBuf::from(p)), "localhost".to_owned()),
        None => {
            let host = s.addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&s.addr);
            (Target::Tcp(s.addr.clone()), host.trim_matches(['[', ']']).to_owned())
        }
    };
    let name = s.server_name.clone().unwrap_or(default_name);
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| ClientError(format!("invalid server name {name:?}")))?;
    let target = Arc::new(target);
    let connector = tower::service_fn(move |_: Uri| {
        let (cfg, target, server_name) = (cfg.clone(), target.clone(), server_name.clone());
        async move {
            let raw = match &*target {
                Target::Unix(p) => RawStream::Unix(UnixStream::connect(p).await?),
                Target::Tcp(a) => {
                    let s = TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    RawStream::Tcp(s)
                }
            };
            let tls = TlsConnector::from(cfg).connect(server_name, raw).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_static("http://kmsd")
        .connect_with_connector(connector)
        .await
        .map_err(|e| ClientError(format!("cannot connect to {}: {}", s.addr, source_chain(&e))))
}

/// An error and its causes on one line.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
