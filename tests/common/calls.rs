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

/// The answer to an encryption of `pt` under `key` (no associated data).
pub async fn encrypt_ok(crypto: &mut Crypto, key: &str, pt: &[u8]) -> proto::EncryptResponse {
    crypto.encrypt(enc(key, pt, b"")).await.unwrap().into_inner()
}

/// The ciphertext of `pt` under `key` (no associated data).
pub async fn encrypted(crypto: &mut Crypto, key: &str, pt: &[u8]) -> Vec<u8> {
    encrypt_ok(crypto, key, pt).await.ciphertext
}

/// The plaintext of `ct` under `key` (no associated data).
pub async fn decrypted(crypto: &mut Crypto, key: &str, ct: &[u8]) -> Vec<u8> {
    crypto.decrypt(dec(key, ct, b"")).await.unwrap().into_inner().plaintext
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
        exportable: false,
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

/// A change of key `name`'s policy: the fields `change` sets; the others
/// stay as they are.
pub fn policy_change(name: &str, change: impl FnOnce(&mut proto::KeyPolicy)) -> proto::UpdateKeyPolicyRequest {
    let mut policy = proto::KeyPolicy::default();
    change(&mut policy);
    proto::UpdateKeyPolicyRequest {
        name: name.into(),
        policy: Some(policy),
    }
}

/// Changes key `name`'s policy (see [`policy_change`]): the key as it is
/// now, or the status of the refusal.
pub async fn set_policy(
    keys: &mut Keys,
    name: &str,
    change: impl FnOnce(&mut proto::KeyPolicy),
) -> Result<proto::KeyInfo, tonic::Status> {
    keys.update_key_policy(policy_change(name, change))
        .await
        .map(|r| r.into_inner())
}

/// The answers of one `EncryptBatch` call with `items`.
pub async fn encrypt_batch(crypto: &mut Crypto, items: Vec<proto::EncryptRequest>) -> Vec<proto::EncryptBatchItem> {
    crypto
        .encrypt_batch(proto::EncryptBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .items
}

/// The answers of one `DecryptBatch` call with `items`.
pub async fn decrypt_batch(crypto: &mut Crypto, items: Vec<proto::DecryptRequest>) -> Vec<proto::DecryptBatchItem> {
    crypto
        .decrypt_batch(proto::DecryptBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .items
}
