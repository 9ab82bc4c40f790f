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
//!   pure code with no I/O; [`format`] holds what they share (the
//!   zeroizing [`format::DataKey`], the [`format::FormatError`] kinds);
//!   [`stream_io`] has the tokio `AsyncRead`/`AsyncWrite` adapters.
//! - [`error`]: the one error enum. A connection failure names which
//!   certificate, why, and what to do, in one line.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cache;
pub mod certificate;
pub mod client;
pub mod connect;
pub mod envelope;
pub mod envelopes;
pub mod error;
pub mod format;
pub mod stream;
pub mod stream_io;

pub use client::{env, CallOptions, Client, ClientBuilder, RetryPolicy};
pub use connect::{connect, connect_with, tls_config, ClientSettings};
pub use envelopes::{CacheLimits, Envelopes, UnwrapLimits};
pub use error::{source_chain, Error};

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
