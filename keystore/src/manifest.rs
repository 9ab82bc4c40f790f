//! The integrity manifest: rollback and deletion of single records are
//! detected.
//!
//! A sealed record proves it was written by a holder of the master key
//! for its kind and name, but not that it is the latest one: whoever can
//! write the state directory could put back an older sealed ring record
//! (resurrecting a destroyed version, undoing DISABLED or a raised
//! `min_decryption_version`) or delete a record. [`CheckedStore`] wraps any
//! [`KeyStore`] and keeps, beside the records:
//! - one manifest entry per record: its generation (a store-wide counter
//!   incremented by every write) and the SHA-256 of its stored bytes;
//! - a sealed head: the last generation, the number of entries, and the
//!   XOR over entries of `HMAC-SHA256(manifest subkey, kind || name ||
//!   generation || hash)` (an incremental set MAC: one write changes one
//!   entry and the head, never the whole manifest).
//!
//! Each write puts the record, its entry and the new head in one atomic
//! batch ([`KeyStore::apply`]): a crash leaves all three or none, so it can
//! neither brick the store nor be told apart from an honest state.
//!
//! At open the entries are checked against the head (any entry added,
//! removed or changed behind the store's back fails the open: the manifest
//! no longer says what to trust). Every read then compares the record's
//! hash with its entry: a record rolled back, replaced, deleted or added
//! behind the store's back is `Corrupt` (gRPC `DATA_LOSS`) for that record
//! alone, logged at ERROR; the others keep working.
//!
//! Out of scope: replacing the whole store (records, entries and head
//! together) with an older copy. Nothing inside the directory can tell an
//! old consistent state from the current one; that needs a counter kept
//! outside it (a TPM, a replica), which the host does not offer.
//!
//! A store without a head is either new or written by the format-1 code:
//! the manifest is built from its records (which are trusted once, as
//! before). If format-2 records exist without a head, the head was
//! deleted: the open fails rather than vouch for whatever is there.
//!
//! # Several writers (etcd)
//! The verified manifest is kept in memory and updated with each write.
//! With sled one process writes a store ([`crate::SledStore`] takes an
//! exclusive lock) and that copy is always current. On a shared store
//! (several kmsd nodes on one etcd prefix) other nodes' writes move the
//! head: every write compares the head's revision, so a node that missed
//! a write gets `Conflict` on the head, and a read of a record another node
//! wrote finds a hash its copy does not list. Either way the node *catches
//! up* ([`CheckedStore::catch_up`]): it re-reads the head and every entry,
//! checks the entries against the head's set MAC exactly as at open (an
//! entry changed behind the store's back still fails), refuses a head
//! whose generation went backwards (a rollback of the whole manifest that
//! this node had seen past), and then retries the write or the check.
//! The head is read before and after the entries: if it moved meanwhile
//! (another node wrote), the catch-up starts again, so a race is never
//! mistaken for tampering.
//!
//! Why a full re-read and not an incremental one (only the entries changed
//! since the generation this node knew): the set MAC covers the whole set,
//! and deletions leave no entry to find, so an incremental catch-up needs
//! the change log (etcd's watch) to know what left. The full re-read is
//! one ranged read of small entries (about 70 bytes each), needs nothing
//! from the backend beyond the `KeyStore` trait (so it is the same on every
//! backend), and only happens when another node wrote; the daemon's ring
//! cache does not depend on it (it follows the watch and reads each
//! changed ring through this store). With many keys and a high write rate
//! across nodes it costs O(records) per missed write: the incremental form
//! on the watch is the next step if that ever shows.
use crate::error::Error;
use crate::seal::{Purpose, Sealer, Subkey, FORMAT_V2};
use crate::store::{Cond, Entry, Fence, KeyStore, Op, RecordKind, Revision};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The kinds of record the manifest covers (everything but itself).
pub const COVERED: [RecordKind; 3] = [RecordKind::Meta, RecordKind::KeyRing, RecordKind::Secret];
const HEAD: &str = "#head";
const HEAD_FORMAT: u8 = 1;
const HEAD_LEN: usize = 1 + 8 + 8 + 32;
const ENTRY_LEN: usize = 8 + 32;
const PRF_LABEL: &[u8] = b"kmsd manifest entry v1\0";
/// How often a catch-up re-reads a manifest that other writers keep moving.
const MAX_CATCH_UP: usize = 16;
/// How often a write whose head another writer moved is retried.
const MAX_HEAD_RETRIES: usize = 16;

