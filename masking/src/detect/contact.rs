//! Contact data: telephone numbers (after `+`, a bracket, a context word,
//! or in national and North American shapes) and e-mail addresses.

use super::numbers::ends_with_any;
use super::scanner::{is_word, Scanner};
use super::spans::{P_CONTEXT, P_EMAIL};
use crate::Kind;

pub(super) fn is_phone_word(w: &[u8]) -> bool {
    ends_with_any(
        w,
        &[
            b"phone",
            b"mobile",
            b"telephone",
            b"msisdn",
            b"whatsapp",
            b"phonenumber",
            b"mobilenumber",
            b"phoneno",
            b"mobileno",
            b"telno",
            b"contactnumber",
            b"faxnumber",
            b"cellnumber",
        ],
    ) || matches!(
        w,
        b"tel" | b"mob" | b"cell" | b"fax" | b"sms" | b"ph" | b"contact" | b"callback"
    )
}

/// How a phone number was reached, which decides the rules it must meet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PhoneMode {
    /// After `+` (or `%2B`): 8–15 digits, first digit not 0.
    Plus,
    /// After a phone context word: 7–15 digits.
    Context,
    /// No context: UK-style national (0 + 9–10 digits), `00` international,
    /// or North American `(NXX) NXX-XXXX` shapes.
    Bare,
}

/// Characters of an e-mail local part (non-ASCII bytes included, so
/// internationalised addresses are caught whole).
const fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'') || c >= 0x80
}

const fn is_label(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80
}

