//! Import jobs (bring your own key): each holds a fresh RSA-3072 wrapping
//! key for one key name until it expires. The private half is sealed in
//! the store under the master key like every other record and never
//! leaves kmsd; the public half goes to whoever wraps material for it
//! (`kmsd_keystore::wrap`, `CKM_RSA_AES_KEY_WRAP`).
//!
//! # Records
//! One sealed secret record per job, `import-job:<id>`: format byte 1, the
//! length of a JSON header (4 bytes, big-endian), the header (id, key,
//! times, public key, failed unwraps), then the PKCS#8 DER private key.
//! The name is in the sealing AAD, so a record cannot be moved to another
//! id. Jobs are not in backups (`kmsd_keystore::backup::IMPORT_JOBS`):
//! they live hours, and a restore should not revive one.
//!
//! # Bounds
//! - `limits.max_import_jobs` live jobs (counted over the whole store, so
//!   cluster-wide; two nodes creating the last one at the same instant may
//!   both succeed: at most one extra job per node). Expired jobs are
//!   removed whenever a job is created and when one is looked up.
//! - A lifetime of at most [`MAX_TTL`].
//! - A job is retired (removed) after [`MAX_UNWRAP_FAILURES`] wrapped keys
//!   fail to unwrap under it: the RSA decryption behind it is not constant
//!   time (RUSTSEC-2023-0071), and the attacks on such an oracle need
//!   thousands to millions of queries, each here an audited, officer-only
//!   call.
//!
//! # Never
//! Nothing here decides who may (the handlers check `import`), and no
//! error or log line carries the private key or a wrapped blob.
use crate::error::{Error, Transfer};
use kmsd_keystore::wrap::{WrappingKey, WRAPPING_METHOD};
use kmsd_keystore::{KeyStore, RecordKind, Revision, Sealer};
use rand::RngCore;
use zeroize::Zeroizing;

/// Record names of import jobs (`<prefix><id>`).
pub const PREFIX: &str = kmsd_keystore::backup::IMPORT_JOBS;
/// Default lifetime of a job (24 hours).
pub const DEFAULT_TTL: u64 = 24 * 3600;
/// Longest lifetime of a job (7 days).
pub const MAX_TTL: u64 = 7 * 24 * 3600;
/// Default bound on live jobs (`limits.max_import_jobs`).
pub const DEFAULT_MAX_JOBS: usize = 64;
/// Wrapped keys that may fail to unwrap under one job before it is retired.
pub const MAX_UNWRAP_FAILURES: u32 = 16;
/// Format byte of a job record.
const FORMAT: u8 = 1;
/// Attempts at a compare-and-swap of a job record before failing closed.
const CAS_ATTEMPTS: usize = 8;
/// Names listed per store call while counting and sweeping.
const PAGE: usize = 256;

/// What a job shows (`ImportJob`): public.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobInfo {
    /// 32 hex digits.
    pub id: String,
    /// The key it imports into.
    pub key: String,
    /// SubjectPublicKeyInfo PEM of the wrapping key.
    pub public_key_pem: String,
    /// Unix time.
    pub created_at: i64,
    /// Unix time.
    pub expires_at: i64,
    /// Who created it (certificate identity).
    pub creator: String,
    /// Wrapped keys that failed to unwrap under it so far.
    pub failures: u32,
}

