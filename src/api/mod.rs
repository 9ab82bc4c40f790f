//! The gRPC API: one file per `kmsd.v1` service, the per-call pipeline
//! they all go through, and the conversions between messages and domain
//! types.
//!
//! - [`call`]: identity, authorization, audit and metrics around each call
//!   ([`Shared::begin`] / [`Shared::finish`]), batch bookkeeping, and
//!   `call::blocking` for work that may touch the store.
//! - [`crypto`]: `kmsd.v1.Crypto` (encrypt, decrypt, rewrap, data keys).
//! - [`keys`]: `kmsd.v1.Keys` (key administration, backup, restore).
//! - [`import`]: the import and export calls of `kmsd.v1.Keys` (import
//!   jobs, `ImportKeyVersion`, `ExportKeyVersion`).
//! - [`admin`]: `kmsd.v1.Admin` (status, policy reload, officers,
//!   approvals, audit verification).
//! - [`mask`]: `kmsd.v1.Mask` (masking, redaction, tokenization).
//! - [`convert`]: messages ⇄ keystore types (metadata only).
//!
//! Handlers never build a `Status` by hand: every failure is a
//! [`crate::Error`] (access checks and dual control included), ended by
//! [`Shared::finish`] or [`Shared::fail`] and converted in one place
//! (`From<Error> for Status`, with [`crate::Error::code`] as the one
//! table of codes; [`crate::error::code_name`] names them for metrics and
//! audit).
pub mod admin;
pub mod call;
pub mod convert;
pub mod crypto;
pub mod import;
pub mod keys;
pub mod mask;

pub use admin::AdminService;
pub use call::Shared;
pub use crypto::CryptoService;
pub use keys::KeysService;
pub use mask::MaskService;
