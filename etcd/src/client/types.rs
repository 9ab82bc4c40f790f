//! The values [`super::EtcdClient`] takes and returns: key-values, range
//! reads, transactions (comparisons, operations, results), members and
//! their status, each with its conversion to or from etcd's protos.
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;

/// A key-value as etcd stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the key's creation (0: absent).
    pub create_revision: i64,
    /// The revision of its last modification.
    pub mod_revision: i64,
    /// The number of modifications since its creation.
    pub version: i64,
    /// The lease attached to it (0: none).
    pub lease: i64,
}

impl std::fmt::Debug for KeyValue {
    /// Values are sealed records or leader/fencing tokens: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value_len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .field("lease", &self.lease)
            .finish()
    }
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// A range read.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// First key.
    pub key: Vec<u8>,
    /// End of the range, exclusive (empty: `key` alone; see
    /// [`crate::prefix_end`] for a prefix).
    pub range_end: Vec<u8>,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read at this revision (0: the latest).
    pub revision: i64,
    /// Keys and revisions without values.
    pub keys_only: bool,
    /// The count only.
    pub count_only: bool,
    /// Serve from the member's local state without a quorum round trip
    /// (may be stale). `false`, the default, is linearizable.
    pub serializable: bool,
}

impl Range {
    /// The one key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Range {
            key: key.into(),
            ..Range::default()
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        Range {
            range_end: crate::prefix_end(&key),
            key,
            ..Range::default()
        }
    }

    pub(super) fn into_proto(self) -> pb::RangeRequest {
        pb::RangeRequest {
            key: self.key,
            range_end: self.range_end,
            limit: self.limit,
            revision: self.revision,
            keys_only: self.keys_only,
            count_only: self.count_only,
            serializable: self.serializable,
            ..Default::default()
        }
    }
}

/// What a range read found.
#[derive(Debug, Clone, Default)]
pub struct RangeResult {
    /// The keys, in byte order.
    pub kvs: Vec<KeyValue>,
    /// More keys are in the range past `limit`.
    pub more: bool,
    /// Number of keys in the range (all of them, not only this page).
    pub count: i64,
    /// The store's revision the read saw.
    pub revision: i64,
}

impl From<pb::RangeResponse> for RangeResult {
    fn from(r: pb::RangeResponse) -> Self {
        RangeResult {
            revision: r.header.map(|h| h.revision).unwrap_or(0),
            kvs: r.kvs.into_iter().map(KeyValue::from).collect(),
            more: r.more,
            count: r.count,
        }
    }
}

/// A comparison's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

/// One condition of a transaction, on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's last modification revision (0 when absent).
    ModRevision(Vec<u8>, Cmp, i64),
    /// The key's creation revision (0 when absent: `== 0` is "absent").
    CreateRevision(Vec<u8>, Cmp, i64),
    /// The key's version (modifications since creation; 0 when absent).
    Version(Vec<u8>, Cmp, i64),
    /// The key's value.
    Value(Vec<u8>, Cmp, Vec<u8>),
    /// The lease attached to the key.
    Lease(Vec<u8>, Cmp, i64),
}