/// What the manifest says about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expect {
    generation: u64,
    hash: [u8; 32],
}

impl Expect {
    fn of(generation: u64, value: &[u8]) -> Self {
        Expect {
            generation,
            hash: Sha256::digest(value).into(),
        }
    }

    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[..8].copy_from_slice(&self.generation.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let generation = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
        let hash = raw.get(8..)?.try_into().ok()?;
        Some(Expect { generation, hash })
    }
}

type Key = (RecordKind, String);

struct State {
    head_rev: Revision,
    generation: u64,
    acc: [u8; 32],
    /// The manifest subkey of the current master key.
    mac_key: Subkey,
    entries: HashMap<Key, Expect>,
}

/// A [`KeyStore`] whose every record is checked against the manifest.
pub struct CheckedStore {
    inner: Arc<dyn KeyStore>,
    sealer: Arc<Sealer>,
    state: RwLock<State>,
}

impl std::fmt::Debug for CheckedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckedStore")
    }
}

fn entry_name(kind: RecordKind, name: &str) -> String {
    let mut s = String::with_capacity(1 + name.len());
    s.push(char::from(kind.tag()));
    s.push_str(name);
    s
}

fn parse_entry_name(n: &str) -> Option<Key> {
    let tag = *n.as_bytes().first()?;
    let kind = COVERED.into_iter().find(|k| k.tag() == tag)?;
    Some((kind, n.get(1..)?.to_owned()))
}

fn prf(key: &[u8; 32], kind: RecordKind, name: &str, e: &Expect) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32]; // HMAC takes keys of any length
    };
    mac.update(PRF_LABEL);
    mac.update(&[kind.tag()]);
    mac.update(&(name.len() as u32).to_be_bytes());
    mac.update(name.as_bytes());
    mac.update(&e.encode());
    mac.finalize().into_bytes().into()
}

