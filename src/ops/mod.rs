//! Operating the daemon: what it needs from the system around it. Leaves:
//! nothing here reads the key rings or the services' state (metrics get a
//! snapshot, the endpoint a closure).
//!
//! - [`notify`]: systemd notifications (READY, RELOADING, STOPPING,
//!   WATCHDOG, STATUS).
//! - [`os`]: the one module with `unsafe`: process hardening (prctl,
//!   rlimits, mlock), sockets passed by systemd, `TCP_DEFER_ACCEPT`.
//! - [`metrics`]: Prometheus counters in atomics, rendered from a snapshot.
//! - [`metrics_endpoint`]: the internal-only HTTP listener serving them.
//! - [`secret_file`]: the permission rule for files holding secrets.
pub mod metrics;
pub mod metrics_endpoint;
pub mod notify;
pub mod os;
pub mod secret_file;
