//! The single left-to-right pass: the [`Scanner`] state, the byte classes
//! and primitive reads every detector shares, and the dispatch on the byte
//! under the cursor ([`Scanner::scan`]) and on a word ([`Scanner::word`]).
//! Each detector returns where the pass resumes, always past the byte it
//! started on, so the pass ends; [`RunMemo`]s keep re-reads of one run O(1).

use std::cell::Cell;

use super::key_value::{classify_key, KeyClass};
use super::spans::{bit, Cand, P_SHAPE, P_VALIDATED};
use super::{Rule, STOP_CHECK_BYTES};
use crate::mask::{MaskStyle, REDACTED};
use crate::Kind;

/// `[A-Za-z0-9_]` as a table: the scanner's innermost test.
#[allow(clippy::indexing_slicing)] // evaluated at compile time
static WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_';
        c += 1;
    }
    t
};

pub(super) fn is_word(c: u8) -> bool {
    WORD.get(usize::from(c)).copied().unwrap_or(false)
}

/// The name of the built-in detector behind a kind, when the detector did
/// not say more precisely.
pub(super) const fn default_rule(k: Kind) -> &'static str {
    match k {
        Kind::Pan => "card-luhn",
        Kind::Iban => "iban-mod97",
        Kind::UkSortCode => "sort-code",
        Kind::UkAccountNumber => "account-number",
        Kind::Email => "email",
        Kind::Phone => "phone",
        Kind::Name => "name-key",
        Kind::Secret => "secret",
        Kind::Jwt => "jwt",
        Kind::BearerToken => "bearer-token",
        Kind::ApiKey => "api-key-shape",
        Kind::Password => "password",
        Kind::TrackData => "track-data",
        Kind::NationalId => "uk-nino",
        Kind::DateOfBirth => "date-of-birth",
        Kind::Address => "address-key",
        Kind::Custom => "custom",
    }
}

pub(super) const fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// The last run of one byte class that was read: every position in
/// `from..=end` has its run end at `end`.
///
/// This is what keeps the scan linear. A detector that reads a value or a
/// segment ahead to its end (`password=password=…`, `eyJ-eyJ-…`,
/// `ya29.ya29.…`) is started again from many positions inside the same run;
/// each start inside a run already read costs O(1) instead of a rescan to
/// the end of the text. The scan moves left to right, so one run per class
/// is enough.
#[derive(Default)]
pub(super) struct RunMemo(Cell<Option<(usize, usize)>>);

impl RunMemo {
    /// The run end from `i`: remembered, or computed by `scan` and
    /// remembered.
    pub(super) fn end(&self, i: usize, scan: impl FnOnce(usize) -> usize) -> usize {
        if let Some((from, end)) = self.0.get() {
            if from <= i && i <= end {
                return end;
            }
        }
        let end = scan(i);
        self.0.set(Some((i, end)));
        end
    }
}

pub(super) struct Scanner<'a> {
    pub(super) s: &'a str,
    pub(super) b: &'a [u8],
    pub(super) cands: Vec<Cand>,
    pub(super) enabled: u32,
    /// End of the last sort code found, for the account number after it.
    pub(super) last_sort_end: Option<usize>,
    /// Bare values (`key=value` up to a delimiter).
    pub(super) bare: RunMemo,
    /// API key bodies, one memo per [`Charset`](super::credentials::Charset) (see
    /// [`Charset::index`](super::credentials::Charset::index)).
    pub(super) runs: [RunMemo; 6],
    /// The first segment of a JWT.
    pub(super) jwt_seg: RunMemo,
    /// A JWT's end after its first segment depends only on where that
    /// segment ends: `(first segment end, JWT end)`.
    pub(super) jwt_tail: Cell<Option<(usize, Option<usize>)>>,
    /// The first `-----END ` at or after a position: `(searched from,
    /// found at)`, so a text of many unterminated PEM headers is searched
    /// once, not once per header.
    pub(super) pem_end: Cell<Option<(usize, Option<usize>)>>,
}