impl JobInfo {
    /// As the API shows it.
    pub fn to_proto(&self) -> crate::proto::ImportJob {
        crate::proto::ImportJob {
            id: self.id.clone(),
            key: self.key.clone(),
            public_key_pem: self.public_key_pem.clone(),
            wrapping_method: WRAPPING_METHOD.to_owned(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// A job read from the store: its header and (sealed at rest) private key.
pub struct Job {
    /// The public part.
    pub info: JobInfo,
    /// The record's revision (for the failure count's compare-and-swap).
    revision: Revision,
    /// PKCS#8 DER, parsed only to unwrap.
    private: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Job {
    /// The wrapping key's private half.
    pub fn wrapping_key(&self) -> Result<WrappingKey, Error> {
        WrappingKey::from_pkcs8_der(&self.private).map_err(|e| {
            tracing::error!(job = %self.info.id, error = %e, "an import job's sealed private key does not decode");
            Error::Corrupt(record_name(&self.info.id))
        })
    }
}

/// The import jobs of one store.
pub struct Jobs<'a> {
    /// The store (behind its integrity manifest).
    pub store: &'a dyn KeyStore,
    /// Seals the records.
    pub sealer: &'a Sealer,
}

/// The record name of job `id`.
fn record_name(id: &str) -> String {
    format!("{PREFIX}{id}")
}

/// Whether `id` can be a job id (before it goes into a record name).
pub fn check_id(id: &str) -> Result<(), Error> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(Error::Transfer(Transfer::JobId))
    }
}

/// A job's lifetime from the request's `ttl_seconds` (0 = the default).
pub fn ttl(requested: u64) -> Result<u64, Error> {
    match requested {
        0 => Ok(DEFAULT_TTL),
        t if t <= MAX_TTL => Ok(t),
        _ => Err(Error::Transfer(Transfer::JobTtl {
            max: MAX_TTL,
            default: DEFAULT_TTL,
        })),
    }
}

impl Jobs<'_> {
    /// Creates a job for `key` (already a valid key name) with a fresh
    /// RSA-3072 key, if fewer than `max_live` jobs are live; expired jobs
    /// are removed on the way.
    pub fn create(&self, key: &str, ttl: u64, creator: &str, now: i64, max_live: usize) -> Result<JobInfo, Error> {
        let live = self.sweep(now)?;
        if live >= max_live {
            return Err(Error::Transfer(Transfer::TooManyJobs { live }));
        }
        let wrapping = WrappingKey::generate().map_err(|e| Error::Transfer(Transfer::Wrap(e)))?;
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let info = JobInfo {
            id: hex::encode(raw),
            key: key.to_owned(),
            public_key_pem: wrapping
                .public_key_pem()
                .map_err(|e| Error::Transfer(Transfer::Wrap(e)))?,
            created_at: now,
            expires_at: now.saturating_add(ttl as i64),
            creator: creator.to_owned(),
            failures: 0,
        };
        let private = wrapping
            .to_pkcs8_der()
            .map_err(|e| Error::Transfer(Transfer::Wrap(e)))?;
        let sealed = self.seal(&info, &private)?;
        self.store
            .put(RecordKind::Secret, &record_name(&info.id), None, &sealed)?;
        Ok(info)
    }

    /// Job `id` if it is live at `now`. An expired job is removed and
    /// answered [`Transfer::JobExpired`]; an unknown one
    /// [`Transfer::JobNotFound`].
    pub fn get(&self, id: &str, now: i64) -> Result<Job, Error> {
        check_id(id)?;
        let name = record_name(id);
        let Some(entry) = self.store.get(RecordKind::Secret, &name)? else {
            return Err(Error::Transfer(Transfer::JobNotFound { id: id.to_owned() }));
        };
        let job = self.open(&name, entry.revision, &entry.value)?;
        if job.info.expires_at <= now {
            self.remove(&name, entry.revision);
            return Err(Error::Transfer(Transfer::JobExpired {
                id: id.to_owned(),
                expired_at: job.info.expires_at,
            }));
        }
        Ok(job)
    }

    /// Counts a wrapped key that failed to unwrap under `job`; the job is
    /// removed when it reaches [`MAX_UNWRAP_FAILURES`]. Returns the error
    /// the caller answers with (the unwrap failure, or the retirement).
    pub fn record_failure(&self, job: Job, now: i64, unwrap_error: Error) -> Error {
        let name = record_name(&job.info.id);
        let mut current = job;
        for _ in 0..CAS_ATTEMPTS {
            let failures = current.info.failures.saturating_add(1);
            let r = if failures >= MAX_UNWRAP_FAILURES {
                self.store.delete(RecordKind::Secret, &name, current.revision)
            } else {
                let mut info = current.info.clone();
                info.failures = failures;
                let sealed = match self.seal(&info, &current.private) {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                self.store
                    .put(RecordKind::Secret, &name, Some(current.revision), &sealed)
                    .map(|_| ())
            };
            match r {
                Ok(()) if failures >= MAX_UNWRAP_FAILURES => {
                    tracing::warn!(job = %current.info.id, key = %current.info.key, failures, "import job retired: too many wrapped keys failed to unwrap under it");
                    return Error::Transfer(Transfer::JobRetired {
                        id: current.info.id,
                        failures,
                    });
                }
                Ok(()) => return unwrap_error,
                // another failure (on another node) counted first: count again on top
                Err(kmsd_keystore::Error::Conflict { .. }) => match self.get(&current.info.id, now) {
                    Ok(j) => current = j,
                    Err(e) => return e,
                },
                Err(kmsd_keystore::Error::NotFound { .. }) => {
                    return Error::Transfer(Transfer::JobNotFound { id: current.info.id })
                }
                Err(e) => {
                    // Fail closed: the unwrap failed either way, but an
                    // uncounted failure must not be free.
                    tracing::error!(job = %current.info.id, error = %e, "an import job's failed unwrap could not be counted");
                    return Error::StoreUnavailable;
                }
            }
        }
        Error::StoreUnavailable
    }

    /// Removes expired jobs; returns how many are live.
    fn sweep(&self, now: i64) -> Result<usize, Error> {
        let mut after: Option<String> = None;
        let mut live = 0;
        loop {
            let names = self.store.list(RecordKind::Secret, PREFIX, after.as_deref(), PAGE)?;
            for name in &names {
                let Some(entry) = self.store.get(RecordKind::Secret, name)? else {
                    continue;
                };
                match self.open(name, entry.revision, &entry.value) {
                    Ok(job) if job.info.expires_at <= now => self.remove(name, entry.revision),
                    Ok(_) => live += 1,
                    // a record that does not open still counts: it is
                    // reported (Corrupt) when looked up, never silently dropped
                    Err(_) => live += 1,
                }
            }
            match names.last() {
                Some(last) if names.len() == PAGE => after = Some(last.clone()),
                _ => return Ok(live),
            }
        }
    }

    fn remove(&self, name: &str, revision: Revision) {
        match self.store.delete(RecordKind::Secret, name, revision) {
            Ok(()) => tracing::info!(record = name, "expired import job removed"),
            Err(e) => tracing::debug!(record = name, error = %e, "expired import job not removed (removed meanwhile?)"),
        }
    }

    fn seal(&self, info: &JobInfo, private: &[u8]) -> Result<Vec<u8>, Error> {
        let header = serde_json::to_vec(info).map_err(|_| Error::Internal("import job does not encode"))?;
        let header_len = u32::try_from(header.len()).map_err(|_| Error::Internal("import job does not encode"))?;
        let mut plain = Zeroizing::new(Vec::with_capacity(5 + header.len() + private.len()));
        plain.push(FORMAT);
        plain.extend_from_slice(&header_len.to_be_bytes());
        plain.extend_from_slice(&header);
        plain.extend_from_slice(private);
        Ok(self.sealer.seal(RecordKind::Secret, &record_name(&info.id), &plain)?)
    }

    fn open(&self, name: &str, revision: Revision, sealed: &[u8]) -> Result<Job, Error> {
        let plain = self.sealer.open(RecordKind::Secret, name, sealed)?;
        let corrupt = || {
            tracing::error!(record = name, "import job record does not decode (format 1)");
            Error::Corrupt(name.to_owned())
        };
        let (&format, rest) = plain.split_first().ok_or_else(corrupt)?;
        if format != FORMAT {
            return Err(corrupt());
        }
        let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let (header, private) = rest
            .split_at_checked(u32::from_be_bytes(*len) as usize)
            .ok_or_else(corrupt)?;
        let info: JobInfo = serde_json::from_slice(header).map_err(|_| corrupt())?;
        if record_name(&info.id) != name {
            return Err(corrupt());
        }
        Ok(Job {
            info,
            revision,
            private: Zeroizing::new(private.to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use kmsd_keystore::{MasterKey, MemoryStore};

    /// Jobs on a fresh memory store (leaked for the test's lifetime).
    fn setup() -> Jobs<'static> {
        let store: &'static MemoryStore = Box::leak(Box::default());
        let sealer: &'static Sealer = Box::leak(Box::new(Sealer::new(MasterKey::generate())));
        Jobs { store, sealer }
    }

    #[test]
    fn a_job_is_sealed_bound_to_its_name_and_expires() {
        let jobs = setup();
        let info = jobs.create("payments.pan", 100, "spiffe://o/a", 1000, 4).unwrap();
        assert_eq!(info.expires_at, 1100);
        let job = jobs.get(&info.id, 1050).unwrap();
        assert_eq!(job.info, info);
        job.wrapping_key().unwrap();
        // nothing of the private key in clear in the store
        let raw = jobs
            .store
            .get(RecordKind::Secret, &record_name(&info.id))
            .unwrap()
            .unwrap();
        let der = job.private.clone();
        assert!(!raw.value.windows(32).any(|w| der.windows(32).any(|d| d == w)));
        // expired: answered so, and removed
        assert!(matches!(
            jobs.get(&info.id, 1100),
            Err(Error::Transfer(Transfer::JobExpired { expired_at: 1100, .. }))
        ));
        assert!(matches!(
            jobs.get(&info.id, 1100),
            Err(Error::Transfer(Transfer::JobNotFound { .. }))
        ));
        // moved to another id: does not open
        let other = jobs.create("k", 100, "o", 1000, 4).unwrap();
        let sealed = jobs
            .store
            .get(RecordKind::Secret, &record_name(&other.id))
            .unwrap()
            .unwrap();
        let fake = "0".repeat(32);
        jobs.store
            .put(RecordKind::Secret, &record_name(&fake), None, &sealed.value)
            .unwrap();
        assert!(matches!(jobs.get(&fake, 1000), Err(Error::Corrupt(_))));
    }

    #[test]
    fn live_jobs_are_bounded_and_expired_ones_swept() {
        let jobs = setup();
        jobs.create("a", 10, "o", 1000, 2).unwrap();
        jobs.create("b", 100, "o", 1000, 2).unwrap();
        assert!(matches!(
            jobs.create("c", 100, "o", 1005, 2),
            Err(Error::Transfer(Transfer::TooManyJobs { live: 2 }))
        ));
        // the first expires: its record goes, room for another
        jobs.create("c", 100, "o", 1010, 2).unwrap();
        assert_eq!(jobs.store.list(RecordKind::Secret, PREFIX, None, 10).unwrap().len(), 2);
    }

    #[test]
    fn ids_and_ttls_are_checked() {
        assert!(check_id(&"a".repeat(32)).is_ok());
        for bad in ["", "../x", &"A".repeat(32), &"a".repeat(33), &"g".repeat(32)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert_eq!(ttl(0).unwrap(), DEFAULT_TTL);
        assert_eq!(ttl(MAX_TTL).unwrap(), MAX_TTL);
        assert!(ttl(MAX_TTL + 1).is_err());
    }

    #[test]
    fn too_many_failed_unwraps_retire_a_job() {
        let jobs = setup();
        let info = jobs.create("k", 100, "o", 1000, 4).unwrap();
        for n in 1..MAX_UNWRAP_FAILURES - 1 {
            let e = jobs.record_failure(jobs.get(&info.id, 1001).unwrap(), 1001, Error::Internal("x"));
            assert!(matches!(e, Error::Internal(_)), "{e}");
            assert_eq!(jobs.get(&info.id, 1001).unwrap().info.failures, n);
        }
        // two failures counted at once from the same read (two nodes): both count
        let (a, b) = (jobs.get(&info.id, 1001).unwrap(), jobs.get(&info.id, 1001).unwrap());
        assert!(matches!(
            jobs.record_failure(a, 1001, Error::Internal("x")),
            Error::Internal(_)
        ));
        let e = jobs.record_failure(b, 1001, Error::Internal("x"));
        assert!(matches!(e, Error::Transfer(Transfer::JobRetired { .. })), "{e}");
        assert!(matches!(
            jobs.get(&info.id, 1001),
            Err(Error::Transfer(Transfer::JobNotFound { .. }))
        ));
    }
}
