//! kmsd: an isolated encryption and key-management daemon.
//!
//! # Layout
//! - [`config`]: the typed TOML configuration (`deny_unknown_fields`).
//! - [`crypto`]: the ciphertext envelope (format 1) over the keystore's
//!   AES-256-GCM core, with per-message derived keys.
//! - [`keys`]: key rings in memory (zeroizing, cached so the data path
//!   never reads the store) and their administration through the store.
//! - [`tls`]: PEM loading, the rustls server configuration, client
//!   identities, and admission (handshake budget with eviction, cap on
//!   authenticated connections, idle timeout, the per-request identity).
//! - [`service`]: the gRPC services (`kmsd.v1.Crypto`, `kmsd.v1.Keys`).
//! - [`server`]: start-up (self-test, master key, store, listeners) and
//!   graceful shutdown.
//! - [`authz`]: the policy (identities → roles → allow/deny rules; deny
//!   wins); [`otp`]: the officer second factor (TOTP); [`audit`]: the
//!   hash-chained, MAC'd audit trail with group commit.
//! - [`page_token`]: opaque, sealed `ListKeys` page tokens.
//! - [`rate`]: per-identity token buckets (`Tokenize`).
//! - [`client`]: the mTLS gRPC client used by `kmsctl`, tests and benches.
//! - [`offline`]: the commands run against a stopped daemon's store and
//!   log (rekey, restore, officer enrolment, audit verification).
//! - [`dev`]: the embedded dev setup (dev CA, certificates, master key).
//! - [`masking`]: the `kmsd-masking` crate (`masking/`), re-exported:
//!   masking, redaction (validator-driven detectors) and tokenization
//!   (FF1 / AES-GCM-SIV), pure functions shared by the daemon and
//!   `kmsctl redact`; [`mask_service`] serves them as `kmsd.v1.Mask`.
//! - [`metrics`]: Prometheus metrics (atomics; internal-only listener).
//! - [`notify`]: the systemd notification protocol.
//! - [`ops::secret_file`]: the permission rule for secret files.
//! - [`os`]: the one module with `unsafe`: prctl, rlimits, mlock,
//!   sockets passed by systemd.
//! - [`error`]: the daemon's error type and its one mapping to gRPC status.
//!
//! Dependencies point one way: server → service → keys, crypto → keystore.
#![deny(unsafe_code)]

pub mod access;
pub mod audit;
pub mod authz;
pub mod client;
pub mod config;
pub mod crypto;
pub mod deadline;
pub mod dev;
pub mod error;
pub mod keys;
pub mod mask_service;
pub mod metrics;
pub mod metrics_http;
pub mod notify;
pub mod offline;
pub mod ops;
pub mod os;
pub mod otp;
pub mod page_token;
pub mod rate;
pub mod server;
pub mod service;
pub mod tls;

/// Generated protobuf and gRPC code for `kmsd.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kmsd.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kmsd_descriptor.bin"));
}

pub use error::Error;

/// Masking, redaction and tokenization: the [`kmsd_masking`] crate, kept at
/// its old path so `kmsd::masking::…` callers need no change.
pub use kmsd_masking as masking;
