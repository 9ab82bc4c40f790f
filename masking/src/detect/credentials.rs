//! Secrets recognised by their shape, wherever they are: JWTs, well-known
//! API keys, `Bearer` credentials, webhook URLs, passwords in URLs and PEM
//! private key blocks.

use memchr::memmem;

use super::scanner::{is_b64url, is_word, Scanner};
use super::spans::{P_KEYED, P_SHAPE};
use super::Rule;
use crate::Kind;

/// Whether standard base64 `t` decodes to `user:password`: printable ASCII
/// with a colon somewhere (the user may be empty, as with API tokens).
fn decodes_to_userpass(t: &[u8]) -> bool {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let body: &[u8] = {
        let mut e = t.len();
        while e > 0 && t.get(e - 1) == Some(&b'=') {
            e -= 1;
        }
        t.get(..e).unwrap_or(&[])
    };
    if t.len() - body.len() > 2 || body.contains(&b'=') {
        return false;
    }
    let mut colon = false;
    let mut acc = 0u32;
    let mut bits = 0u32;
    for &c in body {
        let Some(v) = val(c) else {
            return false;
        };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            let byte = ((acc >> bits) & 0xff) as u8;
            if !(byte.is_ascii_graphic() || byte == b' ') {
                return false;
            }
            colon |= byte == b':';
        }
    }
    colon
}

#[derive(Clone, Copy)]
pub(super) enum Charset {
    /// `[A-Za-z0-9]`
    Alnum,
    /// `[A-Za-z0-9_]`
    Word,
    /// `[A-Za-z0-9_-]`
    B64Url,
    /// `[A-Z0-9]`
    Upper,
    /// `[A-Za-z0-9-]`
    AlnumDash,
    /// `[A-Za-z0-9_.-]`
    Dotted,
}

impl Charset {
    /// Index of this charset's [`RunMemo`](super::scanner::RunMemo) in [`Scanner::runs`].
    fn index(self) -> usize {
        match self {
            Charset::Alnum => 0,
            Charset::Word => 1,
            Charset::B64Url => 2,
            Charset::Upper => 3,
            Charset::AlnumDash => 4,
            Charset::Dotted => 5,
        }
    }

    fn accepts(self, c: u8) -> bool {
        match self {
            Charset::Alnum => c.is_ascii_alphanumeric(),
            Charset::Word => is_word(c),
            Charset::B64Url => is_b64url(c),
            Charset::Upper => c.is_ascii_uppercase() || c.is_ascii_digit(),
            Charset::AlnumDash => c.is_ascii_alphanumeric() || c == b'-',
            Charset::Dotted => is_b64url(c) || c == b'.',
        }
    }
}

/// (prefix, body charset, minimum body length, maximum body length).
const API_KEYS: &[(&[u8], Charset, usize, usize)] = &[
    (b"sk_live_", Charset::Word, 10, 256),
    (b"sk_test_", Charset::Word, 10, 256),
    (b"rk_live_", Charset::Word, 10, 256),
    (b"rk_test_", Charset::Word, 10, 256),
    (b"pk_live_", Charset::Word, 10, 256),
    (b"pk_test_", Charset::Word, 10, 256),
    (b"whsec_", Charset::Word, 10, 256),
    (b"rzp_live_", Charset::Alnum, 10, 64),
    (b"rzp_test_", Charset::Alnum, 10, 64),
    (b"AKIA", Charset::Upper, 16, 16),
    (b"ASIA", Charset::Upper, 16, 16),
    (b"ghp_", Charset::Alnum, 30, 255),
    (b"gho_", Charset::Alnum, 30, 255),
    (b"ghu_", Charset::Alnum, 30, 255),
    (b"ghs_", Charset::Alnum, 30, 255),
    (b"ghr_", Charset::Alnum, 30, 255),
    (b"github_pat_", Charset::Word, 30, 255),
    (b"xoxb-", Charset::AlnumDash, 10, 255),
    (b"xoxp-", Charset::AlnumDash, 10, 255),
    (b"xoxa-", Charset::AlnumDash, 10, 255),
    (b"xoxr-", Charset::AlnumDash, 10, 255),
    (b"xoxs-", Charset::AlnumDash, 10, 255),
    (b"xoxe-", Charset::AlnumDash, 10, 255),
    (b"xapp-", Charset::AlnumDash, 10, 255),
    (b"AIza", Charset::B64Url, 30, 64),
    (b"glpat-", Charset::B64Url, 20, 255),
    (b"glptt-", Charset::B64Url, 20, 255),
    (b"gldt-", Charset::B64Url, 20, 255),
    (b"sk-", Charset::B64Url, 20, 255),
    (b"shpat_", Charset::Alnum, 32, 64),
    (b"shpss_", Charset::Alnum, 32, 64),
    (b"shpca_", Charset::Alnum, 32, 64),
    (b"shppa_", Charset::Alnum, 32, 64),
    (b"npm_", Charset::Alnum, 30, 64),
    (b"pypi-", Charset::B64Url, 50, 512),
    (b"dop_v1_", Charset::Alnum, 40, 128),
    (b"sq0atp-", Charset::B64Url, 20, 128),
    (b"sq0csp-", Charset::B64Url, 30, 128),
    (b"ya29.", Charset::Dotted, 20, 2048),
    (b"hf_", Charset::Alnum, 30, 64),
    (b"xkeysib-", Charset::AlnumDash, 30, 128),
    (b"lin_api_", Charset::Alnum, 30, 64),
    (b"secret_", Charset::Alnum, 30, 64),
    (b"ATATT", Charset::B64Url, 30, 512),
];

