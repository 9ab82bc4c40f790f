//! Payment card numbers (Luhn, issuer plausibility, 12-digit Maestro) and
//! card security codes after their word.

use super::numbers::{ends_with_any, Chain};
use super::scanner::{is_word, Scanner};
use crate::{kyc, luhn};

pub(super) fn is_card_word(w: &[u8]) -> bool {
    ends_with_any(
        w,
        &[
            b"card",
            b"cardnumber",
            b"cardno",
            b"cardnum",
            b"pan",
            b"ccnumber",
            b"ccnum",
            b"maestro",
        ],
    ) || w == b"cc"
}

/// Whether a Luhn-valid run of `digits` digits could be a card number by
/// its first digit (the major industry identifier, ISO/IEC 7812), without
/// a card context word: no scheme issues card numbers starting with 0;
/// 1 is UATP (15 digits); 13-digit cards are Visa (4); 14-digit Diners (3)
/// or Maestro (5, 6). This keeps millisecond and microsecond Unix times
/// (`1764236712345`), `yyyyMMddHHmmss` stamps and EAN-13 barcodes, which
/// pass Luhn one time in ten, out of the card detector.
fn issuer_plausible(span: &[u8], digits: usize) -> bool {
    let Some(&first) = span.iter().find(|c| c.is_ascii_digit()) else {
        return false;
    };
    match digits {
        13 => first == b'4',
        14 => matches!(first, b'3' | b'5' | b'6'),
        15 => matches!(first, b'1'..=b'6'),
        _ => matches!(first, b'2'..=b'9'),
    }
}

/// Maestro issuer prefixes (the brand that issues 12-digit cards).
fn maestro_prefix(span: &[u8]) -> bool {
    let d: Vec<u8> = span.iter().copied().filter(u8::is_ascii_digit).take(4).collect();
    matches!(d.get(..2), Some(b"50" | b"56" | b"57" | b"58" | b"63" | b"67"))
        || matches!(d.get(..4), Some(b"0604" | b"6390" | b"6304" | b"6759"))
}

impl Scanner<'_> {
    /// The last group of the longest card number starting at group `g`:
    /// 13–19 digits passing Luhn, or 12 with a Maestro prefix or a card
    /// context word (a bare 12-digit id passes Luhn one time in ten).
    pub(super) fn longest_card(&self, ch: &Chain, g: usize, card_ctx: bool, barcode_ctx: bool) -> Option<usize> {
        let mut digits = 0usize;
        let mut best = None;
        let mut z = g;
        while z < ch.n && !ch.is_bad(z) {
            digits += ch.len(z);
            if digits > 19 {
                break;
            }
            if digits >= 12 {
                let span = self.b.get(ch.group(g).0..ch.group(z).1).unwrap_or(&[]);
                // A bare 12-digit Maestro only as a whole number, not as the
                // tail of a longer digit run ("ref 1234 5678 9012 3456").
                let whole = g == 0 && z + 1 == ch.n;
                let length_ok =
                    card_ctx || (digits >= 13 && issuer_plausible(span, digits)) || (maestro_prefix(span) && whole);
                // An EAN-13 / ISBN-13 with a valid check digit after a
                // product-code word is a barcode, not a 13-digit card.
                let barcode = digits == 13 && barcode_ctx && !card_ctx && kyc::is_ean13(span);
                if length_ok && !barcode && luhn::is_valid(span) {
                    best = Some(z);
                }
            }
            z += 1;
        }
        best
    }

    /// `cvv2` or `cvc2` (any case) just before `i`, after at most three
    /// blanks or a `:`/`=` (the context reader takes letters only).
    pub(super) fn cvv2_before(&self, i: usize) -> bool {
        let mut j = i;
        while j > 0 && i - j < 3 && matches!(self.at(j - 1), b' ' | b'\t' | b':' | b'=') {
            j -= 1;
        }
        let Some(w) = j.checked_sub(4).and_then(|s| self.b.get(s..j)) else {
            return false;
        };
        (w.eq_ignore_ascii_case(b"cvv2") || w.eq_ignore_ascii_case(b"cvc2")) && !is_word(self.before(j - 4))
    }
}
