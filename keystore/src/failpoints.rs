//! Failpoints: every injected fault of kmsd, named in one place.
//!
//! Built on the `fail` crate. A failpoint is live only when `fail` is
//! compiled with its `failpoints` feature, which only the root package's
//! dev-dependency turns on: the binaries `cargo test` builds for the
//! integration tests (tests/faults.rs) have them; `cargo build`,
//! `cargo run --release` and every release build do not (each
//! `fail_point!` compiles to nothing, and the daemon ignores `FAILPOINTS`;
//! tests/faults.rs::release_build_has_no_failpoints checks the feature
//! graph).
//!
//! Tests configure them with the `FAILPOINTS` environment variable of the
//! daemon or offline command (`name=actions;name=actions`, the `fail`
//! syntax: `return`, `2*off->return`, ...).
//!
//! # Store faults (`return` makes the step fail with `EIO`)
//! | name | step |
//! | --- | --- |
//! | [`STORE_WRITE`] | the batch is written (before sled applies it: nothing changes) |
//! | [`STORE_FLUSH`] | sled's flush after the batch was applied in memory |
//! | [`STORE_FSYNC`] | the `fsync` of the store's files after the flush |
//!
//! With `return` alone every evaluation fails (so `3*off->return->off` is
//! "the fourth write fails, once"). `return(NAME)` fails only batches that
//! write a record called NAME (a key name, for instance), and
//! `return(NAME@N)` only the N-th such batch of the process (counted per
//! failpoint); several targets are separated by commas. Public
//! [`KeyStore::sync`](crate::KeyStore::sync) calls (open, shutdown) name no
//! record, so only an untargeted `return` reaches them.
//!
//! # Kill points (`return` prints `kmsd failpoint: NAME` to stderr and
//! stops there for a minute, so that a test kills the process at that
//! point)
//! | name | where |
//! | --- | --- |
//! | [`REKEY_RECORD`] | `kmsd rekey`, after each record is re-sealed and written |
//! | [`RESTORE_RECORD`] | `kmsd restore`, after each record is written |
//! | [`STORE_OPEN`] | start-up, after sled recovered its log, before the first sync |
//! | [`MANIFEST_OPEN`] | start-up, after the integrity manifest is checked or built, before the store marker and migration |
//! | [`AUDIT_RECOVER`] (daemon) | start-up audit recovery, after a torn tail is moved aside, before the head moves |
//! | [`AUDIT_ROTATE_RENAMED`] (daemon) | audit rotation, after the rename, before the head moves |
//! | [`AUDIT_ROTATE_HEAD`] (daemon) | audit rotation, after the head moved, before retention |
//!
//!
//! # Delay points (`sleep(MS)` widens a window for a test)
//! | name | where |
//! | --- | --- |
//! | [`KEYS_INSTALL`] (daemon) | an administrative change of a ring is durable, the data path's cache not yet updated |
//!
//! # Pause points (`return(MS)` prints `kmsd failpoint: NAME` to stderr
//! and sleeps MS milliseconds, so that a test stops the process there)
//! | name | where |
//! | --- | --- |
//! | [`SCHEDULED_WRITE`] (daemon) | a scheduled rotation or destruction is decided (ring read, change computed), its fenced write not yet sent |
//!
//! Use counts to pick the N-th occurrence: `REKEY_RECORD=2*off->return`
//! stops after the third record.
use crate::Error;

/// A batch write (see the module documentation).
pub const STORE_WRITE: &str = "store-write";
/// sled's flush after a batch (see the module documentation).
pub const STORE_FLUSH: &str = "store-flush";
/// The `fsync` after the flush (see the module documentation).
pub const STORE_FSYNC: &str = "store-fsync";
/// Kill point: after each record of a rekey.
pub const REKEY_RECORD: &str = "rekey-record";
/// Kill point: after each record of a restore.
pub const RESTORE_RECORD: &str = "restore-record";
/// Kill point: the store is open, not yet synced.
pub const STORE_OPEN: &str = "store-open";
/// Kill point: the manifest is open, the store marker and migration not
/// yet done.
pub const MANIFEST_OPEN: &str = "manifest-open";
/// Kill point (daemon): audit tail recovery moved a tail aside.
pub const AUDIT_RECOVER: &str = "audit-recover";
/// Kill point (daemon): audit rotation renamed the live log.
pub const AUDIT_ROTATE_RENAMED: &str = "audit-rotate-renamed";
/// Kill point (daemon): audit rotation moved the head.
pub const AUDIT_ROTATE_HEAD: &str = "audit-rotate-head";

/// Delay point (daemon): a ring change is durable, not yet in the cache.
pub const KEYS_INSTALL: &str = "keys-install";

/// Pause point (daemon): a scheduled change decided, not yet written.
pub const SCHEDULED_WRITE: &str = "scheduled-write";

