//! Issue 17 key types against the real daemon over real mTLS: HMAC
//! (Mac, MacBatch, VerifyMac), ECDSA P-256, RSA-PSS 3072/4096 and Ed25519
//! (Sign, Verify, GetPublicKey); rotation (manual, scheduled, usage),
//! version states, backup/restore and rekey for every type; tampered MACs
//! and signatures fail; every signature type verifies with `openssl`;
//! operations on the wrong key type are FAILED_PRECONDITION; no key
//! material in logs or store files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, mask_client::MaskClient, Algorithm, DataKind, SignatureEncoding};
use std::time::{Duration, Instant};
use tonic::Code;

const SIGNING: [Algorithm; 4] = [
    Algorithm::EcdsaP256Sha256,
    Algorithm::RsaPss3072Sha256,
    Algorithm::RsaPss4096Sha256,
    Algorithm::Ed25519,
];
const MACS: [Algorithm; 2] = [Algorithm::HmacSha256, Algorithm::HmacSha512];

fn key_name(a: Algorithm) -> String {
    a.as_str_name().to_lowercase().replace('_', "-")
}

async fn create_alg(keys: &mut Keys, name: &str, a: Algorithm, policy: Option<proto::KeyPolicy>) -> proto::KeyInfo {
    keys.create_key(proto::CreateKeyRequest {
        name: name.into(),
        algorithm: a as i32,
        policy,
        exportable: false,
    })
    .await
    .unwrap()
    .into_inner()
}

fn mac_req(key: &str, data: &[u8], v: u32) -> proto::MacRequest {
    proto::MacRequest {
        key: key.into(),
        data: data.into(),
        key_version: v,
    }
}

async fn mac(c: &mut Crypto, key: &str, data: &[u8]) -> proto::MacResponse {
    c.mac(mac_req(key, data, 0)).await.unwrap().into_inner()
}

async fn verify_mac(c: &mut Crypto, key: &str, data: &[u8], tag: &[u8], v: u32) -> Result<bool, tonic::Status> {
    c.verify_mac(proto::VerifyMacRequest {
        key: key.into(),
        data: data.into(),
        mac: tag.into(),
        key_version: v,
    })
    .await
    .map(|r| r.into_inner().valid)
}

fn sign_req(key: &str, msg: &[u8], enc: SignatureEncoding) -> proto::SignRequest {
    proto::SignRequest {
        key: key.into(),
        input: Some(proto::sign_request::Input::Message(msg.into())),
        encoding: enc as i32,
    }
}

async fn sign(c: &mut Crypto, key: &str, msg: &[u8]) -> proto::SignResponse {
    c.sign(sign_req(key, msg, SignatureEncoding::Der))
        .await
        .unwrap()
        .into_inner()
}

async fn verify(
    c: &mut Crypto,
    key: &str,
    v: u32,
    input: proto::verify_request::Input,
    sig: &[u8],
    enc: SignatureEncoding,
) -> Result<bool, tonic::Status> {
    c.verify(proto::VerifyRequest {
        key: key.into(),
        key_version: v,
        input: Some(input),
        signature: sig.into(),
        encoding: enc as i32,
    })
    .await
    .map(|r| r.into_inner().valid)
}

async fn verify_msg(c: &mut Crypto, key: &str, v: u32, msg: &[u8], sig: &[u8]) -> Result<bool, tonic::Status> {
    verify(
        c,
        key,
        v,
        proto::verify_request::Input::Message(msg.into()),
        sig,
        SignatureEncoding::Der,
    )
    .await
}

async fn public_key(c: &mut Crypto, key: &str, v: u32) -> proto::GetPublicKeyResponse {
    c.get_public_key(proto::GetPublicKeyRequest {
        key: key.into(),
        key_version: v,
    })
    .await
    .unwrap()
    .into_inner()
}

fn sha256(m: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(m).to_vec()
}

fn flip(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    let i = v.len() / 2;
    v[i] ^= 0x01;
    v
}

/// What one key produced before a rotation/backup: (key, version, data, MAC or signature).
type Made = Vec<(String, u32, Vec<u8>, Vec<u8>)>;

