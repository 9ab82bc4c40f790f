//! Failover through the client library (issue 14): two kmsd nodes on one
//! etcd store, a client given both endpoints, and one node killed with
//! `SIGKILL` in the middle of 10,000 decrypts: not one call fails (the
//! calls cut by the kill, and every later one, are retried on the other
//! node).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::cluster::KmsCluster;
use common::lib_client::*;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CALLS: usize = 10_000;
const TASKS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_10_000_decrypts_fails_no_call() {
    let t0 = std::time::Instant::now();
    let mut cluster = KmsCluster::start(1, 2, "");
    eprintln!("cluster up in {:?}", t0.elapsed());
    let addrs: Vec<String> = (0..2).map(|i| cluster.node(i).tcp.clone().unwrap()).collect();
    let client = builder(cluster.dir(0), &addrs).connect().await.unwrap();
    create_key(&client, "failover").await;
    let mut cts = Vec::new();
    for i in 0..50u32 {
        let r = client
            .encrypt(enc("failover", format!("pan {i}").as_bytes(), b"fo"))
            .await
            .unwrap();
        cts.push(r.ciphertext);
    }
    // the second node sees the key (same store) before the load starts
    let other = builder(cluster.dir(1), &addrs[1..]).connect().await.unwrap();
    other.decrypt(dec("failover", &cts[0], b"fo")).await.unwrap();

    let cts = Arc::new(cts);
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (client, cts, done) = (client.clone(), cts.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in (t..CALLS).step_by(TASKS) {
                let k = i % cts.len();
                match client.decrypt(dec("failover", &cts[k], b"fo")).await {
                    Ok(r) => assert_eq!(r.plaintext, format!("pan {k}").as_bytes()),
                    Err(e) => failures.push(format!("call {i}: {e}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // SIGKILL node 0 (the one every call goes to) about a third of the way
    while done.load(Ordering::Relaxed) < CALLS / 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let at = done.load(Ordering::Relaxed);
    eprintln!("{at} calls at {:?}", t0.elapsed());
    cluster.kill_node(0);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    eprintln!("all calls done at {:?}", t0.elapsed());
    assert_eq!(done.load(Ordering::Relaxed), CALLS);
    assert!(
        at < CALLS * 2 / 3,
        "the kill came too late to test anything ({at} calls done)"
    );
    assert!(
        failures.is_empty(),
        "{} failed calls, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // and the client now sends to node 1
    let r = client.decrypt(dec("failover", &cts[1], b"fo")).await.unwrap();
    assert_eq!(r.plaintext, b"pan 1");
    assert!(format!("{client:?}").contains("current: 1"), "{client:?}");
    // the calls cut by the kill were retried, not lucky
    assert!(client.failovers() >= 1 && client.retries() >= 1, "{client:?}");
    eprintln!("{client:?}");
}
