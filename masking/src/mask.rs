//! Per-kind mask formats.
//!
//! | kind | kept | example |
//! | --- | --- | --- |
//! | PAN | last four (optionally BIN 6/8 + last four); separators kept | `4111 1111 1111 1111` → `**** **** **** 1111` |
//! | IBAN | country code + last four; spaces kept | `GB82 WEST 1234 5698 7654 32` → `GB** **** **** **** **54 32` |
//! | UK sort code | last two digits | `72-97-08` → `**-**-08` |
//! | UK account number | last four digits | `44234785` → `****4785` |
//! | e-mail | first character of the local part + domain | `jane.doe@example.com` → `j***@example.com` |
//! | phone | last three digits; `+`, spaces, dashes, brackets kept | `+44 7700 900123` → `+** **** ***123` |
//! | name | initials | `Mrs Lucy Johnson` → `M. L. J.` |
//! | national id (NINO), date of birth | separators only | `AB 12 34 56 C` → `** ** ** ** *`, `1985-04-12` → `****-**-**` |
//! | UK postcode | outward code (the district) | `SW1A 1AA` → `SW1A ***` |
//! | address line, track data, custom rule | nothing | `[REDACTED]` (custom rules choose: see [`MaskStyle`]) |
//! | secret, password, JWT, bearer token, API key | nothing | `[REDACTED]` (fixed length) |
//!
//! Every digit that is not kept becomes `*`, which no detector accepts as a
//! digit, so masked output is never detected again (redaction is
//! idempotent). The `*` count of an e-mail local part is fixed at three so
//! the mask does not reveal the local part's length.

use super::{iban, kyc, luhn, Kind, MaskError};

/// The fixed replacement for secrets of every kind.
pub const REDACTED: &str = "[REDACTED]";

/// Options for [`mask()`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskOptions {
    /// Keep the BIN (issuer prefix) of a PAN in clear: `None` (the default,
    /// last four only), `Some(6)` or `Some(8)`. PCI DSS 3.4.1 allows at most
    /// BIN + last four; an 8-digit BIN is only kept for PANs of 16 or more
    /// digits, shorter PANs fall back to a 6-digit BIN.
    pub pan_keep_bin: Option<u8>,
}

/// The result of [`mask()`].
#[derive(Clone, PartialEq, Eq)]
pub struct Masked {
    /// The masked value (see the module table for each kind's format).
    pub masked: String,
    /// Whether the value passed the kind's validator: Luhn and 13–19 digits
    /// for a PAN, ISO 13616 mod-97 and country length for an IBAN, six
    /// digits for a sort code, eight for an account number, a plausible
    /// address for an e-mail, 7–15 digits for a phone, alphabetic words for
    /// a name; always true for secrets.
    pub valid: bool,
}

impl std::fmt::Debug for Masked {
    // The masked form is safe to show; it is what logs carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masked")
            .field("masked", &self.masked)
            .field("valid", &self.valid)
            .finish()
    }
}

