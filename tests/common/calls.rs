//! One-call helpers for the gRPC API: request builders and the key calls
//! that many tests make on the way to what they check. Each panics (the
//! test fails) when the call fails; a test about the failure makes the
//! call itself.
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use tonic::transport::Channel;

pub type Crypto = CryptoClient<Channel>;
pub type Keys = KeysClient<Channel>;

/// An encryption of `pt` under `key`, bound to `aad`.
pub fn enc(key: &str, pt: &[u8], aad: &[u8]) -> proto::EncryptRequest {
    proto::EncryptRequest {
        key: key.into(),
        plaintext: pt.to_vec(),
        associated_data: aad.to_vec(),
    }
}

/// A decryption of `ct` under `key`, bound to `aad`.
pub fn dec(key: &str, ct: &[u8], aad: &[u8]) -> proto::DecryptRequest {
    proto::DecryptRequest {
        key: key.into(),
        ciphertext: ct.to_vec(),
        associated_data: aad.to_vec(),
    }
}

/// Creates key `name` with the default policy.
pub async fn create(keys: &mut Keys, name: &str) -> proto::KeyInfo {
    create_key(keys, name, None).await
}

/// Creates key `name` with `policy`.
pub async fn create_with(keys: &mut Keys, name: &str, policy: proto::KeyPolicy) -> proto::KeyInfo {
    create_key(keys, name, Some(policy)).await
}

async fn create_key(keys: &mut Keys, name: &str, policy: Option<proto::KeyPolicy>) -> proto::KeyInfo {
    keys.create_key(proto::CreateKeyRequest {
        name: name.into(),
        algorithm: 0,
        policy,
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn get(keys: &mut Keys, name: &str) -> proto::KeyInfo {
    keys.get_key(proto::GetKeyRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// The key version an envelope names (its header, not yet authenticated).
pub fn envelope_version(ct: &[u8]) -> u32 {
    kmsd::crypto::parse_header(ct).unwrap().version
}
