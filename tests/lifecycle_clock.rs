//! Key lifecycle with an injected clock: deterministic scheduling,
//! usage limits, counting across restarts, destruction. The real key
//! manager over the real (in-memory) store; only time is simulated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd::rings::{Rings, RESERVATION_BLOCK};
use kmsd::Error;
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::{Clock, KeyStore, MasterKey, MemoryStore, RingStore, Sealer, UnixTime, VersionState};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

struct FakeClock(AtomicI64);
impl Clock for FakeClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }
}

struct World {
    store: Arc<MemoryStore>,
    clock: Arc<FakeClock>,
}

impl World {
    fn new(t: UnixTime) -> Self {
        World {
            store: Arc::new(MemoryStore::new()),
            clock: Arc::new(FakeClock(AtomicI64::new(t))),
        }
    }
    /// A daemon instance over the world's store (a "restart" makes a new one).
    fn keys(&self) -> Arc<Rings> {
        let store: Arc<dyn KeyStore> = self.store.clone();
        let rings = RingStore::open(store, Sealer::new(MasterKey::from_bytes(&[5; 32]))).unwrap();
        Arc::new(Rings::load(rings, self.clock.clone(), false).unwrap())
    }
    fn set(&self, t: UnixTime) {
        self.clock.0.store(t, Ordering::SeqCst);
    }
}

fn periodic(secs: u64) -> KeyPolicy {
    KeyPolicy {
        rotation_period_secs: Some(secs),
        ..KeyPolicy::default()
    }
}

#[test]
fn scheduled_rotation_fires_at_its_second() {
    let w = World::new(1_000_000);
    let keys = w.keys();
    let ring = keys.create("sched", periodic(3600)).unwrap();
    assert_eq!(ring.next_rotation_at, Some(1_003_600));
    assert_eq!(keys.next_deadline(), Some(1_003_600));
    assert_eq!(keys.run_due(1_003_599).unwrap(), 0);
    assert_eq!(keys.get("sched").unwrap().primary, 1);
    w.set(1_003_600);
    assert_eq!(keys.run_due(1_003_600).unwrap(), 1);
    let ring = keys.get("sched").unwrap();
    assert_eq!(ring.primary, 2);
    assert_eq!(ring.versions[1].created_at, 1_003_600);
    assert_eq!(ring.next_rotation_at, Some(1_007_200));
    assert_eq!(ring.rotations.last().unwrap().reason, RotationReason::Scheduled);
    assert_eq!((ring.rotations[0].from_version, ring.rotations[0].to_version), (1, 2));
    assert_eq!(keys.next_deadline(), Some(1_007_200));
    // nothing more at the same second
    assert_eq!(keys.run_due(1_003_600).unwrap(), 0);
}

#[test]
fn downtime_rotates_once_and_clock_jumps_never_repeat() {
    let w = World::new(0);
    {
        let keys = w.keys();
        keys.create("k", periodic(3600)).unwrap();
    }
    // the daemon was down for ten periods; on restart the overdue key rotates once
    w.set(36_000 + 17);
    let keys = w.keys();
    assert_eq!(keys.run_due(w.clock.now()).unwrap(), 1);
    assert_eq!(keys.run_due(w.clock.now()).unwrap(), 0);
    let ring = keys.get("k").unwrap();
    assert_eq!(ring.primary, 2);
    assert_eq!(ring.next_rotation_at, Some(36_017 + 3600));
    // wall clock jumps backwards: no repeated rotation, ever
    for t in [0, 100, 36_000, 36_017 + 3599] {
        w.set(t);
        assert_eq!(keys.run_due(t).unwrap(), 0, "at {t}");
    }
    assert_eq!(keys.get("k").unwrap().primary, 2);
    // a jump far forwards rotates exactly once
    w.set(1_000_000);
    assert_eq!(keys.run_due(1_000_000).unwrap(), 1);
    assert_eq!(keys.run_due(1_000_000).unwrap(), 0);
    let ring = keys.get("k").unwrap();
    assert_eq!(ring.primary, 3);
    assert_eq!(ring.next_rotation_at, Some(1_003_600));
    // the schedule survives a restart
    let again = w.keys();
    assert_eq!(again.next_deadline(), Some(1_003_600));
}

#[test]
fn manual_rotation_keeps_the_schedule_unless_the_policy_says_so() {
    let w = World::new(0);
    let keys = w.keys();
    keys.create("keep", periodic(10_000)).unwrap();
    w.set(4000);
    let ring = keys.rotate("keep", RotationReason::Manual).unwrap();
    assert_eq!(ring.primary, 2);
    assert_eq!(
        ring.next_rotation_at,
        Some(10_000),
        "manual rotation does not move the schedule"
    );
    let p = KeyPolicy {
        manual_rotation_resets_schedule: true,
        ..periodic(10_000)
    };
    keys.create("reset", p).unwrap();
    let ring = keys.rotate("reset", RotationReason::Manual).unwrap();
    assert_eq!(ring.next_rotation_at, Some(14_000));
}

