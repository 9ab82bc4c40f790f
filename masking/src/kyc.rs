//! Validators for KYC data: UK National Insurance numbers, UK postcodes and
//! calendar dates (for dates of birth), plus the EAN-13 / ISBN check digits
//! that keep barcodes out of the card detector.
//!
//! Pure functions over bytes; they never allocate and never panic.

/// Whether `v` is a UK National Insurance number: two prefix letters, six
/// digits and a suffix `A`–`D`, any case, with optional single spaces
/// between the groups (`AB123456C`, `ab 12 34 56 c`, `AB 123456 C`).
///
/// The prefix rules are HMRC's: the first letter is not D, F, I, Q, U or V;
/// the second is not D, F, I, O, Q, U or V; and BG, GB, KN, NK, NT, TN and ZZ
/// are never issued.
pub fn is_nino(v: &[u8]) -> bool {
    let mut buf = [0u8; 9];
    let mut n = 0usize;
    for &c in v {
        if c == b' ' {
            continue;
        }
        match buf.get_mut(n) {
            Some(slot) => *slot = c.to_ascii_uppercase(),
            None => return false,
        }
        n += 1;
    }
    n == 9 && nino_compact(&buf)
}

/// [`is_nino`] over the nine characters without spaces, upper-cased.
pub(crate) fn nino_compact(b: &[u8; 9]) -> bool {
    let [p0, p1, d @ .., s] = *b;
    let digits_ok = d.iter().all(u8::is_ascii_digit);
    let first_ok = p0.is_ascii_uppercase() && !matches!(p0, b'D' | b'F' | b'I' | b'Q' | b'U' | b'V');
    let second_ok = p1.is_ascii_uppercase() && !matches!(p1, b'D' | b'F' | b'I' | b'O' | b'Q' | b'U' | b'V');
    let prefix_ok = !matches!(
        [p0, p1],
        [b'B', b'G'] | [b'G', b'B'] | [b'K', b'N'] | [b'N', b'K'] | [b'N', b'T'] | [b'T', b'N'] | [b'Z', b'Z']
    );
    digits_ok && first_ok && second_ok && prefix_ok && matches!(s, b'A'..=b'D')
}

/// Whether `v` is a UK postcode (any case, one optional space before the
/// inward code): outward `A9`, `A99`, `AA9`, `AA99`, `A9A` or `AA9A` with
/// Royal Mail's letter rules (Q, V, X never first; I, J, Z never second;
/// only certain letters in the third and fourth places), inward `9AA` with
/// no C, I, K, M, O or V; and the special `GIR 0AA`.
pub fn is_uk_postcode(v: &[u8]) -> bool {
    let mut buf = [0u8; 7];
    let mut n = 0usize;
    let mut spaces = 0;
    for &c in v {
        if c == b' ' {
            spaces += 1;
            continue;
        }
        match buf.get_mut(n) {
            Some(slot) => *slot = c.to_ascii_uppercase(),
            None => return false,
        }
        n += 1;
    }
    if spaces > 1 || !(5..=7).contains(&n) {
        return false;
    }
    let Some(compact) = buf.get(..n) else {
        return false;
    };
    if compact == b"GIR0AA" {
        return true;
    }
    let (out, inward) = compact.split_at(n - 3);
    if spaces == 1 && v.iter().position(|&c| c == b' ') != Some(out.len()) {
        return false;
    }
    let inward_ok = matches!(inward, [d, a, b] if d.is_ascii_digit()
        && [*a, *b].iter().all(|c| c.is_ascii_uppercase() && !matches!(c, b'C' | b'I' | b'K' | b'M' | b'O' | b'V')));
    let alpha = |c: u8| c.is_ascii_uppercase();
    let digit = |c: u8| c.is_ascii_digit();
    let first = |c: u8| alpha(c) && !matches!(c, b'Q' | b'V' | b'X');
    let second = |c: u8| alpha(c) && !matches!(c, b'I' | b'J' | b'Z');
    let third = |c: u8| b"ABCDEFGHJKPSTUW".contains(&c);
    let fourth = |c: u8| b"ABEHMNPRVWXY".contains(&c);
    let out_ok = match *out {
        [a, d] => first(a) && digit(d),
        [a, d, e] => first(a) && ((digit(d) && digit(e)) || (second(d) && digit(e)) || (digit(d) && third(e))),
        [a, b, d, e] => first(a) && second(b) && digit(d) && (digit(e) || fourth(e)),
        _ => false,
    };
    inward_ok && out_ok
}

