//! `kmsd-client`: the kmsd gRPC API and the typed mTLS client that
//! `kmsctl`, the integration tests and the load harness use.
//!
//! # Layout
//! - [`proto`]: the messages and client stubs generated from `proto/`
//!   (with the `server` feature, which only the daemon enables, also the
//!   server stubs and the descriptor set for reflection: one copy of the
//!   message types for both sides).
//! - [`connect`](mod@connect): where and how to connect (Unix socket or TCP,
//!   TLS 1.3, ALPN h2, client certificate) and the handshake that learns
//!   the daemon's verdict on the client certificate before any call.
//! - [`certificate`]: the checks of the client's own certificate made
//!   before connecting (validity period, extended key usage).
//! - [`client`](mod@client): the typed [`Client`] over the whole API:
//!   [`ClientBuilder`] (or the `KMSD_*` environment), several endpoints with
//!   failover, retries with backoff and jitter on the data path, per-call
//!   deadlines, `x-request-id`, officers' one-time codes ([`CallOptions`]).
//! - [`envelopes`]: [`Envelopes::seal`] / [`Envelopes::open`], envelope
//!   encryption with data keys from `GenerateDataKey`, cached within the
//!   limits of [`cache`] (the AWS Encryption SDK's: age, messages, bytes,
//!   entries), and the stream helpers.
//! - [`envelope`] and [`stream`]: the client-side encryption formats of
//!   `docs/formats.md` (`0xE1` one message, `0xE2` a segmented stream),
//!   pure code with no I/O; [`format`](mod@format) holds what they share (the
//!   zeroizing [`format::DataKey`], the [`format::FormatError`] kinds);
//!   [`stream_io`] has the tokio `AsyncRead`/`AsyncWrite` adapters.
//! - [`jws`]: JWS (RFC 7515, compact and detached) signed and verified by
//!   kmsd keys: [`Client::sign_jws`], [`Client::verify_jws`].
//! - [`blind_index`]: blind indexes (a MAC per column over normalised
//!   input, truncated), computed in bulk with `MacBatch`.
//! - [`error`]: the one error enum. A connection failure names which
//!   certificate, why, and what to do, in one line.
//!
//! # Defaults and choices
//! - **Data-key cache** ([`CacheLimits`], the AWS Encryption SDK caching
//!   manager's limits): max age 5 min, max messages 2^32 per data key (the
//!   envelope format's bound: each message derives its own key from a
//!   256-bit message id, so nonce reuse is not the limit), max bytes
//!   2^63 − 1, 100 key names; a key is evicted as soon as it reaches a
//!   limit; a message larger than `max_bytes` gets an uncached key.
//!   `CacheLimits::disabled()` makes one `GenerateDataKey` per message.
//! - **Unwrap cache** ([`UnwrapLimits`]): 5 min, 1,000 data keys.
//! - **Zeroization**: data keys are [`format::DataKey`] (a zeroizing
//!   `SecretBox`, not `Clone`), held by the caches as `Arc`s: eviction
//!   drops the cache's reference and the key is zeroized when the last
//!   seal or open using it ends. Not covered: the daemon's response
//!   buffers inside tonic/hyper, and ring's expanded AES key schedules.
//! - **Streams**: one fresh data key per stream (not cached), 64 KiB
//!   segments.
//! - **Retries** ([`RetryPolicy`]): 6 attempts, full-jitter backoff from
//!   20 ms doubling to 1 s, within the call's deadline (30 s by default);
//!   `UNAVAILABLE` is retried on the data path only; a failed connection
//!   is retried on the next endpoint for every call.
//! - Concurrent cache misses for one key may each call `GenerateDataKey`
//!   (no single-flight): the count stays within one per concurrent caller.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod blind_index;
pub mod cache;
pub mod certificate;
pub mod client;
pub mod connect;
pub mod envelope;
pub mod envelopes;
pub mod error;
pub mod format;
pub mod jws;
pub mod stream;
pub mod stream_io;

pub use client::{env, CallOptions, Client, ClientBuilder, RetryPolicy};
pub use connect::{connect, connect_with, tls_config, ClientSettings};
pub use envelopes::{CacheLimits, Envelopes, UnwrapLimits};
pub use error::{source_chain, Error};
pub use jws::{JwsOptions, SignedJws, VerifiedJws};

/// Names of the gRPC metadata the API uses beside its messages.
pub mod metadata {
    /// Request: an officer's one-time code (TOTP) for an administrative call.
    pub const OTP: &str = "x-kmsd-otp";
    /// Response (`FAILED_PRECONDITION`): the id of the dual-control request
    /// the call created, waiting for a second officer.
    pub const APPROVAL_ID: &str = "x-kmsd-approval-id";
    /// Response (`UNAUTHENTICATED`): the call needs an officer's one-time
    /// code and none was sent (value `required`).
    pub const SECOND_FACTOR: &str = "x-kmsd-second-factor";
}

/// Generated protobuf and gRPC code for `kmsd.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("kmsd.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    #[cfg(feature = "server")]
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kmsd_descriptor.bin"));
}
