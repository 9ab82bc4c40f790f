//! `kmsd-etcd`: kmsd's key store on an etcd cluster.
//!
//! # Layout
//! - [`proto`]: etcd's v3 gRPC API, generated at build time from the
//!   vendored protos in `proto/` (protox: no system `protoc`; client stubs
//!   only).
//! - [`client`]: [`EtcdClient`], a small typed async client: several
//!   endpoints with failover, optional mTLS on the workspace's rustls,
//!   connect and request timeouts; range, transactions, leases, watches,
//!   member status, and the few auth calls an operator needs.
//! - [`watch`]: [`Watcher`], a watch on a key range from a revision, with
//!   progress notifications and typed compaction/cancel events.
//! - [`store`]: [`EtcdStore`], the [`kmsd_keystore::KeyStore`] backend:
//!   one etcd transaction per write, comparing each record's
//!   `mod_revision`; linearizable reads; the synchronous trait bridged to
//!   a runtime thread the store owns.
//! - [`error`]: the one error enum; every way of not reaching etcd (down,
//!   partitioned, no quorum, timed out) is [`Error::Unavailable`].
//! - `testing` (feature `testing`): a real etcd cluster on loopback for
//!   tests (start, kill, stop/continue, restart, TLS, prefix users).
//!
//! The crate never sees key material in clear: [`EtcdStore`] stores what
//! kmsd's keystore has already sealed under the master key.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod error;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

pub use client::{
    Cmp, Compare, EtcdClient, KeyValue, Range, RangeResult, Settings, TlsSettings, Txn, TxnOp, TxnOpResult, TxnResult,
};
pub use error::Error;
pub use store::EtcdStore;
pub use watch::{Event, EventKind, WatchEvent, Watcher};

/// The generated etcd v3 API (packages `etcdserverpb`, `mvccpb`, `authpb`,
/// `v3electionpb`, `v3lockpb`), client stubs only.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `etcdserverpb`: KV, Watch, Lease, Cluster, Maintenance, Auth.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// `mvccpb`: key-values and watch events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `authpb`: users, roles, permissions.
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    /// `v3electionpb`: the server-side election service.
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
    /// `v3lockpb`: the server-side lock service.
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
}

/// The end of the key range holding every key that starts with `prefix`
/// (etcd's convention: the prefix with its last byte below 0xff
/// incremented; `\0` — every key — if there is none).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/kmsd/a/"), b"/kmsd/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
