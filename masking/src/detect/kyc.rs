//! KYC data found by its shape: UK National Insurance numbers (HMRC's
//! prefix and suffix rules, grouped by spaces or not, any case) and dates
//! of birth after a birth context word. Keyed forms (`"dob":…`,
//! `"addressLine1":…`, `"postcode":…`) are in `key_value.rs`.

use super::scanner::{is_word, Scanner};
use super::spans::{P_CONTEXT, P_VALIDATED};
use super::Rule;
use crate::{kyc, Kind};

impl Scanner<'_> {
    /// A National Insurance number at the word start `i`: two letters, six
    /// digits (optionally `12 34 56`), a suffix letter; single spaces
    /// allowed between the groups; whole words only.
    pub(super) fn nino(&mut self, i: usize) -> Option<usize> {
        let mut buf = [0u8; 9];
        let mut n = 0usize;
        let mut j = i;
        let mut take = |c: u8, n: &mut usize| {
            if let Some(slot) = buf.get_mut(*n) {
                *slot = c.to_ascii_uppercase();
            }
            *n += 1;
        };
        // prefix
        for _ in 0..2 {
            take(self.at(j), &mut n);
            j += 1;
        }
        // digits, in pairs, a single space allowed before each pair
        for _ in 0..3 {
            if self.at(j) == b' ' && self.at(j + 1).is_ascii_digit() {
                j += 1;
            }
            for _ in 0..2 {
                let c = self.at(j);
                if !c.is_ascii_digit() {
                    return None;
                }
                take(c, &mut n);
                j += 1;
            }
        }
        if self.at(j) == b' ' && self.at(j + 1).is_ascii_alphabetic() {
            j += 1;
        }
        take(self.at(j), &mut n);
        j += 1;
        if is_word(self.at(j)) || n != 9 || !kyc::nino_compact(&buf) {
            return None;
        }
        self.push_rule(i, j, Kind::NationalId, P_VALIDATED, 0, Rule::Builtin("uk-nino"));
        Some(j)
    }

    /// A date at `i` after a birth context word (`dob`, `born`, `date of
    /// birth`…): masked when it is a valid calendar date.
    pub(super) fn dob_after_context(&mut self, i: usize) -> Option<usize> {
        let l = kyc::date_len(self.b.get(i..)?)?;
        self.push_rule(
            i,
            i + l,
            Kind::DateOfBirth,
            P_CONTEXT,
            0,
            Rule::Builtin("date-of-birth"),
        );
        Some(i + l)
    }
}
