//! A per-identity token bucket (`Tokenize` calls per identity).
//!
//! Why: tokens are deterministic, so a caller with only the `tokenize`
//! right can recover the clear value behind a token of a small domain by
//! tokenizing every candidate and comparing. A rate limit does not remove
//! that property (see SECURITY.md); it makes enumeration slow and visible
//! (each refusal is audited as RESOURCE_EXHAUSTED). Time is a parameter.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Identities tracked before idle (full) buckets are dropped.
const MAX_TRACKED: usize = 10_000;

/// Calls per second per identity, with a burst.
#[derive(Debug)]
pub struct RateLimiter {
    /// Calls per second (0 = no limit).
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// identity → (calls available, when last refilled).
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` calls per second per identity, up to `burst` at once
    /// (`rate` 0: no limit).
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call for `identity` at `now`, or says how long until
    /// one is available.
    pub fn check(&self, identity: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut m = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_TRACKED && !m.contains_key(identity) {
            // forget identities whose bucket has refilled: they lose nothing
            let (rate, burst) = (self.rate, self.burst);
            m.retain(|_, (avail, at)| *avail + now.saturating_duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (avail, at) = m.entry(identity.to_owned()).or_insert((self.burst, now));
        *avail = (*avail + now.saturating_duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *avail >= 1.0 {
            *avail -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *avail) / self.rate))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate_per_identity() {
        let l = RateLimiter::new(2, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check("a", t0).unwrap();
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
        // another identity has its own bucket
        l.check("b", t0).unwrap();
        // half a second at 2/s refills one call, not two
        let t1 = t0 + Duration::from_millis(500);
        l.check("a", t1).unwrap();
        assert!(l.check("a", t1).is_err());
        // a long pause refills to the burst, not beyond
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            l.check("a", t2).unwrap();
        }
        assert!(l.check("a", t2).is_err());
        // rate 0: no limit
        let free = RateLimiter::new(0, 0);
        for _ in 0..10_000 {
            free.check("a", t0).unwrap();
        }
    }
}
