//! Masking, redaction and tokenization of sensitive values.
//!
//! This crate owns three pure, allocation-light operations over strings. It
//! has no daemon dependencies (no async runtime, RPC, configuration or
//! logging), so a log shipper or a CLI can embed it; the kmsd daemon serves
//! it as `kmsd.v1.Mask` and re-exports it as `kmsd::masking`:
//!
//! - [`mask()`]: mask one known value of a known [`Kind`] (PAN, IBAN, e-mail…)
//!   so that only what the policy allows stays readable (for a PAN: last
//!   four, optionally the BIN too, never more — PCI DSS 3.4.1).
//! - [`redact`]: find every sensitive value in free text (log lines, JSON
//!   bodies, CSV rows, query strings, mail and cookie headers) and mask it,
//!   reporting byte spans as [`Finding`]s. Detectors use validators (Luhn,
//!   ISO 13616 mod-97, per-country IBAN lengths, context words) rather than
//!   bare patterns, so ids, amounts, dates and digit runs that fail the
//!   checks stay exactly as they were.
//! - [`tokenize`] / [`detokenize`]: reversible, deterministic tokens under a
//!   [`TokenKey`]: a keyed function the caller provides (the daemon's keeps
//!   the key in its keystore), or a raw 32-byte key. Numeric kinds keep
//!   their format through FF1 (NIST SP 800-38G, [`ff1`]); the others become
//!   `tok_…` strings sealed with AES-256-GCM-SIV ([`token`]).
//!
//! # What this crate must never do
//! It never logs, and no `Debug`, `Display` or error value it defines ever
//! carries an input value, a PAN, a token or key material: errors name the
//! *kind* of problem only. It holds no keys: the tokenization key is a
//! [`TokenKey`] parameter, seen only through `HMAC-SHA256(key, label)`;
//! subkeys live in [`zeroize::Zeroizing`] buffers and are wiped on drop.
//! It never panics on any input (the scanners are fuzzed with proptest over
//! arbitrary strings).
//!
//! # Layout
//! - [`detect`]: the one-pass scanner behind [`redact`].
//! - [`mask()`](mod@mask): per-kind mask formats.
//! - [`rules`]: the operator's own pattern and field rules.
//! - [`luhn`], [`iban`], [`kyc`]: validators.
//! - [`ff1`]: FF1 format-preserving encryption (AES-256, radix 2..=36).
//! - [`token`]: key derivation and the tokenization formats.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod detect;
pub mod ff1;
pub mod iban;
pub mod kyc;
pub mod luhn;
pub mod mask;
pub mod rules;
pub mod token;

use std::fmt;
use std::str::FromStr;

pub use detect::{
    redact, redact_until, redact_until_with, redact_with, Finding, RedactOptions, Redacted, Rule, Stopped,
};
pub use mask::{mask, MaskOptions, MaskStyle, Masked};
pub use rules::Rules;
pub use token::{detokenize, is_format_preserving, tokenize, TokenKey};