#[test]
fn usage_limit_rotates_after_the_limit_and_never_crosses_it() {
    let w = World::new(0);
    let keys = w.keys();
    keys.create(
        "u",
        KeyPolicy {
            max_encryptions_per_version: Some(100),
            ..KeyPolicy::default()
        },
    )
    .unwrap();
    for i in 0..100 {
        assert_eq!(keys.encrypt("u", b"x", b"").unwrap().version, 1, "encryption {}", i + 1);
    }
    let e = keys.encrypt("u", b"x", b"").unwrap();
    assert_eq!(e.version, 2, "the 101st encryption uses the new version");
    let ring = keys.get("u").unwrap();
    assert_eq!(ring.rotations.last().unwrap().reason, RotationReason::Usage);
    assert_eq!(keys.usage("u")[0].encryptions, 100);
    assert_eq!(ring.versions[0].state, VersionState::DecryptOnly);
    // old ciphertexts still decrypt
    let (_, v) = keys.decrypt("u", &e.ciphertext, b"").unwrap();
    assert_eq!(v, 2);
}

#[test]
fn encryption_counts_never_go_backwards_across_restarts() {
    let w = World::new(0);
    let mut last = 0;
    for round in 0..5 {
        let keys = w.keys();
        if round == 0 {
            keys.create("c", KeyPolicy::default()).unwrap();
        }
        let before = keys.usage("c")[0].encryptions;
        assert!(before >= last, "round {round}: {before} < {last}");
        for _ in 0..(RESERVATION_BLOCK / 3) {
            keys.encrypt("c", b"", b"").unwrap();
        }
        last = keys.usage("c")[0].encryptions;
        // crash: no flush, no clean shutdown
    }
    let stored = w.keys().get("c").unwrap().versions[0].encryptions_reserved;
    assert!(stored >= last, "durably reserved {stored} < counted {last}");
}

#[test]
fn a_smaller_reservation_block_bounds_the_over_count_after_a_crash() {
    let w = World::new(0);
    let keys = w.keys();
    keys.set_reservation_block(10);
    keys.create("b", KeyPolicy::default()).unwrap();
    for n in 1..=95u64 {
        keys.encrypt("b", b"", b"").unwrap();
        let stored = w.keys().get("b").unwrap().versions[0].encryptions_reserved;
        assert!(stored >= n, "after {n} encryptions only {stored} are durably reserved");
        assert!(
            stored < n + 15,
            "after {n} encryptions {stored} are reserved: over 1.5 blocks ahead"
        );
    }
    // crash: a new instance resumes from the reservation, which is never
    // below what was performed
    assert!(w.keys().usage("b")[0].encryptions >= 95);
}

#[test]
fn destruction_waits_then_removes_material_and_can_be_cancelled() {
    let w = World::new(10_000);
    let keys = w.keys();
    keys.create("d", KeyPolicy::default()).unwrap();
    let ct = keys.encrypt("d", b"old", b"").unwrap().ciphertext;
    keys.rotate("d", RotationReason::Manual).unwrap();
    // the primary cannot be destroyed
    let at = keys.destruction_time(86_400).unwrap();
    assert!(keys.modify("d", |r| r.schedule_destruction(2, at)).is_err());
    // less than a day is refused outside dev mode
    assert!(matches!(keys.destruction_time(3600), Err(Error::InvalidArgument(_))));
    keys.modify("d", |r| r.schedule_destruction(1, at)).unwrap();
    assert!(matches!(
        keys.decrypt("d", &ct, b""),
        Err(Error::VersionUnusable {
            state: VersionState::ScheduledForDestruction,
            ..
        })
    ));
    // cancel → DISABLED, still has material, re-enable → decrypts
    keys.modify("d", |r| r.cancel_destruction(1)).unwrap();
    assert_eq!(keys.get("d").unwrap().versions[0].state, VersionState::Disabled);
    keys.modify("d", |r| r.set_version_state(1, VersionState::DecryptOnly))
        .unwrap();
    assert_eq!(keys.decrypt("d", &ct, b"").unwrap().0, b"old");
    // schedule again and let the time come
    keys.modify("d", |r| r.schedule_destruction(1, at)).unwrap();
    assert_eq!(keys.run_due(at - 1).unwrap(), 0);
    assert_eq!(keys.run_due(at).unwrap(), 1);
    let ring = keys.get("d").unwrap();
    assert_eq!(ring.versions[0].state, VersionState::Destroyed);
    assert!(ring.versions[0].material.is_none(), "material removed from the store");
    let e = keys.decrypt("d", &ct, b"").unwrap_err();
    assert!(e.to_string().contains("version 1 is DESTROYED"), "{e}");
    // metadata is kept, destruction is final
    assert!(keys.modify("d", |r| r.cancel_destruction(1)).is_err());
}

