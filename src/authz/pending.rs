//! Pending dual-control requests, kept in the key store so that every
//! node of a cluster sees the same ones: a request made on one node is
//! listed, approved or rejected on any other.
//!
//! # Layout
//! - One sealed record, `approvals` (kind `Secret`), lists every pending
//!   request (id, requester, operation, creation and expiry times) as
//!   format byte 1 followed by JSON, sealed under the master key like
//!   every other record (its name is in the sealing AAD).
//! - A restore's snapshot waits beside it, sealed, in chunks of at most
//!   [`CHUNK`] bytes: `approval-body:<id>:<expires_at>:<n>` (under etcd's
//!   1.5 MiB request limit with the manifest's two small records). The
//!   chunks are written before the request is listed and read back before
//!   it is taken, so a listed request always has its snapshot.
//!
//! # Exactly once
//! Every change (create, approve, reject, dropping expired requests) is one
//! compare-and-swap of the `approvals` record on its revision: two
//! officers approving the same request on two nodes both read it, and
//! only the first write succeeds; the other reads again, finds it gone and
//! is told it was decided meanwhile. The bounds (`max_pending_approvals`,
//! `max_pending_bytes`) are checked on the list as read and hold for the
//! write that adds to it, so they hold cluster-wide. Expiry is the stored
//! `expires_at` against each node's clock.
//!
//! # Never
//! Nothing here executes a request ([`super::dual::execute`] does, after a
//! successful take) or decides who may: the callers pass the checks in.
use super::dual::{Pending, PendingLimits, PendingOp};
use crate::error::{Error, Limit, Missing};
use kmsd_keystore::{KeyStore, RecordKind, Revision, Sealer};
use std::sync::Arc;

/// The record listing every pending request (see [`BODY_PREFIX`]).
pub(super) const RECORD: &str = "approvals";
/// Names of the chunks of a request's body (a restore's snapshot). Both
/// names start with `kmsd_keystore::backup::NOT_BACKED_UP`: neither is in
/// a backup snapshot.
const BODY_PREFIX: &str = "approval-body:";
/// Most bytes of a body per chunk record.
pub(super) const CHUNK: usize = 1 << 20;
/// Format byte of the `approvals` record.
const FORMAT: u8 = 1;
/// Attempts at the compare-and-swap while other nodes keep changing the
/// record, before failing closed (`UNAVAILABLE`).
const CAS_ATTEMPTS: usize = 32;

/// The pending requests of one store.
pub(super) struct Requests<'a> {
    /// The store (behind its integrity manifest).
    pub store: &'a dyn KeyStore,
    /// Seals the record and the bodies.
    pub sealer: &'a Sealer,
}

/// How [`Requests::take`] found the request.
pub(super) enum Taken {
    /// Removed by this call (the caller executes it or reports the rejection).
    Done(Pending),
    /// Not there, or expired.
    Missing,
}

