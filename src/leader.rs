//! Several kmsd nodes on one etcd store: the election of the one node
//! that runs scheduled work (rotations, destructions, deletions).
//!
//! [`campaign`] runs on every node of a cluster, for the daemon's life:
//! 1. it takes an etcd lease of `[store.etcd] leader_lease_ttl` and, in
//!    one transaction, creates the leader record (`<prefix>lleader`,
//!    [`RecordKind::Lease`]) holding this node's name and attached to the
//!    lease, only if the record is absent (`create_revision == 0`);
//! 2. if it won, the node leads ([`Leadership::lead`]) with the record's
//!    revision as the fence of every scheduled write, and renews the lease
//!    every third of its TTL. Its term ends at once, and it campaigns
//!    again, when a renewal fails or answers that the lease is gone, when
//!    no renewal succeeded before the lease may have expired (the local,
//!    monotonic deadline of [`Leadership`]), when the record no longer
//!    holds its revision and lease, or when a fenced write was refused;
//! 3. if it lost, it revokes its lease, watches the record, and
//!    campaigns again when the record is deleted (its holder's lease
//!    expired or was revoked), or after one TTL in any case.
//!
//! A leader that stops (SIGTERM) revokes its lease: the record goes at
//! once and another node takes over without waiting for the TTL. One that
//! dies (SIGKILL, host lost) is replaced about one TTL after its last
//! renewal. A leader paused past its TTL (SIGSTOP, a stalled VM) finds on
//! waking that its term ended; a write it had already decided is refused
//! by its fence (leadership.rs in `rings`).
use crate::rings::{Leadership, Observed, LEADER_RECORD};
use kmsd_etcd::{Cmp, Compare, EtcdClient, EtcdStore, EventKind, Range, Txn, TxnOp, TxnOpResult, WatchEvent};
use kmsd_keystore::{RecordKind, Revision};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Shortest pause after a failed campaign (doubling up to one TTL).
const RETRY: Duration = Duration::from_millis(100);

/// The most of a leader record's value kept as the leader's name.
const MAX_NAME_CHARS: usize = 256;

/// This node's name in the leader record: host and process, what an
/// operator needs to find the leader (`etcdctl get <prefix>lleader`).
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
}

/// How a term ended.
enum Ended {
    Stopped,
    Lost(String),
}

