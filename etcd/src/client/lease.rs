//! Leases: [`EtcdClient::lease_grant`], [`EtcdClient::lease_revoke`] and
//! [`LeaseKeeper`], a lease kept alive over one stream.
use super::{leader_required, EtcdClient, Retry};
use crate::error::Error;
use crate::proto::etcdserverpb as pb;
use std::time::Duration;

/// A lease granted by etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id (attach it to keys with [`super::TxnOp::Put`]).
    pub id: i64,
    /// Its time to live in seconds, as granted.
    pub ttl: i64,
}

/// A lease kept alive over one stream: call [`LeaseKeeper::keep_alive`]
/// at least every third of the TTL.
pub struct LeaseKeeper {
    id: i64,
    requests: tokio::sync::mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: tonic::Streaming<pb::LeaseKeepAliveResponse>,
    timeout: Duration,
    endpoint: String,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseKeeper({:x} via {})", self.id, self.endpoint)
    }
}

impl LeaseKeeper {
    /// The lease's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Renews the lease once; returns its new TTL in seconds, 0 if it had
    /// already expired (then it is gone: grant a new one).
    pub async fn keep_alive(&mut self) -> Result<i64, Error> {
        let once = async {
            self.requests
                .send(pb::LeaseKeepAliveRequest { id: self.id })
                .await
                .map_err(|_| Error::unavailable(format!("{}: lease keep-alive stream closed", self.endpoint)))?;
            match self.responses.message().await {
                Ok(Some(r)) => Ok(r.ttl),
                Ok(None) => Err(Error::unavailable(format!(
                    "{}: lease keep-alive stream ended",
                    self.endpoint
                ))),
                Err(s) => Err(Error::from_status(&self.endpoint, s)),
            }
        };
        tokio::time::timeout(self.timeout, once)
            .await
            .map_err(|_| Error::Timeout {
                timeout: self.timeout,
                what: "lease keep-alive",
            })?
    }
}

impl EtcdClient {
    /// Grants a lease of `ttl` seconds.
    pub async fn lease_grant(&self, ttl: i64) -> Result<Lease, Error> {
        let req = pb::LeaseGrantRequest { ttl, id: 0 };
        let r = self
            .call("lease grant", Retry::Unsent, |ch, _| async move {
                pb::lease_client::LeaseClient::new(ch)
                    .lease_grant(leader_required(req))
                    .await
            })
            .await?
            .into_inner();
        if !r.error.is_empty() {
            return Err(Error::Status(Box::new(tonic::Status::unknown(r.error))));
        }
        Ok(Lease { id: r.id, ttl: r.ttl })
    }

    /// Revokes a lease (its keys are deleted). Revoking a lease that is
    /// already gone succeeds.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), Error> {
        let req = pb::LeaseRevokeRequest { id };
        match self
            .call("lease revoke", Retry::Idempotent, |ch, _| async move {
                pb::lease_client::LeaseClient::new(ch)
                    .lease_revoke(leader_required(req))
                    .await
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Status(s)) if s.message().contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Opens a keep-alive stream for lease `id`.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeeper, Error> {
        let (endpoint, requests, responses) = self
            .call("lease keep-alive", Retry::Idempotent, |ch, endpoint| {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                async move {
                    // the first request goes with the stream, so the
                    // server's headers come back with its answer
                    let _ = tx.send(pb::LeaseKeepAliveRequest { id }).await;
                    let resp = pb::lease_client::LeaseClient::new(ch)
                        .lease_keep_alive(leader_required(tokio_stream::wrappers::ReceiverStream::new(rx)))
                        .await?;
                    let mut stream = resp.into_inner();
                    stream.message().await?;
                    Ok((endpoint, tx, stream))
                }
            })
            .await?;
        Ok(LeaseKeeper {
            id,
            requests,
            responses,
            timeout: self.inner.request_timeout,
            endpoint,
        })
    }
}
