//! [`EtcdStore`]: the [`KeyStore`] contract on an etcd cluster.
//!
//! # Layout in etcd
//! One etcd key per record: `<prefix><kind tag><name>`, where the prefix
//! is the cluster's (`/kmsd/<cluster>/`) and the tag is the record kind's
//! byte ([`RecordKind::tag`]), as in the sled backend. The value is the
//! sealed record, unchanged: etcd never sees key material in clear. A
//! record's [`Revision`] is its etcd `mod_revision`: it grows with every
//! write of the record (by more than one when other records were written
//! meanwhile), and a record deleted and created again never gets an old
//! revision back.
//!
//! # Writes
//! [`KeyStore::apply`] (and so `put` and `delete`) is one etcd
//! transaction: it compares each record's `mod_revision` with the expected
//! revision (`create_revision == 0` for "absent"), then writes every
//! record. A fenced batch ([`KeyStore::apply_fenced`]) compares the fence
//! record's `mod_revision` in the same transaction: the scheduler leader's
//! writes compare the leader key its election created, so they apply only
//! while that key (and the lease it hangs on) is still this node's. When a comparison fails, the transaction's failure branch reads
//! the same records (keys and revisions only, at the same revision) and
//! the keystore's own condition check ([`kmsd_keystore::store::check_cond`])
//! names the first failing one, `Conflict` or `NotFound`, exactly as the
//! other backends do. Durability is etcd's: a transaction is acknowledged
//! once a quorum has it in its log, so [`KeyStore::sync`] has nothing to
//! do.
//!
//! # Reads
//! Linearizable (etcd's default range): a read sees every write
//! acknowledged before it started, on any node. `list` pages by key range
//! with etcd's limit; `for_each` pages through a kind at one revision (a
//! consistent snapshot; pages of a few MiB, since etcd's cost per page grows
//! with what is left of the range: [`PAGE_BYTES`]) and remembers it
//! ([`EtcdStore::snapshot_revision`]),
//! the point a cache that loaded from it watches from
//! ([`EtcdStore::watch`]).
//!
//! # Sync trait, async client
//! The trait is synchronous and is called from tokio worker threads
//! (sometimes inside `block_in_place` or `spawn_blocking`). The store owns
//! a runtime on a thread of its own: each call spawns its request there and
//! waits on a `std` channel for the answer. It never enters the caller's
//! runtime, so it works from any context.
//!
//! # Failures
//! etcd unreachable, without quorum or too slow (the request timeout) is
//! the keystore's `Backend` error, which the daemon answers `UNAVAILABLE`.
//! A write that fails so may have been applied: the next compare-and-swap
//! tells (its revision no longer matches).
//!
//! # Sizes
//! etcd refuses a request over `--max-request-bytes` (1.5 MiB by
//! default): a transaction's records together must stay below it, else
//! the write fails with "too large" and changes nothing
//! (tests/store.rs::etcds_request_limit_bounds_a_record). kmsd's largest
//! records are key rings: about 120 bytes sealed for the first version,
//! then about 45 bytes per version (measured on sealed rings of 1 to
//! 10,000 versions with 128-character names: 10,000 versions seal to
//! 450,594 bytes), so a ring fits up to about 34,000 versions; the
//! manifest adds two records of under 100 bytes to each write.
use crate::client::{Cmp, Compare, EtcdClient, Range, Settings, Txn, TxnOp, TxnOpResult};
use crate::error::Error as EtcdError;
use crate::watch::Watcher;
use kmsd_keystore::store::{check_cond, check_fence, Cond, Entry, Fence, KeyStore, Op, RecordKind, Revision};
use kmsd_keystore::Error;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Records in the first page when reading a whole kind; the next pages
/// are sized by bytes ([`PAGE_BYTES`]).
const FIRST_PAGE: i64 = 1000;

