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
//! - **`:` of a SWIFT tag** (`:50K:/`, `:59:/`): the party account line.
//! - **`/webhook/`, `/webhooks/`, `/hooks/catch/`**: the secret path.
//! - **digits before `=` or `D`**: track-2 equivalent data, masked whole.
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
//! - `payments.rs`: track data (ISO 8583 field 35, track 1), SWIFT MT
//!   party account lines, card numbers grouped by dots.
//! - `kyc.rs`: UK National Insurance numbers, dates of birth after a birth
//!   word (keyed dates of birth, addresses and postcodes are key rules).
//! - `tests.rs`, `tests_round2.rs`: examples per detector, decoys, and the
//!   property tests.
//!
//! The operator's own rules ([`Rules`]) run after the
//! pass, as one multi-pattern automaton search, and their candidates join
//! the same overlap resolution (a field rule wins over everything, a
//! pattern rule over context-only detectors but not over validated ones).

mod bank;
mod cards;
mod contact;
mod credentials;
mod key_value;
mod kyc;
mod numbers;
mod payments;
mod scanner;
mod spans;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_round2;

use std::cell::Cell;

use crate::rules::Rules;
use crate::Kind;
use scanner::{RunMemo, Scanner};
use spans::{bit, rewrite, P_CUSTOM, P_FIELD};

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
    /// The detector or operator rule that fired (for explain mode).
    pub rule: Rule,
}

/// Which detector or rule produced a [`Finding`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A built-in detector, by a stable name (`card-luhn`, `uk-nino`…).
    Builtin(&'static str),
    /// The operator's pattern rule with this index in its [`Rules`].
    Custom(u16),
    /// The operator's field rule with this index in its [`Rules`].
    Field(u16),
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
    redact_with(text, opts, &EMPTY)
}

/// [`redact`] with the operator's own pattern and field rules too (see
/// [`Rules`]); still linear in the text.
pub fn redact_with(text: &str, opts: &RedactOptions, rules: &Rules) -> Redacted {
    let (sc, _) = scanned(text, opts, rules, &|| false);
    rewrite(text, sc.cands)
}

static EMPTY: std::sync::LazyLock<Rules> = std::sync::LazyLock::new(Rules::default);

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
    redact_until_with(text, opts, &EMPTY, stop)
}

/// [`redact_until`] with the operator's own rules too.
pub fn redact_until_with(
    text: &str,
    opts: &RedactOptions,
    rules: &Rules,
    stop: &dyn Fn() -> bool,
) -> Result<Redacted, Stopped> {
    let (sc, finished) = scanned(text, opts, rules, stop);
    if !finished || stop() {
        return Err(Stopped);
    }
    Ok(rewrite(text, sc.cands))
}

/// Runs the scanner over `text`; `false` when `stop` ended it early.
fn scanned<'a>(text: &'a str, opts: &RedactOptions, rules: &Rules, stop: &dyn Fn() -> bool) -> (Scanner<'a>, bool) {
    let mut enabled = 0u32;
    match &opts.kinds {
        None => enabled = u32::MAX,
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
    let mut finished = sc.scan(stop);
    if finished && !rules.is_empty() {
        finished = rules.scan(text, stop, &mut |start, end, kind, rule, style| {
            let prio = if matches!(rule, Rule::Field(_)) {
                P_FIELD
            } else {
                P_CUSTOM
            };
            sc.push_styled(start, end, kind, prio, rule, style);
        });
    }
    (sc, finished)
}
