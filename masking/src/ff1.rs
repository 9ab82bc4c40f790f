//! FF1 format-preserving encryption (NIST SP 800-38G, section 5.1) over
//! AES-256, for radixes 2..=36.
//!
//! Numeral strings are slices of numerals (`0..radix`), not characters; the
//! callers map digits to numerals. Arithmetic is done in `u128`, which bounds
//! the half-length `v` so that `radix^v <= 2^120` (for radix 10: strings of up
//! to 72 numerals), far beyond any PAN, account number or phone number.
//!
//! SP 800-38G Rev. 1 requires `radix^minlen >= 1,000,000`; shorter inputs
//! are refused with [`Ff1Error::DomainTooSmall`].

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes256, Block};
use zeroize::Zeroizing;

/// The smallest domain SP 800-38G Rev. 1 allows: `radix^len >= 1,000,000`.
pub const MIN_DOMAIN: u128 = 1_000_000;

/// The largest `radix^v` this implementation handles in `u128` arithmetic.
const MAX_HALF_DOMAIN: u128 = 1 << 120;

/// Why FF1 refused its input. Messages never contain numerals or keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ff1Error {
    /// The radix is outside 2..=36.
    #[error("radix must be between 2 and 36")]
    InvalidRadix,
    /// A numeral is not below the radix.
    #[error("numeral out of range for the radix")]
    InvalidNumeral,
    /// `radix^len < 1,000,000` (or fewer than two numerals).
    #[error("domain too small: radix^len must be at least 1,000,000")]
    DomainTooSmall,
    /// The string is too long for this implementation.
    #[error("numeral string too long")]
    DomainTooLarge,
    /// The tweak is longer than 2^32 - 1 bytes.
    #[error("tweak too long")]
    TweakTooLong,
}

/// An FF1 cipher: AES-256 key schedule (zeroized on drop by the `aes`
/// crate's `zeroize` feature) and radix. No `Debug`: it holds key material.
pub struct Ff1 {
    aes: Aes256,
    radix: u32,
}

impl Ff1 {
    /// A cipher for `radix` (2..=36) under a 32-byte AES key.
    pub fn new(key: &[u8; 32], radix: u32) -> Result<Self, Ff1Error> {
        if !(2..=36).contains(&radix) {
            return Err(Ff1Error::InvalidRadix);
        }
        Ok(Ff1 {
            aes: Aes256::new(key.into()),
            radix,
        })
    }

    /// FF1.Encrypt(K, T, X).
    pub fn encrypt(&self, tweak: &[u8], x: &[u8]) -> Result<Zeroizing<Vec<u8>>, Ff1Error> {
        self.run(tweak, x, true)
    }

    /// FF1.Decrypt(K, T, Y).
    pub fn decrypt(&self, tweak: &[u8], y: &[u8]) -> Result<Zeroizing<Vec<u8>>, Ff1Error> {
        self.run(tweak, y, false)
    }

    fn ciph(&self, block: [u8; 16]) -> [u8; 16] {
        let mut b = Block::from(block);
        self.aes.encrypt_block(&mut b);
        b.into()
    }

    /// `radix^m`, or `None` past the supported range.
    fn pow(&self, m: usize) -> Option<u128> {
        let mut acc: u128 = 1;
        for _ in 0..m {
            acc = acc.checked_mul(u128::from(self.radix))?;
            if acc > MAX_HALF_DOMAIN {
                return None;
            }
        }
        Some(acc)
    }

    /// NUM_radix(X): the numeral string read as a base-`radix` number.
    fn num(&self, x: &[u8]) -> u128 {
        x.iter()
            .fold(0u128, |acc, &d| acc * u128::from(self.radix) + u128::from(d))
    }

    /// STR^m_radix(v): `v` as exactly `m` base-`radix` numerals.
    fn str_m(&self, mut v: u128, m: usize) -> Zeroizing<Vec<u8>> {
        let r = u128::from(self.radix);
        let mut out = Zeroizing::new(vec![0u8; m]);
        for slot in out.iter_mut().rev() {
            // The remainder is below the radix (<= 36), so it fits in a u8.
            *slot = u8::try_from(v % r).unwrap_or(0);
            v /= r;
        }
        out
    }

