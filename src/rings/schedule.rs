//! The rotation/destruction scheduler's core: the queue of deadlines,
//! destruction waiting periods, and running what is due at `now` (the
//! caller passes the time, so tests drive it deterministically).
//!
//! On a shared store only the leader runs what is due, and every write it
//! makes is fenced with its term (leadership.rs): a write refused by the
//! fence ends the run and the term, and is counted.
use super::usage::pre_reserve;
use super::{lock, Rings};
use crate::error::{Error, Invalid};
use kmsd_keystore::keyring::RotationReason;
use kmsd_keystore::{KeyRing, Revision, UnixTime};
use std::collections::{BTreeSet, HashMap};

/// Minimum waiting periods for destruction (production, dev mode).
pub const MIN_DESTRUCTION_WAIT: (u64, u64) = (86_400, 1);

/// Default destruction waiting period.
pub const DEFAULT_DESTRUCTION_WAIT: u64 = 30 * 86_400;

#[derive(Default)]
pub(super) struct Schedule {
    queue: BTreeSet<(UnixTime, String)>,
    by_name: HashMap<String, UnixTime>,
}

impl Rings {
    pub(super) fn reschedule(&self, name: &str, ring: &KeyRing) {
        let deadline = [
            if ring.delete_at.is_none() {
                ring.next_rotation_at
            } else {
                None
            },
            ring.next_destruction(),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut s = lock(&self.schedule);
        let earliest_before = s.queue.first().map(|(t, _)| *t);
        if let Some(old) = s.by_name.remove(name) {
            s.queue.remove(&(old, name.to_owned()));
        }
        if let Some(t) = deadline {
            s.queue.insert((t, name.to_owned()));
            s.by_name.insert(name.to_owned(), t);
            if earliest_before.is_none_or(|e| t < e) {
                drop(s);
                self.schedule_changed.notify_one();
            }
        }
    }

    /// Every scheduled deadline, by key.
    pub fn scheduled(&self) -> Vec<(String, UnixTime)> {
        lock(&self.schedule)
            .by_name
            .iter()
            .map(|(n, t)| (n.clone(), *t))
            .collect()
    }

    /// The earliest scheduled deadline (rotation or destruction).
    pub fn next_deadline(&self) -> Option<UnixTime> {
        lock(&self.schedule).queue.first().map(|(t, _)| *t)
    }

    /// Checks a destruction waiting period against the minimum.
    pub fn destruction_time(&self, waiting_secs: u64) -> Result<UnixTime, Error> {
        let wait = if waiting_secs == 0 {
            DEFAULT_DESTRUCTION_WAIT
        } else {
            waiting_secs
        };
        let min = if self.dev_mode {
            MIN_DESTRUCTION_WAIT.1
        } else {
            MIN_DESTRUCTION_WAIT.0
        };
        if wait < min {
            return Err(Error::InvalidArgument(Invalid::WaitingPeriod { minimum: min }));
        }
        Ok(self.clock.now().saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)))
    }

    /// Runs every scheduled action due at `now`: rotations and
    /// destructions. Returns how many rings changed. On a shared store, a
    /// node that is not the leader runs nothing (`Ok(0)`), and the
    /// leader's writes are fenced with its term: once one is refused
    /// (another node took over), the run stops with `Error::Fenced`.
    pub fn run_due(&self, now: UnixTime) -> Result<usize, Error> {
        let term = match self.leadership.get() {
            None => None,
            Some(l) => match l.fence() {
                Some(revision) => Some(revision),
                None => return Ok(0),
            },
        };
        let due: Vec<String> = {
            let s = lock(&self.schedule);
            s.queue
                .iter()
                .take_while(|(t, _)| *t <= now)
                .map(|(_, n)| n.clone())
                .collect()
        };
        let mut changed = 0;
        for name in due {
            match self.run_scheduled(&name, now, term) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(Error::Fenced) => {
                    if let (Some(l), Some(revision)) = (self.leadership.get(), term) {
                        l.fenced_off(revision);
                    }
                    tracing::warn!(
                        key = %name,
                        term = term.map_or(0, |r| r.0),
                        "scheduled write refused by its fence: another node is the scheduler leader now; \
                         this node stops scheduling"
                    );
                    return Err(Error::Fenced);
                }
                Err(e) => tracing::error!(key = %name, error = %e, "scheduled key maintenance failed"),
            }
        }
        Ok(changed)
    }

    fn run_scheduled(&self, name: &str, now: UnixTime, term: Option<Revision>) -> Result<bool, Error> {
        let current = self.get(name)?;
        if !current.rotation_due(now) && current.next_destruction().is_none_or(|t| t > now) {
            self.install(&current); // the deadline moved; refresh the schedule
            return Ok(false);
        }
        let block = self.block();
        let fence = term.map(super::leadership::fence);
        let (_, (rotated, destroyed)) = self.modify_fenced(name, fence, |r| {
            let rotated = if r.rotation_due(now) {
                let from = r.primary;
                let to = r.rotate(now, RotationReason::Scheduled)?;
                pre_reserve(r, block);
                Some((from, to))
            } else {
                None
            };
            let destroyed = r.destroy_due(now);
            // decided, not yet written: where a pause hurts (tests)
            kmsd_keystore::failpoints::pause_point(kmsd_keystore::failpoints::SCHEDULED_WRITE);
            Ok((rotated, destroyed))
        })?;
        if let Some((from, to)) = rotated {
            self.count_rotation(RotationReason::Scheduled);
            tracing::info!(key = name, from, to, reason = "scheduled", "key rotated");
        }
        for v in destroyed {
            tracing::info!(key = name, version = v, "key version destroyed");
        }
        Ok(true)
    }
}