/// What a page of a whole-kind read aims at, in bytes. etcd 3.4 walks
/// its in-memory index from a page's first key to the *end of the range*
/// on every page and applies the limit afterwards, so reading N records
/// in pages of L costs about N²/2L index steps: pages of 1,000 records
/// made 100,000 rings take seconds in etcd alone (BENCHMARKS.md, issue
/// 13). Pages of a few MiB (about 20,000 rings) cut that twentyfold,
/// and each answer stays far below the client's
/// [`crate::client::MAX_RESPONSE_BYTES`] (a page refused as too large
/// is halved and read again).
const PAGE_BYTES: usize = 4 << 20;

/// Most records in one page, whatever their size.
const MAX_PAGE: i64 = 50_000;

/// The next page's size: [`PAGE_BYTES`] over the mean size of the
/// records just read, within `1..=MAX_PAGE`.
fn next_page(records: usize, bytes: usize) -> i64 {
    let mean = (bytes / records.max(1)).max(1);
    i64::try_from(PAGE_BYTES / mean).unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE)
}

/// The kinds a stored key can name (for [`EtcdStore::decode_key`]).
const KINDS: [RecordKind; 5] = [
    RecordKind::KeyRing,
    RecordKind::Meta,
    RecordKind::Secret,
    RecordKind::Manifest,
    RecordKind::Lease,
];

/// A [`KeyStore`] on etcd (see the module documentation).
pub struct EtcdStore {
    /// `/kmsd/<cluster>/`: every key of this store starts with it.
    prefix: Vec<u8>,
    client: EtcdClient,
    /// The store's own runtime, on its own thread.
    runtime: tokio::runtime::Handle,
    /// Ends the runtime thread (dropped with the store).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// How long a caller waits for an answer at most (the client's request
    /// timeout plus a margin: the client's own timeout answers first).
    wait: Duration,
    /// The revision of the last complete `for_each` (0: none yet).
    snapshot: AtomicI64,
    /// The store's revision when it was opened.
    opened_at: i64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EtcdStore({} at {:?})",
            String::from_utf8_lossy(&self.prefix),
            self.client.endpoints()
        )
    }
}

/// Checks a store prefix: absolute, ending with `/`, printable.
fn check_prefix(prefix: &str) -> Result<(), Error> {
    let ok = prefix.len() >= 2
        && prefix.starts_with('/')
        && prefix.ends_with('/')
        && prefix.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "etcd key prefix {prefix:?}: expected an absolute path ending with '/' (such as /kmsd/prod/), \
             printable ASCII without spaces"
        )))
    }
}

impl EtcdStore {
    /// Connects to etcd, checks that the prefix can be read (reachable,
    /// and etcd's authorization allows it), and returns the store.
    pub fn open(settings: &Settings, prefix: &str) -> Result<Self, Error> {
        check_prefix(prefix)?;
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let settings_for_thread = settings.clone();
        let thread = std::thread::Builder::new()
            .name("kmsd-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(Error::Backend(format!("etcd store runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = EtcdClient::connect(&settings_for_thread).map_err(Error::from);
                    let _ = handle_tx.send(client.map(|c| (c, tokio::runtime::Handle::current())));
                    // serve spawned requests until the store is dropped
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| Error::Backend(format!("etcd store thread: {e}")))?;
        let (client, runtime) = handle_rx
            .recv()
            .map_err(|_| Error::Backend("etcd store thread ended at start".into()))??;
        let mut store = EtcdStore {
            prefix: prefix.as_bytes().to_vec(),
            wait: client.request_timeout() + Duration::from_secs(1),
            client,
            runtime,
            stop: Some(stop_tx),
            thread: Mutex::new(Some(thread)),
            snapshot: AtomicI64::new(0),
            opened_at: 0,
        };
        let c = store.client.clone();
        let range = Range {
            count_only: true,
            ..Range::prefix(store.prefix.clone())
        };
        store.opened_at = store.run(async move { c.range(range).await.map(|r| r.revision) })?;
        Ok(store)
    }