/// Masks one value of a known kind.
///
/// Errors when the value is empty or not shaped like the kind at all (for
/// example letters in a PAN); a value of the right shape that fails its
/// validator is still masked, with [`Masked::valid`] false. Error messages
/// never contain the value.
pub fn mask(value: &str, kind: Kind, opts: &MaskOptions) -> Result<Masked, MaskError> {
    if value.trim().is_empty() {
        return Err(MaskError::Empty);
    }
    let b = value.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let only = |extra: &[u8]| b.iter().all(|c| c.is_ascii_digit() || extra.contains(c));
    let (masked, valid) = match kind {
        Kind::Pan => {
            if !only(b" -") || digits == 0 {
                return Err(MaskError::Malformed(kind));
            }
            let bin = match opts.pan_keep_bin {
                None => 0,
                Some(6) => 6,
                Some(8) => 8,
                Some(_) => return Err(MaskError::InvalidBinLength),
            };
            (
                pan_with_bin(value, bin),
                (13..=19).contains(&digits) && luhn::is_valid(b),
            )
        }
        Kind::Iban => {
            if !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b' ') {
                return Err(MaskError::Malformed(kind));
            }
            (iban_mask(value), iban::is_valid(value))
        }
        Kind::UkSortCode => {
            if !only(b" -") || digits == 0 {
                return Err(MaskError::Malformed(kind));
            }
            (keep_last_digits(value, if digits >= 6 { 2 } else { 0 }), digits == 6)
        }
        Kind::UkAccountNumber => {
            if !only(b" -") || digits == 0 {
                return Err(MaskError::Malformed(kind));
            }
            (account(value), digits == 8)
        }
        Kind::Email => {
            let Some(at) = value.rfind('@') else {
                return Err(MaskError::Malformed(kind));
            };
            let (local, domain) = (&value[..at], &value[at + 1..]);
            if local.is_empty() || domain.is_empty() {
                return Err(MaskError::Malformed(kind));
            }
            let valid = !local.contains(char::is_whitespace)
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && domain
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c >= 0x80);
            (email(local, "@", domain), valid)
        }
        Kind::Phone => {
            if !only(b" -.()+/") || digits == 0 {
                return Err(MaskError::Malformed(kind));
            }
            (phone(value), (7..=15).contains(&digits))
        }
        Kind::Name => {
            let valid = value
                .split_whitespace()
                .all(|w| w.chars().next().is_some_and(char::is_alphabetic));
            (initials(value), valid)
        }
        Kind::NationalId => (stars(value), kyc::is_nino(b)),
        Kind::DateOfBirth => (stars(value), kyc::date_len(b) == Some(b.len())),
        Kind::Address if kyc::is_uk_postcode(b) => (postcode(value), true),
        Kind::Secret
        | Kind::Jwt
        | Kind::BearerToken
        | Kind::ApiKey
        | Kind::Password
        | Kind::TrackData
        | Kind::Address
        | Kind::Custom => (REDACTED.to_owned(), true),
    };
    Ok(Masked { masked, valid })
}

/// Replaces every ASCII digit with `*` except the first `first` and the last
/// `last` digits; everything else is kept. If `first + last` would cover
/// every digit, nothing is kept instead.
fn keep_digits(s: &str, first: usize, last: usize) -> String {
    let total = s.bytes().filter(u8::is_ascii_digit).count();
    let (first, last) = if first + last >= total { (0, 0) } else { (first, last) };
    let mut seen = 0usize;
    s.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen <= first || seen > total - last {
                    return c;
                }
                '*'
            } else {
                c
            }
        })
        .collect()
}

/// [`keep_digits`] with only a tail kept.
pub(crate) fn keep_last_digits(s: &str, last: usize) -> String {
    keep_digits(s, 0, last)
}

/// PAN mask: last four (only when at least ten digits, so that most of a
/// short number stays hidden), plus a BIN of `bin` digits when the number
/// has PAN length (8 only from 16 digits, else 6).
fn pan_with_bin(s: &str, bin: usize) -> String {
    let n = s.bytes().filter(u8::is_ascii_digit).count();
    let last = if n >= 10 { 4 } else { 0 };
    let bin = match (bin, n) {
        (0, _) | (_, 0..=12) => 0,
        (8, 16..) => 8,
        _ => 6,
    };
    keep_digits(s, bin, last)
}

/// PAN mask for redaction: last four only.
pub(crate) fn pan(s: &str) -> String {
    pan_with_bin(s, 0)
}

/// UK account number mask: last four when there are at least six digits.
pub(crate) fn account(s: &str) -> String {
    let n = s.bytes().filter(u8::is_ascii_digit).count();
    keep_last_digits(s, if n >= 6 { 4 } else { 0 })
}

/// Phone mask: last three digits when there are at least seven. Percent
/// escapes (`%20`, `%28`, `%29` in query strings) are copied as they are.
pub(crate) fn phone(s: &str) -> String {
    let b = s.as_bytes();
    let is_escape = |i: usize| {
        b.get(i) == Some(&b'%')
            && b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    };
    let mut n = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        if is_escape(i) {
            i += 3;
            continue;
        }
        if b.get(i).is_some_and(u8::is_ascii_digit) {
            n += 1;
        }
        i += 1;
    }
    let keep = if n >= 7 { 3 } else { 0 };
    let mut out = String::with_capacity(s.len());
    let mut seen = 0usize;
    let mut skip = 0usize;
    for (i, c) in s.char_indices() {
        if skip > 0 {
            skip -= 1;
            out.push(c);
            continue;
        }
        if is_escape(i) {
            skip = 2;
            out.push(c);
        } else if c.is_ascii_digit() {
            seen += 1;
            out.push(if seen > n - keep { c } else { '*' });
        } else {
            out.push(c);
        }
    }
    out
}