/// Every failpoint name.
pub const ALL: [&str; 12] = [
    KEYS_INSTALL,
    SCHEDULED_WRITE,
    STORE_WRITE,
    STORE_FLUSH,
    STORE_FSYNC,
    REKEY_RECORD,
    RESTORE_RECORD,
    STORE_OPEN,
    MANIFEST_OPEN,
    AUDIT_RECOVER,
    AUDIT_ROTATE_RENAMED,
    AUDIT_ROTATE_HEAD,
];

/// Whether this build has live failpoints (test builds only).
pub const fn enabled() -> bool {
    fail::has_failpoints()
}

/// Configures the failpoints named in `FAILPOINTS` (the `fail` syntax),
/// when this build has them; a build without them ignores the variable.
/// Returns how many were configured. Unlike `fail::FailScenario::setup`
/// this reports a malformed value instead of panicking.
pub fn configure_from_env() -> Result<usize, String> {
    let Some(spec) = std::env::var_os("FAILPOINTS") else {
        return Ok(0);
    };
    if !enabled() {
        return Ok(0);
    }
    let spec = spec.into_string().map_err(|_| "FAILPOINTS is not UTF-8".to_owned())?;
    let mut n = 0;
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, actions) = item
            .split_once('=')
            .ok_or_else(|| format!("FAILPOINTS: {item:?} is not NAME=ACTIONS"))?;
        if !ALL.contains(&name.trim()) {
            return Err(format!("FAILPOINTS: unknown failpoint {:?}", name.trim()));
        }
        fail::cfg(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS: {name}: {e}"))?;
        n += 1;
    }
    Ok(n)
}

/// The error an injected store fault returns: `EIO`, as the kernel
/// reports a failed write or `fsync`.
pub fn eio(point: &str) -> Error {
    Error::Backend(format!(
        "{} (injected at failpoint {point})",
        std::io::Error::from_raw_os_error(5)
    ))
}

/// The store failpoint `point` for a batch writing `names`: `Err(EIO)`
/// when it is configured to fail this batch (see the module documentation).
#[inline]
pub fn store_fault(point: &'static str, names: &[&str]) -> Result<(), Error> {
    let _ = (point, names); // unused where failpoints compile to nothing
    fail::fail_point!(point, |arg: Option<String>| decide(point, arg.as_deref(), names));
    Ok(())
}

/// Whether a triggered store failpoint fails a batch writing `names`.
/// Public for the failpoint macro only (dead code in builds without
/// failpoints).
#[doc(hidden)]
pub fn decide(point: &'static str, arg: Option<&str>, names: &[&str]) -> Result<(), Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashMap<(&'static str, String), u64>>> = OnceLock::new();
    let Some(arg) = arg.filter(|a| !a.is_empty()) else {
        return Err(eio(point));
    };
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let targets: Vec<(&str, Option<u64>)> = arg
        .split(',')
        .map(str::trim)
        .map(|t| match t.split_once('@') {
            Some((n, k)) => (n, k.parse::<u64>().ok()),
            None => (t, None),
        })
        .collect();
    let mut fails = false;
    let mut counted: Vec<&str> = Vec::new();
    for &(name, _) in &targets {
        if !names.contains(&name) || counted.contains(&name) {
            continue;
        }
        counted.push(name);
        let count = seen.entry((point, name.to_owned())).or_insert(0);
        *count += 1;
        let n = *count;
        fails |= targets.iter().any(|&(t, nth)| t == name && nth.is_none_or(|k| k == n));
    }
    if fails {
        Err(eio(point))
    } else {
        Ok(())
    }
}

/// A kill point: when triggered, says so on stderr and waits a minute
/// (the test kills the process meanwhile), then carries on.
#[inline]
pub fn kill_point(point: &'static str) {
    let _ = point; // unused where failpoints compile to nothing
    fail::fail_point!(point, |_| stop_here(point));
}

/// A pause point: when triggered with `return(MS)`, says so on stderr and
/// sleeps MS milliseconds (1000 without a number), then carries on.
#[inline]
pub fn pause_point(point: &'static str) {
    let _ = point; // unused where failpoints compile to nothing
    fail::fail_point!(point, |arg: Option<String>| pause_here(point, arg.as_deref()));
}

/// Public for the failpoint macro only.
#[doc(hidden)]
pub fn pause_here(point: &str, ms: Option<&str>) {
    eprintln!("kmsd failpoint: {point}");
    let ms = ms.and_then(|m| m.trim().parse::<u64>().ok()).unwrap_or(1000);
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// Public for the failpoint macro only.
#[doc(hidden)]
pub fn stop_here(point: &str) {
    eprintln!("kmsd failpoint: {point}");
    std::thread::sleep(std::time::Duration::from_secs(60));
}
