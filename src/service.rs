//! The gRPC services. Each handler: take the caller's identity from the
//! verified certificate, run the operation, log one line (identity,
//! operation, key, result; never plaintext, ciphertext or key material),
//! and map errors through the one `From<Error> for Status`.
use crate::error::Error;
use crate::keys::Keys;
use crate::proto;
use crate::tls::PeerIdentity;
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::{KeyRing, VersionState};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The caller's identity, or `UNAUTHENTICATED` if the connection did not
/// come through the mTLS acceptor (it always does).
fn identity<T>(req: &Request<T>) -> Result<Arc<PeerIdentity>, Status> {
    req.extensions()
        .get::<Arc<PeerIdentity>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

/// Logs the outcome of one request and converts the error.
fn finish<T>(
    peer: &PeerIdentity,
    op: &'static str,
    key: &str,
    started: Instant,
    result: Result<T, Error>,
) -> Result<T, Status> {
    let micros = started.elapsed().as_micros() as u64;
    match result {
        Ok(v) => {
            tracing::info!(identity = peer.id(), peer = %peer.peer_addr, op, key, code = "OK", micros, "request");
            Ok(v)
        }
        Err(e) => {
            let status = Status::from(e);
            tracing::info!(identity = peer.id(), peer = %peer.peer_addr, op, key, code = ?status.code(), error = status.message(), micros, "request");
            Err(status)
        }
    }
}

/// `kmsd.v1.Crypto`.
#[derive(Debug, Clone)]
pub struct CryptoService {
    /// The key rings.
    pub keys: Arc<Keys>,
}

#[tonic::async_trait]
impl proto::crypto_server::Crypto for CryptoService {
    async fn encrypt(&self, req: Request<proto::EncryptRequest>) -> Result<Response<proto::EncryptResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let result = self.keys.encrypt(&r.key, &r.plaintext, &r.associated_data);
        let e = finish(&peer, "encrypt", &r.key, started, result)?;
        Ok(Response::new(proto::EncryptResponse {
            ciphertext: e.ciphertext,
            key_version: e.version,
        }))
    }

    async fn decrypt(&self, req: Request<proto::DecryptRequest>) -> Result<Response<proto::DecryptResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let result = self.keys.decrypt(&r.key, &r.ciphertext, &r.associated_data);
        let (plaintext, key_version) = finish(&peer, "decrypt", &r.key, started, result)?;
        Ok(Response::new(proto::DecryptResponse { plaintext, key_version }))
    }
}

/// `kmsd.v1.Keys`.
#[derive(Debug, Clone)]
pub struct KeysService {
    /// The key rings.
    pub keys: Arc<Keys>,
}

/// Key metadata for the API: never material.
pub fn key_info(ring: &KeyRing) -> proto::KeyInfo {
    proto::KeyInfo {
        name: ring.name.to_string(),
        algorithm: proto::Algorithm::Aes256Gcm as i32,
        primary_version: ring.primary,
        created_at: ring.created_at,
        versions: ring
            .versions
            .iter()
            .map(|v| proto::KeyVersionInfo {
                version: v.version,
                state: version_state(v.state) as i32,
                created_at: v.created_at,
            })
            .collect(),
    }
}

fn version_state(s: VersionState) -> proto::VersionState {
    match s {
        VersionState::Active => proto::VersionState::Active,
        VersionState::DecryptOnly => proto::VersionState::DecryptOnly,
        VersionState::Disabled => proto::VersionState::Disabled,
        VersionState::ScheduledForDestruction => proto::VersionState::ScheduledForDestruction,
        VersionState::Destroyed => proto::VersionState::Destroyed,
    }
}

/// Default and largest page of `ListKeys`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Runs blocking store work (fsync) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(Error::StoreUnavailable))
}

#[tonic::async_trait]
impl proto::keys_server::Keys for KeysService {
    async fn create_key(&self, req: Request<proto::CreateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let keys = self.keys.clone();
        let name = r.name.clone();
        let result = if r.algorithm != proto::Algorithm::Unspecified as i32
            && r.algorithm != proto::Algorithm::Aes256Gcm as i32
        {
            Err(Error::InvalidArgument("unsupported algorithm; only AES_256_GCM".into()))
        } else {
            blocking(move || keys.create(&name, KeyPolicy::default())).await
        };
        let ring = finish(&peer, "key.create", &r.name, started, result)?;
        Ok(Response::new(key_info(&ring)))
    }

    async fn get_key(&self, req: Request<proto::GetKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let keys = self.keys.clone();
        let name = r.name.clone();
        let result = blocking(move || keys.get(&name)).await;
        let ring = finish(&peer, "key.read", &r.name, started, result)?;
        Ok(Response::new(key_info(&ring)))
    }

    async fn list_keys(
        &self,
        req: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = if r.page_token.is_empty() {
            Ok(None)
        } else {
            hex::decode(&r.page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .map(Some)
                .ok_or_else(|| Error::InvalidArgument("invalid page_token".into()))
        };
        let keys = self.keys.clone();
        let prefix = r.prefix.clone();
        let result = match after {
            Ok(after) => blocking(move || keys.list(&prefix, after.as_deref(), limit)).await,
            Err(e) => Err(e),
        };
        let names = finish(&peer, "key.read", &r.prefix, started, result)?;
        let next_page_token = match names.last() {
            Some(last) if names.len() == limit => hex::encode(last),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListKeysResponse { names, next_page_token }))
    }

    async fn rotate_key(&self, req: Request<proto::RotateKeyRequest>) -> Result<Response<proto::KeyInfo>, Status> {
        let started = Instant::now();
        let peer = identity(&req)?;
        let r = req.into_inner();
        let keys = self.keys.clone();
        let name = r.name.clone();
        let result = blocking(move || keys.rotate(&name, RotationReason::Manual)).await;
        let ring = finish(&peer, "key.rotate", &r.name, started, result)?;
        Ok(Response::new(key_info(&ring)))
    }
}