impl Requests<'_> {
    /// Requests not yet expired at `now`, oldest first.
    pub fn live(&self, now: i64) -> Result<Vec<Pending>, Error> {
        let (_, mut list) = self.load()?;
        list.retain(|p| p.expires_at > now);
        list.sort_by_key(|p| p.created_at);
        Ok(list)
    }

    /// Adds `p` (its body first) if the bounds allow it with the requests
    /// pending cluster-wide; expired requests are dropped on the way.
    pub fn create(&self, p: &Pending, limits: PendingLimits, now: i64) -> Result<(), Error> {
        let body = match &p.op {
            PendingOp::Restore { bytes, .. } => Some(bytes.clone()),
            _ => None,
        };
        // The body goes in only if it fits the bytes bound as it is now
        // (checked again, on the list the write replaces, below).
        if body.is_some() {
            let (_, list) = self.load()?;
            check_bounds(&live_only(list, now), p, limits)?;
        }
        if let Some(bytes) = &body {
            if let Err(e) = self.write_body(p, bytes) {
                self.delete_body(p);
                return Err(e);
            }
        }
        let r = self.add(p, limits, now);
        if r.is_err() && body.is_some() {
            self.delete_body(p);
        }
        r?;
        self.sweep(now);
        Ok(())
    }

    fn add(&self, p: &Pending, limits: PendingLimits, now: i64) -> Result<(), Error> {
        for _ in 0..CAS_ATTEMPTS {
            let (rev, list) = self.load()?;
            let (mut list, expired): (Vec<_>, Vec<_>) = list.into_iter().partition(|q| q.expires_at > now);
            check_bounds(&list, p, limits)?;
            list.push(p.clone());
            if self.save(rev, &list)? {
                expired.iter().for_each(|q| self.delete_body(q));
                return Ok(());
            }
        }
        Err(Error::StoreUnavailable)
    }

    /// Removes request `id` if it is live and `check` allows it, by
    /// compare-and-swap (exactly once cluster-wide). `with_body`: a
    /// restore's snapshot is read back first (an approval); a rejection
    /// does without.
    pub fn take(
        &self,
        id: &str,
        now: i64,
        with_body: bool,
        check: impl Fn(&Pending) -> Result<(), Error>,
    ) -> Result<Taken, Error> {
        let mut seen = false;
        for _ in 0..CAS_ATTEMPTS {
            let (rev, list) = self.load()?;
            let (mut list, expired): (Vec<_>, Vec<_>) = list.into_iter().partition(|q| q.expires_at > now);
            let Some(i) = list.iter().position(|q| q.id == id) else {
                // (gone between this call's read and its write: another
                // officer, on this node or another, decided it meanwhile)
                return if seen {
                    Err(Error::NotFound(Missing::Vanished { id: id.to_owned() }))
                } else {
                    Ok(Taken::Missing)
                };
            };
            seen = true;
            let mut p = list.remove(i);
            check(&p)?;
            if with_body {
                if let PendingOp::Restore { len, .. } = p.op {
                    let body = Arc::new(self.read_body(&p, len)?);
                    p.op = PendingOp::Restore { len, bytes: body };
                }
            }
            if self.save(rev, &list)? {
                self.delete_body(&p);
                expired.iter().for_each(|q| self.delete_body(q));
                return Ok(Taken::Done(p));
            }
        }
        Err(Error::StoreUnavailable)
    }

    fn load(&self) -> Result<(Option<Revision>, Vec<Pending>), Error> {
        let Some(entry) = self.store.get(RecordKind::Secret, RECORD)? else {
            return Ok((None, Vec::new()));
        };
        let plain = self.sealer.open(RecordKind::Secret, RECORD, &entry.value)?;
        let list = match plain.split_first() {
            Some((&FORMAT, json)) => serde_json::from_slice(json).ok(),
            _ => None,
        };
        let list = list.ok_or_else(|| {
            tracing::error!(record = RECORD, "pending approvals record does not decode (format 1)");
            Error::Corrupt(RECORD.into())
        })?;
        Ok((Some(entry.revision), list))
    }

    /// Writes the list if the record is still at `rev`; `false` when
    /// another writer changed it first.
    fn save(&self, rev: Option<Revision>, list: &[Pending]) -> Result<bool, Error> {
        let mut plain = vec![FORMAT];
        serde_json::to_writer(&mut plain, list).map_err(|_| Error::Internal("pending approvals do not encode"))?;
        let sealed = self.sealer.seal(RecordKind::Secret, RECORD, &plain)?;
        match self.store.put(RecordKind::Secret, RECORD, rev, &sealed) {
            Ok(_) => Ok(true),
            Err(kmsd_keystore::Error::Conflict { .. } | kmsd_keystore::Error::NotFound { .. }) => {
                tracing::debug!("pending approvals changed by another writer; reading them again");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_body(&self, p: &Pending, bytes: &[u8]) -> Result<(), Error> {
        for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
            let name = body_name(p, n);
            let sealed = self.sealer.seal(RecordKind::Secret, &name, chunk)?;
            self.store.put(RecordKind::Secret, &name, None, &sealed)?;
        }
        Ok(())
    }

    fn read_body(&self, p: &Pending, len: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(len);
        for n in 0..len.div_ceil(CHUNK) {
            let name = body_name(p, n);
            let entry = self
                .store
                .get(RecordKind::Secret, &name)?
                .ok_or_else(|| Error::Corrupt(name.clone()))?;
            out.extend_from_slice(&self.sealer.open(RecordKind::Secret, &name, &entry.value)?);
        }
        if out.len() != len {
            tracing::error!(id = %p.id, "a pending restore's snapshot is not the length listed");
            return Err(Error::Corrupt(body_name(p, 0)));
        }
        Ok(out)
    }

    /// Deletes a request's body, if it has one (a failure is logged: the
    /// chunks are swept once the request's expiry has passed).
    fn delete_body(&self, p: &Pending) {
        let PendingOp::Restore { len, .. } = &p.op else {
            return;
        };
        for n in 0..len.div_ceil(CHUNK).max(1) {
            self.delete_chunk(&body_name(p, n));
        }
    }

    fn delete_chunk(&self, name: &str) {
        let r = match self.store.get(RecordKind::Secret, name) {
            Ok(Some(e)) => self.store.delete(RecordKind::Secret, name, e.revision),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::warn!(record = name, error = %e, "a pending request's body could not be deleted (swept after its expiry)");
        }
    }

    /// Deletes bodies whose request has expired (left by a node that
    /// stopped between writing a body and listing its request).
    fn sweep(&self, now: i64) {
        let mut after: Option<String> = None;
        loop {
            let names = match self.store.list(RecordKind::Secret, BODY_PREFIX, after.as_deref(), 256) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "pending request bodies could not be listed");
                    return;
                }
            };
            for name in &names {
                if body_expiry(name).is_some_and(|t| t <= now) {
                    self.delete_chunk(name);
                }
            }
            match names.last() {
                Some(last) if names.len() == 256 => after = Some(last.clone()),
                _ => return,
            }
        }
    }
}

