//! kmsd: an isolated encryption and key-management daemon.
//!
//! # Layout
//! Serving a call, from the socket inwards:
//! - [`server`]: start-up (self-test, master key, store, listeners),
//!   reload and graceful shutdown; the one place that wires the parts.
//! - [`tls`]: PEM loading ([`tls::pem`]), the rustls server configuration
//!   ([`tls::server`]), client identities ([`tls::identity`]) and admission
//!   ([`tls::acceptor`]: handshake budget with eviction, cap on
//!   authenticated connections, idle timeout, the per-request identity).
//! - [`service`]: the gRPC services (`kmsd.v1.Crypto`, `kmsd.v1.Keys`,
//!   `kmsd.v1.Admin`); [`mask_service`]: `kmsd.v1.Mask`; [`deadline`]:
//!   request deadlines.
//! - [`access`]: the per-call gate: policy decision, officer second factor,
//!   audit record; [`authz`]: the policy (identities → roles → allow/deny
//!   rules; deny wins); [`otp`]: the officer second factor (TOTP);
//!   [`rate`]: per-identity token buckets (`Tokenize`).
//! - [`audit`]: the hash-chained, MAC'd audit trail with group commit
//!   (record, chain, handle, writer, recovery, verify).
//! - [`keys`]: key rings in memory (zeroizing, cached so the data path
//!   never reads the store) and their administration through the store;
//!   [`crypto`]: the ciphertext envelope (format 1) over the keystore's
//!   AES-256-GCM core; [`page_token`]: sealed `ListKeys` page tokens.
//! - [`error`]: the daemon's error type and its one mapping to gRPC status.
//!
//! Around it:
//! - [`config`]: the typed TOML configuration (`deny_unknown_fields`).
//! - [`ops`]: systemd notifications, process hardening ([`ops::os`], the
//!   one module with `unsafe`), metrics and their endpoint, the secret-file
//!   permission rule. Leaves: they never read the key rings or services.
//! - [`offline`]: the commands run against a stopped daemon's store and
//!   log (rekey, restore, officer enrolment, audit verification).
//! - [`dev`]: the embedded dev setup (dev CA, certificates, master key).
//! - [`client`], [`proto`]: re-exports of the `kmsd-client` crate (the
//!   generated API, with server stubs, and the mTLS client).
//! - [`masking`]: the `kmsd-masking` crate (`masking/`), re-exported.
//!
//! Dependencies point one way: server → service, access → authz, audit,
//! keys → crypto → keystore; config → tls → ops; nothing depends on
//! server, and `ops` on nothing of the daemon. (service and access still
//! use each other's types: the api/authz reorganisation of issue 15.)
#![deny(unsafe_code)]

pub mod access;
pub mod audit;
pub mod authz;
pub mod config;
pub mod crypto;
pub mod deadline;
pub mod dev;
pub mod error;
pub mod keys;
pub mod mask_service;
pub mod offline;
pub mod ops;
pub mod otp;
pub mod page_token;
pub mod rate;
pub mod server;
pub mod service;
pub mod tls;

/// The mTLS gRPC client (the `kmsd-client` crate), kept at its old path.
pub use kmsd_client as client;
/// The generated `kmsd.v1` API (from `kmsd-client`, with server stubs).
pub use kmsd_client::proto;

pub use error::Error;

/// Masking, redaction and tokenization: the [`kmsd_masking`] crate, kept at
/// its old path so `kmsd::masking::…` callers need no change.
pub use kmsd_masking as masking;
