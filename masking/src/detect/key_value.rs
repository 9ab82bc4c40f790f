//! Secrets named by their key: `key=value`, `key: value`, `"key":"value"`,
//! `<key>value</key>`, `--flag value` and `word 'value'`. The key is
//! classified ([`classify_key`]) and the value after it masked.

use memchr::memmem;

use super::scanner::{is_word, Scanner};
use super::spans::{AUX_POSTCODE, P_KEYED, P_NAME};
use super::Rule;
use crate::{kyc, Kind};

/// The explain-mode name of the rule behind a key class.
const fn key_rule(class: KeyClass) -> &'static str {
    match class {
        KeyClass::Password => "key:password",
        KeyClass::Secret => "key:secret",
        KeyClass::Token => "key:token",
        KeyClass::ApiKey => "key:api-key",
        KeyClass::Authorization => "key:authorization",
        KeyClass::Name => "key:name",
        KeyClass::Dob => "key:date-of-birth",
        KeyClass::Address | KeyClass::AddressBare => "key:address",
        KeyClass::Postcode => "key:postcode",
        KeyClass::NationalId => "key:national-id",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyClass {
    Password,
    Secret,
    Token,
    ApiKey,
    Authorization,
    Name,
    /// A date of birth: masked when the value is a valid date.
    Dob,
    /// An address line (also the bare key `address` when its value reads
    /// like a postal address).
    Address,
    /// The bare key `address`: also IP, e-mail or wallet addresses, so the
    /// value must have a space and a letter.
    AddressBare,
    /// A postcode or ZIP code: masked when it validates.
    Postcode,
    /// A national identity number key (`nino`, `ni_number`…).
    NationalId,
}

/// Classifies a key by its normalised form (ASCII letters and digits,
/// lower-cased) and its last word (split at `_`, `-`, `.` and camelCase).
pub(super) fn classify_key(key: &[u8]) -> Option<KeyClass> {
    let mut norm = [0u8; 64];
    let mut n = 0usize;
    let mut last_start = 0usize;
    let mut prev: u8 = 0;
    // Keep the tail of very long keys: suffixes decide.
    let key = key.get(key.len().saturating_sub(64)..).unwrap_or(key);
    for &c in key {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev.is_ascii_lowercase() {
                last_start = n;
            }
            if let Some(slot) = norm.get_mut(n) {
                *slot = c.to_ascii_lowercase();
                n += 1;
            }
        } else {
            last_start = n;
        }
        prev = c;
    }
    let w = norm.get(..n)?;
    let last = w.get(last_start..).unwrap_or(&[]);
    let &lastb = w.last()?;
    let &prevb = w.get(n.checked_sub(2)?)?;
    // One lookup rejects almost every key that is not a rule's.
    let pairs = KEY_PAIRS.get(usize::from(lastb)).copied().unwrap_or(0);
    if prevb >= 128 || pairs & (1u128 << prevb) == 0 || !w.iter().any(u8::is_ascii_alphabetic) {
        return None;
    }
    KEY_RULES
        .iter()
        .filter(|(pat, _, _)| pat.last() == Some(&lastb))
        .find(|(pat, how, _)| match how {
            KeyMatch::Suffix => w.ends_with(pat),
            KeyMatch::Exact => w == *pat,
            KeyMatch::LastWord => last == *pat,
        })
        .map(|&(_, _, class)| class)
}

/// How a key rule's pattern is compared with the normalised key.
#[derive(Clone, Copy)]
enum KeyMatch {
    /// The whole key ends with the pattern (`client_secret`, `X-Auth-Token`).
    Suffix,
    /// The whole key is the pattern.
    Exact,
    /// The key's last word is the pattern (`user_pin`, but not `shipping`).
    LastWord,
}

