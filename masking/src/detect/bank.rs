//! Bank details: IBANs (country length, grouping, mod-97) and the context
//! words and layout of UK sort codes and account numbers.

use super::numbers::ends_with_any;
use super::scanner::{is_word, Scanner};
use crate::iban;

pub(super) fn is_account_word(w: &[u8]) -> bool {
    ends_with_any(
        w,
        &[
            b"account",
            b"acct",
            b"accountnumber",
            b"accountno",
            b"accountnum",
            b"acctno",
            b"acctnum",
            b"acctnumber",
        ],
    ) || matches!(w, b"acc" | b"ac" | b"accno" | b"accnum" | b"accnumber")
}

pub(super) fn is_sort_word(w: &[u8], prev: &[u8]) -> bool {
    w.ends_with(b"sortcode") || matches!(w, b"sort" | b"sortingcode" | b"sc") || (w == b"code" && prev == b"sort")
}

impl Scanner<'_> {
    /// An IBAN starting at `i` (two letters and two digits seen): exactly the
    /// country's length of alphanumerics, optionally grouped by single
    /// spaces, ending at a word boundary, passing mod-97.
    pub(super) fn iban(&self, i: usize) -> Option<usize> {
        let len = iban::country_length([self.at(i), self.at(i + 1)])?;
        let mut buf = [0u8; 34];
        let mut n = 0usize;
        let mut j = i;
        while n < len {
            let c = self.at(j);
            if c.is_ascii_alphanumeric() {
                *buf.get_mut(n)? = c.to_ascii_uppercase();
                n += 1;
                j += 1;
            } else if matches!(c, b' ' | b'-') && n >= 4 && self.at(j + 1).is_ascii_alphanumeric() {
                j += 1;
            } else {
                break;
            }
        }
        if n != len || is_word(self.at(j)) {
            return None;
        }
        iban::is_valid_compact(buf.get(..n)?).then_some(j)
    }

    /// An account number just after a sort code: up to three bytes of
    /// `, ; / |` or spaces, then a 6–10 digit word.
    pub(super) fn account_after(&self, sc_end: usize) -> Option<(usize, usize)> {
        let mut j = sc_end;
        while j - sc_end < 3 && matches!(self.at(j), b' ' | b',' | b';' | b'/' | b'|' | b'\t') {
            j += 1;
        }
        if j == sc_end || !self.at(j).is_ascii_digit() {
            return None;
        }
        let e = self.digits_end(j);
        ((6..=10).contains(&(e - j)) && !is_word(self.at(e)) && !matches!(self.at(e), b'-' | b'.')).then_some((j, e))
    }
}
