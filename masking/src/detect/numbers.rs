//! Words that start with a digit: the chain of digit groups, the context
//! words just before it, and the order the number detectors are tried in
//! (security code, sort code and account, card, account, phone).

use super::bank::{is_account_word, is_sort_word};
use super::cards::is_card_word;
use super::contact::{is_phone_word, PhoneMode};
use super::scanner::{is_word, Scanner};
use super::spans::{P_CONTEXT, P_VALIDATED};
use crate::{kyc, Kind};

/// Digit groups of a number chain: `(start, end)` byte spans.
const MAX_GROUPS: usize = 12;

pub(super) struct Chain {
    pub(super) groups: [(usize, usize); MAX_GROUPS],
    /// Groups that belong to a hyphenated identifier, a dotted number or a
    /// masked value: never part of a finding.
    pub(super) bad: [bool; MAX_GROUPS],
    pub(super) n: usize,
}

impl Chain {
    fn mark(&mut self, i: usize) {
        if let Some(b) = self.bad.get_mut(i) {
            *b = true;
        }
    }
    pub(super) fn is_bad(&self, i: usize) -> bool {
        self.bad.get(i).copied().unwrap_or(true)
    }
    pub(super) fn group(&self, i: usize) -> (usize, usize) {
        self.groups.get(i).copied().unwrap_or((0, 0))
    }
    pub(super) fn len(&self, i: usize) -> usize {
        let (a, b) = self.group(i);
        b - a
    }
    fn end(&self) -> usize {
        self.group(self.n.saturating_sub(1)).1
    }
}

/// What the words just before a number say it is.
#[derive(Clone, Copy, Default)]
pub(super) struct Ctx {
    /// An identifier key (`order_id`, `ref`…): not a phone number.
    pub(super) id: bool,
    pub(super) card: bool,
    pub(super) sort: bool,
    pub(super) account: bool,
    pub(super) phone: bool,
    /// A card security code word (`cvv`, `cvc2`, `security code`).
    pub(super) cvv: bool,
    /// A bank-details word (`payee`, `beneficiary`, `bank details`): a
    /// sort code followed by an account number after it is a pair.
    pub(super) bank: bool,
    /// A birth word (`dob`, `born`, `date of birth`): a valid date after it
    /// is a date of birth.
    pub(super) dob: bool,
    /// A date word (`on`, `settled`, `dated`, `value date`): `12-03-24`
    /// after it is a date, not a sort code.
    pub(super) date: bool,
    /// A product-code word (`isbn`, `ean`, `barcode`): a checksum-valid
    /// EAN-13 after it is not a card number.
    pub(super) barcode: bool,
}

/// A lower-cased word of letters read backwards from the text, at most
/// `WORD_MAX` letters (the tail of longer words, since suffixes matter).
const WORD_MAX: usize = 24;

#[derive(Clone, Copy)]
struct Word {
    buf: [u8; WORD_MAX],
    len: usize,
}

