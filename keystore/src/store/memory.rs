//! In-memory reference backend: the contract in its simplest form, run
//! through the same conformance suite as the sled backend. `put` and
//! `delete` are the trait's single-operation batches, so every write goes
//! through [`super::check_cond`] (and a fence through
//! [`super::check_fence`]) in `apply_fenced`.
use super::{check_cond, check_fence, Entry, Fence, KeyStore, Op, RecordKind, Revision};
use crate::Error;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// (kind tag, name) → (revision, value).
type Records = BTreeMap<(u8, String), (u64, Vec<u8>)>;

/// A [`KeyStore`] in a `BTreeMap`; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<Records>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Records>, Error> {
        self.records
            .lock()
            .map_err(|_| Error::Backend("memory store lock poisoned".into()))
    }

    /// Test hook: the raw values, to check that nothing is stored in clear.
    pub fn raw_values(&self) -> Vec<Vec<u8>> {
        self.lock()
            .map(|m| m.values().map(|(_, v)| v.clone()).collect())
            .unwrap_or_default()
    }
}

impl KeyStore for MemoryStore {
    fn get(&self, kind: RecordKind, name: &str) -> Result<Option<Entry>, Error> {
        Ok(self.lock()?.get(&(kind.tag(), name.to_owned())).map(|(rev, v)| Entry {
            revision: Revision(*rev),
            value: v.clone(),
        }))
    }

    fn list(&self, kind: RecordKind, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, Error> {
        let m = self.lock()?;
        Ok(m.range((kind.tag(), prefix.to_owned())..)
            .take_while(|((t, n), _)| *t == kind.tag() && n.starts_with(prefix))
            .filter(|((_, n), _)| after.is_none_or(|a| n.as_str() > a))
            .take(limit)
            .map(|((_, n), _)| n.clone())
            .collect())
    }

    fn for_each(&self, kind: RecordKind, f: &mut dyn FnMut(&str, Entry) -> Result<(), Error>) -> Result<(), Error> {
        let snapshot: Vec<(String, u64, Vec<u8>)> = self
            .lock()?
            .iter()
            .filter(|((t, _), _)| *t == kind.tag())
            .map(|((_, n), (r, v))| (n.clone(), *r, v.clone()))
            .collect();
        for (n, r, v) in snapshot {
            f(
                &n,
                Entry {
                    revision: Revision(r),
                    value: v,
                },
            )?;
        }
        Ok(())
    }

    fn apply_fenced(&self, fence: Option<Fence<'_>>, ops: &[Op<'_>]) -> Result<Vec<Option<Revision>>, Error> {
        let mut m = self.lock()?;
        let fenced = fence.and_then(|f| m.get(&(f.kind.tag(), f.name.to_owned())).map(|(r, _)| Revision(*r)));
        check_fence(fence, fenced)?;
        let mut next = Vec::with_capacity(ops.len());
        for op in ops {
            let current = m.get(&(op.kind.tag(), op.name.to_owned())).map(|(r, _)| Revision(*r));
            next.push(check_cond(op.kind, op.name, op.cond, current)?);
        }
        let mut out = Vec::with_capacity(ops.len());
        for (op, rev) in ops.iter().zip(next) {
            let key = (op.kind.tag(), op.name.to_owned());
            match op.value {
                Some(v) => {
                    m.insert(key, (rev.0, v.to_vec()));
                    out.push(Some(rev));
                }
                None => {
                    m.remove(&key);
                    out.push(None);
                }
            }
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), Error> {
        Ok(())
    }
}