impl Compare {
    fn into_proto(self) -> pb::Compare {
        use pb::compare::{CompareResult, CompareTarget, TargetUnion};
        let result = |c: Cmp| match c {
            Cmp::Equal => CompareResult::Equal,
            Cmp::NotEqual => CompareResult::NotEqual,
            Cmp::Greater => CompareResult::Greater,
            Cmp::Less => CompareResult::Less,
        };
        let (key, cmp, target, union) = match self {
            Compare::ModRevision(k, c, r) => (k, c, CompareTarget::Mod, TargetUnion::ModRevision(r)),
            Compare::CreateRevision(k, c, r) => (k, c, CompareTarget::Create, TargetUnion::CreateRevision(r)),
            Compare::Version(k, c, v) => (k, c, CompareTarget::Version, TargetUnion::Version(v)),
            Compare::Value(k, c, v) => (k, c, CompareTarget::Value, TargetUnion::Value(v)),
            Compare::Lease(k, c, l) => (k, c, CompareTarget::Lease, TargetUnion::Lease(l)),
        };
        pb::Compare {
            result: result(cmp) as i32,
            target: target as i32,
            key,
            target_union: Some(union),
            range_end: Vec::new(),
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// Writes `value` at `key`, attached to `lease` (0: none).
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease: i64,
    },
    /// Deletes `key` (with a non-empty `range_end`, the range).
    Delete {
        /// The key.
        key: Vec<u8>,
        /// End of the range, exclusive (empty: `key` alone).
        range_end: Vec<u8>,
    },
    /// Reads a range, at the transaction's revision.
    Get(Range),
}

impl TxnOp {
    /// A put without a lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    /// The deletion of one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Delete {
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    fn into_proto(self) -> pb::RequestOp {
        use pb::request_op::Request;
        let request = match self {
            TxnOp::Put { key, value, lease } => Request::RequestPut(pb::PutRequest {
                key,
                value,
                lease,
                ..Default::default()
            }),
            TxnOp::Delete { key, range_end } => Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: false,
            }),
            TxnOp::Get(r) => Request::RequestRange(r.into_proto()),
        };
        pb::RequestOp { request: Some(request) }
    }
}

/// A transaction: if every comparison holds, the `success` branch, else
/// the `failure` branch, atomically at one revision.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    compare: Vec<Compare>,
    success: Vec<TxnOp>,
    failure: Vec<TxnOp>,
}

impl Txn {
    /// An empty transaction (no condition: the success branch runs).
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds conditions (all must hold).
    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compare);
        self
    }

    /// Adds operations to the branch run when the conditions hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations to the branch run when a condition fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }

    pub(super) fn into_proto(self) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: self.compare.into_iter().map(Compare::into_proto).collect(),
            success: self.success.into_iter().map(TxnOp::into_proto).collect(),
            failure: self.failure.into_iter().map(TxnOp::into_proto).collect(),
        }
    }
}

/// The result of one operation of the branch a transaction ran.
#[derive(Debug, Clone)]
pub enum TxnOpResult {
    /// A put.
    Put,
    /// A deletion: how many keys it removed.
    Delete(i64),
    /// A read.
    Get(RangeResult),
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct TxnResult {
    /// Whether the conditions held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction (the `mod_revision` of
    /// every key it wrote).
    pub revision: i64,
    /// One result per operation of the branch that ran.
    pub responses: Vec<TxnOpResult>,
}

impl From<pb::TxnResponse> for TxnResult {
    fn from(r: pb::TxnResponse) -> Self {
        use pb::response_op::Response;
        TxnResult {
            succeeded: r.succeeded,
            revision: r.header.map(|h| h.revision).unwrap_or(0),
            responses: r
                .responses
                .into_iter()
                .map(|op| match op.response {
                    Some(Response::ResponseRange(r)) => TxnOpResult::Get(r.into()),
                    Some(Response::ResponseDeleteRange(d)) => TxnOpResult::Delete(d.deleted),
                    Some(Response::ResponsePut(_)) | Some(Response::ResponseTxn(_)) | None => TxnOpResult::Put,
                })
                .collect(),
        }
    }
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: u64,
    /// Its name (empty until it started).
    pub name: String,
    /// Its client URLs.
    pub client_urls: Vec<String>,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
}

/// One member's own view of itself (etcd's Maintenance.Status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's id.
    pub member_id: u64,
    /// The id of the leader it follows (0: none).
    pub leader: u64,
    /// etcd's version.
    pub version: String,
    /// The database's size in bytes (allocated).
    pub db_size: i64,
    /// The raft term.
    pub raft_term: u64,
    /// The last raft index applied.
    pub raft_applied_index: u64,
    /// The store's revision.
    pub revision: i64,
    /// Alarms and errors the member reports (`NOSPACE`...).
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_never_reach_debug_output() {
        let kv = KeyValue {
            key: b"/kmsd/a/kpayments".to_vec(),
            value: b"sealed-bytes-here".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 1,
            lease: 0,
        };
        let s = format!("{kv:?}");
        assert!(s.contains("kpayments") && !s.contains("sealed-bytes"), "{s}");
    }
}
