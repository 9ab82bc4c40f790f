//! Whether this node may run scheduled work ([`Leadership`]), and the
//! fence its scheduled writes carry.
//!
//! Alone on its store (sled) a node always runs its scheduler and writes
//! unfenced: nothing here is set. Several nodes on one etcd store elect
//! one leader (`crate::leader` campaigns, with a leader record held by an
//! etcd lease); only the leader runs scheduled rotations, destructions and
//! deletions, and each of its writes is fenced with the leader record at
//! the revision its election created
//! ([`kmsd_keystore::KeyStore::apply_fenced`]). Two guards, because
//! neither suffices alone:
//! - the term ends locally at `until`: the instant (monotonic clock)
//!   before which the lease is certainly still alive in etcd (the last
//!   renewal's send time plus its TTL, minus a margin). Past it the node
//!   stops scheduling without waiting for etcd to say so;
//! - a write already decided when the node was paused (`SIGSTOP`, a long
//!   stall, a VM freeze) reaches etcd after the term ended: only the fence
//!   stops it, because the leader record expired with the lease and was
//!   created again, at a new revision, by the next leader.
use kmsd_keystore::store::Fence;
use kmsd_keystore::{RecordKind, Revision};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::watch;

/// The name of the leader record ([`RecordKind::Lease`]): etcd key
/// `<prefix>lleader`, holding the leader's name, attached to its lease.
pub const LEADER_RECORD: &str = "leader";

/// This node's part in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// Not the leader (campaigning, or waiting for the leader record to go).
    Follower,
    /// The leader, while `Instant::now() < until`.
    Leader {
        /// The leader record's revision, created by this node's election:
        /// the fence of every scheduled write.
        revision: Revision,
        /// Until when the lease is certainly alive (see the module doc).
        until: Instant,
    },
}

/// This node's leadership, shared by the election and the scheduler.
#[derive(Debug)]
pub struct Leadership {
    term: watch::Sender<Term>,
    /// Scheduled writes refused by their fence.
    fenced: AtomicU64,
    /// Terms won since start.
    terms: AtomicU64,
    /// The leader as this node last saw it, for operators (`Status`): its
    /// own term, or the record it lost a campaign to. Never a fence.
    observed: Mutex<Option<Observed>>,
}

/// A leader one node saw: the leader record's value and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The leader's name (`crate::leader::node_name`: host and pid).
    pub name: String,
    /// Its term: the leader record's revision.
    pub term: Revision,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership {
            term: watch::Sender::new(Term::Follower),
            fenced: AtomicU64::new(0),
            terms: AtomicU64::new(0),
            observed: Mutex::new(None),
        }
    }
}

impl Leadership {
    /// A follower, until [`Leadership::lead`].
    pub fn new() -> Self {
        Self::default()
    }

    /// This node won the election: the leader record is at `revision`,
    /// the lease alive until `until`.
    pub fn lead(&self, revision: Revision, until: Instant) {
        self.terms.fetch_add(1, Ordering::Relaxed);
        self.term.send_replace(Term::Leader { revision, until });
    }

    /// The lease was renewed: the term at `revision` lasts until `until`
    /// (nothing if this node stepped down meanwhile).
    pub fn renew(&self, revision: Revision, until: Instant) {
        self.term.send_if_modified(|t| match t {
            Term::Leader { revision: r, until: u } if *r == revision => {
                *u = until;
                true
            }
            _ => false,
        });
    }

    /// The term ended (lease lost, leader record changed, a fenced write
    /// refused, shutdown).
    pub fn step_down(&self) {
        self.term
            .send_if_modified(|t| std::mem::replace(t, Term::Follower) != Term::Follower);
    }

    /// The fence for a scheduled write now: `None` when this node must not
    /// schedule (a follower, or a leader past `until`).
    pub fn fence(&self) -> Option<Revision> {
        match *self.term.borrow() {
            Term::Leader { revision, until } if Instant::now() < until => Some(revision),
            _ => None,
        }
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.fence().is_some()
    }

    /// A write fenced at `revision` was refused: another node leads. Ends
    /// that term (if it is still the current one) and counts the refusal.
    pub fn fenced_off(&self, revision: Revision) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        self.term.send_if_modified(|t| match t {
            Term::Leader { revision: r, .. } if *r == revision => {
                *t = Term::Follower;
                true
            }
            _ => false,
        });
    }

    /// Scheduled writes refused by their fence since start.
    pub fn fenced_writes(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Terms won since start.
    pub fn terms(&self) -> u64 {
        self.terms.load(Ordering::Relaxed)
    }

    /// Records the leader this node saw (`None`: none known, such as after
    /// its own term ended).
    pub fn observe(&self, leader: Option<Observed>) {
        *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// The leader this node last saw (see [`Leadership::observe`]).
    pub fn observed(&self) -> Option<Observed> {
        self.observed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Follows changes of the term (the scheduler waits on it).
    pub fn subscribe(&self) -> watch::Receiver<Term> {
        self.term.subscribe()
    }
}

/// The fence of a scheduled write at the leader record's `revision`.
pub fn fence(revision: Revision) -> Fence<'static> {
    Fence {
        kind: RecordKind::Lease,
        name: LEADER_RECORD,
        revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_term_fences_with_its_revision_until_it_ends() {
        let l = Leadership::new();
        assert_eq!(l.fence(), None, "a follower does not schedule");
        let later = Instant::now() + Duration::from_secs(60);
        l.lead(Revision(7), later);
        assert_eq!(l.fence(), Some(Revision(7)));
        // a refusal of an older term's write leaves this one
        l.fenced_off(Revision(3));
        assert_eq!(l.fence(), Some(Revision(7)));
        l.fenced_off(Revision(7));
        assert_eq!(l.fence(), None);
        assert_eq!(l.fenced_writes(), 2);
        // a renewal after the term ended does not revive it
        l.renew(Revision(7), later);
        assert_eq!(l.fence(), None);
        // a term past its lease's certain life schedules nothing
        l.lead(Revision(9), Instant::now());
        assert_eq!(l.fence(), None);
        l.renew(Revision(9), later);
        assert_eq!(l.fence(), Some(Revision(9)));
        l.step_down();
        assert!(!l.is_leader());
        assert_eq!(l.terms(), 2);
    }
}
