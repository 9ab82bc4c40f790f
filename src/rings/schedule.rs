//! The rotation/destruction scheduler's core: the queue of deadlines,
//! destruction waiting periods, and running what is due at `now` (the
//! caller passes the time, so tests drive it deterministically).
use super::usage::pre_reserve;
use super::{lock, Rings};
use crate::error::{Error, Invalid};
use kmsd_keystore::keyring::RotationReason;
use kmsd_keystore::{KeyRing, UnixTime};
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
    /// destructions. Returns how many rings changed.
    pub fn run_due(&self, now: UnixTime) -> Result<usize, Error> {
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
            match self.run_scheduled(&name, now) {
                Ok(true) => changed += 1,
                Ok(false) => {}
                Err(e) => tracing::error!(key = %name, error = %e, "scheduled key maintenance failed"),
            }
        }
        Ok(changed)
    }

    fn run_scheduled(&self, name: &str, now: UnixTime) -> Result<bool, Error> {
        let current = self.get(name)?;
        if !current.rotation_due(now) && current.next_destruction().is_none_or(|t| t > now) {
            self.install(&current); // the deadline moved; refresh the schedule
            return Ok(false);
        }
        let block = self.block();
        let (_, (rotated, destroyed)) = self.modify(name, |r| {
            let rotated = if r.rotation_due(now) {
                let from = r.primary;
                let to = r.rotate(now, RotationReason::Scheduled)?;
                pre_reserve(r, block);
                Some((from, to))
            } else {
                None
            };
            Ok((rotated, r.destroy_due(now)))
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
