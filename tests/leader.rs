//! Exactly-once scheduled work across kmsd nodes (issue 13): one leader
//! elected on an etcd lease runs scheduled rotations, and its writes are
//! fenced with its term. Real etcd members on loopback, three real
//! daemons over real mTLS (tests/common/cluster.rs), a key rotating every
//! 2 seconds.
//!
//! # How rotations are counted
//! A version's `created_at` is the scheduler's clock (whole seconds) when
//! it decided the rotation, and the next rotation is due `period` after
//! it. So between consecutive versions:
//! - a gap shorter than the period means two rotations in one period
//!   (the failure "exactly once" excludes): every gap must be at least
//!   the period;
//! - a gap of `period + 1` is a scheduler that woke up to a second late
//!   (the deadline is in whole seconds, a loaded machine is slow): allowed;
//! - a longer gap is a missed period: allowed only where the leader died
//!   (at most one gap of `period + TTL + 2 s`: the lease runs out, another
//!   node wins and rotates at once).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::cluster::{KmsCluster, STORE_TIMERS};
use common::*;
use kmsd::proto::{self, admin_client::AdminClient};
use std::time::{Duration, Instant};

/// The rotation period of the test key, seconds.
const PERIOD: i64 = 2;
/// The leader lease's TTL in these tests, seconds.
const TTL: i64 = 2;

fn timers() -> String {
    format!("{STORE_TIMERS}leader_lease_ttl = \"{TTL}s\"\n")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Creates `name` rotating every [`PERIOD`] seconds through node `i`;
/// returns its creation time.
async fn create_rotating(c: &KmsCluster, i: usize, name: &str) -> i64 {
    let (_, mut keys) = c.clients(i).await;
    let info = create_with(
        &mut keys,
        name,
        proto::KeyPolicy {
            rotation_period_seconds: Some(PERIOD as u64),
            ..Default::default()
        },
    )
    .await;
    info.created_at
}

/// Every version's creation time, read through node `i`.
async fn created_times(c: &KmsCluster, i: usize, name: &str) -> Vec<i64> {
    let (_, mut keys) = c.clients(i).await;
    get(&mut keys, name)
        .await
        .versions
        .iter()
        .map(|v| v.created_at)
        .collect()
}

/// The gaps between consecutive versions (see the module documentation).
fn gaps(created: &[i64]) -> Vec<i64> {
    created.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Scheduled rotations a node's log reports.
fn scheduled_rotations_logged(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("key rotated") && l.contains("reason=\"scheduled\""))
        .count()
}

/// Waits up to `limit` for `f`.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three nodes, one key with a 2-second period, ~10 seconds: one rotation
/// per period, every one made by the leader alone (the others' schedulers
/// do not run: no conflicting attempt, no second rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rotation_per_period_across_three_nodes() {
    let c = KmsCluster::start_with(3, 3, &timers(), "");
    wait_until("a scheduler leader", Duration::from_secs(10), || c.leader().is_some());
    let created = create_rotating(&c, 0, "every2s").await;
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let leader = c.leader().expect("a leader");
    let times = created_times(&c, 1, "every2s").await;
    let rotations: Vec<i64> = times.iter().copied().filter(|t| *t <= created + 10).collect();
    let g = gaps(&rotations);
    eprintln!("versions created at {times:?} (key created at {created}); gaps {g:?}");
    assert!(
        g.iter().all(|d| (PERIOD..=PERIOD + 1).contains(d)),
        "one rotation per {PERIOD}-second period (gaps {g:?}, versions created at {times:?})"
    );
    // 5 periods in 10 s; each late second shifts the cadence
    assert!(
        (4..=6).contains(&rotations.len()),
        "{} versions: {times:?}",
        rotations.len()
    );
    // every scheduled rotation was made, and logged, by the leader alone
    let logged: Vec<usize> = c
        .nodes
        .iter()
        .map(|d| scheduled_rotations_logged(&d.log_text()))
        .collect();
    assert_eq!(
        logged.iter().sum::<usize>(),
        times.len() - 1,
        "each rotation logged once ({logged:?})"
    );
    // made by the leader alone, unless a term ended during the run (a lease
    // renewal that comes late on a loaded machine ends it; the next leader
    // carries on the cadence, which the gaps above check): then each
    // rotation came from a node that held a term
    let logs: Vec<String> = c.nodes.iter().map(|d| d.log_text()).collect();
    let led = |log: &String| log.contains("this node is the scheduler leader");
    if logs.iter().any(|l| l.contains("is no longer the scheduler leader")) {
        eprintln!("a term ended during the run; rotations by node {logged:?}");
        for (i, n) in logged.iter().enumerate().filter(|(_, n)| **n > 0) {
            assert!(led(&logs[i]), "node {i} rotated {n} times without a term: {}", logs[i]);
        }
    } else {
        assert_eq!(logged[leader], times.len() - 1, "the leader made them all ({logged:?})");
    }
    // nodes that never led never attempted one (no conflict to retry, no refusal)
    for (i, log) in logs.iter().enumerate().filter(|(_, l)| !led(l)) {
        assert!(!log.contains("scheduled key maintenance failed"), "node {i}: {log}");
        assert!(!log.contains("refused by its fence"), "node {i}: {log}");
    }
}