/// The requests of `list` still live at `now`.
fn live_only(mut list: Vec<Pending>, now: i64) -> Vec<Pending> {
    list.retain(|p| p.expires_at > now);
    list
}

/// Whether `p` may join the live requests `list`.
fn check_bounds(list: &[Pending], p: &Pending, limits: PendingLimits) -> Result<(), Error> {
    if list.len() >= limits.count {
        return Err(Error::TooLarge(Limit::PendingApprovals { pending: list.len() }));
    }
    let held: usize = list.iter().map(|q| q.op.held_bytes()).sum();
    if held.saturating_add(p.op.held_bytes()) > limits.bytes {
        return Err(Error::TooLarge(Limit::PendingBytes {
            request: p.op.held_bytes(),
            held,
            max: limits.bytes,
        }));
    }
    Ok(())
}

fn body_name(p: &Pending, n: usize) -> String {
    format!("{BODY_PREFIX}{}:{}:{n}", p.id, p.expires_at)
}

/// The expiry written in a body chunk's name.
fn body_expiry(name: &str) -> Option<i64> {
    let rest = name.strip_prefix(BODY_PREFIX)?;
    let mut parts = rest.split(':');
    let (_id, expiry) = (parts.next()?, parts.next()?);
    expiry.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kmsd_keystore::{MasterKey, MemoryStore};

    fn request(id: &str, op: PendingOp, expires_at: i64) -> Pending {
        Pending {
            id: id.into(),
            requester: "spiffe://bank/alice".into(),
            op,
            expires_at,
            created_at: expires_at - 100,
        }
    }

    fn destroy() -> PendingOp {
        PendingOp::DestroyVersion {
            name: "ring".into(),
            version: 1,
            wait: 0,
        }
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn restore(len: usize) -> PendingOp {
        PendingOp::Restore {
            len,
            bytes: Arc::new(sample(len)),
        }
    }

    fn limits(count: usize, bytes: usize) -> PendingLimits {
        PendingLimits { count, bytes }
    }

    fn setup() -> (Arc<dyn KeyStore>, Sealer) {
        (
            Arc::new(MemoryStore::new()),
            Sealer::new(MasterKey::from_bytes(&[9; 32])),
        )
    }

    #[test]
    fn a_request_is_taken_once_with_its_body_and_leaves_nothing_behind() {
        let (store, sealer) = setup();
        let r = Requests {
            store: store.as_ref(),
            sealer: &sealer,
        };
        let big = CHUNK * 2 + 17;
        r.create(&request("a", restore(big), 1000), limits(4, 4 * CHUNK), 10)
            .unwrap();
        r.create(&request("b", destroy(), 1000), limits(4, 4 * CHUNK), 10)
            .unwrap();
        assert_eq!(r.live(10).unwrap().len(), 2);
        let Taken::Done(p) = r.take("a", 11, true, |_| Ok(())).unwrap() else {
            panic!("taken")
        };
        let PendingOp::Restore { bytes, len } = &p.op else {
            panic!("a restore")
        };
        assert_eq!((*len, bytes.as_slice()), (big, sample(big).as_slice()));
        assert!(matches!(r.take("a", 11, true, |_| Ok(())).unwrap(), Taken::Missing));
        assert!(
            store
                .list(RecordKind::Secret, BODY_PREFIX, None, 10)
                .unwrap()
                .is_empty(),
            "the body is deleted with its request"
        );
        // a check that refuses leaves the request where it was
        let e = r
            .take("b", 11, false, |_| {
                Err(Error::NotFound(Missing::Vanished { id: "b".into() }))
            })
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)));
        assert_eq!(r.live(11).unwrap().len(), 1);
    }

    #[test]
    fn nothing_of_a_request_is_in_clear_in_the_store() {
        let (store, sealer) = setup();
        let r = Requests {
            store: store.as_ref(),
            sealer: &sealer,
        };
        let mut bytes = b"SNAPSHOT-MARKER".repeat(10);
        bytes.extend_from_slice(&[0; 10]);
        let p = Pending {
            id: "c".into(),
            requester: "spiffe://bank/REQUESTER-MARKER".into(),
            op: PendingOp::Restore {
                len: bytes.len(),
                bytes: Arc::new(bytes),
            },
            expires_at: 1000,
            created_at: 0,
        };
        r.create(&p, limits(4, 1 << 20), 10).unwrap();
        let mut n = 0;
        store
            .for_each(RecordKind::Secret, &mut |_, e| {
                n += 1;
                for marker in [&b"SNAPSHOT-MARKER"[..], b"REQUESTER-MARKER", b"ring"] {
                    assert!(!e.value.windows(marker.len()).any(|w| w == marker));
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(n, 2, "the list and one chunk");
        // and a backup snapshot leaves both out
        assert!(RECORD.starts_with(kmsd_keystore::backup::NOT_BACKED_UP));
        assert!(BODY_PREFIX.starts_with(kmsd_keystore::backup::NOT_BACKED_UP));
        let mut out = Vec::new();
        kmsd_keystore::backup::write_snapshot(store.as_ref(), &sealer, &mut out, &mut |_, _| {}).unwrap();
        assert!(kmsd_keystore::backup::read_snapshot(&out, &sealer).unwrap().is_empty());
    }

    #[test]
    fn the_bounds_count_every_writer_and_expired_requests_make_room() {
        let (store, sealer) = setup();
        // two nodes: each its own view, one store
        let a = Requests {
            store: store.as_ref(),
            sealer: &sealer,
        };
        let b = Requests {
            store: store.as_ref(),
            sealer: &sealer,
        };
        let l = limits(2, 100);
        a.create(&request("1", destroy(), 50), l, 10).unwrap();
        b.create(&request("2", destroy(), 1000), l, 10).unwrap();
        let e = a.create(&request("3", destroy(), 1000), l, 10).unwrap_err();
        assert!(
            matches!(e, Error::TooLarge(Limit::PendingApprovals { pending: 2 })),
            "{e:?}"
        );
        let e = b
            .create(&request("4", restore(60), 1000), limits(5, 50), 10)
            .unwrap_err();
        assert!(matches!(e, Error::TooLarge(Limit::PendingBytes { .. })), "{e:?}");
        assert!(
            store
                .list(RecordKind::Secret, BODY_PREFIX, None, 10)
                .unwrap()
                .is_empty(),
            "a refused request leaves no body"
        );
        // "1" expired at 50: room for one more
        a.create(&request("3", destroy(), 1000), l, 60).unwrap();
        let ids: Vec<String> = b.live(60).unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["2", "3"]);
        assert!(matches!(b.take("1", 60, false, |_| Ok(())).unwrap(), Taken::Missing));
    }

    #[test]
    fn an_orphaned_body_is_swept_after_its_expiry() {
        let (store, sealer) = setup();
        let r = Requests {
            store: store.as_ref(),
            sealer: &sealer,
        };
        // a node stopped after writing the body of "x" and before listing it
        r.write_body(&request("x", restore(10), 100), &[1; 10]).unwrap();
        r.create(&request("y", destroy(), 1000), limits(4, 100), 50).unwrap();
        assert_eq!(store.list(RecordKind::Secret, BODY_PREFIX, None, 10).unwrap().len(), 1);
        r.create(&request("z", destroy(), 1000), limits(4, 100), 101).unwrap();
        assert!(store
            .list(RecordKind::Secret, BODY_PREFIX, None, 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn two_approvers_at_once_take_a_request_once() {
        let (store, sealer) = setup();
        for round in 0..50 {
            let r = Requests {
                store: store.as_ref(),
                sealer: &sealer,
            };
            let id = format!("r{round}");
            r.create(&request(&id, destroy(), 1000), limits(4, 100), 10).unwrap();
            let barrier = std::sync::Barrier::new(2);
            let taken: usize = std::thread::scope(|s| {
                let node = || {
                    s.spawn(|| {
                        let r = Requests {
                            store: store.as_ref(),
                            sealer: &sealer,
                        };
                        barrier.wait();
                        match r.take(&id, 11, false, |_| Ok(())) {
                            Ok(Taken::Done(_)) => 1,
                            Ok(Taken::Missing) | Err(Error::NotFound(_)) => 0,
                            Err(e) => panic!("{e:?}"),
                        }
                    })
                };
                let (a, b) = (node(), node());
                a.join().unwrap() + b.join().unwrap()
            });
            assert_eq!(taken, 1, "round {round}");
        }
    }
}
