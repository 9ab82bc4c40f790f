//! [`Watcher`]: one watch on a key range, over its own gRPC stream.
//!
//! Created from a start revision with progress notifications requested,
//! so that a follower learns how far it is up to date even when nothing
//! changes (etcd sends them at its `--experimental-watch-progress-notify-interval`,
//! 10 minutes by default; [`Watcher::request_progress`] asks for one now).
//! The two ends of a watch are typed events: [`WatchEvent::Compacted`]
//! (the start revision is gone: reload everything, then watch from the
//! reload's revision) and [`WatchEvent::Canceled`]. A stream that breaks
//! (the member died, the network failed) is an [`Error::Unavailable`]
//! from [`Watcher::next`]; watch again from [`Watcher::resume_revision`].
use crate::client::KeyValue;
use crate::error::Error;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use std::collections::VecDeque;
use std::time::Duration;

/// What changed a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or replaced.
    Put,
    /// Deleted (the key-value then holds only the key and the deletion's
    /// revision as `mod_revision`).
    Delete,
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the change.
    pub kv: KeyValue,
}

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Changes, in revision order.
    Events {
        /// The highest `mod_revision` among them: every change up to it has
        /// been delivered.
        revision: i64,
        /// The changes.
        events: Vec<Event>,
    },
    /// Nothing changed in the range up to `revision` that was not
    /// delivered already: the watcher is up to date at `revision`.
    Progress {
        /// The store's revision.
        revision: i64,
    },
    /// The start revision (or the point the watcher had reached) was
    /// compacted: events were lost. The watch is over; reload and watch
    /// again.
    Compacted {
        /// The oldest revision still kept.
        compact_revision: i64,
    },
    /// etcd canceled the watch (the watcher asked for it, or etcd's
    /// authorization changed). The watch is over.
    Canceled {
        /// etcd's reason, possibly empty.
        reason: String,
    },
}

/// A watch on a key range (see the module documentation). Not `Clone`:
/// one consumer reads it.
pub struct Watcher {
    endpoint: String,
    requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    pending: VecDeque<WatchEvent>,
    watch_id: i64,
    timeout: Duration,
    /// Every change up to this revision has been delivered.
    delivered: i64,
    finished: bool,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Watcher(id {} via {}, delivered up to {})",
            self.watch_id, self.endpoint, self.delivered
        )
    }
}

fn convert(r: pb::WatchResponse) -> WatchEvent {
    if r.compact_revision != 0 {
        return WatchEvent::Compacted {
            compact_revision: r.compact_revision,
        };
    }
    if r.canceled {
        return WatchEvent::Canceled {
            reason: r.cancel_reason,
        };
    }
    if r.events.is_empty() {
        return WatchEvent::Progress {
            revision: r.header.map(|h| h.revision).unwrap_or(0),
        };
    }
    let events: Vec<Event> = r
        .events
        .into_iter()
        .map(|e| Event {
            kind: if e.r#type == mvccpb::event::EventType::Delete as i32 {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv: e.kv.map(KeyValue::from).unwrap_or_else(|| KeyValue {
                key: Vec::new(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: 0,
                version: 0,
                lease: 0,
            }),
        })
        .collect();
    WatchEvent::Events {
        revision: events.iter().map(|e| e.kv.mod_revision).max().unwrap_or(0),
        events,
    }
}

impl Watcher {
    pub(crate) fn new(
        endpoint: String,
        requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
        responses: tonic::Streaming<pb::WatchResponse>,
        first: pb::WatchResponse,
        timeout: Duration,
        start_revision: i64,
    ) -> Self {
        let mut pending = VecDeque::new();
        let watch_id = first.watch_id;
        if !first.created || first.canceled || first.compact_revision != 0 {
            pending.push_back(convert(first));
        }
        Watcher {
            endpoint,
            requests,
            responses,
            pending,
            watch_id,
            timeout,
            delivered: start_revision.saturating_sub(1).max(0),
            finished: false,
        }
    }

    /// The endpoint serving this watch.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every change up to this revision has been delivered (from the
    /// events and progress notifications seen so far).
    pub fn delivered_revision(&self) -> i64 {
        self.delivered
    }

    /// The revision to watch from again after this watch broke.
    pub fn resume_revision(&self) -> i64 {
        self.delivered + 1
    }

    /// The next report. Waits as long as nothing happens (progress
    /// notifications come at etcd's interval or on
    /// [`Watcher::request_progress`]); a broken stream is
    /// [`Error::Unavailable`]. After `Compacted` or `Canceled`, every
    /// further call is `Unavailable`.
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        let ev = match self.pending.pop_front() {
            Some(ev) => ev,
            None if self.finished => {
                return Err(Error::unavailable(format!("{}: the watch is over", self.endpoint)));
            }
            None => match self.responses.message().await {
                Ok(Some(r)) => convert(r),
                Ok(None) => {
                    self.finished = true;
                    return Err(Error::unavailable(format!("{}: the watch stream ended", self.endpoint)));
                }
                Err(s) => {
                    self.finished = true;
                    return Err(Error::from_status(&self.endpoint, s));
                }
            },
        };
        match &ev {
            WatchEvent::Events { revision, .. } | WatchEvent::Progress { revision } => {
                self.delivered = self.delivered.max(*revision);
            }
            WatchEvent::Compacted { .. } | WatchEvent::Canceled { .. } => self.finished = true,
        }
        Ok(ev)
    }

    /// Asks etcd for a progress notification now (answered through
    /// [`Watcher::next`] as [`WatchEvent::Progress`] once the watcher has
    /// caught up).
    pub async fn request_progress(&self) -> Result<(), Error> {
        self.send(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        ))
        .await
    }

    /// Cancels the watch; [`Watcher::next`] then reports
    /// [`WatchEvent::Canceled`].
    pub async fn cancel(&self) -> Result<(), Error> {
        self.send(pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: self.watch_id,
        }))
        .await
    }

    async fn send(&self, r: pb::watch_request::RequestUnion) -> Result<(), Error> {
        tokio::time::timeout(
            self.timeout,
            self.requests.send(pb::WatchRequest { request_union: Some(r) }),
        )
        .await
        .map_err(|_| Error::Timeout {
            timeout: self.timeout,
            what: "watch request",
        })?
        .map_err(|_| Error::unavailable(format!("{}: the watch stream is closed", self.endpoint)))
    }
}
