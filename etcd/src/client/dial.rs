//! One connection attempt to one endpoint: the endpoint's `host:port`,
//! the rustls configuration ([`tls_config`]), TCP, then the TLS handshake
//! and etcd's verdict on the client certificate (through
//! `kmsd_tlsconn`), with etcd's refusals named in [`Error::Tls`].
use super::TlsSettings;
use crate::error::Error;
use kmsd_tlsconn::{load_certs, load_key, load_roots, HandshakeError, Socket};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The rustls configuration for `tls` (ring provider, TLS 1.2 and 1.3,
/// ALPN h2, the client certificate when configured).
pub fn tls_config(tls: &TlsSettings) -> Result<Arc<ClientConfig>, Error> {
    let roots = load_roots(&tls.ca)?;
    let builder = ClientConfig::builder_with_provider(kmsd_tlsconn::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Settings(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let mut cfg = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert, "client certificate")?;
            let private = load_key(key)?;
            builder.with_client_auth_cert(chain, private).map_err(|e| Error::File {
                what: "client certificate",
                path: cert.clone(),
                reason: e.to_string(),
            })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Settings(
                "a client certificate needs its key and a key its certificate".into(),
            ))
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// `host:port` of an endpoint, checking its scheme against the TLS setting.
pub(super) fn host_port(endpoint: &str, tls: bool) -> Result<String, Error> {
    let (scheme, rest) = match endpoint.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, endpoint),
    };
    match (scheme, tls) {
        (None, _) | (Some("https"), true) | (Some("http"), false) => {}
        (Some(s), _) => {
            return Err(Error::Settings(format!(
                "endpoint {endpoint:?}: scheme {s:?} does not match the TLS setting ({})",
                if tls { "TLS on: https" } else { "TLS off: http" }
            )))
        }
    }
    let hp = rest.trim_end_matches('/');
    if hp.is_empty() || !hp.contains(':') || hp.contains('/') {
        return Err(Error::Settings(format!("endpoint {endpoint:?}: expected host:port")));
    }
    Ok(hp.to_owned())
}

/// What a connection attempt needs (tonic reconnects with it).
pub(super) struct Dial {
    pub(super) addr: String,
    pub(super) tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub(super) timeout: Duration,
}

impl Dial {
    pub(super) async fn run(&self) -> Result<Box<dyn Socket>, Error> {
        let attempt = async {
            let unreachable = |e: io::Error| Error::unavailable(format!("{}: cannot connect: {e}", self.addr));
            let tcp = TcpStream::connect(&self.addr).await.map_err(unreachable)?;
            tcp.set_nodelay(true).map_err(unreachable)?;
            let Some((cfg, name)) = &self.tls else {
                return Ok(Box::new(tcp) as Box<dyn Socket>);
            };
            // etcd's HTTP/2 server speaks first (SETTINGS) once it has
            // accepted the client certificate; else an alert or EOF.
            let tls = kmsd_tlsconn::handshake(cfg.clone(), name.clone(), tcp)
                .await
                .map_err(|e| match e {
                    HandshakeError::Io(e) => self.classify(e),
                    HandshakeError::Closed => Error::Tls {
                        endpoint: self.addr.clone(),
                        reason: "etcd closed the connection after the handshake (client certificate refused?)".into(),
                    },
                })?;
            Ok(Box::new(tls))
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| Error::unavailable(format!("{}: no connection within {:?}", self.addr, self.timeout)))?
    }

    fn classify(&self, e: io::Error) -> Error {
        let reason = match kmsd_tlsconn::rustls_error(&e) {
            Some(rustls::Error::AlertReceived(alert)) => format!(
                "etcd refused the connection with the alert {alert:?} (a client certificate missing, \
                 expired or not signed by a CA etcd trusts: --trusted-ca-file)"
            ),
            Some(rustls::Error::InvalidCertificate(problem)) => {
                format!("etcd's server certificate does not verify against the configured CA: {problem:?}")
            }
            Some(other) => other.to_string(),
            None => return Error::unavailable(format!("{}: connection failed during TLS: {e}", self.addr)),
        };
        Error::Tls {
            endpoint: self.addr.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints_must_agree_with_the_tls_setting() {
        assert_eq!(host_port("127.0.0.1:2379", false).unwrap(), "127.0.0.1:2379");
        assert_eq!(host_port("http://127.0.0.1:2379/", false).unwrap(), "127.0.0.1:2379");
        assert_eq!(host_port("https://etcd1:2379", true).unwrap(), "etcd1:2379");
        assert!(host_port("https://etcd1:2379", false).is_err());
        assert!(host_port("http://etcd1:2379", true).is_err());
        assert!(host_port("etcd1", false).is_err());
    }
}