#[test]
fn whole_key_deletion_needs_the_policy_and_can_be_cancelled() {
    let w = World::new(0);
    let keys = w.keys();
    keys.create("no-del", KeyPolicy::default()).unwrap();
    assert!(keys.modify("no-del", |r| r.schedule_deletion(100_000)).is_err());
    keys.create(
        "del",
        KeyPolicy {
            deletion_allowed: true,
            ..KeyPolicy::default()
        },
    )
    .unwrap();
    keys.modify("del", |r| r.schedule_deletion(100_000)).unwrap();
    assert!(matches!(
        keys.encrypt("del", b"", b""),
        Err(Error::VersionUnusable { .. })
    ));
    keys.modify("del", |r| r.cancel_deletion()).unwrap();
    keys.encrypt("del", b"", b"").unwrap();
    keys.modify("del", |r| r.schedule_deletion(100_000)).unwrap();
    keys.run_due(100_000).unwrap();
    let ring = keys.get("del").unwrap();
    assert!(ring
        .versions
        .iter()
        .all(|v| v.state == VersionState::Destroyed && v.material.is_none()));
}

#[test]
fn min_decryption_version_blocks_old_versions() {
    let w = World::new(0);
    let keys = w.keys();
    keys.create("m", KeyPolicy::default()).unwrap();
    let ct = keys.encrypt("m", b"v1", b"").unwrap().ciphertext;
    keys.rotate("m", RotationReason::Manual).unwrap();
    keys.set_policy(
        "m",
        KeyPolicy {
            min_decryption_version: 2,
            ..KeyPolicy::default()
        },
    )
    .unwrap();
    let e = keys.decrypt("m", &ct, b"").unwrap_err();
    assert!(
        matches!(
            e,
            Error::VersionBelowMinimum {
                version: 1,
                minimum: 2,
                ..
            }
        ),
        "{e}"
    );
    // cannot require more than the primary
    assert!(keys
        .set_policy(
            "m",
            KeyPolicy {
                min_encryption_version: 3,
                ..KeyPolicy::default()
            }
        )
        .is_err());
}

/// Two nodes over one store (each with its own cache and manifest), with
/// an injected clock: only the leader runs what is due, and once another
/// node holds the leader record a write of the former leader (which still
/// believes its term lasts) is refused by its fence: nothing written, the
/// refusal counted, its term over. (tests/leader.rs shows the same with
/// real etcd, real daemons and a real `SIGSTOP`.)
#[test]
fn only_the_leader_schedules_and_a_deposed_leaders_write_is_fenced() {
    use kmsd::rings::{Leadership, LEADER_RECORD};
    use kmsd_keystore::RecordKind;
    let w = World::new(1_000_000);
    let a = w.keys();
    a.create("k", periodic(3600)).unwrap();
    let b = w.keys();
    let (lead_a, lead_b) = (Arc::new(Leadership::new()), Arc::new(Leadership::new()));
    a.set_leadership(lead_a.clone());
    b.set_leadership(lead_b.clone());
    let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    // A wins the election: the leader record, as the campaign writes it
    let term_a = w.store.put(RecordKind::Lease, LEADER_RECORD, None, b"a").unwrap();
    lead_a.lead(term_a, far);
    w.set(1_003_600);
    assert_eq!(b.run_due(1_003_600).unwrap(), 0, "a follower runs nothing");
    assert_eq!(b.get("k").unwrap().primary, 1);
    assert_eq!(a.run_due(1_003_600).unwrap(), 1);
    assert_eq!(a.get("k").unwrap().primary, 2);
    // B took over (on etcd A's record expired with its lease and B created
    // it again at a new revision; the memory store numbers a re-created
    // record from 1 again, so here B replaces it); A has not noticed yet
    let term_b = w
        .store
        .put(RecordKind::Lease, LEADER_RECORD, Some(term_a), b"b")
        .unwrap();
    lead_b.lead(term_b, far);
    assert!(lead_a.is_leader());
    w.set(1_007_200);
    assert!(matches!(a.run_due(1_007_200), Err(Error::Fenced)));
    let ring = a.get("k").unwrap();
    assert_eq!(
        (ring.primary, ring.versions.len()),
        (2, 2),
        "nothing of the fenced write"
    );
    assert_eq!(lead_a.fenced_writes(), 1);
    assert!(!lead_a.is_leader(), "a refused write ends the term");
    assert_eq!(a.run_due(1_007_200).unwrap(), 0);
    // the new leader rotates, once
    assert_eq!(b.run_due(1_007_200).unwrap(), 1);
    assert_eq!(b.get("k").unwrap().primary, 3);
    assert_eq!(b.run_due(1_007_200).unwrap(), 0);
    assert!(a.stats().fenced_writes == 1 && !a.stats().scheduler_leader && b.stats().scheduler_leader);
}