impl Word {
    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

const FILLER_WORDS: &[&[u8]] = &[b"number", b"no", b"num", b"nr", b"is", b"of"];

pub(super) fn ends_with_any(w: &[u8], list: &[&[u8]]) -> bool {
    list.iter().any(|s| w.ends_with(s))
}

/// Product codes: a checksum-valid EAN-13 / ISBN after one is a barcode.
fn is_barcode_word(w: &[u8]) -> bool {
    matches!(
        w,
        b"isbn" | b"ean" | b"gtin" | b"upc" | b"barcode" | b"sku" | b"product" | b"item"
    )
}

fn is_id_word(w: &[u8]) -> bool {
    if is_barcode_word(w) || matches!(w, b"commit" | b"sha" | b"hash" | b"digest" | b"rev" | b"revision") {
        return true;
    }
    ends_with_any(
        w,
        &[
            b"id",
            b"ref",
            b"reference",
            b"order",
            b"invoice",
            b"txn",
            b"transaction",
            b"batch",
            b"ticket",
            b"case",
            b"version",
            b"seq",
        ],
    )
}

impl Scanner<'_> {
    /// The chain of digit groups from `i`: groups are digit-only words joined
    /// by single spaces or dashes.
    fn chain(&self, i: usize) -> Chain {
        let mut ch = Chain {
            groups: [(0, 0); MAX_GROUPS],
            bad: [false; MAX_GROUPS],
            n: 1,
        };
        let e0 = self.digits_end(i);
        ch.groups[0] = (i, e0);
        let mut end = e0;
        // Groups joined to a word by a dash belong to a hyphenated
        // identifier (INV-1234, UUIDs, 2026-08-14T…): the whole dash-joined
        // run is unusable, groups joined by spaces are not.
        let mut right_ident = false;
        loop {
            let sep = self.at(end);
            if !(sep == b' ' || sep == b'-') {
                break;
            }
            let nx = self.at(end + 1);
            if nx.is_ascii_digit() {
                let e = self.digits_end(end + 1);
                if is_word(self.at(e)) {
                    if self.extension_end(e).is_some() && ch.n < MAX_GROUPS {
                        // "555-0123x45": a phone extension ends the chain.
                        if let Some(slot) = ch.groups.get_mut(ch.n) {
                            *slot = (end + 1, e);
                        }
                        ch.n += 1;
                    } else if sep == b'-' {
                        right_ident = true;
                    }
                    break;
                }
                if ch.n >= MAX_GROUPS {
                    break;
                }
                if let Some(slot) = ch.groups.get_mut(ch.n) {
                    *slot = (end + 1, e);
                }
                ch.n += 1;
                end = e;
            } else {
                if sep == b'-' && (is_word(nx) || nx == b'*') {
                    right_ident = true;
                }
                break;
            }
        }
        let end = ch.end();
        let p1 = self.before(i);
        let p2 = if i >= 2 { self.at(i - 2) } else { 0 };
        if p1 == b'-' && (is_word(p2) || p2 == b'*') {
            // Mark the leading dash-joined run.
            let mut g = 0;
            while g < ch.n {
                ch.mark(g);
                if self.at(ch.group(g).1) != b'-' {
                    break;
                }
                g += 1;
            }
        }
        if right_ident {
            let mut g = ch.n;
            while g > 0 {
                g -= 1;
                ch.mark(g);
                if g == 0 || self.at(ch.group(g).0 - 1) != b'-' {
                    break;
                }
            }
        }
        // Dotted numbers (IPs, decimals, versions) and remnants of masked
        // values (`****4785`, `**** 1111`).
        if (p1 == b'.' && p2.is_ascii_digit()) || p1 == b'*' || (matches!(p1, b' ' | b'-') && p2 == b'*') {
            ch.mark(0);
        }
        if (self.at(end) == b'.' && self.at(end + 1).is_ascii_digit()) || self.at(end) == b'*' {
            ch.mark(ch.n - 1);
        }
        // All-digit UUID (8-4-4-4-12).
        if ch.n == 5 && [8, 4, 4, 4, 12].iter().enumerate().all(|(g, &l)| ch.len(g) == l) {
            (0..5).for_each(|g| ch.mark(g));
        }
        ch
    }