/// Whether `y`-`m`-`d` is a date of the Gregorian calendar between the
/// years 1900 and 2099.
pub fn is_valid_date(y: u32, m: u32, d: u32) -> bool {
    if !(1900..=2099).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    d <= days
}

fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 4 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0')))
}

const MONTHS: [&[u8]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

fn month_name(w: &[u8]) -> Option<u32> {
    let p = w.get(..3)?;
    let m = MONTHS.iter().position(|n| p.eq_ignore_ascii_case(n))?;
    // `Sept`, `September`, `Jan.`: the rest is letters (or a dot).
    w.get(3..)?
        .iter()
        .all(|c| c.is_ascii_alphabetic() || *c == b'.')
        .then_some(m as u32 + 1)
}

/// The length of a calendar date at the start of `b`, if one is there:
/// `YYYY-MM-DD` (also with `/` or `.`, and an ISO time after it),
/// `DD/MM/YYYY` or `MM/DD/YYYY` (also with `-` or `.`; valid either way),
/// `DD/MM/YY`, `YYYYMMDD`, `12 April 1985` and `April 12, 1985`. The
/// date must exist (no 30 February) and not be followed by more digits.
pub fn date_len(b: &[u8]) -> Option<usize> {
    let run = |from: usize| {
        from + b
            .get(from..)
            .unwrap_or(&[])
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let e0 = run(0);
    let ok_end = |e: usize| !at(e).is_ascii_alphanumeric() || at(e) == b'T';
    if e0 == 8 && ok_end(e0) {
        let (y, m, d) = (num(b.get(0..4)?)?, num(b.get(4..6)?)?, num(b.get(6..8)?)?);
        return is_valid_date(y, m, d).then_some(8);
    }
    if (1..=4).contains(&e0) && matches!(at(e0), b'-' | b'/' | b'.') {
        let sep = at(e0);
        let e1 = run(e0 + 1);
        if (1..=2).contains(&(e1 - e0 - 1)) && at(e1) == sep {
            let e2 = run(e1 + 1);
            let (a, m, c) = (num(b.get(..e0)?)?, num(b.get(e0 + 1..e1)?)?, num(b.get(e1 + 1..e2)?)?);
            let l2 = e2 - e1 - 1;
            if !ok_end(e2) || (at(e2) == b'.' && at(e2 + 1).is_ascii_digit()) {
                return None;
            }
            let valid = if e0 == 4 && (1..=2).contains(&l2) {
                is_valid_date(a, m, c)
            } else if e0 <= 2 && l2 == 4 {
                is_valid_date(c, m, a) || is_valid_date(c, a, m)
            } else if e0 <= 2 && l2 == 2 {
                // Two-digit year: the century is unknown; 19xx or 20xx.
                is_valid_date(1900 + c, m, a) || is_valid_date(1900 + c, a, m)
            } else {
                false
            };
            return valid.then_some(e2);
        }
        return None;
    }
    // `12 April 1985` / `12 Apr 1985`
    if (1..=2).contains(&e0) && at(e0) == b' ' {
        let ws = e0 + 1;
        let we = ws
            + b.get(ws..)?
                .iter()
                .take_while(|c| c.is_ascii_alphabetic() || **c == b'.')
                .count();
        let m = month_name(b.get(ws..we)?)?;
        if at(we) != b' ' {
            return None;
        }
        let e2 = run(we + 1);
        let (d, y) = (num(b.get(..e0)?)?, num(b.get(we + 1..e2)?)?);
        return (e2 - we - 1 == 4 && is_valid_date(y, m, d) && ok_end(e2)).then_some(e2);
    }
    // `April 12, 1985`
    if e0 == 0 {
        let we = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        let m = month_name(b.get(..we)?)?;
        if at(we) != b' ' {
            return None;
        }
        let e1 = run(we + 1);
        let mut k = e1;
        if at(k) == b',' {
            k += 1;
        }
        if at(k) != b' ' {
            return None;
        }
        let e2 = run(k + 1);
        let (d, y) = (num(b.get(we + 1..e1)?)?, num(b.get(k + 1..e2)?)?);
        return (e2 - k - 1 == 4 && is_valid_date(y, m, d) && ok_end(e2)).then_some(e2);
    }
    None
}

/// Whether the digits of `v` (separators ignored) are an EAN-13 (ISBN-13)
/// with a valid check digit.
pub fn is_ean13(v: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for &c in v.iter().filter(|c| c.is_ascii_digit()) {
        let d = u32::from(c - b'0');
        sum += if n % 2 == 0 { d } else { 3 * d };
        n += 1;
    }
    n == 13 && sum % 10 == 0
}

/// Whether `v` (separators ignored) is an ISBN-10 with a valid check digit
/// (the last may be `X`).
pub fn is_isbn10(v: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut n = 0u32;
    for &c in v.iter().filter(|c| c.is_ascii_alphanumeric()) {
        let d = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'X' | b'x' if n == 9 => 10,
            _ => return false,
        };
        n += 1;
        sum += d * (11 - n);
    }
    n == 10 && sum % 11 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nino_rules() {
        for ok in [
            "AB123456C",
            "ab123456c",
            "AB 12 34 56 C",
            "AB 123456 C",
            "JG103759A",
            "ZX123456D",
        ] {
            assert!(is_nino(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "DA123456A", // D first
            "FA123456A",
            "IA123456A",
            "QQ123456C",
            "UA123456A",
            "VA123456A",
            "AO123456A", // O second
            "AD123456A",
            "BG123456A",
            "GB123456A",
            "KN123456A",
            "NK123456A",
            "NT123456A",
            "TN123456A",
            "ZZ123456A",
            "AB123456E", // suffix
            "AB12345C",
            "AB1234567C",
            "A1123456C",
        ] {
            assert!(!is_nino(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn postcodes() {
        for ok in [
            "SW1A 1AA", "sw1a1aa", "EC1A 1BB", "W1A 0AX", "M1 1AE", "B33 8TH", "CR2 6XH", "DN55 1PT", "GIR 0AA",
        ] {
            assert!(is_uk_postcode(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "QA1 1AA",
            "SW1A 1CA",
            "SW1A  1AA",
            "12345",
            "SW1A1A",
            "AAA 1AA",
            "S W1A1AA",
        ] {
            assert!(!is_uk_postcode(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn dates() {
        for (s, l) in [
            ("1985-04-12", 10),
            ("1985-04-12T00:00:00Z", 10),
            ("12/04/1985", 10),
            ("04/30/1985", 10),
            ("12.04.1985", 10),
            ("19850412", 8),
            ("12 April 1985", 13),
            ("12 Apr 1985", 11),
            ("April 12, 1985", 14),
            ("29/02/2000", 10),
            ("12-03-84", 8),
        ] {
            assert_eq!(date_len(s.as_bytes()), Some(l), "{s}");
        }
        for bad in [
            "1985-02-30",
            "31/04/1985",
            "29/02/1900",
            "1985-13-01",
            "19851301",
            "12 Foo 1985",
            "12345678",
            "1.2.3.4",
            "1985-04-12345",
        ] {
            assert_eq!(date_len(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn barcodes() {
        assert!(is_ean13(b"4006381333931"));
        assert!(is_ean13(b"978-0-306-40615-7"));
        assert!(!is_ean13(b"4006381333932"));
        assert!(is_isbn10(b"0-306-40615-2"));
        assert!(is_isbn10(b"0-8044-2957-X"));
        assert!(!is_isbn10(b"0-306-40615-3"));
    }
}