/// The leader killed (`SIGKILL`) mid-cadence, then started again: another
/// node takes over within about one TTL and rotates the overdue key at
/// once; no period ever gets two rotations, before, across or after the
/// take-over and the restart, and the cadence continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_and_restarted_keeps_one_rotation_per_period() {
    let mut c = KmsCluster::start_with(3, 3, &timers(), "");
    wait_until("a scheduler leader", Duration::from_secs(10), || c.leader().is_some());
    let old = c.leader().unwrap();
    let other = (old + 1) % 3;
    create_rotating(&c, other, "failover").await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let killed_at = Instant::now();
    c.kill_node(old);
    wait_until("another node to lead", Duration::from_secs(15), || {
        c.leader().is_some_and(|l| l != old)
    });
    let takeover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.restart_node(old);
    let restarted = unix_now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let times = created_times(&c, other, "failover").await;
    let g = gaps(&times);
    eprintln!("take-over after SIGKILL: {takeover:?}; restarted at {restarted}; versions at {times:?}; gaps {g:?}");
    assert!(
        g.iter().all(|d| *d >= PERIOD),
        "never two rotations in one period, across the kill and the restart (gaps {g:?}, versions at {times:?})"
    );
    let long: Vec<&i64> = g.iter().filter(|d| **d > PERIOD + 1).collect();
    assert!(
        long.len() <= 1 && long.iter().all(|d| **d <= PERIOD + TTL + 2),
        "one period may be missed while the lease of the killed leader runs out (took {takeover:?}); gaps {g:?}"
    );
    assert!(
        takeover < Duration::from_secs(TTL as u64 + 5),
        "take-over in about one TTL: {takeover:?}"
    );
    // the cadence goes on after the restart
    assert!(
        times.iter().filter(|t| **t >= restarted).count() >= 1,
        "rotations continue after the restart: {times:?} (restarted at {restarted})"
    );
    assert!(c.leader().is_some());
}