/// The kinds of sensitive value this crate knows how to find, mask and
/// tokenize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A payment card number (primary account number), 13–19 digits.
    Pan,
    /// An International Bank Account Number (ISO 13616).
    Iban,
    /// A UK bank sort code (six digits, usually `12-34-56`).
    UkSortCode,
    /// A UK bank account number (eight digits; six to ten accepted).
    UkAccountNumber,
    /// An e-mail address.
    Email,
    /// A telephone number (UK national or international).
    Phone,
    /// A person's name.
    Name,
    /// A generic secret (CVV, PIN, private key, client secret…).
    Secret,
    /// A JSON Web Token (three base64url segments, header `eyJ…`).
    Jwt,
    /// An opaque bearer or access token.
    BearerToken,
    /// A well-known API key or webhook-secret shape (`sk_live_…`, `AKIA…`…).
    ApiKey,
    /// A password.
    Password,
    /// Magnetic-stripe track data or its ISO 8583 track-2 equivalent (PAN,
    /// expiry, service code, discretionary data): never kept after
    /// authorisation (PCI DSS 3.3.1), so masked whole.
    TrackData,
    /// A national identity number (today: the UK National Insurance number).
    NationalId,
    /// A date of birth.
    DateOfBirth,
    /// A postal address, an address line or a postcode.
    Address,
    /// A value found by an operator's own rule (see [`rules`]).
    Custom,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 17] = [
        Kind::Pan,
        Kind::Iban,
        Kind::UkSortCode,
        Kind::UkAccountNumber,
        Kind::Email,
        Kind::Phone,
        Kind::Name,
        Kind::Secret,
        Kind::Jwt,
        Kind::BearerToken,
        Kind::ApiKey,
        Kind::Password,
        Kind::TrackData,
        Kind::NationalId,
        Kind::DateOfBirth,
        Kind::Address,
        Kind::Custom,
    ];

    /// The stable wire name of the kind (`"PAN"`, `"IBAN"`, `"UK_SORT_CODE"`…).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Pan => "PAN",
            Kind::Iban => "IBAN",
            Kind::UkSortCode => "UK_SORT_CODE",
            Kind::UkAccountNumber => "UK_ACCOUNT_NUMBER",
            Kind::Email => "EMAIL",
            Kind::Phone => "PHONE",
            Kind::Name => "NAME",
            Kind::Secret => "SECRET",
            Kind::Jwt => "JWT",
            Kind::BearerToken => "BEARER_TOKEN",
            Kind::ApiKey => "API_KEY",
            Kind::Password => "PASSWORD",
            Kind::TrackData => "TRACK_DATA",
            Kind::NationalId => "NATIONAL_ID",
            Kind::DateOfBirth => "DATE_OF_BIRTH",
            Kind::Address => "ADDRESS",
            Kind::Custom => "CUSTOM",
        }
    }

    /// A small stable number for the kind, bound into tokens so that a token
    /// of one kind never detokenizes as another.
    pub(crate) const fn id(self) -> u8 {
        match self {
            Kind::Pan => 1,
            Kind::Iban => 2,
            Kind::UkSortCode => 3,
            Kind::UkAccountNumber => 4,
            Kind::Email => 5,
            Kind::Phone => 6,
            Kind::Name => 7,
            Kind::Secret => 8,
            Kind::Jwt => 9,
            Kind::BearerToken => 10,
            Kind::ApiKey => 11,
            Kind::Password => 12,
            Kind::TrackData => 13,
            Kind::NationalId => 14,
            Kind::DateOfBirth => 15,
            Kind::Address => 16,
            Kind::Custom => 17,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned when a string names no [`Kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind of sensitive value")]
pub struct UnknownKind;

impl FromStr for Kind {
    type Err = UnknownKind;

    /// Parses the wire name (`"PAN"`, `"UK_SORT_CODE"`…), ASCII
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or(UnknownKind)
    }
}

/// Why [`mask()`] refused a value. Messages never contain the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MaskError {
    /// The value was empty (or only separators).
    #[error("value is empty")]
    Empty,
    /// The value has characters the kind does not allow (for example letters
    /// in a PAN, or no `@` in an e-mail address).
    #[error("value is not shaped like a {0}")]
    Malformed(Kind),
    /// `pan_keep_bin` was neither `None`, `Some(6)` nor `Some(8)`.
    #[error("pan_keep_bin must be 6 or 8")]
    InvalidBinLength,
}

/// Why [`tokenize`] or [`detokenize`] failed. Messages never contain the
/// value, the token or the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The value is not shaped like the kind (for example a PAN with letters,
    /// fewer than 13 digits, or failing the Luhn check).
    #[error("value is not a valid {0}")]
    InvalidValue(Kind),
    /// The numeric part is too short for FF1: SP 800-38G requires
    /// `radix^len >= 1,000,000` (six decimal digits).
    #[error("value is too short for format-preserving encryption (needs radix^len >= 1,000,000)")]
    DomainTooSmall,
    /// The numeric part is longer than this FF1 implementation supports.
    #[error("value is too long for format-preserving encryption")]
    DomainTooLarge,
    /// The token is malformed, of another kind, or was made under another
    /// key or tweak. Deliberately coarse.
    #[error("token is invalid for this key, tweak and kind")]
    InvalidToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>(), Ok(k));
            assert_eq!(k.as_str().to_lowercase().parse::<Kind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!("UK_SORT_CODE".parse::<Kind>(), Ok(Kind::UkSortCode));
        assert_eq!("nope".parse::<Kind>(), Err(UnknownKind));
        let ids: std::collections::HashSet<u8> = Kind::ALL.iter().map(|k| k.id()).collect();
        assert_eq!(ids.len(), Kind::ALL.len());
    }

    #[test]
    fn error_messages_carry_no_values() {
        let pan = "4111111111111111";
        let errs: Vec<String> = vec![
            mask("4111x1111111111", Kind::Pan, &MaskOptions::default())
                .unwrap_err()
                .to_string(),
            tokenize(&[1; 32], b"", pan, Kind::Phone).unwrap_err().to_string(),
            detokenize(&[1; 32], b"", pan, Kind::Pan).unwrap_err().to_string(),
            format!("{:?}", detokenize(&[1; 32], b"", "tok_AAAA", Kind::Email)),
        ];
        for e in errs {
            assert!(!e.contains("4111"), "{e}");
        }
    }
}
