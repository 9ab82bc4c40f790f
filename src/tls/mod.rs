//! TLS for the gRPC listeners: rustls, TLS 1.3 only, client certificate
//! required and verified against the configured CA; the client's identity
//! extracted from its verified certificate; admission of connections
//! (handshake budget, connection cap, idle timeout).
//!
//! # Layout
//! - [`pem`]: reading certificates, private keys and CRLs from files.
//! - [`server`]: the rustls server configuration and the client
//!   certificate verifier that enforces the identity rules in the handshake.
//! - [`identity`]: who is calling ([`PeerIdentity`]) and the URI SAN rules.
//! - [`acceptor`]: admission: the handshake with its own budget, the cap on
//!   authenticated connections, the idle timeout, and the per-request
//!   identity handed to the services ([`acceptor::ConnLayer`]).
//!
//! This module takes plain paths and values, never the daemon's
//! configuration types: `config` depends on `tls` (to validate `[tls]`),
//! not the other way round.
use rustls::ServerConfig;
use std::sync::{Arc, RwLock};

pub mod acceptor;
pub mod identity;
pub mod pem;
pub mod server;

pub use acceptor::{Admission, RawStream};
pub use identity::{check_uri_san, IdentityError, IdentityRules, PeerIdentity};
pub use pem::{load_certs, load_crls, load_key};
pub use server::{server_config, ServerTls};

/// A TLS setup problem (bad file, bad key, bad CA).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider used everywhere (ring: constant-time AES-GCM and
/// ECDSA, builds without cmake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The current TLS configuration, swapped atomically on reload; new
/// handshakes use the new one, established connections keep theirs.
pub type SharedServerConfig = Arc<RwLock<Arc<ServerConfig>>>;