/// Every MAC and signature in `made` still verifies (and a tampered one does not).
async fn check_made(c: &mut Crypto, made: &Made) {
    for (key, v, data, out) in made {
        if key.starts_with("hmac") {
            assert!(verify_mac(c, key, data, out, *v).await.unwrap(), "{key}/{v}");
            assert!(!verify_mac(c, key, data, &flip(out), *v).await.unwrap(), "{key}/{v}");
            let again = c.mac(mac_req(key, data, *v)).await.unwrap().into_inner();
            assert_eq!(&again.mac, out, "MAC under a named version is deterministic");
        } else {
            assert!(verify_msg(c, key, *v, data, out).await.unwrap(), "{key}/{v}");
            assert!(!verify_msg(c, key, *v, data, &flip(out)).await.unwrap(), "{key}/{v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_works_rotates_and_survives_backup_restore_and_rekey() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path());
    let (mut c, mut keys) = d.clients().await;
    let mut made: Made = Vec::new();
    let mut publics = Vec::new();
    for a in MACS {
        let name = key_name(a);
        let info = create_alg(&mut keys, &name, a, None).await;
        assert_eq!(info.algorithm, a as i32);
        assert_eq!(info.policy.unwrap().purpose, Some(proto::KeyPurpose::Mac as i32));
        assert_eq!(info.versions[0].origin, proto::KeyOrigin::Generated as i32);
        assert!(!info.exportable);
        let m = mac(&mut c, &name, b"webhook body").await;
        assert_eq!(m.mac.len(), if a == Algorithm::HmacSha256 { 32 } else { 64 });
        assert_eq!(m.key_version, 1);
        assert_eq!(mac(&mut c, &name, b"webhook body").await.mac, m.mac, "deterministic");
        assert_ne!(mac(&mut c, &name, b"webhook bodY").await.mac, m.mac);
        assert!(verify_mac(&mut c, &name, b"webhook body", &m.mac, 0).await.unwrap());
        assert!(!verify_mac(&mut c, &name, b"webhook bodY", &m.mac, 0).await.unwrap());
        assert!(!verify_mac(&mut c, &name, b"webhook body", &m.mac[..16], 0)
            .await
            .unwrap());
        made.push((name.clone(), 1, b"webhook body".to_vec(), m.mac));
    }
    for a in SIGNING {
        let name = key_name(a);
        let info = create_alg(&mut keys, &name, a, None).await;
        assert_eq!(info.algorithm, a as i32);
        assert_eq!(info.policy.unwrap().purpose, Some(proto::KeyPurpose::SignVerify as i32));
        let s = sign(&mut c, &name, b"statement").await;
        assert_eq!((s.key_version, s.algorithm), (1, a as i32));
        assert!(verify_msg(&mut c, &name, 0, b"statement", &s.signature).await.unwrap());
        assert!(!verify_msg(&mut c, &name, 0, b"statemenT", &s.signature).await.unwrap());
        assert!(!verify_msg(&mut c, &name, 0, b"statement", &flip(&s.signature))
            .await
            .unwrap());
        assert!(!verify_msg(&mut c, &name, 0, b"statement", b"").await.unwrap());
        made.push((name.clone(), 1, b"statement".to_vec(), s.signature));
        // over a digest: not for Ed25519
        let digest = proto::sign_request::Input::Digest(sha256(b"statement"));
        let r = c
            .sign(proto::SignRequest {
                key: name.clone(),
                input: Some(digest),
                encoding: 0,
            })
            .await;
        if a == Algorithm::Ed25519 {
            let e = r.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("messages only"), "{}", e.message());
        } else {
            let sig = r.unwrap().into_inner().signature;
            assert!(verify_msg(&mut c, &name, 0, b"statement", &sig).await.unwrap());
            let d = proto::verify_request::Input::Digest(sha256(b"statement"));
            assert!(verify(&mut c, &name, 0, d, &sig, SignatureEncoding::Der).await.unwrap());
            let short = c
                .sign(proto::SignRequest {
                    key: name.clone(),
                    input: Some(proto::sign_request::Input::Digest(vec![1; 31])),
                    encoding: 0,
                })
                .await
                .unwrap_err();
            assert_eq!(short.code(), Code::InvalidArgument);
        }
        // ECDSA: the JWS encoding too
        if a == Algorithm::EcdsaP256Sha256 {
            let s = c
                .sign(sign_req(&name, b"jws", SignatureEncoding::P1363))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(s.signature.len(), 64);
            let m = proto::verify_request::Input::Message(b"jws".to_vec());
            assert!(
                verify(&mut c, &name, 0, m.clone(), &s.signature, SignatureEncoding::P1363)
                    .await
                    .unwrap()
            );
            assert!(!verify(&mut c, &name, 0, m, &s.signature, SignatureEncoding::Der)
                .await
                .unwrap());
        }
        let p = public_key(&mut c, &name, 0).await;
        assert_eq!((p.key_version, p.algorithm), (1, a as i32));
        assert_eq!(p.kid, format!("{name}/1"));
        assert!(p.pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let jwk: serde_json::Value = serde_json::from_str(&p.jwk).unwrap();
        assert_eq!(jwk["kid"], p.kid);
        assert_eq!(jwk["use"], "sig");
        let (kty, alg) = match a {
            Algorithm::EcdsaP256Sha256 => ("EC", "ES256"),
            Algorithm::Ed25519 => ("OKP", "EdDSA"),
            _ => ("RSA", "PS256"),
        };
        assert_eq!((jwk["kty"].as_str().unwrap(), jwk["alg"].as_str().unwrap()), (kty, alg));
        publics.push((name, p.pem));
    }

    // MacBatch: per-item results and errors, like EncryptBatch
    let items = vec![
        mac_req("hmac-sha256", b"4111111111111111", 0),
        mac_req("ed25519", b"x", 0),
        mac_req("no-such-key", b"x", 0),
        mac_req("hmac-sha512", b"4111111111111111", 0),
    ];
    let out = c
        .mac_batch(proto::MacBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .items;
    use proto::mac_batch_item::Result as R;
    let tag = mac(&mut c, "hmac-sha256", b"4111111111111111").await.mac;
    match &out[0].result {
        Some(R::Ok(m)) => assert_eq!(m.mac, tag),
        other => panic!("{other:?}"),
    }
    match &out[1].result {
        Some(R::Error(e)) => {
            assert_eq!(e.code, Code::FailedPrecondition as i32);
            assert!(e.message.contains("ED25519"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&out[2].result, Some(R::Error(e)) if e.code == Code::NotFound as i32));
    assert!(matches!(&out[3].result, Some(R::Ok(m)) if m.mac.len() == 64));

    // manual rotation: new material, the old version still verifies
    for (name, ..) in made.clone() {
        let info = keys
            .rotate_key(proto::RotateKeyRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.primary_version, 2);
        if name.starts_with("hmac") {
            let m = mac(&mut c, &name, b"webhook body").await;
            assert_eq!(m.key_version, 2);
            let old = made.iter().find(|x| x.0 == name).unwrap();
            assert_ne!(m.mac, old.3, "fresh material");
            made.push((name.clone(), 2, b"webhook body".to_vec(), m.mac));
        } else {
            let s = sign(&mut c, &name, b"statement").await;
            assert_eq!(s.key_version, 2);
            assert!(!verify_msg(&mut c, &name, 1, b"statement", &s.signature).await.unwrap());
            assert_ne!(
                public_key(&mut c, &name, 2).await.pem,
                public_key(&mut c, &name, 1).await.pem
            );
            made.push((name.clone(), 2, b"statement".to_vec(), s.signature));
        }
    }
    check_made(&mut c, &made).await;

    // version states: a DISABLED version does not verify; re-enabled, it does
    let state = |name: &str, v: u32, s: proto::VersionState| proto::SetVersionStateRequest {
        name: name.into(),
        version: v,
        state: s as i32,
    };
    keys.set_version_state(state("ed25519", 1, proto::VersionState::Disabled))
        .await
        .unwrap();
    let ed1 = made.iter().find(|x| x.0 == "ed25519" && x.1 == 1).unwrap().clone();
    let e = verify_msg(&mut c, "ed25519", 1, &ed1.2, &ed1.3).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    keys.set_version_state(state("ed25519", 1, proto::VersionState::DecryptOnly))
        .await
        .unwrap();
    assert!(verify_msg(&mut c, "ed25519", 1, &ed1.2, &ed1.3).await.unwrap());

    // backup, then restore into a fresh daemon: everything verifies, and signs
    let backup = dir.path().join("snap.kmsdbak");
    let out = std::process::Command::new(kmsctl_bin())
        .args(["backup", backup.to_str().unwrap()])
        .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
        .env("KMSD_CA", dir.path().join("ca.pem"))
        .env("KMSD_CERT", dir.path().join("client.pem"))
        .env("KMSD_KEY", dir.path().join("client.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = tempfile::tempdir().unwrap();
    Pki::new(fresh.path());
    std::fs::copy(dir.path().join("master-key"), fresh.path().join("master-key")).unwrap();
    let d2 = Daemon::start(fresh.path());
    let (mut c2, mut k2) = d2.clients().await;
    let bytes = std::fs::read(&backup).unwrap();
    let r = k2
        .restore(tokio_stream::iter(vec![proto::RestoreChunk { data: bytes }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.keys, 6);
    check_made(&mut c2, &made).await;
    for (name, pem) in &publics {
        assert_eq!(&public_key(&mut c2, name, 1).await.pem, pem);
        let s = sign(&mut c2, name, b"after restore").await;
        assert!(verify_msg(&mut c, name, 2, b"after restore", &s.signature)
            .await
            .unwrap());
    }

    // rekey under a new master key: everything still verifies
    d.stop();
    common::rekey_to_new_master_key(dir.path());
    std::fs::rename(dir.path().join("master-key.new"), dir.path().join("master-key")).unwrap();
    d.restart_after_stop();
    let (mut c, _) = d.clients().await;
    check_made(&mut c, &made).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_scheduled_rotation_and_destruction_of_mac_and_signing_keys() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path()); // dev mode: periods down to 1 s
    let (mut c, mut keys) = d.clients().await;
    // usage: Mac and Sign count like encryptions
    let limit = proto::KeyPolicy {
        max_encryptions_per_version: Some(3),
        ..Default::default()
    };
    create_alg(&mut keys, "h", Algorithm::HmacSha256, Some(limit)).await;
    create_alg(&mut keys, "e", Algorithm::EcdsaP256Sha256, Some(limit)).await;
    let mut mac_versions = Vec::new();
    let mut sig_versions = Vec::new();
    for i in 0..7u8 {
        mac_versions.push(mac(&mut c, "h", &[i]).await.key_version);
        sig_versions.push(sign(&mut c, "e", &[i]).await.key_version);
    }
    for vs in [&mac_versions, &sig_versions] {
        assert_eq!(vs[..3], [1, 1, 1], "{vs:?}");
        assert!(vs[3..6].iter().all(|v| *v == 2) && vs[6] == 3, "{vs:?}");
    }
    let info = get(&mut keys, "e").await;
    assert_eq!(info.rotations[0].reason, proto::RotationReason::Usage as i32);
    assert_eq!(info.versions[0].encryptions, 3);

    // scheduled
    let period = proto::KeyPolicy {
        rotation_period_seconds: Some(1),
        ..Default::default()
    };
    create_alg(&mut keys, "s", Algorithm::Ed25519, Some(period)).await;
    let first = sign(&mut c, "s", b"m").await.signature;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&mut keys, "s").await.primary_version < 2 {
        assert!(Instant::now() < deadline, "no scheduled rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = get(&mut keys, "s").await;
    assert_eq!(info.rotations[0].reason, proto::RotationReason::Scheduled as i32);
    assert!(verify_msg(&mut c, "s", 1, b"m", &first).await.unwrap());

    // destruction: the version's material is gone, its signatures no longer verify
    keys.schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
        name: "h".into(),
        version: 1,
        waiting_period_seconds: 1,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&mut keys, "h").await.versions[0].state != proto::VersionState::Destroyed as i32 {
        assert!(Instant::now() < deadline, "not destroyed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = c.mac(mac_req("h", b"x", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(mac(&mut c, "h", b"x").await.key_version >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_the_wrong_key_type_fail_naming_the_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let ch = d.channel().await;
    let (mut c, mut keys) = d.clients().await;
    let mut masks = MaskClient::new(ch);
    create(&mut keys, "aes").await;
    create_alg(&mut keys, "hmac", Algorithm::HmacSha256, None).await;
    create_alg(&mut keys, "ec", Algorithm::EcdsaP256Sha256, None).await;
    let want = |e: tonic::Status, alg: &str| {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(alg), "{}", e.message());
    };
    want(c.encrypt(enc("hmac", b"x", b"")).await.unwrap_err(), "HMAC_SHA256");
    want(c.encrypt(enc("ec", b"x", b"")).await.unwrap_err(), "ECDSA_P256_SHA256");
    want(
        c.sign(sign_req("aes", b"x", SignatureEncoding::Der)).await.unwrap_err(),
        "AES_256_GCM",
    );
    want(
        c.sign(sign_req("hmac", b"x", SignatureEncoding::Der))
            .await
            .unwrap_err(),
        "HMAC_SHA256",
    );
    want(c.mac(mac_req("ec", b"x", 0)).await.unwrap_err(), "ECDSA_P256_SHA256");
    want(c.mac(mac_req("aes", b"x", 0)).await.unwrap_err(), "AES_256_GCM");
    want(
        verify_mac(&mut c, "ec", b"x", b"t", 0).await.unwrap_err(),
        "ECDSA_P256_SHA256",
    );
    want(
        verify_msg(&mut c, "hmac", 0, b"x", b"s").await.unwrap_err(),
        "HMAC_SHA256",
    );
    want(
        c.get_public_key(proto::GetPublicKeyRequest {
            key: "hmac".into(),
            key_version: 0,
        })
        .await
        .unwrap_err(),
        "HMAC_SHA256",
    );
    let tok = masks
        .tokenize(proto::TokenizeRequest {
            key: "ec".into(),
            value: "4539148803436467".into(),
            kind: DataKind::Pan as i32,
        })
        .await
        .unwrap_err();
    want(tok, "ECDSA_P256_SHA256");
    // a purpose the algorithm does not have, an unknown algorithm
    let e = keys
        .create_key(proto::CreateKeyRequest {
            name: "bad".into(),
            algorithm: Algorithm::HmacSha256 as i32,
            policy: Some(proto::KeyPolicy {
                purpose: Some(proto::KeyPurpose::Tokenize as i32),
                ..Default::default()
            }),
            exportable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = keys
        .create_key(proto::CreateKeyRequest {
            name: "bad".into(),
            algorithm: 99,
            policy: None,
            exportable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // no input, unknown encoding, a version that does not exist
    let e = c
        .sign(proto::SignRequest {
            key: "ec".into(),
            input: None,
            encoding: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .sign(proto::SignRequest {
            key: "ec".into(),
            input: Some(proto::sign_request::Input::Message(b"x".to_vec())),
            encoding: 7,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = verify_msg(&mut c, "ec", 9, b"x", b"s").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // exportable is kept and shown
    let info = keys
        .create_key(proto::CreateKeyRequest {
            name: "exp".into(),
            algorithm: Algorithm::Ed25519 as i32,
            policy: None,
            exportable: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.exportable);
    assert!(get(&mut keys, "exp").await.exportable);
}

/// `openssl` (a verifier nobody here wrote) accepts each type's signature
/// with the PEM from GetPublicKey, and rejects a tampered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_verifies_every_signature_type() {
    // (.ci/run installs openssl; a machine without it fails here, not silently)
    assert!(
        std::process::Command::new("openssl").arg("version").output().is_ok(),
        "openssl is needed: the independent verifier of this test"
    );
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut c, mut keys) = d.clients().await;
    let msg = b"{\"payment\":\"1000.00 GBP\"}";
    let work = dir.path().join("ossl");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("msg"), msg).unwrap();
    for a in SIGNING {
        let name = key_name(a);
        create_alg(&mut keys, &name, a, None).await;
        let pem = public_key(&mut c, &name, 0).await.pem;
        std::fs::write(work.join("pub.pem"), pem).unwrap();
        let mut runs = vec![];
        let s = sign(&mut c, &name, msg).await.signature;
        runs.push(("message", s));
        if a != Algorithm::Ed25519 {
            let s = c
                .sign(proto::SignRequest {
                    key: name.clone(),
                    input: Some(proto::sign_request::Input::Digest(sha256(msg))),
                    encoding: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .signature;
            runs.push(("digest", s));
        }
        for (what, sig) in runs {
            for (good, sig) in [(true, sig.clone()), (false, flip(&sig))] {
                std::fs::write(work.join("sig"), &sig).unwrap();
                let p = |s: &str| work.join(s).to_str().unwrap().to_owned();
                let args: Vec<String> = match a {
                    Algorithm::Ed25519 => vec![
                        "pkeyutl".into(),
                        "-verify".into(),
                        "-pubin".into(),
                        "-inkey".into(),
                        p("pub.pem"),
                        "-rawin".into(),
                        "-in".into(),
                        p("msg"),
                        "-sigfile".into(),
                        p("sig"),
                    ],
                    Algorithm::EcdsaP256Sha256 => vec![
                        "dgst".into(),
                        "-sha256".into(),
                        "-verify".into(),
                        p("pub.pem"),
                        "-signature".into(),
                        p("sig"),
                        p("msg"),
                    ],
                    _ => vec![
                        "dgst".into(),
                        "-sha256".into(),
                        "-sigopt".into(),
                        "rsa_padding_mode:pss".into(),
                        "-sigopt".into(),
                        "rsa_pss_saltlen:32".into(),
                        "-sigopt".into(),
                        "rsa_mgf1_md:sha256".into(),
                        "-verify".into(),
                        p("pub.pem"),
                        "-signature".into(),
                        p("sig"),
                        p("msg"),
                    ],
                };
                let out = std::process::Command::new("openssl").args(&args).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert_eq!(
                    out.status.success() && text.contains("Verified OK")
                        || text.contains("Signature Verified Successfully"),
                    good,
                    "{name} {what}: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// No key material in the daemon's log or in the store's files: each
/// version's PKCS#8 key / HMAC key, read back through the keystore with
/// the master key, appears nowhere in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_material_in_logs_or_store_files() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start(dir.path()); // (logs at debug level)
    let (mut c, mut keys) = d.clients().await;
    for a in MACS.into_iter().chain(SIGNING) {
        let name = key_name(a);
        create_alg(&mut keys, &name, a, None).await;
        keys.rotate_key(proto::RotateKeyRequest { name: name.clone() })
            .await
            .unwrap();
        if a.as_str_name().starts_with("HMAC") {
            mac(&mut c, &name, b"x").await;
        } else {
            sign(&mut c, &name, b"x").await;
            public_key(&mut c, &name, 0).await;
        }
    }
    d.stop();
    let log = std::fs::read(&d.log).unwrap();
    let files: Vec<Vec<u8>> = walk(&dir.path().join("store"))
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let store: std::sync::Arc<dyn kmsd_keystore::KeyStore> =
        std::sync::Arc::new(kmsd_keystore::SledStore::open(&dir.path().join("store")).unwrap());
    let mk = kmsd_keystore::MasterKey::load(&dir.path().join("master-key")).unwrap();
    let rings = kmsd_keystore::RingStore::open(store, kmsd_keystore::Sealer::new(mk)).unwrap();
    let mut checked = 0;
    for a in MACS.into_iter().chain(SIGNING) {
        let ring = rings
            .get(&kmsd_keystore::KeyName::parse(&key_name(a)).unwrap())
            .unwrap()
            .unwrap();
        for v in &ring.versions {
            let m = v.material.as_ref().unwrap().expose_secret();
            // 32 bytes of the private key: the HMAC key; the P-256 scalar
            // and the Ed25519 seed at their place in ring's PKCS#8
            // templates; the middle of an RSA key's private fields
            let at = match a {
                Algorithm::EcdsaP256Sha256 => 36,
                Algorithm::Ed25519 => 16,
                Algorithm::RsaPss3072Sha256 | Algorithm::RsaPss4096Sha256 => m.len() / 2,
                _ => 0,
            };
            let needle = &m[at..at + 32];
            assert!(!contains(&log, needle), "{a:?} material in the log");
            for f in &files {
                assert!(!contains(f, needle), "{a:?} material in a store file");
            }
            let hexed = hex::encode(needle);
            assert!(!contains(&log, hexed.as_bytes()));
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

/// kmsctl against the real daemon: create each type, MAC, sign, verify
/// (a bad signature or MAC exits 1), public keys as PEM and JWK, and the
/// key's algorithm, origin and exportable flag in `key show`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_creates_signs_verifies_and_shows_key_types() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(kmsctl_bin())
            .args(args)
            .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
            .env("KMSD_CA", dir.path().join("ca.pem"))
            .env("KMSD_CERT", dir.path().join("client.pem"))
            .env("KMSD_KEY", dir.path().join("client.key"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |args: &[&str]| {
        let (good, stdout, stderr) = run(args);
        assert!(good, "{args:?}: {stderr}");
        stdout
    };
    ok(&["key", "create", "hooks", "--algorithm", "hmac-sha256"]);
    ok(&[
        "key",
        "create",
        "ob",
        "--algorithm",
        "ecdsa-p256-sha256",
        "--exportable",
    ]);
    let show: serde_json::Value = serde_json::from_str(&ok(&["-o", "json", "key", "show", "ob"])).unwrap();
    assert_eq!(show["algorithm"], "ECDSA_P256_SHA256");
    assert_eq!(show["exportable"], true);
    assert_eq!(show["policy"]["purpose"], "SIGN_VERIFY");
    assert_eq!(show["versions"][0]["origin"], "GENERATED");
    let text = ok(&["key", "show", "hooks"]);
    assert!(text.contains("HMAC_SHA256") && text.contains("GENERATED"), "{text}");

    let tag = ok(&["mac", "--key", "hooks", "payload"]);
    ok(&["verify-mac", "--key", "hooks", "--mac", &tag, "payload"]);
    let (good, _, stderr) = run(&["verify-mac", "--key", "hooks", "--mac", &tag, "payloaD"]);
    assert!(!good && stderr.contains("MAC is not valid"), "{stderr}");

    let sig_file = dir.path().join("sig.der");
    let sig = ok(&["sign", "--key", "ob", "--out", sig_file.to_str().unwrap(), "message"]);
    assert!(!std::fs::read(&sig_file).unwrap().is_empty());
    ok(&["verify", "--key", "ob", "--signature", &sig, "message"]);
    ok(&[
        "verify",
        "--key",
        "ob",
        "--signature-file",
        sig_file.to_str().unwrap(),
        "message",
    ]);
    let (good, _, stderr) = run(&["verify", "--key", "ob", "--signature", &sig, "messagE"]);
    assert!(!good && stderr.contains("signature is not valid"), "{stderr}");
    // over a digest computed by kmsctl, in JWS encoding
    let sig = ok(&["sign", "--key", "ob", "--digest", "--encoding", "p1363", "message"]);
    ok(&[
        "verify",
        "--key",
        "ob",
        "--encoding",
        "p1363",
        "--signature",
        &sig,
        "message",
    ]);
    ok(&[
        "verify",
        "--key",
        "ob",
        "--encoding",
        "p1363",
        "--digest",
        "--signature",
        &sig,
        "message",
    ]);

    let pem = ok(&["public-key", "--key", "ob"]);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let jwk: serde_json::Value = serde_json::from_str(&ok(&["public-key", "--key", "ob", "--format", "jwk"])).unwrap();
    assert_eq!(
        (jwk["kid"].as_str(), jwk["alg"].as_str()),
        (Some("ob/1"), Some("ES256"))
    );
    // a wrong type answers with the key's algorithm
    let (good, _, stderr) = run(&["sign", "--key", "hooks", "x"]);
    assert!(!good && stderr.contains("HMAC_SHA256"), "{stderr}");
}
