//! The scanner behind [`redact`]: one left-to-right pass over the bytes of
//! free text that proposes candidate spans, then one overlap-resolution and
//! rewrite pass.
//!
//! The pass dispatches on the byte under the cursor and skips whole words,
//! so most bytes cost a table lookup:
//!
//! - **a word starting with a digit**: the chain of digit groups joined by
//!   single spaces or dashes is checked for card numbers (Luhn, 13–19
//!   digits, leftmost-longest over group boundaries, with a first digit some
//!   scheme issues at that length unless a card word precedes — so Unix
//!   times in milliseconds and EAN-13 barcodes stay; 12-digit Maestro numbers
//!   only whole, with a Maestro prefix or a card context word), UK sort code + account
//!   pairs, and phone numbers. Context words just before the number (`sort
//!   code`, `account`, `acct=`, `"phone":`…) unlock the sort code, account
//!   number and free-form phone detectors. Chains that are part of a hyphenated
//!   identifier (UUIDs, `INV-1234`, timestamps) or of a dotted number (IPs,
//!   decimals) are left alone.
//! - **a word starting with a letter**: IBANs (country table, grouping by
//!   single spaces, mod-97), JWTs (`eyJ…`), well-known API key prefixes,
//!   `Bearer <token>`, Slack and Discord webhook URLs.
//! - **`=`, `:` or `>` (XML)**: the key before it is classified (`password`, `secret`,
//!   `*token`, `api_key`, `Authorization`, `cvv`, `pin`, name fields…) and the
//!   value after it (quoted, escaped-quoted or bare) is masked.
//! - **`@` or `%40`**: e-mail addresses, and passwords in `scheme://user:pass@`.
//! - **`+`, `%2B`, `(`**: international and bracketed phone numbers.
//! - **`-----BEGIN … PRIVATE KEY-----`** blocks.
//!
//! Every candidate starts and ends on an ASCII byte or the end of the text, so
//! spans are always on `char` boundaries; the rewrite also checks this and
//! skips any span that is not, so no input can make it panic.
//!
//! # Layout
//! One file per job; the scanner's methods are spread over the detector
//! files, each an `impl Scanner` block for its family:
//! - `scanner.rs`: the pass itself, its state and the byte classes.
//! - `spans.rs`: candidates, priorities, overlap resolution, the rewrite.
//! - `numbers.rs`: digit chains, context words, the order of the number
//!   detectors.
//! - `cards.rs`: card numbers and security codes.
//! - `bank.rs`: IBANs, UK sort codes and account numbers.
//! - `contact.rs`: telephone numbers and e-mail addresses.
//! - `key_value.rs`: secrets named by their key (`password=…`, XML, flags).
//! - `credentials.rs`: secrets known by their shape (JWTs, API keys, bearer
//!   tokens, webhook URLs, URL passwords, PEM private keys).
//! - `tests.rs`: examples per detector and the property tests.

mod bank;
mod cards;
mod contact;
mod credentials;
mod key_value;
mod numbers;
mod scanner;
mod spans;
#[cfg(test)]
mod tests;

use std::cell::Cell;

use crate::Kind;
use scanner::{RunMemo, Scanner};
use spans::{bit, rewrite};

/// Options for [`redact`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedactOptions {
    /// The kinds to detect; `None` means every kind.
    pub kinds: Option<Vec<Kind>>,
}

/// One sensitive value found by [`redact`]: its kind and its byte span in
/// the *input* text. It never holds the value itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Byte offset of the first byte of the value in the input.
    pub start: usize,
    /// Byte offset one past the last byte of the value in the input.
    pub end: usize,
}

/// The result of [`redact`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redacted {
    /// The input with every finding replaced by its mask (see
    /// [`mask()`](mod@super::mask) for the formats); all other bytes unchanged.
    pub text: String,
    /// The findings, in input order, never overlapping.
    pub findings: Vec<Finding>,
}

/// Finds and masks every sensitive value in `text`.
///
/// Everything that is not a finding is copied unchanged. The masked forms
/// are never detected again, so `redact(redact(x).text) == redact(x).text`.
/// Time and memory are linear in the length of `text`, whatever it holds.
pub fn redact(text: &str, opts: &RedactOptions) -> Redacted {
    let (sc, _) = scanned(text, opts, &|| false);
    rewrite(text, sc.cands)
}

/// [`redact_until`] gave up because its `stop` said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped;

/// How often [`redact_until`] asks whether to stop: every this many bytes
/// of text scanned (a few hundred microseconds of work).
pub const STOP_CHECK_BYTES: usize = 64 * 1024;

/// [`redact`], asking `stop` every [`STOP_CHECK_BYTES`] of text scanned
/// whether to give up (a deadline passed, the caller went away): a server
/// can bound the work one request costs. Returns [`Stopped`] when `stop`
/// said so; nothing partial is returned.
pub fn redact_until(text: &str, opts: &RedactOptions, stop: &dyn Fn() -> bool) -> Result<Redacted, Stopped> {
    let (sc, finished) = scanned(text, opts, stop);
    if !finished || stop() {
        return Err(Stopped);
    }
    Ok(rewrite(text, sc.cands))
}

/// Runs the scanner over `text`; `false` when `stop` ended it early.
fn scanned<'a>(text: &'a str, opts: &RedactOptions, stop: &dyn Fn() -> bool) -> (Scanner<'a>, bool) {
    let mut enabled = 0u16;
    match &opts.kinds {
        None => enabled = u16::MAX,
        Some(kinds) => {
            for k in kinds {
                enabled |= bit(*k);
            }
        }
    }
    let mut sc = Scanner {
        s: text,
        b: text.as_bytes(),
        cands: Vec::new(),
        enabled,
        last_sort_end: None,
        bare: RunMemo::default(),
        runs: Default::default(),
        jwt_seg: RunMemo::default(),
        jwt_tail: Cell::new(None),
        pem_end: Cell::new(None),
    };
    let finished = sc.scan(stop);
    (sc, finished)
}