/// Key rules, first match wins.
const KEY_RULES: &[(&[u8], KeyMatch, KeyClass)] = {
    use KeyClass::*;
    use KeyMatch::*;
    &[
        (b"authorization", Exact, Authorization),
        (b"proxyauthorization", Exact, Authorization),
        (b"xauthorization", Exact, Authorization),
        (b"password", Suffix, Password),
        (b"passwd", Suffix, Password),
        (b"passphrase", Suffix, Password),
        (b"userpass", Suffix, Password),
        (b"passwordconfirmation", Suffix, Password),
        (b"passwordconfirm", Suffix, Password),
        (b"passwordrepeat", Suffix, Password),
        (b"pwd", LastWord, Password),
        (b"pw", LastWord, Password),
        (b"pass", LastWord, Password),
        (b"pswd", LastWord, Password),
        (b"pword", LastWord, Password),
        (b"apikey", Suffix, ApiKey),
        (b"accesskey", Suffix, ApiKey),
        (b"subscriptionkey", Suffix, ApiKey),
        (b"accountkey", Suffix, ApiKey),
        (b"appkey", Suffix, ApiKey),
        (b"clientkey", Suffix, ApiKey),
        (b"authkey", Suffix, ApiKey),
        (b"token", Suffix, Token),
        (b"bearer", Suffix, Token),
        (b"jwt", Suffix, Token),
        (b"secret", Suffix, Secret),
        (b"privatekey", Suffix, Secret),
        (b"secretkey", Suffix, Secret),
        (b"signingkey", Suffix, Secret),
        (b"encryptionkey", Suffix, Secret),
        (b"masterkey", Suffix, Secret),
        (b"cvv", Suffix, Secret),
        (b"cvv2", Suffix, Secret),
        (b"cvc", Suffix, Secret),
        (b"cvc2", Suffix, Secret),
        (b"securitycode", Suffix, Secret),
        (b"pincode", Suffix, Secret),
        (b"passcode", Suffix, Secret),
        (b"credential", Suffix, Secret),
        (b"credentials", Suffix, Secret),
        (b"mfacode", Suffix, Secret),
        (b"otpcode", Suffix, Secret),
        (b"totp", Suffix, Secret),
        (b"pin", LastWord, Secret),
        (b"csc", LastWord, Secret),
        (b"cvn", LastWord, Secret),
        (b"otp", LastWord, Secret),
        (b"auth", LastWord, Secret),
        (b"fullname", Exact, Name),
        (b"firstname", Exact, Name),
        (b"lastname", Exact, Name),
        (b"surname", Exact, Name),
        (b"givenname", Exact, Name),
        (b"familyname", Exact, Name),
        (b"forename", Exact, Name),
        (b"forenames", Exact, Name),
        (b"middlename", Exact, Name),
        (b"cardholder", Exact, Name),
        (b"cardholdername", Exact, Name),
        (b"holdername", Exact, Name),
        (b"accountholder", Exact, Name),
        (b"accountholdername", Exact, Name),
        (b"nameoncard", Exact, Name),
        (b"customername", Exact, Name),
        (b"payername", Exact, Name),
        (b"payeename", Exact, Name),
        (b"beneficiaryname", Exact, Name),
        (b"debtorname", Exact, Name),
        (b"creditorname", Exact, Name),
        (b"maidenname", Exact, Name),
        (b"middlenames", Exact, Name),
        (b"preferredname", Exact, Name),
        (b"legalname", Exact, Name),
        (b"dob", LastWord, Dob),
        (b"dateofbirth", Suffix, Dob),
        (b"birthdate", Suffix, Dob),
        (b"birthday", Suffix, Dob),
        (b"birthdt", Suffix, Dob),
        (b"addressline", Suffix, Address),
        (b"addressline1", Suffix, Address),
        (b"addressline2", Suffix, Address),
        (b"addressline3", Suffix, Address),
        (b"addressline4", Suffix, Address),
        (b"streetaddress", Suffix, Address),
        (b"street", LastWord, Address),
        (b"streetname", Suffix, Address),
        (b"homeaddress", Suffix, Address),
        (b"postaladdress", Suffix, Address),
        (b"residentialaddress", Suffix, Address),
        (b"billingaddress", Suffix, Address),
        (b"shippingaddress", Suffix, Address),
        (b"mailingaddress", Suffix, Address),
        (b"deliveryaddress", Suffix, Address),
        (b"address", Exact, AddressBare),
        (b"postcode", Suffix, Postcode),
        (b"postalcode", Suffix, Postcode),
        (b"zipcode", Suffix, Postcode),
        (b"zip", LastWord, Postcode),
        (b"nino", Suffix, NationalId),
        (b"ninumber", Suffix, NationalId),
        (b"nationalinsurance", Suffix, NationalId),
        (b"nationalinsurancenumber", Suffix, NationalId),
        (b"nationalinsuranceno", Suffix, NationalId),
    ]
};

/// Last bytes (either case) of every key that [`classify_key`] accepts.
#[allow(clippy::indexing_slicing)] // evaluated at compile time
static KEY_LAST: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < KEY_RULES.len() {
        let pat = KEY_RULES[i].0;
        let c = pat[pat.len() - 1];
        t[c as usize] = true;
        t[c.to_ascii_uppercase() as usize] = true;
        i += 1;
    }
    t
};

