//! The Luhn (mod 10) check used by payment card numbers (ISO/IEC 7812-1).

/// Weighted Luhn sum of ASCII digits, the rightmost digit having weight 1.
/// Non-digit bytes are skipped, so grouped numbers (`4111 1111…`) work.
fn luhn_sum(digits: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut double = false;
    for &c in digits.iter().rev() {
        if !c.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(c - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum
}

/// True when the ASCII digits of `s` (other bytes ignored) pass the Luhn
/// check. An input without digits does not pass.
pub fn is_valid(s: &[u8]) -> bool {
    s.iter().any(u8::is_ascii_digit) && luhn_sum(s) % 10 == 0
}

/// The digit that must replace the digit at index `pos` of `digits` (ASCII
/// digits only, no separators) for the whole string to pass Luhn. Each
/// position has exactly one such digit, because doubling-and-folding is a
/// permutation of 0..=9. Returns `None` if `pos` is out of range or the
/// string holds a non-digit.
pub fn completing_digit(digits: &[u8], pos: usize) -> Option<u8> {
    if pos >= digits.len() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut trial = digits.to_vec();
    (b'0'..=b'9').find(|&d| {
        if let Some(slot) = trial.get_mut(pos) {
            *slot = d;
        }
        luhn_sum(&trial) % 10 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers() {
        assert!(is_valid(b"4111111111111111"));
        assert!(is_valid(b"4111 1111 1111 1111"));
        assert!(is_valid(b"5500-0000-0000-0004"));
        assert!(is_valid(b"378282246310005"));
        assert!(is_valid(b"6011111111111117"));
        assert!(!is_valid(b"4111111111111112"));
        assert!(!is_valid(b"7907366258517812"));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"----"));
    }

    #[test]
    fn completing_digit_is_unique_and_right() {
        let pan = b"4111111111111111".to_vec();
        for pos in 0..pan.len() {
            let d = completing_digit(&pan, pos);
            assert_eq!(d, pan.get(pos).copied());
        }
        assert_eq!(completing_digit(b"12a4", 0), None);
        assert_eq!(completing_digit(b"1234", 9), None);
    }
}