fn xor(acc: &mut [u8; 32], x: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

fn manifest_corrupt(reason: &'static str) -> Error {
    tracing::error!(
        reason,
        "DATA LOSS: the store's integrity manifest is not intact; refusing to open"
    );
    Error::Corrupt {
        kind: RecordKind::Manifest,
        name: "manifest".into(),
        reason,
    }
}

/// Logs a record's failed check once it is final (not a race with another
/// writer, see `CheckedStore::get`, which every failed check ends in).
fn report_opt(r: &Result<Option<Entry>, Error>) {
    if let Err(Error::Corrupt { kind, name, reason }) = r {
        tracing::error!(kind = %kind, name, reason, "DATA LOSS: a stored record failed the integrity manifest");
    }
}

fn lost(kind: RecordKind, name: &str, reason: &'static str) -> Error {
    Error::Corrupt {
        kind,
        name: name.to_owned(),
        reason,
    }
}

fn encode_head(generation: u64, count: u64, acc: &[u8; 32]) -> [u8; HEAD_LEN] {
    let mut h = [0u8; HEAD_LEN];
    h[0] = HEAD_FORMAT;
    h[1..9].copy_from_slice(&generation.to_be_bytes());
    h[9..17].copy_from_slice(&count.to_be_bytes());
    h[17..].copy_from_slice(acc);
    h
}

impl CheckedStore {
    /// Opens the manifest of `inner` (building it for a new or format-1
    /// store) and checks its entries against its sealed head.
    pub fn open(inner: Arc<dyn KeyStore>, sealer: Arc<Sealer>) -> Result<Self, Error> {
        let state = match inner.get(RecordKind::Manifest, HEAD)? {
            Some(head) => Self::load(inner.as_ref(), &sealer, head)?,
            None => Self::build(inner.as_ref(), &sealer)?,
        };
        Ok(CheckedStore {
            inner,
            sealer,
            state: RwLock::new(state),
        })
    }

    fn load(inner: &dyn KeyStore, sealer: &Sealer, head: Entry) -> Result<State, Error> {
        let plain = sealer
            .open(RecordKind::Manifest, HEAD, &head.value)
            .map_err(|_| manifest_corrupt("the manifest head does not open"))?;
        if plain.len() != HEAD_LEN || plain.first() != Some(&HEAD_FORMAT) {
            return Err(manifest_corrupt("the manifest head does not decode"));
        }
        let num = |r: std::ops::Range<usize>| {
            plain
                .get(r)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX)
        };
        let (generation, count) = (num(1..9), num(9..17));
        let mut want = [0u8; 32];
        want.copy_from_slice(plain.get(17..).unwrap_or(&[0; 32]));
        let head_key_id =
            Sealer::sealed_key_id(&head.value).ok_or_else(|| manifest_corrupt("the manifest head does not decode"))?;
        let head_key = sealer
            .subkey_of(&head_key_id, Purpose::ManifestMac)
            .ok_or_else(|| manifest_corrupt("the manifest head is under an unknown master key"))?;
        let mut entries = HashMap::new();
        let mut bad = false;
        inner.for_each(RecordKind::Manifest, &mut |n, e| {
            if n == HEAD {
                return Ok(());
            }
            match (parse_entry_name(n), Expect::decode(&e.value)) {
                (Some(k), Some(x)) => {
                    entries.insert(k, x);
                }
                _ => bad = true,
            }
            Ok(())
        })?;
        let mut acc = [0u8; 32];
        for ((kind, name), x) in &entries {
            xor(&mut acc, &prf(&head_key, *kind, name, x));
        }
        use subtle::ConstantTimeEq;
        if bad || entries.len() as u64 != count || !bool::from(acc.ct_eq(&want)) {
            return Err(manifest_corrupt(
                "manifest entries do not match its sealed head (added, removed or changed behind the store's back)",
            ));
        }
        let mac_key = sealer.subkey(Purpose::ManifestMac);
        let mut head_rev = head.revision;
        if head_key_id != sealer.key_id() {
            // After a rekey: the same entries, MACed under the new key.
            let mut acc = [0u8; 32];
            for ((kind, name), x) in &entries {
                xor(&mut acc, &prf(&mac_key, *kind, name, x));
            }
            let sealed = sealer.seal(RecordKind::Manifest, HEAD, &encode_head(generation, count, &acc))?;
            head_rev = inner.put(RecordKind::Manifest, HEAD, Some(head_rev), &sealed)?;
            return Ok(State {
                head_rev,
                generation,
                acc,
                mac_key,
                entries,
            });
        }
        Ok(State {
            head_rev,
            generation,
            acc,
            mac_key,
            entries,
        })
    }

    /// Builds the manifest of a store that has none: a new store, or one
    /// written by the format-1 code (its records are trusted this once).
    fn build(inner: &dyn KeyStore, sealer: &Sealer) -> Result<State, Error> {
        let mut records = Vec::new();
        let mut current_format = false;
        for kind in COVERED {
            inner.for_each(kind, &mut |n, e| {
                current_format |= e.value.first() == Some(&FORMAT_V2);
                records.push((kind, n.to_owned(), e.value));
                Ok(())
            })?;
        }
        let mut stray = false;
        inner.for_each(RecordKind::Manifest, &mut |_, _| {
            stray = true;
            Ok(())
        })?;
        if current_format || stray {
            return Err(manifest_corrupt(
                "the manifest head is missing but the store was written with one (it was deleted); \
                 refusing to rebuild it over records it would vouch for",
            ));
        }
        let mac_key = sealer.subkey(Purpose::ManifestMac);
        let mut entries = HashMap::new();
        let mut acc = [0u8; 32];
        let mut generation = 0u64;
        for (kind, name, value) in &records {
            generation += 1;
            let x = Expect::of(generation, value);
            xor(&mut acc, &prf(&mac_key, *kind, name, &x));
            entries.insert((*kind, name.clone()), x);
        }
        let head = sealer.seal(
            RecordKind::Manifest,
            HEAD,
            &encode_head(generation, entries.len() as u64, &acc),
        )?;
        let names: Vec<(String, [u8; ENTRY_LEN])> = entries
            .iter()
            .map(|((k, n), x)| (entry_name(*k, n), x.encode()))
            .collect();
        let mut ops: Vec<Op<'_>> = names
            .iter()
            .map(|(n, v)| Op {
                kind: RecordKind::Manifest,
                name: n,
                cond: Cond::Absent,
                value: Some(&v[..]),
            })
            .collect();
        ops.push(Op {
            kind: RecordKind::Manifest,
            name: HEAD,
            cond: Cond::Absent,
            value: Some(&head),
        });
        let revs = inner.apply(&ops)?;
        let head_rev = revs.last().copied().flatten().unwrap_or(Revision(1));
        if !records.is_empty() {
            tracing::info!(records = records.len(), "integrity manifest built for a format-1 store");
        }
        Ok(State {
            head_rev,
            generation,
            acc,
            mac_key,
            entries,
        })
    }

    /// Brings the in-memory manifest up to the store's head when another
    /// writer moved it (see the module documentation). Returns whether
    /// anything changed; the state is untouched on error.
    pub fn catch_up(&self) -> Result<bool, Error> {
        let mut st = self.write()?;
        self.catch_up_locked(&mut st)
    }

    fn catch_up_locked(&self, st: &mut State) -> Result<bool, Error> {
        for _ in 0..MAX_CATCH_UP {
            let Some(head) = self.inner.get(RecordKind::Manifest, HEAD)? else {
                return Err(manifest_corrupt(
                    "the manifest head is gone (deleted behind the store's back)",
                ));
            };
            if head.revision == st.head_rev {
                return Ok(false);
            }
            let at = head.revision;
            let loaded = Self::load(self.inner.as_ref(), &self.sealer, head);
            let after = self.inner.get(RecordKind::Manifest, HEAD)?.map(|h| h.revision);
            if after != Some(at) {
                continue; // another node wrote while we read: read again
            }
            let new = loaded?;
            if new.generation < st.generation {
                return Err(manifest_corrupt(
                    "the manifest's generation went backwards (the store was rolled back behind this node's back)",
                ));
            }
            *st = new;
            return Ok(true);
        }
        Err(Error::Backend(
            "the integrity manifest kept changing while this node caught up with it; retry".into(),
        ))
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>, Error> {
        self.state
            .write()
            .map_err(|_| Error::Backend("manifest lock poisoned".into()))
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, State>, Error> {
        self.state
            .read()
            .map_err(|_| Error::Backend("manifest lock poisoned".into()))
    }

    fn verify(st: &State, kind: RecordKind, name: &str, rec: Option<&Entry>) -> Result<(), Error> {
        match (rec, st.entries.get(&(kind, name.to_owned()))) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(lost(
                kind,
                name,
                "deleted behind the store's back (the integrity manifest lists it)",
            )),
            (Some(e), Some(x)) if Sha256::digest(&e.value)[..] == x.hash[..] => Ok(()),
            (Some(_), Some(_)) => Err(lost(
                kind,
                name,
                "rolled back or replaced behind the store's back (not the generation the integrity manifest lists)",
            )),
            (Some(_), None) => Err(lost(
                kind,
                name,
                "not in the integrity manifest (written behind the store's back)",
            )),
        }
    }

    fn internal(kind: RecordKind) -> Result<(), Error> {
        match kind {
            RecordKind::Manifest => Err(Error::Precondition("manifest records are internal".into())),
            // not sealed records: only a batch's fence names them here
            RecordKind::Lease => Err(Error::Precondition(
                "lease records are not sealed records: read them on the backend".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Calls `f` for every record of `kind` the manifest lists or the
    /// store holds, in name order, with the record or why it failed its
    /// check (rolled back, replaced, deleted, added).
    pub fn for_each_checked(
        &self,
        kind: RecordKind,
        f: &mut dyn FnMut(&str, Result<Entry, Error>),
    ) -> Result<(), Error> {
        Self::internal(kind)?;
        // another writer may have moved the manifest since we last looked
        self.catch_up()?;
        let mut out = self.checked_records(kind)?;
        // A record that failed may be another writer's, written after the
        // catch-up above: each is checked again alone, exactly as `get`
        // checks (it catches up, and knows when another thread of this
        // node already did: never "nothing moved, so it is tampering"
        // after someone else's catch-up). Only what still fails then is
        // reported; a record another writer deleted meanwhile is gone.
        // One read per failing record, none when all pass.
        let failed: Vec<String> = out
            .iter()
            .filter(|(_, r)| matches!(r, Err(Error::Corrupt { .. })))
            .map(|(n, _)| n.clone())
            .collect();
        for n in failed {
            match self.get(kind, &n) {
                Ok(Some(e)) => {
                    out.insert(n, Ok(e));
                }
                Ok(None) => {
                    out.remove(&n);
                }
                // `get` has logged it: keep its verdict, not ours
                Err(e @ Error::Corrupt { .. }) => {
                    out.insert(n, Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        for (n, r) in out {
            f(&n, r);
        }
        Ok(())
    }

    /// Every record of `kind` the manifest lists or the store holds, with
    /// the record or why it failed its check.
    fn checked_records(
        &self,
        kind: RecordKind,
    ) -> Result<std::collections::BTreeMap<String, Result<Entry, Error>>, Error> {
        let mut out: std::collections::BTreeMap<String, Result<Entry, Error>> = Default::default();
        {
            let st = self.read()?;
            let mut records = Vec::new();
            self.inner.for_each(kind, &mut |n, e| {
                records.push((n.to_owned(), e));
                Ok(())
            })?;
            for (n, e) in records {
                let checked = Self::verify(&st, kind, &n, Some(&e)).map(|()| e);
                out.insert(n, checked);
            }
            for (k, n) in st.entries.keys() {
                if *k == kind && !out.contains_key(n) {
                    out.insert(
                        n.clone(),
                        Self::verify(&st, kind, n, None).map(|()| Entry {
                            revision: Revision(0),
                            value: Vec::new(),
                        }),
                    );
                }
            }
        }
        Ok(out)
    }

    /// The generation the manifest lists for a record (tests, tooling).
    pub fn generation(&self, kind: RecordKind, name: &str) -> Option<u64> {
        self.read()
            .ok()?
            .entries
            .get(&(kind, name.to_owned()))
            .map(|x| x.generation)
    }

    /// The sealer this store's manifest is checked with.
    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }
}

impl KeyStore for CheckedStore {
    fn get(&self, kind: RecordKind, name: &str) -> Result<Option<Entry>, Error> {
        Self::internal(kind)?;
        // the check, and the manifest (head revision) it was made against
        let (mut checked, mut against) = {
            let st = self.read()?;
            let rec = self.inner.get(kind, name)?;
            (Self::verify(&st, kind, name, rec.as_ref()).map(|()| rec), st.head_rev)
        };
        for _ in 0..MAX_CATCH_UP {
            match checked {
                Err(Error::Corrupt { .. }) => {
                    // Another writer (a node sharing the store) may have
                    // written it: catch up, then check again. Tampering
                    // still fails, against the caught-up manifest (the
                    // head did not move: no other writer explains it).
                    // Another thread of this node may have caught up
                    // since the check: then the manifest moved although
                    // this catch-up finds nothing new, and the record is
                    // checked again, not reported. A catch-up that fails
                    // (other writers kept moving the head: `Backend`,
                    // retry; or a manifest that no longer checks) is that
                    // answer, not a verdict on this record.
                    let moved = self.catch_up()?;
                    let st = self.read()?;
                    if !moved && st.head_rev == against {
                        drop(st);
                        report_opt(&checked);
                        return checked;
                    }
                    let rec = self.inner.get(kind, name)?;
                    against = st.head_rev;
                    checked = Self::verify(&st, kind, name, rec.as_ref()).map(|()| rec);
                }
                other => return other,
            }
        }
        Err(Error::Backend(format!(
            "{kind} {name:?} kept changing while this node checked it against the integrity manifest; retry"
        )))
    }

    fn list(&self, kind: RecordKind, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        Self::internal(kind)?;
        self.inner.list(kind, prefix, after, limit)
    }

    /// Only records that pass their check reach `f`; the others are
    /// logged at ERROR and skipped (use [`CheckedStore::for_each_checked`]
    /// to see them).
    fn for_each(&self, kind: RecordKind, f: &mut dyn FnMut(&str, Entry) -> Result<(), Error>) -> Result<(), Error> {
        let mut good = Vec::new();
        self.for_each_checked(kind, &mut |n, r| {
            if let Ok(e) = r {
                good.push((n.to_owned(), e));
            }
        })?;
        for (n, e) in good {
            f(&n, e)?;
        }
        Ok(())
    }

    /// The fence goes to the backend with the batch, records and manifest
    /// entries alike: it adds no entry (the fence record is not written)
    /// and a `Fenced` batch is never retried.
    fn apply_fenced(&self, fence: Option<Fence<'_>>, ops: &[Op<'_>]) -> Result<Vec<Option<Revision>>, Error> {
        for op in ops {
            Self::internal(op.kind)?;
        }
        if fence.is_some_and(|f| f.kind == RecordKind::Manifest) {
            return Err(Error::Precondition("manifest records are internal".into()));
        }
        let mut st = self.write()?;
        for _ in 0..MAX_HEAD_RETRIES {
            match self.apply_locked(&mut st, fence, ops) {
                Err(Error::Conflict {
                    kind: RecordKind::Manifest,
                    ref name,
                }) if name == HEAD => {
                    // another writer moved the head: catch up, retry
                    self.catch_up_locked(&mut st)?;
                }
                other => return other,
            }
        }
        Err(Error::Conflict {
            kind: RecordKind::Manifest,
            name: HEAD.into(),
        })
    }

    fn reclaim(&self) -> Result<(), Error> {
        // Writers wait: the backend is being swapped.
        let _st = self.write()?;
        self.inner.reclaim()
    }

    fn sync(&self) -> Result<(), Error> {
        self.inner.sync()
    }
}

impl CheckedStore {
    /// One attempt of [`KeyStore::apply`] under the manifest's write lock.
    fn apply_locked(
        &self,
        st: &mut State,
        fence: Option<Fence<'_>>,
        ops: &[Op<'_>],
    ) -> Result<Vec<Option<Revision>>, Error> {
        let mut acc = st.acc;
        let mut generation = st.generation;
        let mut count = st.entries.len() as i64;
        let mut changes: Vec<(Key, Option<Expect>)> = Vec::with_capacity(ops.len());
        for op in ops {
            let key = (op.kind, op.name.to_owned());
            if let Some(old) = st.entries.get(&key) {
                xor(&mut acc, &prf(&st.mac_key, op.kind, op.name, old));
                count -= 1;
            }
            let new = op.value.map(|v| {
                generation += 1;
                Expect::of(generation, v)
            });
            if let Some(x) = &new {
                xor(&mut acc, &prf(&st.mac_key, op.kind, op.name, x));
                count += 1;
            }
            changes.push((key, new));
        }
        let head = self.sealer.seal(
            RecordKind::Manifest,
            HEAD,
            &encode_head(generation, count.max(0) as u64, &acc),
        )?;
        let names: Vec<(String, Option<[u8; ENTRY_LEN]>)> = changes
            .iter()
            .map(|((k, n), x)| (entry_name(*k, n), x.map(|x| x.encode())))
            .collect();
        let mut all: Vec<Op<'_>> = ops.to_vec();
        for (n, v) in &names {
            all.push(Op {
                kind: RecordKind::Manifest,
                name: n,
                cond: Cond::Any,
                value: v.as_ref().map(|v| &v[..]),
            });
        }
        all.push(Op {
            kind: RecordKind::Manifest,
            name: HEAD,
            cond: Cond::At(st.head_rev),
            value: Some(&head),
        });
        let mut revs = self.inner.apply_fenced(fence, &all)?;
        st.head_rev = revs.last().copied().flatten().unwrap_or(st.head_rev);
        st.acc = acc;
        st.generation = generation;
        for (key, new) in changes {
            match new {
                Some(x) => st.entries.insert(key, x),
                None => st.entries.remove(&key),
            };
        }
        revs.truncate(ops.len());
        Ok(revs)
    }
}
