//! `kmsd.v1.Mask`: masking and redaction (pure functions of
//! [`crate::masking`], shared with `kmsctl redact`), and tokenization
//! under ordinary kmsd key rings.
use crate::authz::Op;
use crate::error::Error;
use crate::masking::{self, Kind};
use crate::proto;
use crate::service::Shared;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Texts larger than this are redacted off the async workers.
const INLINE_REDACT_BYTES: usize = 64 * 1024;

/// `kmsd.v1.Mask`.
#[derive(Debug, Clone)]
pub struct MaskService {
    /// Shared state.
    pub shared: Arc<Shared>,
}

/// The wire kind as a masking kind.
pub fn kind_from_proto(k: i32) -> Result<Kind, Error> {
    use proto::DataKind as D;
    Ok(match D::try_from(k).unwrap_or(D::Unspecified) {
        D::Pan => Kind::Pan,
        D::Iban => Kind::Iban,
        D::UkSortCode => Kind::UkSortCode,
        D::UkAccountNumber => Kind::UkAccountNumber,
        D::Email => Kind::Email,
        D::Phone => Kind::Phone,
        D::Name => Kind::Name,
        D::Secret => Kind::Secret,
        D::Jwt => Kind::Jwt,
        D::BearerToken => Kind::BearerToken,
        D::ApiKey => Kind::ApiKey,
        D::Password => Kind::Password,
        D::Unspecified => return Err(Error::InvalidArgument("kind is required".into())),
    })
}

fn kind_to_proto(k: Kind) -> proto::DataKind {
    use proto::DataKind as D;
    match k {
        Kind::Pan => D::Pan,
        Kind::Iban => D::Iban,
        Kind::UkSortCode => D::UkSortCode,
        Kind::UkAccountNumber => D::UkAccountNumber,
        Kind::Email => D::Email,
        Kind::Phone => D::Phone,
        Kind::Name => D::Name,
        Kind::Secret => D::Secret,
        Kind::Jwt => D::Jwt,
        Kind::BearerToken => D::BearerToken,
        Kind::ApiKey => D::ApiKey,
        Kind::Password => D::Password,
    }
}

/// Redacts one request (pure).
pub fn redact(req: &proto::RedactRequest) -> Result<proto::RedactResponse, Error> {
    let kinds = if req.kinds.is_empty() {
        None
    } else {
        Some(
            req.kinds
                .iter()
                .map(|k| kind_from_proto(*k))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let r = masking::redact(&req.text, &masking::RedactOptions { kinds });
    Ok(proto::RedactResponse {
        text: r.text,
        findings: r
            .findings
            .iter()
            .map(|f| proto::Finding {
                kind: kind_to_proto(f.kind) as i32,
                start: f.start as u32,
                end: f.end as u32,
            })
            .collect(),
    })
}

/// The tweak binding tokens to their key ring.
fn tweak(key: &str) -> Vec<u8> {
    let mut t = b"kmsd token v1:".to_vec();
    t.extend_from_slice(key.as_bytes());
    t
}

fn token_error(e: masking::TokenError) -> Error {
    Error::InvalidArgument(e.to_string())
}

#[tonic::async_trait]
impl proto::mask_server::Mask for MaskService {
    async fn mask(&self, req: Request<proto::MaskRequest>) -> Result<Response<proto::MaskResponse>, Status> {
        let call = self.shared.begin(&req, Op::Mask, None)?;
        let r = req.into_inner();
        let result = kind_from_proto(r.kind).and_then(|kind| {
            let bin = match r.pan_keep_bin {
                0 => None,
                6 | 8 => Some(r.pan_keep_bin as u8),
                _ => return Err(Error::InvalidArgument("pan_keep_bin must be 0, 6 or 8".into())),
            };
            masking::mask(&r.value, kind, &masking::MaskOptions { pan_keep_bin: bin })
                .map(|m| proto::MaskResponse {
                    masked: m.masked,
                    valid: m.valid,
                })
                .map_err(|e| Error::InvalidArgument(e.to_string()))
        });
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn redact(&self, req: Request<proto::RedactRequest>) -> Result<Response<proto::RedactResponse>, Status> {
        let call = self.shared.begin(&req, Op::Redact, None)?;
        let r = req.into_inner();
        let result = if r.text.len() > INLINE_REDACT_BYTES {
            tokio::task::spawn_blocking(move || redact(&r))
                .await
                .unwrap_or(Err(Error::StoreUnavailable))
        } else {
            redact(&r)
        };
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    type RedactStreamStream = Pin<Box<dyn Stream<Item = Result<proto::RedactResponse, Status>> + Send>>;

    async fn redact_stream(
        &self,
        req: Request<Streaming<proto::RedactRequest>>,
    ) -> Result<Response<Self::RedactStreamStream>, Status> {
        let call = self.shared.begin(&req, Op::Redact, None)?;
        let mut inbound = req.into_inner();
        // A small buffer: when the client stops reading, this fills, the
        // task stops reading its input, and HTTP/2 flow control pushes back.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<proto::RedactResponse, Status>>(32);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut lines = 0u64;
            let outcome = loop {
                match inbound.message().await {
                    Ok(Some(line)) => {
                        let out = redact(&line).map_err(Status::from);
                        let failed = out.is_err();
                        if tx.send(out).await.is_err() || failed {
                            break Ok(());
                        }
                        lines += 1;
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = &outcome {
                let _ = tx.send(Err(e.clone())).await;
            }
            if let Ok(mut d) = call.detail.lock() {
                *d = Some(format!("stream lines={lines}"));
            }
            let _ = shared.finish(
                &call,
                outcome.map_err(|_| Error::InvalidArgument("stream failed".into())),
            );
            tracing::debug!(lines, "redaction stream ended");
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn tokenize(
        &self,
        req: Request<proto::TokenizeRequest>,
    ) -> Result<Response<proto::TokenizeResponse>, Status> {
        let call = self.shared.begin(&req, Op::Tokenize, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let keys = self.shared.keys()?;
        let result = kind_from_proto(r.kind).and_then(|kind| {
            keys.with_material(&r.key, None, |material, version| {
                masking::tokenize(material.expose_secret(), &tweak(&r.key), &r.value, kind)
                    .map(|token| proto::TokenizeResponse {
                        token,
                        key_version: version,
                    })
                    .map_err(token_error)
            })
        });
        Ok(Response::new(self.shared.finish(&call, result)?))
    }

    async fn detokenize(
        &self,
        req: Request<proto::DetokenizeRequest>,
    ) -> Result<Response<proto::DetokenizeResponse>, Status> {
        let call = self.shared.begin(&req, Op::Detokenize, Some(&req.get_ref().key))?;
        let r = req.into_inner();
        let keys = self.shared.keys()?;
        let version = (r.key_version > 0).then_some(r.key_version);
        let result = kind_from_proto(r.kind).and_then(|kind| {
            keys.with_material(&r.key, Some(version), |material, _| {
                masking::detokenize(material.expose_secret(), &tweak(&r.key), &r.token, kind)
                    .map(|value| proto::DetokenizeResponse { value })
                    .map_err(token_error)
            })
        });
        Ok(Response::new(self.shared.finish(&call, result)?))
    }
}
