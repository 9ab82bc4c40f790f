//! kmsd key store: key rings, sealing under the master key, and storage.
//!
//! # Layout
//! - [`aead`]: the AES-256-GCM core every other part uses (96-bit nonce,
//!   128-bit tag), checked against the Wycheproof vectors.
//! - [`secret`]: secret types ([`KeyMaterial`], [`MasterKey`], and the
//!   daemon's [`TotpSecret`] and [`MacKey`], used only through methods):
//!   no `Debug` that shows bytes, zeroized on drop.
//! - [`seal`]: seals and opens stored records under per-record keys derived
//!   from the master key, binding the record's kind and name as associated
//!   data; per-purpose subkeys of the master key.
//! - [`manifest`]: [`manifest::CheckedStore`], the integrity manifest that
//!   detects a single record rolled back, replaced or deleted.
//! - [`store`]: the [`KeyStore`] trait (raw, conditional writes on a record
//!   revision) with a sled backend and an in-memory reference backend.
//! - [`keyring`]: versioned key rings and their record format.
//! - [`material`]: key material of every algorithm (AES, HMAC, ECDSA
//!   P-256, RSA-PSS, Ed25519): generation, and the checks imports pass.
//! - [`sign`]: the MAC and signature primitives over that material
//!   (`ring`; `p256` and `rsa` over pre-computed digests), public keys as
//!   SPKI PEM and JWK.
//! - [`backup`]: integrity-protected snapshots, and rekey under a new
//!   master key.
//! - [`failpoints`]: the names of every injected fault (live in test
//!   builds only).
//! - `conformance` (feature `conformance`, tests only): the `KeyStore`
//!   contract as a suite every backend's tests run.
//! - [`wrap`]: key material wrapped for transport (import jobs, exports):
//!   RSA-OAEP-SHA256 of an ephemeral AES-256 key, then RFC 5649 key wrap.
//! - [`rings`]: [`RingStore`], the typed API the daemon uses: key rings
//!   sealed and stored through any [`KeyStore`].
//!
//! This crate never touches the network and never logs secrets; it knows
//! nothing of gRPC.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aead;
pub mod backup;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod failpoints;
pub mod keyring;
pub mod manifest;
pub mod material;
pub mod name;
pub mod rings;
pub mod seal;
pub mod secret;
pub mod sign;
pub mod store;
pub mod wrap;

pub use error::Error;
pub use keyring::{Algorithm, KeyOrigin, KeyRing, KeyVersion, VersionState};
pub use material::Material;
pub use name::KeyName;
pub use rings::RingStore;
pub use seal::Sealer;
pub use secret::{KeyMaterial, MacKey, MasterKey, SecretBytes, TotpSecret};
pub use store::{memory::MemoryStore, sled_store::SledStore, Fence, KeyStore, RecordKind, Revision};

/// Seconds since the Unix epoch, the one time unit of stored records.
pub type UnixTime = i64;

/// Wall-clock time as a parameter, so that schedules are testable.
pub trait Clock: Send + Sync {
    /// The current time in seconds since the Unix epoch.
    fn now(&self) -> UnixTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}