    pub(super) fn number(&mut self, i: usize) -> usize {
        let wend = self.word_end(i);
        if !is_word(self.before(i)) {
            if let Some(e) = self.track2(i) {
                return e;
            }
        }
        if is_word(self.before(i)) || self.digits_end(i) != wend {
            // Mid-word, or a word mixing digits and letters (hashes, ids).
            return wend;
        }
        if let Some(e) = self.nanp_dotted(i) {
            self.push(i, e, Kind::Phone, P_CONTEXT);
            return e;
        }
        if self.at(wend) == b'.' {
            if let Some(e) = self.dotted_card(i) {
                return e;
            }
        }
        let ch = self.chain(i);
        // A chain cut off at MAX_GROUPS is resumed five groups before its
        // end, so a card number straddling the cut is still seen whole.
        let chain_end = if ch.n >= MAX_GROUPS {
            ch.group(MAX_GROUPS - 5).0
        } else {
            ch.end()
        };
        let lead_ok = !ch.is_bad(0);
        let mut ctx: Option<Ctx> = None;
        let mut get_ctx = |sc: &Self| *ctx.get_or_insert_with(|| sc.context(i));

        // A date of birth after its word ("born 12/04/1985", "DOB: 1985-04-12").
        if lead_ok && get_ctx(self).dob {
            if let Some(e) = self.dob_after_context(i) {
                return e;
            }
        }

        // 0. A card security code after its word, without `:` or `=`
        //    ("cvv 123", "security code 4321"); keyed forms are handled as
        //    key = value.
        if ch.n == 1 && lead_ok && (3..=4).contains(&ch.len(0)) && (self.cvv2_before(i) || get_ctx(self).cvv) {
            let (a, b) = ch.group(0);
            self.push(a, b, Kind::Secret, P_CONTEXT);
            return b;
        }

        // 1. Sort code (+ account number) first: PANs are never grouped 2-2-2.
        let sc_groups = if ch.n >= 3
            && ch.len(0) == 2
            && ch.len(1) == 2
            && ch.len(2) == 2
            && self.at(ch.group(0).1) == self.at(ch.group(1).1)
        {
            Some(3)
        } else if ch.len(0) == 6 {
            Some(1)
        } else {
            None
        };
        let sc_groups = sc_groups.filter(|&k| lead_ok && (0..k).all(|g| !ch.is_bad(g)));
        if let Some(k) = sc_groups {
            let sc_end = ch.group(k - 1).1;
            let dashed = k == 3 && self.at(ch.group(0).1) == b'-';
            let acct = if ch.n > k {
                let (a, b) = ch.group(k);
                (self.at(sc_end) == b' ' && (6..=10).contains(&(b - a)) && !ch.is_bad(k)).then_some((a, b))
            } else {
                self.account_after(sc_end)
            };
            // "729708,44234785": an undashed pair only in delimited data.
            let csv_pair = k == 1
                && acct.is_some_and(|(a, b)| b - a == 8 && a == sc_end + 1)
                && matches!(self.at(sc_end), b',' | b';' | b'|' | b'\t');
            let pair_ctx = acct.is_some() && {
                let c = get_ctx(self);
                c.bank || c.account
            };
            // "settled on 12-03-24 …": a date, not a sort code.
            let dated = get_ctx(self).date && kyc::date_len(self.b.get(i..).unwrap_or(&[])).is_some();
            if get_ctx(self).sort || (dashed && acct.is_some() && !dated) || csv_pair || pair_ctx {
                self.push(i, sc_end, Kind::UkSortCode, P_CONTEXT);
                self.last_sort_end = Some(sc_end);
                if let Some((a, b)) = acct {
                    self.push(a, b, Kind::UkAccountNumber, P_CONTEXT);
                    return b.max(sc_end);
                }
                return sc_end;
            }
        }

        // 2. Card numbers: leftmost-longest Luhn-valid run of 13–19 digits
        //    over whole groups; when another valid run starts inside it and
        //    reaches further, the two are masked as one.
        let total: usize = (0..ch.n).map(|g| ch.len(g)).sum();
        let card_ctx = lead_ok && total >= 12 && get_ctx(self).card;
        let barcode = total == 13 && get_ctx(self).barcode;
        let mut first_covered = false;
        let mut g = 0usize;
        while g < ch.n {
            let Some(mut best) = self.longest_card(&ch, g, card_ctx && g == 0, barcode) else {
                g += 1;
                continue;
            };
            let mut h = g + 1;
            while h <= best {
                if let Some(z) = self.longest_card(&ch, h, false, barcode).filter(|&z| z > best) {
                    best = z;
                }
                h += 1;
            }
            self.push(ch.group(g).0, ch.group(best).1, Kind::Pan, P_VALIDATED);
            first_covered |= g == 0;
            g = best + 1;
        }
        if first_covered || !lead_ok {
            return chain_end;
        }

        // 3. Account numbers after a context word.
        let l0 = ch.len(0);
        // Also a 6–10 digit number shortly after a sort code, with no other
        // digits in between ("sort_code":"…","number":"…").
        let after_sort = self.last_sort_end.is_some_and(|e| {
            i > e && i - e <= 32 && self.b.get(e..i).is_some_and(|gap| !gap.iter().any(u8::is_ascii_digit))
        });
        if (6..=10).contains(&l0) && ch.n == 1 && (after_sort || get_ctx(self).account) {
            let (a, b) = ch.group(0);
            self.push(a, b, Kind::UkAccountNumber, P_CONTEXT);
            return b;
        }

        // 4. Phone numbers.
        let date_like = ch.n == 3 && matches!((ch.len(0), ch.len(1), ch.len(2)), (4, 2, 2) | (2, 2, 4));
        let mode = if total >= 7 && !date_like && get_ctx(self).phone {
            PhoneMode::Context
        } else {
            PhoneMode::Bare
        };
        // Without context only 0-prefixed (national or 00-international)
        // and ten-digit North American shapes qualify; identifier keys
        // (`order_id=0123…`) rule them out.
        if mode == PhoneMode::Bare && ((self.at(i) != b'0' && total < 10) || get_ctx(self).id) {
            return chain_end;
        }
        if let Some(e) = self.phone(i, i, mode) {
            return e.max(chain_end).max(i + 1);
        }
        chain_end
    }