/// IBAN mask: the two leading letters and the last four alphanumerics kept
/// (the tail only when at least twelve alphanumerics), every other
/// alphanumeric becomes `*`; spaces and dashes (group separators) are kept.
pub(crate) fn iban_mask(s: &str) -> String {
    let total = s.bytes().filter(u8::is_ascii_alphanumeric).count();
    let last = if total >= 12 { 4 } else { 0 };
    let mut seen = 0usize;
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                seen += 1;
                let keep = (seen <= 2 && c.is_ascii_alphabetic()) || seen > total - last;
                if keep {
                    c
                } else {
                    '*'
                }
            } else if c.is_whitespace() || c == '-' {
                c
            } else {
                '*'
            }
        })
        .collect()
}

/// Every ASCII letter and digit becomes `*`; separators stay.
pub(crate) fn stars(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { '*' } else { c })
        .collect()
}

/// UK postcode mask: the outward code (everything but the last three
/// letters and digits) stays, the inward code becomes `***`.
pub(crate) fn postcode(s: &str) -> String {
    let total = s.bytes().filter(u8::is_ascii_alphanumeric).count();
    let mut seen = 0usize;
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                seen += 1;
                if seen + 3 > total {
                    return '*';
                }
            }
            c
        })
        .collect()
}

/// The last `n` ASCII letters and digits stay, the others become `*`.
pub(crate) fn keep_last_alnum(s: &str, n: usize) -> String {
    let total = s.bytes().filter(u8::is_ascii_alphanumeric).count();
    let keep = if total > 2 * n { n } else { 0 };
    let mut seen = 0usize;
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                seen += 1;
                if seen + keep <= total {
                    return '*';
                }
            }
            c
        })
        .collect()
}

/// How a custom or field rule masks what it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskStyle {
    /// `[REDACTED]` (the default).
    #[default]
    Redact,
    /// Every letter and digit becomes `*`, separators stay (the length shows).
    Stars,
    /// The last four letters and digits stay (only when there are more than
    /// eight), the others become `*`.
    Last4,
    /// Initials, as for names (`Lucy Johnson` → `L. J.`).
    Initials,
}

impl MaskStyle {
    /// The style's name in rule files: `redact`, `stars`, `last4`, `initials`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MaskStyle::Redact => "redact",
            MaskStyle::Stars => "stars",
            MaskStyle::Last4 => "last4",
            MaskStyle::Initials => "initials",
        }
    }

    /// Parses a style name (ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        [
            MaskStyle::Redact,
            MaskStyle::Stars,
            MaskStyle::Last4,
            MaskStyle::Initials,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s))
    }

    /// Masks `value` in this style.
    pub fn apply(self, value: &str) -> String {
        match self {
            MaskStyle::Redact => REDACTED.to_owned(),
            MaskStyle::Stars => stars(value),
            MaskStyle::Last4 => keep_last_alnum(value, 4),
            MaskStyle::Initials => initials(value),
        }
    }
}

/// E-mail mask: first character of the local part, three `*`, the
/// separator as written (`@` or `%40`) and the domain.
pub(crate) fn email(local: &str, sep: &str, domain: &str) -> String {
    let mut out = String::with_capacity(4 + sep.len() + domain.len() + 4);
    if let Some(c) = local.chars().next() {
        out.push(c);
    }
    out.push_str("***");
    out.push_str(sep);
    out.push_str(domain);
    out
}

