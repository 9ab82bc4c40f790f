//! The officer second factor: TOTP (RFC 6238, HMAC-SHA1, 6 digits, 30 s).
//!
//! Codes are compared in constant time; each time step is accepted once
//! per officer (a code for a step at or before the last accepted one is a
//! replay); one step of clock skew either way is allowed; and after
//! `max_failures` consecutive bad codes the officer is locked out for
//! `lockout`, doubled for each further lock-out until a good code is
//! accepted (at most `max_lockout`). The per-officer state
//! ([`OfficerState`]) has a versioned encoding so the daemon can keep it
//! sealed in the store across restarts. Time is a parameter, so all of it
//! is tested exactly.
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// The secret type lives in the keystore, which alone touches its bytes.
pub use kmsd_keystore::secret::TotpSecret;

/// Step length, seconds.
pub const STEP: i64 = kmsd_keystore::secret::TOTP_STEP;
/// Code length.
pub const DIGITS: u32 = kmsd_keystore::secret::TOTP_DIGITS;

/// The code for `unix_time` with `digits` digits (RFC 6238 / RFC 4226),
/// from a secret the caller holds (an authenticator: tests, tools).
pub fn code_at(secret: &[u8], unix_time: i64, digits: u32) -> u32 {
    kmsd_keystore::secret::hotp(secret, step_counter(unix_time.div_euclid(STEP)), digits)
}

/// The HOTP counter of a time step (steps before 1970 wrap, as the
/// big-endian bytes of the signed step always did).
pub(crate) fn step_counter(step: i64) -> u64 {
    step as u64
}

/// The outcome of presenting a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (and now used up).
    Ok,
    /// No code was presented.
    Missing,
    /// Wrong code (counted towards lock-out).
    Invalid,
    /// A code already used (or older than one already used).
    Replayed,
    /// Too many failures; locked until this Unix time.
    LockedOut {
        /// Lock-out end.
        until: i64,
    },
}

/// One officer's replay and lock-out memory (no secret in it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OfficerState {
    /// The last time step accepted: codes for it and earlier are replays.
    pub last_step: Option<i64>,
    /// Bad codes in a row.
    pub failures: u32,
    /// Locked out until this Unix time.
    pub locked_until: i64,
    /// Lock-outs since the last accepted code: each doubles the next.
    pub lockouts: u32,
}

/// Encoding version of [`OfficerState`].
const STATE_V1: u8 = 1;
/// Encoded length: version, last-step flag and value, failures, lock-out
/// end, lock-outs.
const STATE_LEN: usize = 1 + 1 + 8 + 4 + 8 + 4;

impl OfficerState {
    /// The stored form (version 1, fixed length, big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.push(STATE_V1);
        out.push(u8::from(self.last_step.is_some()));
        out.extend_from_slice(&self.last_step.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.failures.to_be_bytes());
        out.extend_from_slice(&self.locked_until.to_be_bytes());
        out.extend_from_slice(&self.lockouts.to_be_bytes());
        out
    }

    /// Parses [`encode`](Self::encode)'s output; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != STATE_LEN || b.first() != Some(&STATE_V1) {
            return None;
        }
        let i64_at = |o: usize| b.get(o..o + 8).and_then(|s| s.try_into().ok()).map(i64::from_be_bytes);
        let u32_at = |o: usize| b.get(o..o + 4).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes);
        let last_step = match b.get(1) {
            Some(0) => None,
            Some(1) => Some(i64_at(2)?),
            _ => return None,
        };
        Some(OfficerState {
            last_step,
            failures: u32_at(10)?,
            locked_until: i64_at(14)?,
            lockouts: u32_at(22)?,
        })
    }
}

/// Per-officer verification state (replay and lock-out memory).
#[derive(Debug)]
pub struct Verifier {
    state: HashMap<String, OfficerState>,
    /// Bad codes in a row before lock-out.
    pub max_failures: u32,
    /// First lock-out length, seconds.
    pub lockout_secs: i64,
    /// Longest lock-out, seconds (the doubling stops there).
    pub max_lockout_secs: i64,
}

impl Verifier {
    /// A verifier with the given lock-out policy.
    pub fn new(max_failures: u32, lockout_secs: i64, max_lockout_secs: i64) -> Self {
        Verifier {
            state: HashMap::new(),
            max_failures: max_failures.max(1),
            lockout_secs,
            max_lockout_secs,
        }
    }

    /// An officer's state (to persist it after [`verify`](Self::verify)).
    pub fn state(&self, identity: &str) -> Option<&OfficerState> {
        self.state.get(identity)
    }

    /// Restores an officer's persisted state (at start).
    pub fn restore(&mut self, identity: &str, state: OfficerState) {
        self.state.insert(identity.to_owned(), state);
    }

    /// The length of the `n`-th lock-out in a row (1-based): doubled each
    /// time, capped at `max_lockout_secs` (never below `lockout_secs`).
    fn lockout_len(&self, n: u32) -> i64 {
        let doubled = self.lockout_secs.saturating_mul(1i64 << n.saturating_sub(1).min(32));
        doubled.min(self.max_lockout_secs.max(self.lockout_secs))
    }

