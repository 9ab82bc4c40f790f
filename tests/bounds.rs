//! Resource bounds against the real daemon over real mTLS: usage
//! rotations per call, store reads for versions that do not exist,
//! pending dual-control requests, and tokens (rotation, versions, rate).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use tonic::transport::Channel;
use tonic::Code;

type Keys = KeysClient<Channel>;

async fn create(keys: &mut Keys, name: &str, policy: Option<proto::KeyPolicy>) -> proto::KeyInfo {
    keys.create_key(proto::CreateKeyRequest {
        name: name.into(),
        algorithm: 0,
        policy,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn get(keys: &mut Keys, name: &str) -> proto::KeyInfo {
    keys.get_key(proto::GetKeyRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

fn enc(key: &str, pt: &[u8]) -> proto::EncryptRequest {
    proto::EncryptRequest {
        key: key.into(),
        plaintext: pt.to_vec(),
        associated_data: vec![],
    }
}

/// One EncryptBatch on a key with a usage limit of one encryption per
/// version used to rotate once per item (1,000 items, 1,000 versions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_causes_at_most_max_rotations_per_call_usage_rotations() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start_with(dir.path(), "[limits]\nmax_rotations_per_call = 4\n");
    let (mut crypto, mut keys): (CryptoClient<Channel>, Keys) = d.clients().await;
    let policy = proto::KeyPolicy {
        max_encryptions_per_version: Some(1),
        ..Default::default()
    };
    create(&mut keys, "tiny", Some(policy)).await;
    let items: Vec<_> = (0..1000).map(|_| enc("tiny", b"m")).collect();
    let out = crypto
        .encrypt_batch(proto::EncryptBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .items;
    use proto::encrypt_batch_item::Result as R;
    let ok = out.iter().filter(|i| matches!(i.result, Some(R::Ok(_)))).count();
    let refused: Vec<_> = out
        .iter()
        .filter_map(|i| match &i.result {
            Some(R::Error(e)) => Some(e),
            _ => None,
        })
        .collect();
    assert!(ok >= 1, "the call still encrypts what its budget allows");
    assert!(
        ok <= 5,
        "{ok} items encrypted under a limit of 1 per version and 4 rotations"
    );
    assert_eq!(ok + refused.len(), 1000);
    for e in &refused {
        assert_eq!(e.code, Code::ResourceExhausted as i32, "{}", e.message);
        assert!(e.message.contains("max_rotations_per_call"), "{}", e.message);
    }
    // background rotations the call started have finished by now
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let info = get(&mut keys, "tiny").await;
    assert!(
        info.primary_version <= 5,
        "one call rotated the key {} times",
        info.primary_version - 1
    );
    assert!(info.rotations.len() <= 4, "{:?}", info.rotations);
    // the next call has its own budget
    let v = crypto
        .encrypt(enc("tiny", b"m"))
        .await
        .unwrap()
        .into_inner()
        .key_version;
    assert!(v > 1);
}
