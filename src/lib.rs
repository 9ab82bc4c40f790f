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
//! - [`api`]: one file per gRPC service ([`api::crypto`], [`api::keys`],
//!   [`api::admin`], [`api::mask`]), the per-call pipeline every handler
//!   goes through ([`api::call`]: identity, authorization, audit, metrics,
//!   the one batch helper) and message ⇄ domain conversions
//!   ([`api::convert`]); [`deadline`]: request deadlines.
//! - [`authz`]: who may do what: the policy ([`authz::policy`]:
//!   identities → roles → allow/deny rules; deny wins), the per-call gate
//!   ([`authz::access`]: policy decision, second factor, audit records),
//!   one-time codes ([`authz::otp`]), officer enrolment
//!   ([`authz::officer`]) and dual control ([`authz::dual`]);
//!   [`rate`]: per-identity token buckets (`Tokenize`).
//! - [`audit`]: the hash-chained, MAC'd audit trail with group commit
//!   (record, chain, handle, writer, recovery, verify).
//! - [`rings`]: key rings in memory (zeroizing, cached so the data path
//!   never reads the store) and their administration through the store:
//!   `mod.rs` the cache ([`rings::Rings`]) and loading, `data` encrypt/decrypt/tokenization
//!   keys, `usage` reservation blocks and usage counts, `admin` create,
//!   rotate, policy, restore, `schedule` rotation/destruction deadlines
//!   ("keys" names only the gRPC service, [`api::keys`]; the store crate
//!   is `kmsd_keystore`); [`crypto`]: the ciphertext envelope (format 1)
//!   over the keystore's AES-256-GCM core; [`page_token`]: sealed
//!   `ListKeys` page tokens; [`import`]: import jobs (sealed RSA-3072
//!   wrapping keys, bounded, expiring) for importing and exporting key
//!   material wrapped for transport.
//! - [`cluster`]: several nodes on one etcd store: each follows the
//!   store's watch into its ring cache and bounds the cache's staleness.
//!   [`leader`]: their election (an etcd lease) of the one node that runs
//!   scheduled work, whose writes are fenced with its term.
//! - [`error`]: the daemon's error type, its one mapping to gRPC status
//!   and the one table of status-code names (metrics, audit).
//!
//! Around it:
//! - [`config`]: the typed TOML configuration (`deny_unknown_fields`).
//! - [`ops`]: systemd notifications, process hardening ([`ops::os`], the
//!   one module with `unsafe`), metrics and their endpoint, the secret-file
//!   permission rule. Leaves: they never read the key rings or services.
//! - [`offline`]: the commands run against a stopped daemon's store and
//!   log (rekey, restore, officer enrolment, audit verification).
//! - `dev` (cargo feature `dev`, on by default): the embedded dev setup
//!   (dev CA, certificates, master key).
//! - [`client`], [`proto`]: re-exports of the `kmsd-client` crate (the
//!   generated API, with server stubs, and the mTLS client).
//! - [`masking`]: the `kmsd-masking` crate (`masking/`), re-exported.
//!
//! Dependencies point one way: server → api → authz, audit, rings →
//! crypto → keystore; config → tls → ops; nothing depends on server, and
//! `ops` on nothing of the daemon.
#![deny(unsafe_code)]

pub mod api;
pub mod audit;
pub mod authz;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod deadline;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
pub mod import;
pub mod leader;
pub mod offline;
pub mod ops;
pub mod page_token;
pub mod rate;
pub mod rings;
pub mod server;
pub mod tls;

/// The mTLS gRPC client (the `kmsd-client` crate), kept at its old path.
pub use kmsd_client as client;
/// The generated `kmsd.v1` API (from `kmsd-client`, with server stubs).
pub use kmsd_client::proto;

pub use error::Error;

/// Masking, redaction and tokenization: the [`kmsd_masking`] crate, kept at
/// its old path so `kmsd::masking::…` callers need no change.
pub use kmsd_masking as masking;