    /// Checks `code` for `identity` at `now`.
    pub fn verify(&mut self, identity: &str, secret: &TotpSecret, code: Option<&str>, now: i64) -> Outcome {
        let max_failures = self.max_failures;
        let next_lockout = self.lockout_len(self.state.get(identity).map_or(0, |s| s.lockouts).saturating_add(1));
        let st = self.state.entry(identity.to_owned()).or_default();
        if st.locked_until > now {
            return Outcome::LockedOut { until: st.locked_until };
        }
        let Some(code) = code else { return Outcome::Missing };
        let valid_shape = code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit());
        let step = now.div_euclid(STEP);
        let mut matched = None;
        if valid_shape {
            for s in [step - 1, step, step + 1] {
                let expected = format!(
                    "{:0width$}",
                    secret.hotp(step_counter(s), DIGITS),
                    width = DIGITS as usize
                );
                // constant-time comparison; every candidate is checked
                if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                    matched = Some(s);
                }
            }
        }
        match matched {
            Some(s) if st.last_step.is_some_and(|last| s <= last) => Outcome::Replayed,
            Some(s) => {
                st.last_step = Some(s);
                st.failures = 0;
                st.lockouts = 0;
                Outcome::Ok
            }
            None => {
                st.failures = st.failures.saturating_add(1);
                if st.failures >= max_failures {
                    st.failures = 0;
                    st.lockouts = st.lockouts.saturating_add(1);
                    st.locked_until = now.saturating_add(next_lockout);
                    return Outcome::LockedOut { until: st.locked_until };
                }
                Outcome::Invalid
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        let secret = b"12345678901234567890";
        for (t, want) in [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(code_at(secret, t, 8), want, "t={t}");
            assert_eq!(code_at(secret, t, 6), want % 1_000_000, "t={t}");
            let s = TotpSecret::from_slice(secret).unwrap();
            assert_eq!(s.hotp(step_counter(t.div_euclid(STEP)), 8), want, "t={t}");
        }
    }

    #[test]
    fn base32_and_uri() {
        let s = TotpSecret::from_slice(b"12345678901234567890").unwrap();
        assert_eq!(s.to_base32_for_enrolment(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let uri = s.otpauth_uri("spiffe://bank/alice");
        assert!(
            uri.starts_with("otpauth://totp/kmsd:spiffe%3A%2F%2Fbank%2Falice?secret=GEZDGNBV"),
            "{uri}"
        );
        assert!(!format!("{s:?}").contains("GEZ"));
    }

    #[test]
    fn verifier_outcomes() {
        let s = TotpSecret::from_slice(&[7; 20]).unwrap();
        let code = |t: i64| format!("{:06}", s.hotp(step_counter(t.div_euclid(STEP)), 6));
        let mut v = Verifier::new(3, 300, 3600);
        let now = 1_800_000_000;
        assert_eq!(v.verify("a", &s, None, now), Outcome::Missing);
        assert_eq!(v.verify("a", &s, Some(&code(now)), now), Outcome::Ok);
        assert_eq!(v.verify("a", &s, Some(&code(now)), now), Outcome::Replayed);
        assert_eq!(
            v.verify("a", &s, Some(&code(now - 30)), now),
            Outcome::Replayed,
            "older step after a newer one"
        );
        // skew of one step ahead is accepted, two is not
        assert_eq!(v.verify("a", &s, Some(&code(now + 30)), now), Outcome::Ok);
        assert_eq!(v.verify("b", &s, Some(&code(now + 60)), now), Outcome::Invalid);
        assert_eq!(
            v.verify("b", &s, Some(&code(now - 30)), now),
            Outcome::Ok,
            "one step behind is accepted"
        );
        assert_eq!(v.verify("c", &s, Some("12345"), now), Outcome::Invalid);
        assert_eq!(v.verify("c", &s, Some("abcdef"), now), Outcome::Invalid);
        // lock-out after 3 failures, then it expires
        assert!(
            matches!(v.verify("c", &s, Some("000000"), now), Outcome::LockedOut { until } if until == now + 300)
                || code(now) == "000000"
        );
        assert!(
            matches!(v.verify("c", &s, Some(&code(now)), now + 10), Outcome::LockedOut { .. }),
            "even a good code"
        );
        assert_eq!(v.verify("c", &s, Some(&code(now + 301)), now + 301), Outcome::Ok);
    }

    #[test]
    fn lock_outs_double_until_a_good_code_and_the_state_round_trips() {
        let s = TotpSecret::from_slice(&[9; 20]).unwrap();
        let at = |t: i64| s.hotp(step_counter(t.div_euclid(STEP)), 6);
        let code = |t: i64| format!("{:06}", at(t));
        let bad = |t: i64| format!("{:06}", (at(t) + 1) % 1_000_000);
        let mut v = Verifier::new(2, 300, 1000);
        let mut t = 1_800_000_000;
        let mut lengths = vec![];
        for _ in 0..4 {
            assert_eq!(v.verify("o", &s, Some(&bad(t)), t), Outcome::Invalid);
            match v.verify("o", &s, Some(&bad(t)), t) {
                Outcome::LockedOut { until } => {
                    lengths.push(until - t);
                    t = until;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(lengths, [300, 600, 1000, 1000], "doubling, capped");
        let st = v.state("o").unwrap().clone();
        assert_eq!(st.lockouts, 4);
        assert_eq!(OfficerState::decode(&st.encode()), Some(st.clone()));
        // a restarted verifier with the restored state remembers the lock-out and used steps
        let mut w = Verifier::new(2, 300, 1000);
        w.restore("o", st);
        assert_eq!(w.verify("o", &s, Some(&code(t)), t), Outcome::Ok);
        assert_eq!(w.verify("o", &s, Some(&code(t)), t), Outcome::Replayed);
        let st = w.state("o").unwrap().clone();
        assert_eq!((st.lockouts, st.failures), (0, 0), "a good code resets the escalation");
        let mut x = Verifier::new(2, 300, 1000);
        x.restore("o", OfficerState::decode(&st.encode()).unwrap());
        assert_eq!(
            x.verify("o", &s, Some(&code(t)), t),
            Outcome::Replayed,
            "after a restart too"
        );
        for b in [&[][..], &[2; STATE_LEN][..], &st.encode()[..STATE_LEN - 1]] {
            assert_eq!(OfficerState::decode(b), None);
        }
    }
}