impl Scanner<'_> {
    /// Parses a phone number whose first byte is at `p` (`+`, `(` or a
    /// digit) and records it with its span starting at `span_start`.
    /// Groups of digits are joined by single spaces or dashes (dots too
    /// after a context word or `+`) or bracketed (`(0)`, `(020)`).
    pub(super) fn phone(&mut self, p: usize, span_start: usize, mode: PhoneMode) -> Option<usize> {
        let plus = mode == PhoneMode::Plus;
        let allow_dot = mode != PhoneMode::Bare;
        let mut j = p;
        if self.at(j) == b'+' {
            j += 1;
        }
        // Cut points after each group: (end, digits so far).
        let mut cuts: [(usize, usize); 12] = [(0, 0); 12];
        let mut lens: [usize; 12] = [0; 12];
        let mut paren_first = false;
        let mut ncut = 0usize;
        let mut digits = 0usize;
        let mut first = [0u8; 3];
        let mut nfirst = 0usize;
        let mut last_paren;
        loop {
            let gstart;
            let gend;
            if let Some(ol) = self.open_paren(j, allow_dot) {
                let mut k = j + ol;
                if self.at(k) == b'+' {
                    k += 1;
                }
                let e = self.digits_end(k);
                let Some(cl) = self.close_paren(e, allow_dot) else {
                    break;
                };
                if e == k {
                    break;
                }
                gstart = k;
                gend = e;
                if ncut == 0 {
                    paren_first = true;
                }
                j = e + cl;
                last_paren = true;
            } else if self.at(j).is_ascii_digit() {
                let e = self.digits_end(j);
                if is_word(self.at(e)) && (ncut == 0 || self.extension_end(e).is_none()) {
                    break;
                }
                gstart = j;
                gend = e;
                j = e;
                last_paren = false;
            } else {
                break;
            }
            for &c in self.b.get(gstart..gend).unwrap_or(&[]) {
                if let Some(slot) = first.get_mut(nfirst) {
                    *slot = c;
                    nfirst += 1;
                }
            }
            digits += gend - gstart;
            if digits > 20 || ncut >= cuts.len() {
                break;
            }
            if let (Some(c), Some(l)) = (cuts.get_mut(ncut), lens.get_mut(ncut)) {
                *c = (j, digits);
                *l = gend - gstart;
            }
            ncut += 1;
            let sl = self.phone_sep(j, allow_dot);
            if sl > 0 && (self.at(j + sl).is_ascii_digit() || self.open_paren(j + sl, allow_dot).is_some()) {
                j += sl;
            } else if self.open_paren(j, allow_dot).is_some() || (last_paren && self.at(j).is_ascii_digit()) {
                // "+44(0)20…", "(0)7700…"
            } else {
                break;
            }
        }
        if ncut == 0 {
            return None;
        }
        let cuts = cuts.get(..ncut)?;
        let pick = |lo: usize, hi: usize, min_groups: usize| -> Option<usize> {
            cuts.iter()
                .enumerate()
                .rev()
                .find(|(g, (_, d))| *d >= lo && *d <= hi && g + 1 >= min_groups)
                .map(|(_, (e, _))| *e)
        };
        let [d0, d1, d2] = first;
        let end = match mode {
            _ if plus => {
                if d0 == b'0' {
                    return None;
                }
                pick(8, 15, 1)
            }
            PhoneMode::Context => pick(7, 15, 1),
            _ => {
                if d0 == b'0' && d1 == b'0' && d2 != b'0' {
                    pick(11, 15, 2)
                } else if d0 == b'0' && d1 != b'0' {
                    pick(10, 11, 1)
                } else if [d0, d1, d2] == *b"447" {
                    // a UK mobile in E.164 without its `+` (SMS gateways)
                    pick(12, 12, 1)
                } else {
                    self.nanp(p, cuts, lens.get(..ncut)?, paren_first)
                }
            }
        }?;
        // A trailing "-x" or ".5" means it was something else.
        if (self.at(end) == b'-' && is_word(self.at(end + 1)))
            || (self.at(end) == b'.' && self.at(end + 1).is_ascii_digit())
        {
            return None;
        }
        self.push(span_start, end, Kind::Phone, P_CONTEXT);
        Some(end)
    }

    /// `x123`, `ext123`, `ext.123` after a phone number: the end of the
    /// extension.
    pub(super) fn extension_end(&self, e: usize) -> Option<usize> {
        let mut j = e;
        if matches!(self.at(j), b'x' | b'X') {
            j += 1;
        } else if self.starts_with_ci(j, b"ext") {
            j += 3;
            if self.at(j) == b'.' {
                j += 1;
            }
        } else {
            return None;
        }
        let d = self.digits_end(j);
        (d > j && d - j <= 6 && !is_word(self.at(d))).then_some(d)
    }

    /// Length of a group separator at `j`: space or dash; after `+` or a
    /// context word also a dot, a `+` or `%20` (query strings).
    fn phone_sep(&self, j: usize, lenient: bool) -> usize {
        match self.at(j) {
            b' ' | b'-' => 1,
            b'.' | b'+' if lenient => 1,
            b'%' if lenient && self.starts_with(j, b"%20") => 3,
            _ => 0,
        }
    }

    fn open_paren(&self, j: usize, lenient: bool) -> Option<usize> {
        match self.at(j) {
            b'(' => Some(1),
            b'%' if lenient && self.starts_with(j, b"%28") => Some(3),
            _ => None,
        }
    }

    fn close_paren(&self, j: usize, lenient: bool) -> Option<usize> {
        match self.at(j) {
            b')' => Some(1),
            b'%' if lenient && self.starts_with(j, b"%29") => Some(3),
            _ => None,
        }
    }

    /// `NXX.NXX.XXXX` (an IPv4 address never has a four-digit part).
    pub(super) fn nanp_dotted(&self, i: usize) -> Option<usize> {
        let shape = [3usize, 3, 4];
        let mut j = i;
        for (g, &len) in shape.iter().enumerate() {
            let e = self.digits_end(j);
            if e - j != len {
                return None;
            }
            j = e;
            if g < 2 {
                if self.at(j) != b'.' {
                    return None;
                }
                j += 1;
            }
        }
        let p1 = self.before(i);
        if is_word(self.at(j)) || (self.at(j) == b'.' && self.at(j + 1).is_ascii_digit()) || p1 == b'.' || is_word(p1) {
            return None;
        }
        let (area, exch) = (self.at(i), self.at(i + 4));
        ((b'2'..=b'9').contains(&area) && (b'2'..=b'9').contains(&exch)).then_some(j)
    }

    /// North American numbers without context: `(NXX) NXX-XXXX`,
    /// `NXX-NXX-XXXX`, `NXX NXX XXXX`, `1-NXX-NXX-XXXX`.
    fn nanp(&self, p: usize, cuts: &[(usize, usize)], lens: &[usize], paren_first: bool) -> Option<usize> {
        let (off, expect): (usize, &[usize]) = if lens.first() == Some(&1) {
            (1, &[1, 3, 3, 4])
        } else {
            (0, &[3, 3, 4])
        };
        if lens.len() < expect.len() || lens.get(..expect.len())? != expect {
            return None;
        }
        if off == 1 && self.at(p) != b'1' {
            return None;
        }
        let (end, _) = *cuts.get(expect.len() - 1)?;
        let bytes = self.b.get(p..end)?;
        let digits: Vec<u8> = bytes.iter().copied().filter(u8::is_ascii_digit).collect();
        let area = *digits.get(off)?;
        let exch = *digits.get(off + 3)?;
        if !(b'2'..=b'9').contains(&area) || !(b'2'..=b'9').contains(&exch) {
            return None;
        }
        // Separators must be consistent: all dashes, all spaces, or a
        // bracketed area code.
        let seps: Vec<u8> = bytes.iter().copied().filter(|c| !c.is_ascii_digit()).collect();
        let ok = paren_first
            || seps.iter().all(|&c| c == b'-') && seps.len() == expect.len() - 1
            || seps.iter().all(|&c| c == b' ') && seps.len() == expect.len() - 1;
        ok.then_some(end)
    }

    pub(super) fn plus(&mut self, i: usize, p: usize) -> usize {
        let prev = self.before(i);
        if is_word(prev) || prev == b'+' {
            return i + 1;
        }
        let nx = self.at(p);
        if !(nx.is_ascii_digit() || nx == b'(') {
            return i + 1;
        }
        // `i` is the '+' (or the '%' of "%2B"); the span starts at the '+'
        // itself, or after the escape.
        let (start, parse_from) = if p == i + 1 { (i, i) } else { (p, p) };
        self.phone(parse_from, start, PhoneMode::Plus).unwrap_or(i + 1)
    }

    pub(super) fn paren(&mut self, i: usize) -> usize {
        let plus = self.at(i + 1) == b'+' && self.at(i + 2).is_ascii_digit();
        if !(self.at(i + 1).is_ascii_digit() || plus) || is_word(self.before(i)) {
            return i + 1;
        }
        let mode = if plus {
            PhoneMode::Plus
        } else if self.context(i).phone {
            PhoneMode::Context
        } else {
            PhoneMode::Bare
        };
        self.phone(i, i, mode).unwrap_or(i + 1)
    }

    pub(super) fn percent(&mut self, i: usize) -> usize {
        if self.starts_with(i, b"%40") {
            return self.at_sign(i, 3);
        }
        if self.starts_with_ci(i, b"%2b") && self.at(i + 3).is_ascii_digit() {
            return self.plus(i, i + 3);
        }
        i + 1
    }

    pub(super) fn at_sign(&mut self, p: usize, sep_len: usize) -> usize {
        let next = p + sep_len;
        if let Some(e) = self.url_password(p) {
            return e;
        }
        // Local part, backwards.
        let lo = p.saturating_sub(64);
        let mut ls = p;
        while ls > lo && is_local(self.at(ls - 1)) {
            ls -= 1;
        }
        while ls < p && (matches!(self.at(ls), b'.' | b'\'' | b'-' | b'+') || !self.s.is_char_boundary(ls)) {
            ls += 1;
        }
        if ls == p {
            return next;
        }
        if self.before(ls) == b'<' && self.message_id_header(ls - 1) {
            return next;
        }
        // Domain: labels joined by single dots; the last is at least two
        // letters.
        let mut j = next;
        let mut labels = 0;
        let mut last_label = (j, j);
        loop {
            let st = j;
            while is_label(self.at(j)) {
                j += 1;
            }
            if j == st {
                break;
            }
            labels += 1;
            last_label = (st, j);
            if self.at(j) == b'.' && is_label(self.at(j + 1)) {
                j += 1;
            } else {
                break;
            }
        }
        let tld = self.b.get(last_label.0..last_label.1).unwrap_or(&[]);
        let tld_ok = tld.len() >= 2 && tld.iter().all(|&c| c.is_ascii_alphabetic() || c >= 0x80);
        if labels < 2 || !tld_ok {
            return next;
        }
        self.push_aux(ls, j, Kind::Email, P_EMAIL, p);
        j
    }

    /// True when the `<` at `lt` opens a Message-ID-style header value
    /// (`Message-ID:`, `In-Reply-To:`, `References:`, `Content-ID:`): those
    /// look like addresses but identify messages.
    fn message_id_header(&self, lt: usize) -> bool {
        let mut j = lt;
        while j > 0 && self.at(j - 1) == b' ' {
            j -= 1;
        }
        if self.before(j) != b':' {
            return false;
        }
        let end = j - 1;
        [
            &b"message-id"[..],
            b"in-reply-to",
            b"references",
            b"content-id",
            b"msgid",
            b"message_id",
        ]
        .iter()
        .any(|h| end >= h.len() && self.starts_with_ci(end - h.len(), h))
    }
}