/// Name mask: the upper-cased first letter of each word followed by a dot,
/// words joined by one space (`Mrs Lucy Johnson` → `M. L. J.`).
pub(crate) fn initials(s: &str) -> String {
    let mut out = String::new();
    for w in s.split_whitespace() {
        if let Some(c) = w.chars().find(|c| c.is_alphanumeric()) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.extend(c.to_uppercase());
            out.push('.');
        }
    }
    if out.is_empty() {
        out.push_str(REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &str, k: Kind) -> Masked {
        mask(v, k, &MaskOptions::default()).unwrap()
    }

    #[test]
    fn pan_formats() {
        let r = m("4111 1111 1111 1111", Kind::Pan);
        assert_eq!(r.masked, "**** **** **** 1111");
        assert!(r.valid);
        assert_eq!(m("4111-1111-1111-1111", Kind::Pan).masked, "****-****-****-1111");
        assert_eq!(m("4111111111111111", Kind::Pan).masked, "************1111");
        assert!(!m("4111111111111112", Kind::Pan).valid);
        assert!(!m("41111111111", Kind::Pan).valid);
        let bin6 = MaskOptions { pan_keep_bin: Some(6) };
        assert_eq!(
            mask("4111 1111 1111 1111", Kind::Pan, &bin6).unwrap().masked,
            "4111 11** **** 1111"
        );
        let bin8 = MaskOptions { pan_keep_bin: Some(8) };
        assert_eq!(
            mask("4111111111111111", Kind::Pan, &bin8).unwrap().masked,
            "41111111****1111"
        );
        // 15-digit Amex: BIN 8 falls back to 6.
        assert_eq!(
            mask("378282246310005", Kind::Pan, &bin8).unwrap().masked,
            "378282*****0005"
        );
        assert_eq!(mask("4111", Kind::Pan, &bin8).unwrap().masked, "****");
        assert_eq!(
            mask("4111111111111111", Kind::Pan, &MaskOptions { pan_keep_bin: Some(7) }),
            Err(MaskError::InvalidBinLength)
        );
        assert_eq!(
            mask("4111x111", Kind::Pan, &MaskOptions::default()),
            Err(MaskError::Malformed(Kind::Pan))
        );
        assert_eq!(mask("  ", Kind::Pan, &MaskOptions::default()), Err(MaskError::Empty));
    }

    #[test]
    fn other_formats() {
        let r = m("GB82 WEST 1234 5698 7654 32", Kind::Iban);
        assert_eq!(r.masked, "GB** **** **** **** **54 32");
        assert!(r.valid);
        assert_eq!(m("GB82WEST12345698765432", Kind::Iban).masked, "GB****************5432");
        assert!(!m("GB82WEST12345698765433", Kind::Iban).valid);
        assert_eq!(m("72-97-08", Kind::UkSortCode).masked, "**-**-08");
        assert!(m("729708", Kind::UkSortCode).valid);
        assert_eq!(m("44234785", Kind::UkAccountNumber).masked, "****4785");
        assert!(m("44234785", Kind::UkAccountNumber).valid);
        let e = m("jane.doe@example.com", Kind::Email);
        assert_eq!(e.masked, "j***@example.com");
        assert!(e.valid);
        assert_eq!(m("é@example.fr", Kind::Email).masked, "é***@example.fr");
        assert_eq!(
            mask("nope", Kind::Email, &MaskOptions::default()),
            Err(MaskError::Malformed(Kind::Email))
        );
        assert_eq!(m("+44 7700 900123", Kind::Phone).masked, "+** **** ***123");
        assert_eq!(m("+44 (0)20 7946 0018", Kind::Phone).masked, "+** (*)** **** *018");
        assert!(m("020 7946 0018", Kind::Phone).valid);
        assert_eq!(m("Mrs Lucy Johnson", Kind::Name).masked, "M. L. J.");
        assert_eq!(m("élodie durand", Kind::Name).masked, "É. D.");
        for k in [Kind::Secret, Kind::Password, Kind::Jwt, Kind::BearerToken, Kind::ApiKey] {
            assert_eq!(m("hunter2", k).masked, REDACTED);
            assert_eq!(m("a much longer secret value", k).masked, REDACTED);
        }
    }

    #[test]
    fn debug_shows_only_masked_form() {
        let r = m("4111 1111 1111 1111", Kind::Pan);
        let d = format!("{r:?}");
        assert!(!d.contains("4111"));
        let e = mask("4111x", Kind::Pan, &MaskOptions::default()).unwrap_err();
        assert!(!e.to_string().contains("4111"));
    }
}
