//! The transport floor: an echo service with the kmsd API's shape, served
//! through the daemon's own acceptor and server settings.
use super::*;

/// The transport floor: the kmsd API shape, no work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Echo;

pub(crate) fn pad(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + kmsd::crypto::OVERHEAD);
    out.extend_from_slice(v);
    out.resize(v.len() + kmsd::crypto::OVERHEAD, 0);
    out
}

pub(crate) fn unpad(v: &[u8]) -> Vec<u8> {
    v.get(..v.len().saturating_sub(kmsd::crypto::OVERHEAD))
        .unwrap_or_default()
        .to_vec()
}

pub(crate) type R<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl proto::crypto_server::Crypto for Echo {
    async fn encrypt(&self, r: tonic::Request<proto::EncryptRequest>) -> R<proto::EncryptResponse> {
        Ok(tonic::Response::new(proto::EncryptResponse {
            ciphertext: pad(&r.get_ref().plaintext),
            key_version: 1,
        }))
    }
    async fn decrypt(&self, r: tonic::Request<proto::DecryptRequest>) -> R<proto::DecryptResponse> {
        Ok(tonic::Response::new(proto::DecryptResponse {
            plaintext: unpad(&r.get_ref().ciphertext),
            key_version: 1,
        }))
    }
    async fn rewrap(&self, r: tonic::Request<proto::RewrapRequest>) -> R<proto::RewrapResponse> {
        let ciphertext = r.get_ref().ciphertext.clone();
        Ok(tonic::Response::new(proto::RewrapResponse {
            ciphertext,
            key_version: 1,
            source_key_version: 1,
        }))
    }
    async fn encrypt_batch(&self, r: tonic::Request<proto::EncryptBatchRequest>) -> R<proto::EncryptBatchResponse> {
        let items = r
            .get_ref()
            .items
            .iter()
            .map(|i| proto::EncryptBatchItem {
                result: Some(proto::encrypt_batch_item::Result::Ok(proto::EncryptResponse {
                    ciphertext: pad(&i.plaintext),
                    key_version: 1,
                })),
            })
            .collect();
        Ok(tonic::Response::new(proto::EncryptBatchResponse { items }))
    }
    async fn decrypt_batch(&self, _: tonic::Request<proto::DecryptBatchRequest>) -> R<proto::DecryptBatchResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn rewrap_batch(&self, _: tonic::Request<proto::RewrapBatchRequest>) -> R<proto::RewrapBatchResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn generate_data_key(
        &self,
        _: tonic::Request<proto::GenerateDataKeyRequest>,
    ) -> R<proto::GenerateDataKeyResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn generate_data_key_without_plaintext(
        &self,
        _: tonic::Request<proto::GenerateDataKeyRequest>,
    ) -> R<proto::GenerateDataKeyResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn mac(&self, _: tonic::Request<proto::MacRequest>) -> R<proto::MacResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn mac_batch(&self, _: tonic::Request<proto::MacBatchRequest>) -> R<proto::MacBatchResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn verify_mac(&self, _: tonic::Request<proto::VerifyMacRequest>) -> R<proto::VerifyMacResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn sign(&self, _: tonic::Request<proto::SignRequest>) -> R<proto::SignResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn verify(&self, _: tonic::Request<proto::VerifyRequest>) -> R<proto::VerifyResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn get_public_key(&self, _: tonic::Request<proto::GetPublicKeyRequest>) -> R<proto::GetPublicKeyResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
}

#[tonic::async_trait]
impl proto::mask_server::Mask for Echo {
    async fn mask(&self, _: tonic::Request<proto::MaskRequest>) -> R<proto::MaskResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn redact(&self, r: tonic::Request<proto::RedactRequest>) -> R<proto::RedactResponse> {
        Ok(tonic::Response::new(proto::RedactResponse {
            text: r.into_inner().text,
            findings: vec![],
        }))
    }
    type RedactStreamStream = tokio_stream::Empty<Result<proto::RedactResponse, tonic::Status>>;
    async fn redact_stream(
        &self,
        _: tonic::Request<tonic::Streaming<proto::RedactRequest>>,
    ) -> R<Self::RedactStreamStream> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn tokenize(&self, _: tonic::Request<proto::TokenizeRequest>) -> R<proto::TokenizeResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
    async fn detokenize(&self, _: tonic::Request<proto::DetokenizeRequest>) -> R<proto::DetokenizeResponse> {
        Err(tonic::Status::unimplemented("echo"))
    }
}

/// Serves `Echo` through the same acceptor (TLS 1.3, client certificates,
/// connection cap, handshake timeout) and server settings as kmsd.
pub(crate) async fn echo_server(dir: &Path, socket: &Path, tcp: &str) -> Result<(), BoxError> {
    use tokio_stream::StreamExt as _;
    let limits = kmsd::config::Limits::default();
    let tls = kmsd::config::Tls {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: dir.join("ca.pem"),
        client_crls: Vec::new(),
        trust_domains: Vec::new(),
        allow_multiple_uri_sans: false,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let acceptor = kmsd::tls::acceptor::Acceptor::new(
        Arc::new(std::sync::RwLock::new(kmsd::tls::server_config(&tls.server_tls())?)),
        tls.identity_rules(),
        limits.admission(),
        Arc::new(kmsd::ops::metrics::Metrics::default()),
        tx,
    );
    let _ = std::fs::remove_file(socket);
    let unix = tokio::net::UnixListener::bind(socket)?;
    let tcp = tokio::net::TcpListener::bind(tcp).await?;
    let a = acceptor.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = unix.accept().await {
            a.admit(kmsd::tls::RawStream::Unix(s), "unix".into());
        }
    });
    tokio::spawn(async move {
        while let Ok((s, peer)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            acceptor.admit(kmsd::tls::RawStream::Tcp(s), peer.to_string());
        }
    });
    let max = limits.max_message_bytes;
    tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(kmsd::tls::acceptor::ConnLayer)
        .add_service(
            proto::crypto_server::CryptoServer::new(Echo)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max + 4096),
        )
        .add_service(proto::mask_server::MaskServer::new(Echo).max_decoding_message_size(max))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>))
        .await?;
    Ok(())
}
