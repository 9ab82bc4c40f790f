//! IBAN validation (ISO 13616): per-country length and the mod-97 check.

/// IBAN lengths by country code: the SWIFT IBAN registry, plus the French
/// overseas territories (which use French-format IBANs under their own code)
/// and the partial-registry countries whose IBANs are in everyday use.
const LENGTHS: &[(&[u8; 2], u8)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AO", 25),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BF", 28),
    (b"BG", 22),
    (b"BH", 22),
    (b"BI", 27),
    (b"BJ", 28),
    (b"BL", 27),
    (b"BR", 29),
    (b"BY", 28),
    (b"CF", 27),
    (b"CG", 27),
    (b"CH", 21),
    (b"CI", 28),
    (b"CM", 27),
    (b"CR", 22),
    (b"CV", 25),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DJ", 27),
    (b"DK", 18),
    (b"DO", 28),
    (b"DZ", 26),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FK", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GA", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GF", 27),
    (b"GI", 23),
    (b"GL", 18),
    (b"GP", 27),
    (b"GQ", 27),
    (b"GR", 27),
    (b"GT", 28),
    (b"GW", 25),
    (b"HN", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IR", 26),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KM", 27),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MA", 28),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MF", 27),
    (b"MG", 27),
    (b"MK", 19),
    (b"ML", 28),
    (b"MN", 20),
    (b"MQ", 27),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"MZ", 25),
    (b"NC", 27),
    (b"NE", 28),
    (b"NI", 28),
    (b"NL", 18),
    (b"NO", 15),
    (b"OM", 23),
    (b"PF", 27),
    (b"PK", 24),
    (b"PL", 28),
    (b"PM", 27),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RE", 27),
    (b"RO", 24),
    (b"RS", 22),
    (b"RU", 33),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"SN", 28),
    (b"SO", 23),
    (b"ST", 25),
    (b"SV", 28),
    (b"TD", 27),
    (b"TF", 27),
    (b"TG", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"WF", 27),
    (b"XK", 20),
    (b"YE", 30),
    (b"YT", 27),
];

/// The IBAN length for a two-letter country code (either case), if the
/// country issues IBANs.
pub fn country_length(cc: [u8; 2]) -> Option<usize> {
    let cc = [cc[0].to_ascii_uppercase(), cc[1].to_ascii_uppercase()];
    LENGTHS
        .binary_search_by(|(c, _)| (*c).cmp(&cc))
        .ok()
        .and_then(|i| LENGTHS.get(i))
        .map(|(_, len)| usize::from(*len))
}

/// ISO 7064 mod 97-10 over an IBAN's alphanumerics (already stripped of
/// separators): country code and check digits move to the end, letters
/// count as 10..=35. Returns `None` on a non-alphanumeric byte.
fn mod97(chars: &[u8]) -> Option<u32> {
    let (head, tail) = (chars.get(..4)?, chars.get(4..)?);
    let mut rem = 0u32;
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            b'a'..=b'z' => u32::from(c - b'a') + 10,
            _ => return None,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    Some(rem)
}

/// ISO 7064 mod 97-10 as IBANs use it (the first four characters moved to
/// the end, letters 10..=35) equals 1: the `mod97` validator of custom rules.
pub(crate) fn mod97_is_one(chars: &[u8]) -> bool {
    mod97(chars) == Some(1)
}

/// True when `compact` (alphanumerics only, any case) is a valid IBAN: known
/// country, that country's length, check digits in 02..=98, mod-97 == 1.
pub fn is_valid_compact(compact: &[u8]) -> bool {
    let (Some(&c0), Some(&c1), Some(&d0), Some(&d1)) =
        (compact.first(), compact.get(1), compact.get(2), compact.get(3))
    else {
        return false;
    };
    if !(c0.is_ascii_alphabetic() && c1.is_ascii_alphabetic() && d0.is_ascii_digit() && d1.is_ascii_digit()) {
        return false;
    }
    let check = (d0 - b'0') * 10 + (d1 - b'0');
    if !(2..=98).contains(&check) || country_length([c0, c1]) != Some(compact.len()) {
        return false;
    }
    mod97(compact) == Some(1)
}

/// True when `s` is a valid IBAN, written compactly or grouped with spaces.
pub fn is_valid(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    compact.iter().all(u8::is_ascii_alphanumeric) && is_valid_compact(&compact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(LENGTHS.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn known_ibans() {
        assert!(is_valid("GB82WEST12345698765432"));
        assert!(is_valid("GB82 WEST 1234 5698 7654 32"));
        assert!(is_valid("gb82 west 1234 5698 7654 32"));
        assert!(is_valid("DE89370400440532013000"));
        assert!(is_valid("FR1420041010050500013M02606"));
        assert!(is_valid("NO9386011117947"));
        assert!(is_valid("MT84MALT011000012345MTLCAST001S"));
        assert!(!is_valid("GB82WEST12345698765433"));
        assert!(!is_valid("GB82WEST1234569876543"));
        assert!(!is_valid("XX82WEST12345698765432"));
        assert!(!is_valid(""));
        assert!(!is_valid("GB"));
    }
}