/// For each ASCII first byte, the set of second bytes (as bits) that begin
/// an API key prefix.
#[allow(clippy::indexing_slicing)] // evaluated at compile time
static API_FIRST2: [u128; 128] = {
    let mut t = [0u128; 128];
    let mut i = 0;
    while i < API_KEYS.len() {
        let p = API_KEYS[i].0;
        t[p[0] as usize] |= 1u128 << p[1];
        i += 1;
    }
    t[b'S' as usize] |= 1u128 << b'G';
    t
};

impl Scanner<'_> {
    /// A JWT (or JWE) at `i`: `eyJ` header segment, then at least one more
    /// non-empty segment, an optional (possibly empty) signature segment.
    pub(super) fn jwt(&self, i: usize) -> Option<usize> {
        let e1 = self.jwt_seg.end(i, |from| self.b64url_end(from));
        if e1 - i < 10 || self.at(e1) != b'.' {
            return None;
        }
        if let Some((at, end)) = self.jwt_tail.get() {
            if at == e1 {
                return end;
            }
        }
        let end = self.jwt_after_first(e1);
        self.jwt_tail.set(Some((e1, end)));
        end
    }

    fn b64url_end(&self, mut j: usize) -> usize {
        while is_b64url(self.at(j)) {
            j += 1;
        }
        j
    }

    /// The rest of a JWT whose first segment ends (with a dot) at `e1`.
    fn jwt_after_first(&self, e1: usize) -> Option<usize> {
        let seg = |from: usize| self.b64url_end(from);
        let e2 = seg(e1 + 1);
        if e2 - (e1 + 1) < 2 {
            return None;
        }
        if self.at(e2) != b'.' {
            return None;
        }
        let mut end = seg(e2 + 1);
        // JWE: up to two more segments.
        for _ in 0..2 {
            if self.at(end) == b'.' && is_b64url(self.at(end + 1)) {
                end = seg(end + 1);
            } else {
                break;
            }
        }
        Some(end)
    }

    pub(super) fn api_key(&self, i: usize) -> Option<usize> {
        let c = self.at(i);
        let c1 = self.at(i + 1);
        let second = API_FIRST2.get(usize::from(c)).copied().unwrap_or(0);
        if c1 >= 128 || second & (1u128 << c1) == 0 {
            return None;
        }
        if c == b'S' && self.starts_with(i, b"SG.") {
            // SendGrid: SG.<id>.<secret>
            let e1 = self.run(i + 3, Charset::B64Url, 64);
            if e1 - (i + 3) >= 16 && self.at(e1) == b'.' {
                let e2 = self.run(e1 + 1, Charset::B64Url, 128);
                if e2 - (e1 + 1) >= 16 && !is_word(self.at(e2)) {
                    return Some(e2);
                }
            }
            return None;
        }
        for &(prefix, cs, min, max) in API_KEYS {
            if prefix.first() != Some(&c) || !self.starts_with(i, prefix) {
                continue;
            }
            let body = i + prefix.len();
            let e = self.run(body, cs, max + 1);
            let len = e - body;
            if len >= min && len <= max && !is_word(self.at(e)) {
                return Some(e);
            }
        }
        None
    }

    /// End of the run of `cs` characters from `i`, at most `max` long.
    fn run(&self, i: usize, cs: Charset, max: usize) -> usize {
        let scan = |from: usize| {
            let mut j = from;
            while cs.accepts(self.at(j)) {
                j += 1;
            }
            j
        };
        let end = match self.runs.get(cs.index()) {
            Some(memo) => memo.end(i, scan),
            None => scan(i),
        };
        end.min(i + max)
    }

    /// A bearer credential at `v` (after `Bearer `): at least 8 token
    /// characters, and not plain prose (a digit or symbol in it, or long).
    pub(super) fn bearer_credential(&mut self, v: usize) -> Option<usize> {
        if self.is_redacted(v) {
            return None;
        }
        let tok = |c: u8| is_b64url(c) || matches!(c, b'.' | b'~' | b'+' | b'/' | b'=');
        let mut e = v;
        while tok(self.at(e)) {
            e += 1;
        }
        let t = self.b.get(v..e)?;
        let plausible = t.len() >= 8 && (t.len() >= 24 || t.iter().any(|c| !c.is_ascii_alphabetic()));
        if !plausible {
            return None;
        }
        let kind = if self.starts_with(v, b"eyJ") && self.jwt(v) == Some(e) {
            Kind::Jwt
        } else {
            Kind::BearerToken
        };
        self.push(v, e, kind, P_KEYED);
        Some(e)
    }

    /// Slack and Discord webhook URLs: the path after the fixed part is the
    /// secret.
    pub(super) fn webhook_url(&mut self, i: usize) -> Option<usize> {
        for prefix in [
            &b"hooks.slack.com/services/"[..],
            b"discord.com/api/webhooks/",
            b"discordapp.com/api/webhooks/",
        ] {
            if self.starts_with(i, prefix) {
                let v = i + prefix.len();
                let mut e = v;
                while is_b64url(self.at(e)) || self.at(e) == b'/' {
                    e += 1;
                }
                if e - v >= 16 {
                    self.push(v, e, Kind::ApiKey, P_SHAPE);
                    return Some(e);
                }
            }
        }
        None
    }

    /// `Basic <base64>` outside an `Authorization` header (a curl command,
    /// a proxy log): masked when the base64 decodes to `user:password`.
    pub(super) fn basic_credential(&mut self, v: usize) -> Option<usize> {
        if self.is_redacted(v) {
            return None;
        }
        let mut e = v;
        while e - v < 1024 && (self.at(e).is_ascii_alphanumeric() || matches!(self.at(e), b'+' | b'/' | b'=')) {
            e += 1;
        }
        let t = self.b.get(v..e)?;
        if t.len() < 8 || is_word(self.at(e)) || !decodes_to_userpass(t) {
            return None;
        }
        self.push_rule(v, e, Kind::Password, P_KEYED, 0, Rule::Builtin("basic-auth"));
        Some(e)
    }

    /// A webhook URL path whose last segments are the secret:
    /// `/webhook/<token>`, `/webhooks/<id>/<token>`, `/webhookb2/…`
    /// (Microsoft Teams), `/hooks/catch/…` (Zapier). The rest of the path
    /// is masked when it has at least 16 characters (8 for Zapier), a digit
    /// and a letter (so `/webhooks/settings` stays).
    pub(super) fn webhook_path(&mut self, i: usize) -> usize {
        // (prefix, shortest secret path): Zapier's are short.
        let Some((plen, min)) = [
            (&b"/webhook/"[..], 16),
            (b"/webhooks/", 16),
            (b"/webhookb2/", 16),
            (b"/hooks/catch/", 8),
        ]
        .iter()
        .find(|(p, _)| self.starts_with_ci(i, p))
        .map(|(p, min)| (p.len(), *min)) else {
            return i + 1;
        };
        let v = i + plen;
        if self.is_redacted(v) {
            return v;
        }
        let mut e = v;
        while e - v < 512 && (is_b64url(self.at(e)) || matches!(self.at(e), b'/' | b'.' | b'@' | b'~')) {
            e += 1;
        }
        while e > v && self.at(e - 1) == b'/' {
            e -= 1;
        }
        let path = self.b.get(v..e).unwrap_or(&[]);
        if path.len() >= min && path.iter().any(u8::is_ascii_digit) && path.iter().any(u8::is_ascii_alphabetic) {
            self.push_rule(v, e, Kind::ApiKey, P_SHAPE, 0, Rule::Builtin("webhook-url"));
            return e;
        }
        v
    }

    /// `scheme://user:password@host`: masks the password.
    pub(super) fn url_password(&mut self, p: usize) -> Option<usize> {
        let lo = p.saturating_sub(256);
        let hay = self.b.get(lo..p)?;
        let q = memmem::rfind(hay, b"://")? + lo + 3;
        let userinfo = self.b.get(q..p)?;
        if userinfo
            .iter()
            .any(|&c| c.is_ascii_whitespace() || matches!(c, b'/' | b'@' | b'"' | b'<' | b'>'))
        {
            return None;
        }
        let colon = userinfo.iter().position(|&c| c == b':')? + q + 1;
        if colon >= p || self.is_redacted(colon) {
            return Some(p + 1);
        }
        self.push(colon, p, Kind::Password, P_KEYED);
        Some(p + 1)
    }

    /// The first `-----END ` at or after `body`, remembered (see
    /// [`Scanner::pem_end`]).
    fn pem_end_from(&self, body: usize) -> Option<usize> {
        if let Some((from, found)) = self.pem_end.get() {
            if from <= body && found.is_none_or(|x| x >= body) {
                return found;
            }
        }
        let found = memmem::find(self.b.get(body..).unwrap_or(&[]), b"-----END ").map(|x| body + x);
        self.pem_end.set(Some((body, found)));
        found
    }

    pub(super) fn pem(&mut self, i: usize) -> usize {
        if !self.starts_with(i, b"-----BEGIN ") {
            return i + 1;
        }
        let head_end = i + 11;
        let Some(close) = self
            .b
            .get(head_end..(head_end + 64).min(self.b.len()))
            .and_then(|h| memmem::find(h, b"-----"))
        else {
            return i + 1;
        };
        let label = self.b.get(head_end..head_end + close).unwrap_or(&[]);
        if memmem::find(label, b"PRIVATE KEY").is_none() {
            return i + 1;
        }
        let body = head_end + close + 5;
        let end = match self.pem_end_from(body) {
            Some(x) => {
                let tail = x + 9;
                match memmem::find(self.b.get(tail..(tail + 64).min(self.b.len())).unwrap_or(&[]), b"-----") {
                    Some(y) => tail + y + 5,
                    None => self.b.len(),
                }
            }
            // No END line (a truncated key): the base64 body, with line
            // breaks (raw or escaped, also doubly), blanks, escaped slashes
            // and a trailing ellipsis. It stops early only at a closing
            // quote (also an escaped one) or a structural delimiter, so JSON
            // around a quoted key survives; anything else (headers such as
            // `Proc-Type:`) masks to the end of the text, as before.
            None => {
                let mut e = body;
                loop {
                    match self.at(e) {
                        c if c.is_ascii_alphanumeric()
                            || matches!(c, b'+' | b'/' | b'=' | b'.' | b' ' | b'\t' | b'\r' | b'\n') =>
                        {
                            e += 1
                        }
                        b'\\' if self.at(e + 1) != b'"' && e + 1 < self.b.len() => e += 2,
                        _ => break,
                    }
                }
                let stop = self.at(e);
                if e >= self.b.len()
                    || !matches!(
                        stop,
                        b'"' | b'\'' | b'\\' | b',' | b'}' | b']' | b'<' | b';' | b'&' | b'|'
                    )
                {
                    self.b.len()
                } else {
                    // not the blanks before the delimiter
                    while e > body && matches!(self.at(e - 1), b' ' | b'\t' | b'\r' | b'\n') {
                        e -= 1;
                    }
                    e
                }
            }
        };
        self.push(i, end, Kind::Secret, P_SHAPE);
        end
    }
}
