//! Operating the daemon: what it needs from the system around it.
//!
//! - [`secret_file`]: the permission rule for files holding secrets.
pub mod secret_file;
