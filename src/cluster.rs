//! Several kmsd nodes on one etcd store: this node's ring cache follows
//! the store.
//!
//! [`follow`] watches the store's whole prefix from the revision the cache
//! was loaded at. Every change of a key ring (another node's create,
//! rotation, state change, destruction, policy change, usage reservation,
//! deletion; this node's own writes come back too and change nothing) is
//! installed into [`Rings`] by re-reading the ring through the checked
//! store ([`Rings::apply_remote`]). On a compacted or broken watch
//! (changes may have been missed) the cache is reloaded from a fresh
//! snapshot and the watch starts again from it; the sled backend has no
//! watch and none of this runs.
//!
//! # Staleness
//! The data path serves only while the cache is known current within
//! `[store.etcd] max_staleness` ([`Freshness`]): every quarter of it, this
//! node takes etcd's revision `R` with a linearizable (quorum) read at
//! time `t`, asks its watch for a progress notification, and once the
//! watch has delivered and installed every change up to `R`, the cache is
//! confirmed current as of `t`. A quorum read cannot succeed without a
//! quorum, and a watch served by a member cut off from the majority never
//! reaches the majority's `R`: a node that cannot hear about a change
//! made elsewhere stops serving after `max_staleness` (`UNAVAILABLE`),
//! and serves again, without a restart, at the first confirmation after
//! etcd answers.
use crate::rings::{Freshness, Rings};
use kmsd_etcd::{EtcdStore, Range, WatchEvent, Watcher};
use kmsd_keystore::RecordKind;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Shortest pause between reload attempts (doubling up to a second).
const RELOAD_BACKOFF: Duration = Duration::from_millis(100);

/// Follows the store's watch into `rings` until `stop` (see the module
/// documentation). `store.opened_revision()` must predate the load of
/// `rings`.
pub async fn follow(rings: Arc<Rings>, store: Arc<EtcdStore>, fresh: Arc<Freshness>, mut stop: watch::Receiver<bool>) {
    let tick = (fresh.max() / 4).max(Duration::from_millis(50));
    let mut start = store.opened_revision() + 1;
    let mut backoff = RELOAD_BACKOFF;
    loop {
        let client = store.client();
        let range = Range::prefix(store.prefix().to_vec());
        let watched = tokio::select! {
            w = client.watch(range, start) => w,
            _ = stop.changed() => return,
        };
        match watched {
            Ok(w) => {
                tracing::debug!(from = start, endpoint = w.endpoint(), "following the store's changes");
                backoff = RELOAD_BACKOFF;
                match run(&rings, &store, &fresh, w, tick, &mut stop).await {
                    Ended::Stopped => return,
                    Ended::Reload(why) => tracing::warn!(reason = %why, "store watch ended: reloading the key rings"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the store: reloading the key rings"),
        }
        // Changes may have been missed: reload from a fresh snapshot.
        loop {
            let (r, s, f) = (rings.clone(), store.clone(), fresh.clone());
            let reloaded = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let at = s.revision()?; // a quorum read before the snapshot
                let n = r.reload()?;
                f.confirm(t);
                Ok::<_, crate::error::Error>((at, n))
            })
            .await;
            match reloaded {
                Ok(Ok((at, n))) => {
                    tracing::info!(keys = n, revision = at, "key rings reloaded from the store");
                    start = at + 1;
                    break;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "reloading the key rings failed; retrying"),
                Err(e) => tracing::error!(error = %e, "reloading the key rings stopped"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Why a watch stopped being followed.
enum Ended {
    Stopped,
    Reload(String),
}

/// Follows one watch: installs changed rings, confirms freshness.
async fn run(
    rings: &Arc<Rings>,
    store: &Arc<EtcdStore>,
    fresh: &Arc<Freshness>,
    mut w: Watcher,
    tick: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    // (time taken, revision) of quorum reads waiting for the watch to
    // deliver up to their revision
    let mut pending: VecDeque<(Instant, i64)> = VecDeque::new();
    let (rev_tx, mut rev_rx) = tokio::sync::mpsc::channel::<(Instant, i64)>(4);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ended::Stopped,
            _ = ticker.tick() => {
                // the quorum read runs on its own: without a quorum it
                // waits for the request timeout, and the watch must not
                let (client, tx) = (store.client(), rev_tx.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    if let Ok(r) = client.revision().await {
                        let _ = tx.try_send((t, r));
                    }
                });
            }
            Some((t, r)) = rev_rx.recv() => {
                pending.push_back((t, r));
                if let Err(e) = w.request_progress().await {
                    return Ended::Reload(e.to_string());
                }
            }
            ev = w.next() => match ev {
                Ok(WatchEvent::Events { events, .. }) => {
                    let names: BTreeSet<String> = events
                        .iter()
                        .filter_map(|e| store.decode_key(&e.kv.key))
                        .filter(|(kind, _)| *kind == RecordKind::KeyRing)
                        .map(|(_, name)| name)
                        .collect();
                    if !names.is_empty() {
                        let r = rings.clone();
                        let applied = tokio::task::spawn_blocking(move || {
                            for n in &names {
                                r.apply_remote(n)?;
                            }
                            Ok::<_, crate::error::Error>(())
                        })
                        .await;
                        match applied {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return Ended::Reload(format!("installing a changed ring: {e}")),
                            Err(e) => return Ended::Reload(format!("installing a changed ring: {e}")),
                        }
                    }
                }
                Ok(WatchEvent::Progress { .. }) => {}
                Ok(WatchEvent::Compacted { compact_revision }) => {
                    return Ended::Reload(format!("history compacted up to revision {compact_revision}"));
                }
                Ok(WatchEvent::Canceled { reason }) => return Ended::Reload(format!("canceled by etcd: {reason}")),
                Err(e) => return Ended::Reload(e.to_string()),
            },
        }
        // every quorum read the watch has caught up with confirms the cache
        let delivered = w.delivered_revision();
        while let Some(&(t, r)) = pending.front() {
            if r > delivered {
                break;
            }
            fresh.confirm(t);
            pending.pop_front();
        }
    }
}