    /// Reads the context words just before `i`: skips quotes, `:`, `=`, `#`,
    /// spaces, then up to three words of letters (with `_ - /` inside),
    /// dropping filler words such as `number` or `no`.
    pub(super) fn context(&self, i: usize) -> Ctx {
        let lo = i.saturating_sub(48);
        let mut j = i;
        let mut words: [Word; 4] = [Word {
            buf: [0; WORD_MAX],
            len: 0,
        }; 4];
        let mut nw = 0usize;
        while nw < words.len() && j > lo {
            // Fillers between the number and the word (or between words).
            let mut f = 0;
            while j > lo
                && matches!(
                    self.at(j - 1),
                    b' ' | b'\t' | b':' | b'=' | b'"' | b'\'' | b'#' | b'\\' | b'(' | b'[' | b'{' | b'.' | b'>'
                )
                && f < 6
            {
                j -= 1;
                f += 1;
            }
            if nw > 0 && f == 0 {
                break;
            }
            let we = j;
            while j > lo && (self.at(j - 1).is_ascii_alphabetic() || matches!(self.at(j - 1), b'_' | b'-' | b'/')) {
                j -= 1;
            }
            if j == we {
                break;
            }
            let mut w = Word {
                buf: [0; WORD_MAX],
                len: 0,
            };
            // Letters only, lower-cased, keeping the tail of long words.
            let letters = self.b.get(j..we).unwrap_or(&[]);
            let count = letters.iter().filter(|c| c.is_ascii_alphabetic()).count();
            let mut skip = count.saturating_sub(WORD_MAX);
            for &c in letters {
                if c.is_ascii_alphabetic() {
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    if let Some(slot) = w.buf.get_mut(w.len) {
                        *slot = c.to_ascii_lowercase();
                        w.len += 1;
                    }
                }
            }
            if let Some(slot) = words.get_mut(nw) {
                *slot = w;
            }
            nw += 1;
        }
        let mut k = 0;
        while k < nw && words.get(k).is_some_and(|w| FILLER_WORDS.contains(&w.as_bytes())) {
            k += 1;
        }
        let w1 = words.get(k).map(Word::as_bytes).unwrap_or(&[]);
        let w2 = if k + 1 < nw {
            words.get(k + 1).map(Word::as_bytes).unwrap_or(&[])
        } else {
            &[]
        };
        if w1.is_empty() {
            return Ctx::default();
        }
        Ctx {
            id: is_id_word(w1),
            barcode: is_barcode_word(w1),
            card: is_card_word(w1),
            sort: is_sort_word(w1, w2),
            account: is_account_word(w1),
            phone: is_phone_word(w1),
            cvv: matches!(w1, b"cvv" | b"cvc" | b"csc" | b"cvn") || (w1 == b"code" && w2 == b"security"),
            bank: matches!(
                w1,
                b"bank" | b"payee" | b"beneficiary" | b"creditor" | b"debtor" | b"remitter" | b"bankdetails"
            ) || (w1 == b"details" && matches!(w2, b"bank" | b"payee" | b"beneficiary" | b"account")),
            dob: matches!(
                w1,
                b"dob" | b"birth" | b"born" | b"birthdate" | b"dateofbirth" | b"birthday" | b"bday" | b"geboren"
            ) || (w1 == b"on" && w2 == b"born"),
            date: matches!(
                w1,
                b"on"
                    | b"date"
                    | b"dated"
                    | b"settled"
                    | b"due"
                    | b"valuedate"
                    | b"posted"
                    | b"booked"
                    | b"effective"
                    | b"until"
                    | b"since"
                    | b"expires"
                    | b"expiry"
                    | b"from"
                    | b"to"
                    | b"before"
                    | b"after"
            ),
        }
    }
}