/// The textbook fencing case: the leader has decided a rotation (ring
/// read, new version computed) and is paused (`SIGSTOP`) before its write
/// reaches etcd. Its lease runs out, another node wins, decides the same
/// overdue rotation and is itself held before writing (the failpoint
/// `scheduled-write` pauses every node's first scheduled write for 4 s,
/// so the order is fixed). The old leader is resumed (`SIGCONT`) and its
/// write arrives first: the fence (its term's leader record revision, now
/// replaced) refuses it, nothing of it is written, and the new leader's
/// rotation is the period's only one.
///
/// Without the fence the old leader's write would land (the ring's own
/// compare-and-swap holds: nobody wrote the ring meanwhile), a rotation
/// by a node that had lost the leadership; this test then fails on the
/// old leader's log (checked by running it with the fence taken out of
/// `Rings::run_due`: the paused node logged `key rotated ...
/// reason="scheduled"` and no refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_cannot_rotate_after_another_took_over() {
    let c = KmsCluster::start_env(3, 3, &timers(), "", &[("FAILPOINTS", "scheduled-write=1*return(4000)")]);
    wait_until("a scheduler leader", Duration::from_secs(10), || c.leader().is_some());
    let old = c.leader().unwrap();
    let reached = |i: usize| c.node(i).log_text().contains("kmsd failpoint: scheduled-write");
    create_rotating(&c, (old + 1) % 3, "fenced").await;
    // the leader decided the first rotation and waits before writing it
    wait_until("the leader's first scheduled write", Duration::from_secs(10), || {
        reached(old)
    });
    signal(c.node(old).pid(), "STOP");
    let stopped_at = unix_now();
    wait_until(
        "another node to lead and decide the rotation",
        Duration::from_secs(15),
        || (0..3).any(|i| i != old && reached(i)),
    );
    let new = (0..3).find(|&i| i != old && reached(i)).unwrap();
    assert_eq!(c.leader(), Some(new), "the record names the new leader");
    signal(c.node(old).pid(), "CONT");
    // the old leader's write arrives (while the new one still waits):
    // refused by its fence, or (without a fence) a rotation
    wait_until("the old leader's write to be answered", Duration::from_secs(10), || {
        let log = c.node(old).log_text();
        log.contains("refused by its fence") || scheduled_rotations_logged(&log) > 0
    });
    let old_log = c.node(old).log_text();
    assert_eq!(
        scheduled_rotations_logged(&old_log),
        0,
        "the paused leader rotated nothing:\n{old_log}"
    );
    assert!(old_log.contains("refused by its fence"), "{old_log}");
    wait_until("the old leader to step down", Duration::from_secs(5), || {
        c.node(old)
            .log_text()
            .contains("this node is no longer the scheduler leader")
    });
    // the new leader's rotation is the period's one, and the cadence goes
    // on from it: no version from the old leader's decision
    wait_until("the new leader's rotation", Duration::from_secs(10), || {
        scheduled_rotations_logged(&c.node(new).log_text()) >= 2
    });
    let times = created_times(&c, new, "fenced").await;
    let g = gaps(&times);
    eprintln!("old leader stopped at {stopped_at}; versions at {times:?}; gaps {g:?}");
    assert!(g.iter().all(|d| *d >= PERIOD), "gaps {g:?}, versions at {times:?}");
    assert!(
        times.get(1).is_some_and(|t| *t > stopped_at),
        "version 2 is the new leader's (decided after the old one stopped at {stopped_at}): {times:?}"
    );
    assert_eq!(c.leader(), Some(new));
}

/// `Status` on each of three nodes names exactly one scheduler leader: the
/// node holding the leader record says it leads, the others say they do
/// not, and all three name it (the record's value) with the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_exactly_one_scheduler_leader() {
    let c = KmsCluster::start_with(3, 3, &timers(), "");
    wait_until("a scheduler leader", Duration::from_secs(10), || c.leader().is_some());
    // followers learn the holder when they lose a campaign: poll until the
    // three answers agree (a term may end on a loaded machine meanwhile)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = c.leader_record();
        let mut st = Vec::new();
        for i in 0..3 {
            let mut admin = AdminClient::new(c.node(i).channel().await);
            st.push(admin.status(proto::StatusRequest {}).await.unwrap().into_inner());
        }
        let leading: Vec<usize> = (0..3).filter(|i| st[*i].scheduler_leader).collect();
        if let [a, b, ..] = leading[..] {
            // answers taken one after the other may straddle a new term,
            // never two nodes in one term
            assert_ne!(st[a].leader_term, st[b].leader_term, "two leaders in one term: {st:?}");
        }
        let agreed = leading.len() == 1
            && record.is_some()
            && st.iter().all(|s| {
                Some(&s.leader) == record.as_ref() && s.leader_term > 0 && s.leader_term == st[leading[0]].leader_term
            });
        if agreed && c.leader() == Some(leading[0]) {
            for (i, s) in st.iter().enumerate() {
                assert_eq!(s.backend, "etcd", "node {i}");
                assert_eq!(s.max_staleness_ms, 5000, "node {i}");
                assert!(s.cache_age_ms <= s.max_staleness_ms, "node {i}: {s:?}");
                assert_eq!(s.fenced_writes, 0, "node {i}");
            }
            assert!(st[leading[0]].leader_terms_won >= 1);
            // and kmsctl shows it
            let d = c.node(leading[0]);
            let o = std::process::Command::new(kmsctl_bin())
                .arg("--addr")
                .arg(format!("unix:{}", d.socket.display()))
                .arg("--ca")
                .arg(d.dir.join("ca.pem"))
                .arg("--cert")
                .arg(d.dir.join("client.pem"))
                .arg("--tls-key")
                .arg(d.dir.join("client.key"))
                .arg("status")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{text} {}", String::from_utf8_lossy(&o.stderr));
            let line = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap_or_default().to_owned();
            assert!(line("backend:").ends_with(" etcd"), "{text}");
            assert!(line("scheduler_leader:").ends_with(" yes"), "{text}");
            assert!(line("leader:").contains(record.as_deref().unwrap()), "{text}");
            assert!(line("cache_age:").contains("serves up to 5000 ms"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not agree on one leader (record {record:?}): {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