impl Scanner<'_> {
    pub(super) fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    pub(super) fn before(&self, i: usize) -> u8 {
        if i == 0 {
            0
        } else {
            self.at(i - 1)
        }
    }

    pub(super) fn on(&self, k: Kind) -> bool {
        self.enabled & bit(k) != 0
    }

    pub(super) fn push(&mut self, start: usize, end: usize, kind: Kind, prio: u8) {
        self.push_aux(start, end, kind, prio, 0);
    }

    pub(super) fn push_aux(&mut self, start: usize, end: usize, kind: Kind, prio: u8, aux: usize) {
        self.push_rule(start, end, kind, prio, aux, Rule::Builtin(default_rule(kind)));
    }

    /// An operator rule's finding, masked in the rule's style.
    pub(super) fn push_styled(&mut self, start: usize, end: usize, kind: Kind, prio: u8, rule: Rule, style: MaskStyle) {
        self.push_cand(start, end, kind, prio, 0, rule, Some(style));
    }

    /// [`Self::push`] naming the detector (or operator rule) that fired.
    pub(super) fn push_rule(&mut self, start: usize, end: usize, kind: Kind, prio: u8, aux: usize, rule: Rule) {
        self.push_cand(start, end, kind, prio, aux, rule, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn push_cand(
        &mut self,
        start: usize,
        end: usize,
        kind: Kind,
        prio: u8,
        aux: usize,
        rule: Rule,
        style: Option<MaskStyle>,
    ) {
        if self.on(kind) && start < end {
            self.cands.push(Cand {
                start,
                end,
                kind,
                prio,
                aux,
                merged: false,
                rule,
                style,
            });
        }
    }

    pub(super) fn word_end(&self, mut i: usize) -> usize {
        while is_word(self.at(i)) {
            i += 1;
        }
        i
    }

    pub(super) fn digits_end(&self, mut i: usize) -> usize {
        while self.at(i).is_ascii_digit() {
            i += 1;
        }
        i
    }

    pub(super) fn starts_with(&self, i: usize, pat: &[u8]) -> bool {
        self.b.get(i..).is_some_and(|r| r.starts_with(pat))
    }

    pub(super) fn starts_with_ci(&self, i: usize, pat: &[u8]) -> bool {
        self.b
            .get(i..i + pat.len())
            .is_some_and(|r| r.eq_ignore_ascii_case(pat))
    }

    pub(super) fn is_redacted(&self, i: usize) -> bool {
        self.starts_with(i, REDACTED.as_bytes()) || self.starts_with(i, b"[REDACTED")
    }

    /// The scan; `false` if `stop` ended it.
    pub(super) fn scan(&mut self, stop: &dyn Fn() -> bool) -> bool {
        let n = self.b.len();
        let mut i = 0usize;
        let mut next_check = STOP_CHECK_BYTES;
        while i < n {
            if i >= next_check {
                if stop() {
                    return false;
                }
                next_check = i + STOP_CHECK_BYTES;
            }
            let c = self.at(i);
            let next = if c.is_ascii_digit() {
                self.number(i)
            } else if c.is_ascii_alphabetic() || c == b'_' {
                self.word(i)
            } else {
                match c {
                    b'@' => self.at_sign(i, 1),
                    b'%' => self.percent(i),
                    b':' => match self.swift_account(i) {
                        Some(e) => e,
                        None => self.key_value(i),
                    },
                    b'=' => self.key_value(i),
                    b'/' => self.webhook_path(i),
                    b'>' => self.xml_value(i),
                    b'+' => self.plus(i, i + 1),
                    b'(' => self.paren(i),
                    b'-' => match self.cli_flag(i) {
                        Some(e) => e,
                        None => self.pem(i),
                    },
                    _ => i + 1,
                }
            };
            i = next.max(i + 1);
        }
        true
    }

    fn word(&mut self, i: usize) -> usize {
        let end = self.word_end(i);
        if is_word(self.before(i)) {
            return end;
        }
        let c = self.at(i);
        let in_ident = self.before(i) == b'-' && i >= 2 && is_word(self.at(i - 2));
        if !in_ident
            && c.is_ascii_alphabetic()
            && self.at(i + 1).is_ascii_alphabetic()
            && self.at(i + 2).is_ascii_digit()
            && self.at(i + 3).is_ascii_digit()
        {
            if let Some(e) = self.iban(i) {
                self.push(i, e, Kind::Iban, P_VALIDATED);
                // Resume at the last space-separated group, so that a number
                // glued on by a space is still examined on its own.
                let last_group = self
                    .b
                    .get(i..e)
                    .and_then(|v| v.iter().rposition(|&c| c == b' '))
                    .map_or(e, |x| i + x + 1);
                return last_group;
            }
        }
        if !in_ident && c.is_ascii_alphabetic() && self.at(i + 1).is_ascii_alphabetic() && self.on(Kind::NationalId) {
            let d = self.at(i + 2);
            if d.is_ascii_digit() || (d == b' ' && self.at(i + 3).is_ascii_digit()) {
                if let Some(e) = self.nino(i) {
                    return e;
                }
            }
        }
        if c == b'B' && self.at(i + 1).is_ascii_digit() {
            if let Some(e) = self.track1(i) {
                return e;
            }
        }
        if end - i == 5 && self.starts_with_ci(i, b"basic") && self.at(end) == b' ' {
            if let Some(e) = self.basic_credential(end + 1) {
                return e;
            }
        }
        if c == b'e' && self.starts_with(i, b"eyJ") {
            if let Some(e) = self.jwt(i) {
                self.push(i, e, Kind::Jwt, P_SHAPE);
                return e;
            }
        }
        if let Some(e) = self.api_key(i) {
            self.push(i, e, Kind::ApiKey, P_SHAPE);
            return e;
        }
        if end - i == 6 && self.starts_with_ci(i, b"bearer") && self.at(end) == b' ' {
            let mut v = end;
            while self.at(v) == b' ' {
                v += 1;
            }
            if let Some(e) = self.bearer_credential(v) {
                return e;
            }
        }
        if (c == b'h' || c == b'd') && !self.is_redacted(i) {
            if let Some(e) = self.webhook_url(i) {
                return e;
            }
        }
        // `password 'value'`: a secret word, one space, a quoted value.
        if self.at(end) == b' ' && matches!(self.at(end + 1), b'"' | b'\'') {
            let class = self
                .b
                .get(i..end)
                .and_then(classify_key)
                .filter(|&k| k != KeyClass::Name);
            if let Some(e) = class.and_then(|k| self.spaced_value(end, k)) {
                return e;
            }
        }
        end
    }
}