/// Campaigns for the scheduler leadership of `store` until `stop` (see
/// the module documentation).
pub async fn campaign(lead: Arc<Leadership>, store: Arc<EtcdStore>, ttl: Duration, mut stop: watch::Receiver<bool>) {
    let key = store.key(RecordKind::Lease, LEADER_RECORD);
    let me = node_name();
    let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(60);
    let ttl = Duration::from_secs(ttl_secs.unsigned_abs());
    let mut backoff = RETRY;
    loop {
        if *stop.borrow() {
            return;
        }
        let client = store.client();
        let attempt = tokio::select! {
            r = try_lead(&client, &key, &me, ttl_secs) => r,
            _ = stop.changed() => return,
        };
        match attempt {
            Ok(Won {
                lease,
                revision,
                granted_at,
                ttl: granted,
            }) => {
                backoff = RETRY;
                let until = granted_at + margin(Duration::from_secs(granted.unsigned_abs()));
                lead.lead(revision, until);
                lead.observe(Some(Observed {
                    name: me.clone(),
                    term: revision,
                }));
                tracing::info!(term = revision.0, node = %me, "this node is the scheduler leader");
                let ended = hold(&lead, &client, &key, lease, revision, ttl, &mut stop).await;
                lead.step_down();
                lead.observe(None);
                // Best effort: the record goes with the lease, so the next
                // leader need not wait for the TTL.
                let _ = tokio::time::timeout(ttl, client.lease_revoke(lease)).await;
                match ended {
                    Ended::Stopped => {
                        tracing::info!(term = revision.0, "scheduler leadership released at shutdown");
                        return;
                    }
                    Ended::Lost(why) => {
                        tracing::warn!(term = revision.0, reason = %why, "this node is no longer the scheduler leader")
                    }
                }
            }
            Ok(Lost { lease, at, holder }) => {
                backoff = RETRY;
                lead.observe(holder);
                let _ = tokio::time::timeout(ttl, client.lease_revoke(lease)).await;
                tokio::select! {
                    _ = vacancy(&client, &key, at, ttl) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "campaigning for the scheduler leadership failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(ttl);
            }
        }
    }
}

/// What one campaign gave.
enum Campaign {
    /// The record is this node's, at `revision`, on `lease`.
    Won {
        lease: i64,
        revision: Revision,
        /// When the grant was sent: the lease lives at least `ttl` from then.
        granted_at: Instant,
        ttl: i64,
    },
    /// Another node holds it (etcd was at revision `at`; `holder`: the
    /// record as read then); `lease` is ours, unused.
    Lost {
        lease: i64,
        at: i64,
        holder: Option<Observed>,
    },
}
use Campaign::{Lost, Won};

/// The part of a lease's TTL this node counts on: a tenth less (at least
/// 100 ms less), for the clocks' drift and the renewal's flight.
fn margin(ttl: Duration) -> Duration {
    ttl.saturating_sub((ttl / 10).max(Duration::from_millis(100)))
}

/// One campaign: a lease, then the record if absent.
async fn try_lead(client: &EtcdClient, key: &[u8], me: &str, ttl: i64) -> Result<Campaign, kmsd_etcd::Error> {
    let granted_at = Instant::now();
    let lease = client.lease_grant(ttl).await?;
    let txn = Txn::new()
        .when([Compare::CreateRevision(key.to_vec(), Cmp::Equal, 0)])
        .and_then([TxnOp::Put {
            key: key.to_vec(),
            value: me.as_bytes().to_vec(),
            lease: lease.id,
        }])
        .or_else([TxnOp::Get(Range::key(key.to_vec()))]);
    let r = match client.txn(txn).await {
        Ok(r) => r,
        Err(e) => {
            // It may have been applied: revoking our lease removes the
            // record if it is ours, so no one waits for a term nobody holds.
            let _ = client.lease_revoke(lease.id).await;
            return Err(e);
        }
    };
    if !r.succeeded {
        let holder = r.responses.into_iter().find_map(|op| match op {
            TxnOpResult::Get(g) => g.kvs.into_iter().next(),
            _ => None,
        });
        // (shown by Status: bounded, whatever someone put in the record)
        let holder = holder.map(|h| Observed {
            name: String::from_utf8_lossy(&h.value).chars().take(MAX_NAME_CHARS).collect(),
            term: Revision(u64::try_from(h.mod_revision).unwrap_or(0)),
        });
        if let Some(h) = &holder {
            tracing::debug!(holder = %h.name, term = h.term.0, "another node is the scheduler leader");
        }
        return Ok(Lost {
            lease: lease.id,
            at: r.revision,
            holder,
        });
    }
    Ok(Won {
        lease: lease.id,
        // (a revision etcd never gives, 0, would be a fence that never holds)
        revision: Revision(u64::try_from(r.revision).unwrap_or(0)),
        granted_at,
        ttl: lease.ttl,
    })
}

/// Keeps the lease alive while the term lasts (see the module
/// documentation).
async fn hold(
    lead: &Leadership,
    client: &EtcdClient,
    key: &[u8],
    lease: i64,
    revision: Revision,
    ttl: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut until = match *lead.subscribe().borrow() {
        crate::rings::Term::Leader { until, .. } => until,
        crate::rings::Term::Follower => return Ended::Lost("stepped down before the term began".into()),
    };
    let deadline = |until: Instant| tokio::time::Instant::from_std(until);
    let mut keeper = tokio::select! {
        k = tokio::time::timeout_at(deadline(until), client.lease_keep_alive(lease)) => match k {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => return Ended::Lost(format!("cannot renew the lease: {e}")),
            Err(_) => return Ended::Lost("the lease could not be renewed before it may have expired".into()),
        },
        _ = stop.changed() => return Ended::Stopped,
    };
    let mut term = lead.subscribe();
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ended::Stopped,
            _ = tokio::time::sleep_until(deadline(until)) => {
                return Ended::Lost("the lease was not renewed before it may have expired".into());
            }
            changed = term.changed() => {
                if changed.is_err() || !matches!(*term.borrow(), crate::rings::Term::Leader { revision: r, .. } if r == revision) {
                    return Ended::Lost("a scheduled write was refused by its fence".into());
                }
            }
            _ = tick.tick() => {
                let sent = Instant::now();
                match tokio::time::timeout_at(deadline(until), keeper.keep_alive()).await {
                    Ok(Ok(t)) if t > 0 => until = sent + margin(Duration::from_secs(t.unsigned_abs())),
                    Ok(Ok(_)) => return Ended::Lost("the lease expired".into()),
                    Ok(Err(e)) => return Ended::Lost(format!("renewing the lease failed: {e}")),
                    Err(_) => return Ended::Lost("the lease could not be renewed before it may have expired".into()),
                }
                // the record must still be ours (deleted by hand, or
                // replaced: another node may lead)
                if let Ok(Ok(kv)) = tokio::time::timeout_at(deadline(until), client.get(key.to_vec())).await {
                    match kv {
                        Some(kv) if kv.lease == lease && u64::try_from(kv.mod_revision).ok() == Some(revision.0) => {}
                        _ => return Ended::Lost("the leader record is no longer this node's".into()),
                    }
                }
                lead.renew(revision, until);
            }
        }
    }
}

/// Waits until the leader record may be free: deleted (seen on a watch
/// from `after`), the watch broken, or one TTL passed.
async fn vacancy(client: &EtcdClient, key: &[u8], after: i64, ttl: Duration) {
    let wait = async {
        let Ok(mut w) = client.watch(Range::key(key.to_vec()), after + 1).await else {
            return;
        };
        loop {
            match w.next().await {
                Ok(WatchEvent::Events { events, .. }) if events.iter().any(|e| e.kind == EventKind::Delete) => return,
                Ok(WatchEvent::Events { .. }) | Ok(WatchEvent::Progress { .. }) => {}
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(ttl, wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counted_part_of_a_lease_leaves_a_margin() {
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_millis(4500));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(900));
        assert_eq!(margin(Duration::from_millis(50)), Duration::ZERO);
        assert!(node_name().contains(&format!("pid {}", std::process::id())));
    }
}