    fn run(&self, tweak: &[u8], x: &[u8], encrypt: bool) -> Result<Zeroizing<Vec<u8>>, Ff1Error> {
        let n = x.len();
        if x.iter().any(|&d| u32::from(d) >= self.radix) {
            return Err(Ff1Error::InvalidNumeral);
        }
        // Step 1: split.
        let u = n / 2;
        let v = n - u;
        let t = u32::try_from(tweak.len()).map_err(|_| Ff1Error::TweakTooLong)?;
        let n32 = u32::try_from(n).map_err(|_| Ff1Error::DomainTooLarge)?;
        let pow_u = self.pow(u).ok_or(Ff1Error::DomainTooLarge)?;
        let pow_v = self.pow(v).ok_or(Ff1Error::DomainTooLarge)?;
        if n < 2 || pow_u.saturating_mul(pow_v) < MIN_DOMAIN {
            return Err(Ff1Error::DomainTooSmall);
        }
        // Step 3: b = ceil(ceil(v * log2(radix)) / 8) = byte length of radix^v - 1.
        let bits = 128 - (pow_v - 1).leading_zeros() as usize;
        let b = bits.div_ceil(8);
        // Step 4: d = 4 * ceil(b / 4) + 4.
        let d = 4 * b.div_ceil(4) + 4;

        // Step 5: P = [1, 2, 1] || [radix]^3 || [10] || [u mod 256] || [n]^4 || [t]^4.
        let [_, r0, r1, r2] = self.radix.to_be_bytes();
        let [n0, n1, n2, n3] = n32.to_be_bytes();
        let [t0, t1, t2, t3] = t.to_be_bytes();
        let p = [1, 2, 1, r0, r1, r2, 10, (u % 256) as u8, n0, n1, n2, n3, t0, t1, t2, t3];
        // CBC-MAC state after P, shared by all ten rounds.
        let after_p = self.ciph(p);
        // Q = T || [0]^((-t-b-1) mod 16) || [i] || [NUM(B)]^b.
        let pad = (16 - (tweak.len() + b + 1) % 16) % 16;
        let mut q = Zeroizing::new(Vec::with_capacity(tweak.len() + pad + 1 + b));

        let (xa, xb) = x.split_at(u);
        let (mut a, mut bb) = (Zeroizing::new(xa.to_vec()), Zeroizing::new(xb.to_vec()));
        for step in 0..10u8 {
            let i = if encrypt { step } else { 9 - step };
            // The half fed to the round function: B when encrypting, A when decrypting.
            let fed: &[u8] = if encrypt { &bb } else { &a };
            let fed_num = self.num(fed).to_be_bytes();
            q.clear();
            q.extend_from_slice(tweak);
            q.resize(tweak.len() + pad, 0);
            q.push(i);
            q.extend_from_slice(fed_num.get(16 - b..).unwrap_or(&[]));
            // R = PRF(P || Q): CBC-MAC with a zero IV.
            let mut r = after_p;
            for chunk in q.chunks(16) {
                let mut blk = r;
                for (o, c) in blk.iter_mut().zip(chunk) {
                    *o ^= c;
                }
                r = self.ciph(blk);
            }
            // S = first d bytes of R || CIPH(R xor [1]^16) || CIPH(R xor [2]^16) ...
            let mut s = Zeroizing::new(Vec::with_capacity(d + 16));
            s.extend_from_slice(&r);
            let mut j: u128 = 1;
            while s.len() < d {
                let mut blk = r;
                for (o, c) in blk.iter_mut().zip(j.to_be_bytes()) {
                    *o ^= c;
                }
                s.extend_from_slice(&self.ciph(blk));
                j += 1;
            }
            let m = if i % 2 == 0 { u } else { v };
            let modulus = if i % 2 == 0 { pow_u } else { pow_v };
            // y = NUM(S[..d]) mod radix^m (the reduction commutes with the
            // modular addition below; radix^m <= 2^120 keeps acc * 256 in range).
            let y = s
                .get(..d)
                .unwrap_or(&[])
                .iter()
                .fold(0u128, |acc, &byte| (acc * 256 + u128::from(byte)) % modulus);
            if encrypt {
                // c = (NUM(A) + y) mod radix^m; A = B; B = C.
                let c = (self.num(&a) + y) % modulus;
                let next = self.str_m(c, m);
                a = std::mem::replace(&mut bb, next);
            } else {
                // c = (NUM(B) - y) mod radix^m; B = A; A = C.
                let c = (self.num(&bb) + modulus - y) % modulus;
                let next = self.str_m(c, m);
                bb = std::mem::replace(&mut a, next);
            }
        }
        let mut out = Zeroizing::new(Vec::with_capacity(n));
        out.extend_from_slice(&a);
        out.extend_from_slice(&bb);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn numerals(s: &str) -> Vec<u8> {
        s.chars().map(|c| c.to_digit(36).unwrap() as u8).collect()
    }

    fn chars(x: &[u8]) -> String {
        x.iter().map(|&d| char::from_digit(u32::from(d), 36).unwrap()).collect()
    }

    const KEY256: &str = "2B7E151628AED2A6ABF7158809CF4F3CEF4359D8D580AA4F7F036D6F04FC6A94";

    /// NIST SP 800-38G FF1 samples 7, 8 and 9 (FF1-AES256).
    #[test]
    fn nist_samples_aes256() {
        let key: [u8; 32] = hex(KEY256).try_into().unwrap();
        let cases = [
            (10, "", "0123456789", "6657667009"),
            (10, "39383736353433323130", "0123456789", "1001623463"),
            (
                36,
                "3737373770717273373737",
                "0123456789abcdefghi",
                "xs8a0azh2avyalyzuwd",
            ),
        ];
        for (radix, tweak, pt, ct) in cases {
            let f = Ff1::new(&key, radix).unwrap();
            let tweak = hex(tweak);
            let got = f.encrypt(&tweak, &numerals(pt)).unwrap();
            assert_eq!(chars(&got), ct);
            let back = f.decrypt(&tweak, &got).unwrap();
            assert_eq!(chars(&back), pt);
        }
    }

    #[test]
    fn domain_limits() {
        let key = [7u8; 32];
        let f = Ff1::new(&key, 10).unwrap();
        assert_eq!(f.encrypt(b"", &[1, 2, 3, 4, 5]).unwrap_err(), Ff1Error::DomainTooSmall);
        assert!(f.encrypt(b"", &[1, 2, 3, 4, 5, 6]).is_ok());
        assert_eq!(f.encrypt(b"", &[]).unwrap_err(), Ff1Error::DomainTooSmall);
        assert_eq!(
            f.encrypt(b"", &[10, 1, 2, 3, 4, 5]).unwrap_err(),
            Ff1Error::InvalidNumeral
        );
        assert!(f.encrypt(b"", &[9u8; 72]).is_ok());
        assert_eq!(f.encrypt(b"", &[9u8; 80]).unwrap_err(), Ff1Error::DomainTooLarge);
        let bin = Ff1::new(&key, 2).unwrap();
        assert_eq!(bin.encrypt(b"", &[1u8; 19]).unwrap_err(), Ff1Error::DomainTooSmall);
        assert!(bin.encrypt(b"", &[1u8; 20]).is_ok());
        assert!(Ff1::new(&key, 37).is_err());
        assert!(Ff1::new(&key, 1).is_err());
    }

    #[test]
    fn round_trips_many_lengths_and_radixes() {
        let key = [42u8; 32];
        for radix in [2u32, 10, 16, 26, 36] {
            let f = Ff1::new(&key, radix).unwrap();
            for n in 2..40usize {
                let x: Vec<u8> = (0..n).map(|i| ((i * 7 + 3) % radix as usize) as u8).collect();
                match f.encrypt(b"tweak", &x) {
                    Ok(y) => {
                        assert_eq!(y.len(), n);
                        assert!(y.iter().all(|&d| u32::from(d) < radix));
                        assert_eq!(&*f.decrypt(b"tweak", &y).unwrap(), &x);
                        let other = f.encrypt(b"tweak2", &x).unwrap();
                        assert_eq!(&*f.decrypt(b"tweak2", &other).unwrap(), &x);
                    }
                    Err(e) => assert_eq!(e, Ff1Error::DomainTooSmall),
                }
            }
        }
    }
}