    /// Runs `fut` on the store's runtime and waits for its answer.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, EtcdError>> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        match rx.recv_timeout(self.wait) {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Backend(format!(
                "etcd unavailable: no answer within {:?}",
                self.wait
            ))),
        }
    }

    /// The etcd key of a record.
    pub fn key(&self, kind: RecordKind, name: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 1 + name.len());
        k.extend_from_slice(&self.prefix);
        k.push(kind.tag());
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// The record an etcd key names (`None`: not one of this store's).
    pub fn decode_key(&self, key: &[u8]) -> Option<(RecordKind, String)> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        let (tag, name) = rest.split_first()?;
        let kind = KINDS.into_iter().find(|k| k.tag() == *tag)?;
        Some((kind, std::str::from_utf8(name).ok()?.to_owned()))
    }

    /// The key prefix of this store (`/kmsd/<cluster>/`).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// A client on the same connections (its calls may come from any
    /// runtime while the store lives).
    pub fn client(&self) -> EtcdClient {
        self.client.clone()
    }

    /// etcd's revision when the store was opened.
    pub fn opened_revision(&self) -> i64 {
        self.opened_at
    }

    /// The revision of the last complete [`KeyStore::for_each`]: a cache
    /// loaded from it is exact at this revision and watches from the next
    /// one (0 before any).
    pub fn snapshot_revision(&self) -> i64 {
        self.snapshot.load(Ordering::SeqCst)
    }

    /// etcd's current revision (a linearizable read).
    pub fn revision(&self) -> Result<i64, Error> {
        let c = self.client.clone();
        self.run(async move { c.revision().await })
    }

    /// A watch on every record of this store from `start_revision`
    /// (inclusive), with progress notifications requested. Map its keys
    /// back with [`EtcdStore::decode_key`]. The watch runs on the store's
    /// connections: it ends (`Unavailable`) when the store is dropped.
    pub fn watch(&self, start_revision: i64) -> Result<Watcher, Error> {
        let c = self.client.clone();
        let range = Range::prefix(self.prefix.clone());
        self.run(async move { c.watch(range, start_revision).await })
    }

    fn kind_range(&self, kind: RecordKind) -> (Vec<u8>, Vec<u8>) {
        let start = self.key(kind, "");
        let end = crate::prefix_end(&start);
        (start, end)
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Ok(mut t) = self.thread.lock() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

/// Runs a write transaction so that a lost member changes nothing the
/// caller sees. When the answer is lost (the member died, the connection
/// broke: the client does not resend a write that may have reached a
/// member), the transaction is sent once more, to whichever member
/// answers. Its comparisons make that safe: if the first attempt was not
/// applied, the second is the only one; if it was, the second fails its
/// comparisons and the keys are read back: every put's value byte for
/// byte (sealed values carry a fresh nonce, so no other write leaves the
/// same bytes) and every deleted key absent means the first attempt was
/// applied, reported as the success it was; anything else is the second
/// attempt's answer (`Conflict`/`NotFound` as usual). A transaction
/// without comparisons is idempotent and simply runs again.
async fn txn_once(
    c: &EtcdClient,
    txn: Txn,
    writes: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<crate::client::TxnResult, EtcdError> {
    // The first attempt gets half the request timeout: a member whose
    // leader just died holds a forwarded proposal until its own timeout,
    // far longer than ours; the second goes to the next member.
    let half = c.request_timeout() / 2;
    let first = match tokio::time::timeout(half, c.txn(txn.clone())).await {
        Ok(Err(e)) if e.is_unavailable() => e.to_string(),
        Ok(other) => return other,
        Err(_) => {
            c.prefer_next();
            format!("no answer within {half:?}")
        }
    };
    tracing::debug!(error = %first, "etcd write without an answer: sending it once more");
    let again = c.txn(txn).await?;
    if again.succeeded {
        return Ok(again);
    }
    let mut revision = None;
    for (key, value) in writes {
        let kv = c.get(key.clone()).await?;
        match (kv, value) {
            (Some(kv), Some(v)) if kv.value == *v => {
                revision = Some(revision.map_or(kv.mod_revision, |r: i64| r.max(kv.mod_revision)));
            }
            (None, None) => {}
            _ => return Ok(again),
        }
    }
    match revision {
        Some(revision) => Ok(crate::client::TxnResult {
            succeeded: true,
            revision,
            responses: Vec::new(),
        }),
        None => Ok(again), // only deletions: nothing tells them apart
    }
}

fn revision_of(kind: RecordKind, name: &str, r: i64) -> Result<Revision, Error> {
    u64::try_from(r).map(Revision).map_err(|_| Error::Corrupt {
        kind,
        name: name.to_owned(),
        reason: "etcd returned a negative revision",
    })
}

impl KeyStore for EtcdStore {
    fn get(&self, kind: RecordKind, name: &str) -> Result<Option<Entry>, Error> {
        let c = self.client.clone();
        let key = self.key(kind, name);
        let kv = self.run(async move { c.get(key).await })?;
        kv.map(|kv| {
            Ok(Entry {
                revision: revision_of(kind, name, kv.mod_revision)?,
                value: kv.value,
            })
        })
        .transpose()
    }

    fn list(&self, kind: RecordKind, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        if limit == 0 {
            return Ok(Vec::new()); // etcd's limit 0 means "no limit"
        }
        let start = match after {
            Some(a) if a >= prefix => {
                let mut k = self.key(kind, a);
                k.push(0); // strictly after `a`
                k
            }
            _ => self.key(kind, prefix),
        };
        let end = crate::prefix_end(&self.key(kind, prefix));
        let range = Range {
            key: start,
            range_end: end,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            keys_only: true,
            ..Range::default()
        };
        let c = self.client.clone();
        let r = self.run(async move { c.range(range).await })?;
        Ok(r.kvs
            .into_iter()
            .filter_map(|kv| self.decode_key(&kv.key).map(|(_, n)| n))
            .collect())
    }

    fn for_each(&self, kind: RecordKind, f: &mut dyn FnMut(&str, Entry) -> Result<(), Error>) -> Result<(), Error> {
        let (mut start, end) = self.kind_range(kind);
        let mut page = FIRST_PAGE;
        let mut at = 0i64; // the snapshot's revision, fixed by the first page
        loop {
            let c = self.client.clone();
            let range = Range {
                key: start.clone(),
                range_end: end.clone(),
                limit: page,
                revision: at,
                ..Range::default()
            };
            let r = match self.run(async move { c.range(range).await }) {
                Ok(r) => r,
                Err(Error::Backend(m)) if page > 1 && (m.contains("too large") || m.contains("OutOfRange")) => {
                    page /= 2;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if at == 0 {
                at = r.revision;
            }
            let Some(last) = r.kvs.last().map(|kv| kv.key.clone()) else {
                break;
            };
            let more = r.more;
            let bytes: usize = r.kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
            page = next_page(r.kvs.len(), bytes);
            for kv in r.kvs {
                let Some((_, name)) = self.decode_key(&kv.key) else {
                    continue;
                };
                let revision = revision_of(kind, &name, kv.mod_revision)?;
                f(
                    &name,
                    Entry {
                        revision,
                        value: kv.value,
                    },
                )?;
            }
            if !more {
                break;
            }
            start = last;
            start.push(0);
        }
        if at > 0 {
            self.snapshot.fetch_max(at, Ordering::SeqCst);
        }
        Ok(())
    }

    fn apply_fenced(&self, fence: Option<Fence<'_>>, ops: &[Op<'_>]) -> Result<Vec<Option<Revision>>, Error> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut txn = Txn::new();
        if let Some(f) = fence {
            // the fence first: compared, read back on failure, never written
            let key = self.key(f.kind, f.name);
            let r = i64::try_from(f.revision.0).unwrap_or(i64::MAX);
            txn = txn
                .when([
                    Compare::ModRevision(key.clone(), Cmp::Equal, r),
                    Compare::CreateRevision(key.clone(), Cmp::NotEqual, 0),
                ])
                .or_else([TxnOp::Get(Range {
                    keys_only: true,
                    ..Range::key(key)
                })]);
        }
        for op in ops {
            let key = self.key(op.kind, op.name);
            match op.cond {
                Cond::Absent => txn = txn.when([Compare::CreateRevision(key.clone(), Cmp::Equal, 0)]),
                Cond::At(r) => {
                    // a revision no etcd key can have fails the comparison
                    let r = i64::try_from(r.0).unwrap_or(i64::MAX);
                    txn = txn.when([Compare::ModRevision(key.clone(), Cmp::Equal, r)]);
                    if r == 0 {
                        // mod_revision 0 is an absent key: never "at 0"
                        txn = txn.when([Compare::CreateRevision(key.clone(), Cmp::NotEqual, 0)]);
                    }
                }
                Cond::Any => {}
            }
            if op.cond != Cond::Any {
                txn = txn.or_else([TxnOp::Get(Range {
                    keys_only: true,
                    ..Range::key(key.clone())
                })]);
            }
            txn = txn.and_then([match op.value {
                Some(v) => TxnOp::put(key, v.to_vec()),
                None => TxnOp::delete(key),
            }]);
        }
        let c = self.client.clone();
        // what this write leaves: each put's key and value, each deleted key
        let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = ops
            .iter()
            .map(|op| (self.key(op.kind, op.name), op.value.map(<[u8]>::to_vec)))
            .collect();
        let result = self.run(async move { txn_once(&c, txn, &writes).await })?;
        if result.succeeded {
            let rev = u64::try_from(result.revision)
                .map_err(|_| Error::Backend("etcd returned a negative revision".into()))?;
            return Ok(ops.iter().map(|op| op.value.map(|_| Revision(rev))).collect());
        }
        // Which condition failed: the records as the transaction saw them
        // (the fence's first, as the other backends decide it first).
        let mut reads = result.responses.into_iter();
        let read_revision = |reads: &mut std::vec::IntoIter<TxnOpResult>| match reads.next() {
            Some(TxnOpResult::Get(r)) => Ok(r
                .kvs
                .first()
                .map(|kv| Revision(u64::try_from(kv.mod_revision).unwrap_or(0)))),
            _ => Err(Error::Backend(
                "etcd answered a failed transaction without its reads".into(),
            )),
        };
        if fence.is_some() {
            check_fence(fence, read_revision(&mut reads)?)?;
        }
        for op in ops.iter().filter(|op| op.cond != Cond::Any) {
            let current = read_revision(&mut reads)?;
            check_cond(op.kind, op.name, op.cond, current)?;
        }
        Err(Error::Backend(
            "etcd refused the transaction although every condition held at its revision".into(),
        ))
    }

    /// Compacts etcd's history up to the current revision, so the
    /// superseded versions of a record (a ring before a destruction) leave
    /// etcd's keyspace. Needs etcd's root role when auth is on; with a
    /// user limited to kmsd's prefix it fails (logged by the caller) and
    /// etcd's own `--auto-compaction-*` must do it. Watchers behind the
    /// compaction see [`crate::WatchEvent::Compacted`] and reload.
    fn reclaim(&self) -> Result<(), Error> {
        let c = self.client.clone();
        self.run(async move {
            let rev = c.revision().await?;
            c.compact(rev, true).await
        })
    }

    /// Nothing to do: an acknowledged transaction is in a quorum's log.
    fn sync(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_sized_by_bytes() {
        // rings of ~190 bytes: ~22,000 a page; manifest entries of ~70
        // bytes: the record cap; one huge record: one at a time
        assert_eq!(next_page(1000, 190_000), 22_075);
        assert_eq!(next_page(1000, 70_000), MAX_PAGE);
        assert_eq!(next_page(1, 8 << 20), 1);
        assert_eq!(next_page(0, 0), MAX_PAGE);
    }

    #[test]
    fn prefixes_are_absolute_directories() {
        assert!(check_prefix("/kmsd/prod/").is_ok());
        for bad in ["", "/", "kmsd/prod/", "/kmsd/prod", "/kmsd/a b/", "/kmsd/\u{e9}/"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