/// For each last byte of a rule's pattern, the set of bytes (as bits) that
/// come just before it.
#[allow(clippy::indexing_slicing)] // evaluated at compile time
static KEY_PAIRS: [u128; 128] = {
    let mut t = [0u128; 128];
    let mut i = 0;
    while i < KEY_RULES.len() {
        let pat = KEY_RULES[i].0;
        t[pat[pat.len() - 1] as usize] |= 1u128 << pat[pat.len() - 2];
        i += 1;
    }
    t
};

const fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')
}

/// Bytes that end a bare (unquoted) value.
const fn ends_bare_value(c: u8) -> bool {
    c.is_ascii_whitespace()
        || matches!(
            c,
            b'&' | b';' | b',' | b'"' | b'\'' | b'}' | b']' | b')' | b'<' | b'>' | b'|' | b'\\'
        )
}

/// Schemes skipped in `Authorization:` values (the credential after them is
/// masked).
const AUTH_SCHEMES: &[&[u8]] = &[
    b"bearer",
    b"basic",
    b"token",
    b"jwt",
    b"digest",
    b"negotiate",
    b"ntlm",
    b"apikey",
    b"api-key",
    b"sso-key",
    b"hmac",
    b"key",
    b"otp",
];

impl Scanner<'_> {
    pub(super) fn key_value(&mut self, p: usize) -> usize {
        let sep = self.at(p);
        if sep == b':' && self.starts_with(p + 1, b"//") {
            return p + 1;
        }
        // The key, backwards: optional spaces, optional closing quote
        // (possibly escaped), then key characters.
        let mut k = p;
        while k > 0 && k + 4 > p && matches!(self.at(k - 1), b' ' | b'\t') {
            k -= 1;
        }
        if matches!(self.before(k), b'"' | b'\'') {
            k -= 1;
            if self.before(k) == b'\\' {
                k -= 1;
            }
        }
        let key_end = k;
        if !KEY_LAST
            .get(usize::from(self.before(key_end)))
            .copied()
            .unwrap_or(false)
        {
            return p + 1;
        }
        let lo = p.saturating_sub(80);
        while k > lo && is_key_char(self.at(k - 1)) {
            k -= 1;
        }
        let Some(class) = self.b.get(k..key_end).and_then(classify_key) else {
            return p + 1;
        };
        // The value.
        let mut v = p + 1;
        if sep == b'=' && self.at(v) == b'>' {
            v += 1;
        }
        let mut sp = 0;
        while matches!(self.at(v), b' ' | b'\t') && sp < 8 {
            v += 1;
            sp += 1;
        }
        let (vs, ve, after) = match self.at(v) {
            q @ (b'"' | b'\'') => {
                let vs = v + 1;
                let mut e = vs;
                loop {
                    let c = self.at(e);
                    if e >= self.b.len() || c == b'\n' {
                        break;
                    }
                    if c == b'\\' {
                        // An escaped closing quote ends a value inside an
                        // escaped JSON string; other escapes are skipped.
                        if self.at(e + 1) == q && q == b'"' && self.at(vs.wrapping_sub(2)) == b'\\' {
                            break;
                        }
                        e += 2;
                        continue;
                    }
                    if c == q {
                        break;
                    }
                    e += 1;
                }
                let e = e.min(self.b.len());
                let after = if self.at(e) == q { e + 1 } else { e };
                (vs, e, after)
            }
            b'\\' if self.at(v + 1) == b'"' => {
                // {\"password\":\"value\"}
                let vs = v + 2;
                let e = memmem::find(self.b.get(vs..).unwrap_or(&[]), b"\\\"").map_or(self.b.len(), |x| vs + x);
                (vs, e, (e + 2).min(self.b.len()))
            }
            b'{' | b'[' => {
                if !self.is_redacted(v) {
                    return p + 1;
                }
                let e = self.bare_end(v);
                (v, e, e)
            }
            _ => {
                let e = self.bare_end(v);
                (v, e, e)
            }
        };
        self.keyed_value(p, class, vs, ve, after)
    }

    /// `<key>value</key>`: the key must directly follow `<`; the value runs
    /// to the next `<`.
    pub(super) fn xml_value(&mut self, p: usize) -> usize {
        let lo = p.saturating_sub(80);
        let mut k = p;
        while k > lo && (is_key_char(self.at(k - 1)) || self.at(k - 1) == b':') {
            k -= 1;
        }
        if k == p || self.before(k) != b'<' {
            return p + 1;
        }
        let Some(class) = self.b.get(k..p).and_then(classify_key) else {
            return p + 1;
        };
        let vs = p + 1;
        let ve = memchr::memchr2(b'<', b'\n', self.b.get(vs..).unwrap_or(&[])).map_or(self.b.len(), |x| vs + x);
        self.keyed_value(p, class, vs, ve, ve)
    }

    /// Records the value `vs..ve` of a key of class `class` (separator at
    /// `p`) and returns where scanning resumes.
    fn keyed_value(&mut self, p: usize, class: KeyClass, vs: usize, ve: usize, after: usize) -> usize {
        let kind_for_class = match class {
            KeyClass::Password => Kind::Password,
            KeyClass::Secret => Kind::Secret,
            KeyClass::Token | KeyClass::Authorization => Kind::BearerToken,
            KeyClass::ApiKey => Kind::ApiKey,
            KeyClass::Name => Kind::Name,
            KeyClass::Dob => Kind::DateOfBirth,
            KeyClass::Address | KeyClass::AddressBare | KeyClass::Postcode => Kind::Address,
            KeyClass::NationalId => Kind::NationalId,
        };
        let Some(value) = self.b.get(vs..ve) else {
            return p + 1;
        };
        if value.is_empty()
            || self.is_redacted(vs)
            || matches!(
                value,
                b"null" | b"true" | b"false" | b"None" | b"nil" | b"undefined" | b"NULL"
            )
        {
            return after.max(p + 1);
        }
        if let Some(r) = self.personal_value(p, class, vs, ve, after) {
            return r;
        }
        // For an Authorization value, skip the scheme word; a bare value
        // then runs to the end of the credential.
        let (mut vs, mut ve, mut after) = (vs, ve, after);
        if class == KeyClass::Authorization {
            // No scheme is longer than 9 bytes: a longer run is not one,
            // and it is not read further (each value is read once).
            let mut w = vs;
            while w - vs <= 10 && (self.at(w).is_ascii_alphanumeric() || self.at(w) == b'-') {
                w += 1;
            }
            let scheme = self.b.get(vs..w).unwrap_or(&[]);
            if self.at(w) == b' ' && AUTH_SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
                while self.at(w) == b' ' {
                    w += 1;
                }
                if self.is_redacted(w) {
                    return w.max(p + 1);
                }
                if w >= ve {
                    // Bare value: the credential is the next bare run.
                    ve = self.bare_end(w);
                    after = ve;
                    if ve == w {
                        return w.max(p + 1);
                    }
                }
                vs = w;
            }
        }
        // Refine the kind by the value's own shape.
        let kind = if self.starts_with(vs, b"eyJ") && self.jwt(vs) == Some(ve) {
            Kind::Jwt
        } else if self.api_key(vs) == Some(ve) {
            Kind::ApiKey
        } else {
            kind_for_class
        };
        if !self.on(kind) {
            return p + 1;
        }
        let prio = if kind == Kind::Name { P_NAME } else { P_KEYED };
        self.push_rule(vs, ve, kind, prio, 0, Rule::Builtin(key_rule(class)));
        // Scan the value too: a spaced IBAN or card number after `pin = `
        // runs past the bare value, and the union is then masked whole.
        let _ = after;
        vs.max(p + 1)
    }

    /// The value of a KYC key (date of birth, address, postcode, national
    /// id): validated, recorded, and where scanning resumes; `None` for the
    /// other classes.
    fn personal_value(&mut self, p: usize, class: KeyClass, vs: usize, ve: usize, after: usize) -> Option<usize> {
        let quoted = matches!(self.before(vs), b'"' | b'\'' | b'>');
        let value = self.b.get(vs..ve).unwrap_or(&[]);
        let resume = vs.max(p + 1);
        let _ = after;
        match class {
            KeyClass::Dob => {
                if kyc::date_len(value).is_some() {
                    self.push_rule(
                        vs,
                        ve,
                        Kind::DateOfBirth,
                        P_KEYED,
                        0,
                        Rule::Builtin("key:date-of-birth"),
                    );
                    return Some(ve.max(p + 1));
                }
                // A bare `dob=12 April 1985`: the date runs past the blank.
                if !quoted {
                    if let Some(l) = kyc::date_len(self.b.get(vs..).unwrap_or(&[])) {
                        self.push_rule(
                            vs,
                            vs + l,
                            Kind::DateOfBirth,
                            P_KEYED,
                            0,
                            Rule::Builtin("key:date-of-birth"),
                        );
                        return Some(vs + l);
                    }
                }
                Some(resume)
            }
            KeyClass::Postcode => {
                let mut e = ve;
                // A bare `postcode=SW1A 1AA`: the inward code after the blank.
                if !quoted && self.at(e) == b' ' {
                    let w = self.word_end(e + 1);
                    if w - (e + 1) == 3 {
                        e = w;
                    }
                }
                let v = self.b.get(vs..e).unwrap_or(&[]);
                let us_zip = (v.len() == 5 && v.iter().all(u8::is_ascii_digit))
                    || (v.len() == 10
                        && v.get(5) == Some(&b'-')
                        && v.iter().enumerate().all(|(k, c)| k == 5 || c.is_ascii_digit()));
                if kyc::is_uk_postcode(v) {
                    self.push_rule(
                        vs,
                        e,
                        Kind::Address,
                        P_KEYED,
                        AUX_POSTCODE,
                        Rule::Builtin("key:postcode"),
                    );
                } else if us_zip {
                    self.push_rule(vs, e, Kind::Address, P_KEYED, 0, Rule::Builtin("key:postcode"));
                } else {
                    return Some(resume);
                }
                Some(e.max(p + 1))
            }
            KeyClass::Address | KeyClass::AddressBare => {
                let mut e = ve;
                if !quoted {
                    // A bare address runs past blanks and commas to the end of
                    // the field: the next delimiter, or the blank before the
                    // next `key=`.
                    let mut last_blank = None;
                    let mut j = vs;
                    while j - vs < 256 {
                        match self.at(j) {
                            0 | b'\n' | b'\r' | b'&' | b';' | b'|' | b'"' | b'<' | b'}' | b']' | b'\t' => break,
                            b'=' => {
                                if let Some(lb) = last_blank {
                                    j = lb;
                                }
                                break;
                            }
                            b' ' => last_blank = Some(j),
                            _ => {}
                        }
                        j += 1;
                    }
                    while j > vs && matches!(self.at(j - 1), b' ' | b',') {
                        j -= 1;
                    }
                    // Not `ve`: a bare run can reach the end of the text, and
                    // each address key reads at most 256 bytes.
                    e = j;
                }
                let v = self.b.get(vs..e).unwrap_or(&[]);
                let postal = v.contains(&b' ') && v.iter().any(u8::is_ascii_alphabetic) && !v.contains(&b'@');
                if class == KeyClass::AddressBare && !postal {
                    return Some(resume);
                }
                self.push_rule(vs, e, Kind::Address, P_KEYED, 0, Rule::Builtin("key:address"));
                Some(e.max(p + 1))
            }
            KeyClass::NationalId => {
                self.push_rule(vs, ve, Kind::NationalId, P_KEYED, 0, Rule::Builtin("key:national-id"));
                Some(ve.max(p + 1))
            }
            _ => None,
        }
    }

    fn bare_end(&self, v: usize) -> usize {
        self.bare.end(v, |v| {
            let mut e = v;
            while e < self.b.len() && !ends_bare_value(self.at(e)) {
                e += 1;
            }
            e
        })
    }

    /// `--password VALUE` / `--api-key 'VALUE'` (a command line in a log):
    /// the flag name is classified like a key; `--flag=value` goes through
    /// key = value.
    pub(super) fn cli_flag(&mut self, i: usize) -> Option<usize> {
        if !self.starts_with(i, b"--") || is_word(self.before(i)) || self.before(i) == b'-' {
            return None;
        }
        let ks = i + 2;
        let mut ke = ks;
        while self.at(ke).is_ascii_alphanumeric() || matches!(self.at(ke), b'-' | b'_') {
            ke += 1;
        }
        if ke == ks || self.at(ke) != b' ' {
            return None;
        }
        let class = self.b.get(ks..ke).and_then(classify_key)?;
        if class == KeyClass::Name {
            return None;
        }
        self.spaced_value(ke, class)
    }

    /// The value after a secret key word and one space, if it is quoted
    /// (`with password 'Tr0ub4dor&3'`) or follows a flag: quoted runs to the
    /// closing quote on the line, bare to the end of the bare run. A value
    /// that starts with `-` is the next flag, not a value.
    pub(super) fn spaced_value(&mut self, sp: usize, class: KeyClass) -> Option<usize> {
        let v = sp + 1;
        match self.at(v) {
            q @ (b'"' | b'\'') => {
                let vs = v + 1;
                let rest = self.b.get(vs..)?;
                let len = rest.iter().position(|&c| c == q || c == b'\n')?;
                if rest.get(len) != Some(&q) {
                    return None;
                }
                Some(self.keyed_value(sp, class, vs, vs + len, vs + len + 1))
            }
            0 | b'-' | b' ' | b'\t' | b'\n' | b'\r' => None,
            _ => {
                let e = self.bare_end(v);
                (e > v).then(|| self.keyed_value(sp, class, v, e, e))
            }
        }
    }
}
