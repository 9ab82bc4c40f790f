//! Payment messages: magnetic-stripe track data (ISO 8583 field 35, the
//! track-2 equivalent, and track 1), SWIFT MT party account lines, and card
//! numbers grouped by dots.

use super::scanner::{is_word, Scanner};
use super::spans::{P_CONTEXT, P_SHAPE, P_VALIDATED};
use super::Rule;
use crate::{luhn, Kind};

/// Most bytes of discretionary data read after the service code (track 2
/// holds at most 37 characters in all, track 1 at most 79).
const TRACK_TAIL_MAX: usize = 64;

impl Scanner<'_> {
    /// Track-2 equivalent data at `i` (the first digit of the PAN): 12–19
    /// digits passing Luhn, the separator `=` (or `D`, its hex form in
    /// ISO 8583 field 35), then the expiry `YYMM`, the service code and the
    /// discretionary data as digits — or `=` again when the expiry is
    /// absent. The whole of it is masked, an optional `;` start sentinel and
    /// `?` end sentinel included: PCI DSS forbids keeping any of it after
    /// authorisation.
    pub(super) fn track2(&mut self, i: usize) -> Option<usize> {
        let pan_end = self.digits_end(i);
        if !(12..=19).contains(&(pan_end - i)) || !matches!(self.at(pan_end), b'=' | b'D' | b'd') {
            return None;
        }
        let pan = self.b.get(i..pan_end)?;
        if !luhn::is_valid(pan) {
            return None;
        }
        let tail = pan_end + 1;
        let mut e = tail;
        while e - tail < TRACK_TAIL_MAX && (self.at(e).is_ascii_digit() || (e == tail && self.at(e) == b'=')) {
            e += 1;
        }
        // At least the expiry (or its `=`) and the service code.
        let digits = e - tail;
        if digits < 4 || is_word(self.at(e)) {
            return None;
        }
        let start = if self.before(i) == b';' { i - 1 } else { i };
        let end = if self.at(e) == b'?' { e + 1 } else { e };
        self.push_rule(start, end, Kind::TrackData, P_SHAPE, 0, Rule::Builtin("track2"));
        Some(end)
    }

    /// Track 1 at `i` (the `B` format code, optionally after `%`):
    /// `B<PAN>^<NAME>^<YYMM><service code><discretionary>`; PAN passing
    /// Luhn, a name of at most 26 characters. Masked whole.
    pub(super) fn track1(&mut self, i: usize) -> Option<usize> {
        if self.at(i) != b'B' {
            return None;
        }
        let ps = i + 1;
        let pan_end = self.digits_end(ps);
        if !(12..=19).contains(&(pan_end - ps)) || self.at(pan_end) != b'^' {
            return None;
        }
        if !luhn::is_valid(self.b.get(ps..pan_end)?) {
            return None;
        }
        let ns = pan_end + 1;
        let mut ne = ns;
        while ne - ns <= 26 && self.at(ne) != b'^' && (self.at(ne).is_ascii_graphic() || self.at(ne) == b' ') {
            ne += 1;
        }
        if self.at(ne) != b'^' {
            return None;
        }
        let ts = ne + 1;
        let mut e = ts;
        while e - ts < TRACK_TAIL_MAX && self.at(e).is_ascii_digit() {
            e += 1;
        }
        if e - ts < 4 {
            return None;
        }
        let start = if self.before(i) == b'%' { i - 1 } else { i };
        let end = if self.at(e) == b'?' { e + 1 } else { e };
        self.push_rule(start, end, Kind::TrackData, P_SHAPE, 0, Rule::Builtin("track1"));
        Some(end)
    }

    /// A card number grouped by dots at `i`: `4111.1111.1111.1111`
    /// (groups of four, the last 1–4 digits long) or the Amex `4.6.5`
    /// layout, 13–19 digits passing Luhn with a plausible first digit.
    /// Never part of a longer dotted number (IP addresses have at most
    /// three digits per group; versions and decimals fail the layout).
    pub(super) fn dotted_card(&mut self, i: usize) -> Option<usize> {
        if self.before(i) == b'.' || is_word(self.before(i)) {
            return None;
        }
        let mut lens = [0usize; 6];
        let mut n = 0usize;
        let mut j = i;
        loop {
            let e = self.digits_end(j);
            *lens.get_mut(n)? = e - j;
            n += 1;
            j = e;
            if self.at(j) == b'.' && self.at(j + 1).is_ascii_digit() && n < lens.len() {
                j += 1;
            } else {
                break;
            }
        }
        if n < 3 || is_word(self.at(j)) {
            return None;
        }
        let lens = lens.get(..n)?;
        let fours = lens.iter().take(n - 1).all(|&l| l == 4) && (1..=4).contains(lens.last()?);
        let amex = lens == [4, 6, 5];
        let total: usize = lens.iter().sum();
        if !(fours || amex) || !(13..=19).contains(&total) || !matches!(self.at(i), b'2'..=b'6') {
            return None;
        }
        let span = self.b.get(i..j)?;
        if !luhn::is_valid(span) {
            return None;
        }
        self.push_rule(i, j, Kind::Pan, P_VALIDATED, 0, Rule::Builtin("card-dotted"));
        Some(j)
    }

    /// A SWIFT MT party field at the `:` at `p`: tags 50–59 with an
    /// optional option letter (`:50K:`, `:59:`, `:59F:`, `:57A:`…)
    /// followed by `/` and the account line. The account (up to 34
    /// letters and digits, the IBAN maximum) is masked as an account
    /// number; an IBAN there is also found, and wins, by the IBAN detector.
    pub(super) fn swift_account(&mut self, p: usize) -> Option<usize> {
        if self.at(p + 1) != b'5' || !self.at(p + 2).is_ascii_digit() || is_word(self.before(p)) {
            return None;
        }
        let mut t = p + 3;
        if self.at(t).is_ascii_uppercase() {
            t += 1;
        }
        if self.at(t) != b':' || self.at(t + 1) != b'/' {
            return None;
        }
        let mut vs = t + 2;
        // `:59F:/` then optionally `1/` party-identifier line codes are not
        // the account; `/CH/123` (a clearing code) keeps its code.
        if self.at(vs + 2) == b'/' && self.at(vs).is_ascii_uppercase() && self.at(vs + 1).is_ascii_uppercase() {
            vs += 3;
        }
        let mut e = vs;
        while e - vs < 34 && (self.at(e).is_ascii_alphanumeric() || matches!(self.at(e), b'-' | b' ')) {
            e += 1;
        }
        while e > vs && matches!(self.at(e - 1), b' ' | b'-') {
            e -= 1;
        }
        if e - vs < 6 || !self.b.get(vs..e)?.iter().any(u8::is_ascii_digit) {
            return None;
        }
        self.push_rule(
            vs,
            e,
            Kind::UkAccountNumber,
            P_CONTEXT,
            0,
            Rule::Builtin("swift-account"),
        );
        // Resume at the account: the IBAN detector looks at it too.
        Some(vs)
    }
}
