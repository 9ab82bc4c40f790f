//! JWS and blind indexes through the client library (`kmsd_client::jws`,
//! `kmsd_client::blind_index`) and `kmsctl jws`, against the real daemon
//! over real mTLS. (Verification by foreign libraries, PyJWT and jwcrypto,
//! is clients/python/tests/test_jws.py, run by tests/python_package.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::lib_client::*;
use common::*;
use kmsd::client::blind_index::{card_number_digits, BlindIndex};
use kmsd::client::{Client, Error, JwsOptions};
use kmsd::proto;
use serde_json::json;
use std::process::Command;

async fn create(c: &Client, name: &str, algorithm: proto::Algorithm) {
    c.create_key(proto::CreateKeyRequest {
        name: name.into(),
        algorithm: algorithm as i32,
        ..Default::default()
    })
    .await
    .unwrap();
}

fn header(jws: &str) -> serde_json::Value {
    serde_json::from_slice(&B64.decode(jws.split('.').next().unwrap()).unwrap()).unwrap()
}

fn jws_err(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Jws(m)) => m,
        other => panic!("expected a JWS error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jws_signed_by_each_key_type_verifies_and_tampering_does_not() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let c = client_for(&d).await;
    let payload = br#"{"Data":{"Amount":"165.88"}}"#;
    for (name, alg, algorithm) in [
        ("sig.es256", "ES256", proto::Algorithm::EcdsaP256Sha256),
        ("sig.ps256", "PS256", proto::Algorithm::RsaPss3072Sha256),
        ("sig.eddsa", "EdDSA", proto::Algorithm::Ed25519),
    ] {
        create(&c, name, algorithm).await;
        let opts = JwsOptions::default()
            .typ("JOSE")
            .header("http://openbanking.org.uk/iat", json!(1_700_000_000))
            .header("crit", json!(["http://openbanking.org.uk/iat"]));
        let s = c.sign_jws(name, payload, &opts).await.unwrap();
        assert_eq!((s.alg, s.kid.as_str(), s.key_version), (alg, &*format!("{name}/1"), 1));
        assert_eq!(
            header(&s.jws),
            json!({"alg": alg, "kid": format!("{name}/1"), "typ": "JOSE",
                   "http://openbanking.org.uk/iat": 1_700_000_000,
                   "crit": ["http://openbanking.org.uk/iat"]})
        );
        let crit = ["http://openbanking.org.uk/iat"];
        let v = c.verify_jws(&s.jws, None, &crit).await.unwrap();
        assert_eq!(
            (v.payload.as_slice(), v.key.as_str(), v.key_version),
            (&payload[..], name, 1)
        );
        // crit not understood: refused before any signature check
        assert!(jws_err(c.verify_jws(&s.jws, None, &[]).await).contains("understands"));

        // detached: header..signature, verified with the payload given
        let det = c.sign_jws(name, payload, &opts.clone().detached(true)).await.unwrap();
        let parts: Vec<&str> = det.jws.split('.').collect();
        assert_eq!(parts[1], "");
        c.verify_jws(&det.jws, Some(payload), &crit).await.unwrap();
        assert!(jws_err(c.verify_jws(&det.jws, Some(b"{}"), &crit).await).contains("does not verify"));
        assert!(jws_err(c.verify_jws(&det.jws, None, &crit).await).contains("give the payload"));

        // tampered payload, header and signature
        let p: Vec<&str> = s.jws.split('.').collect();
        let forged = format!("{}.{}.{}", p[0], B64.encode(br#"{"Data":{"Amount":"9999"}}"#), p[2]);
        assert!(jws_err(c.verify_jws(&forged, None, &crit).await).contains("does not verify"));
        let mut h = header(&s.jws);
        h["typ"] = json!("JWT");
        let forged = format!("{}.{}.{}", B64.encode(h.to_string()), p[1], p[2]);
        assert!(jws_err(c.verify_jws(&forged, None, &crit).await).contains("does not verify"));
        let mut sig = B64.decode(p[2]).unwrap();
        sig[5] ^= 1;
        let forged = format!("{}.{}.{}", p[0], p[1], B64.encode(&sig));
        assert!(jws_err(c.verify_jws(&forged, None, &crit).await).contains("does not verify"));
        // another alg in the header than the key's: refused (no confusion)
        h = header(&s.jws);
        h["alg"] = json!(if alg == "ES256" { "PS256" } else { "ES256" });
        let forged = format!("{}.{}.{}", B64.encode(h.to_string()), p[1], p[2]);
        assert!(jws_err(c.verify_jws(&forged, None, &crit).await).contains("alg"));
    }
    // an AES key does not sign JWS; an unknown key is NOT_FOUND
    create_key(&c, "aes").await;
    assert!(matches!(
        c.sign_jws("aes", b"x", &JwsOptions::default()).await,
        Err(Error::FailedPrecondition(_) | Error::Jws(_))
    ));
    assert!(matches!(
        c.sign_jws("nope", b"x", &JwsOptions::default()).await,
        Err(Error::NotFound(_))
    ));
}

/// The kid names the version that signed, even while another client
/// rotates the key as fast as it can: every JWS verifies under the version
/// its kid names (when a rotation lands between reading the primary and
/// signing, the helper signs again with the new kid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kid_is_the_signing_version_while_the_key_rotates() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let c = client_for(&d).await;
    create(&c, "sig.rot", proto::Algorithm::Ed25519).await;
    // Back-to-back rotations against usage reservations may make either
    // side ABORTED ("changed concurrently; retry", the daemon's bounded
    // retry ran out): retried here, as the status says. An ABORTED call
    // returns no JWS, so it cannot return a wrong one.
    let rotator = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut done = 0;
            while done < 30 {
                match c.rotate_key(proto::RotateKeyRequest { name: "sig.rot".into() }).await {
                    Ok(_) => done += 1,
                    Err(Error::Aborted(_)) => {}
                    Err(e) => panic!("rotate: {e}"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let mut versions = std::collections::BTreeSet::new();
    let mut signed = Vec::new();
    while !rotator.is_finished() || signed.len() < 20 {
        let s = match c.sign_jws("sig.rot", b"payload", &JwsOptions::default()).await {
            Ok(s) => s,
            // (or three rotations in a row between reading and signing: the
            // helper gives up rather than name the wrong version)
            Err(Error::Aborted(_)) => continue,
            Err(Error::Jws(m)) if m.contains("kept changing") => continue,
            Err(e) => panic!("sign_jws: {e}"),
        };
        assert_eq!(header(&s.jws)["kid"], json!(format!("sig.rot/{}", s.key_version)));
        versions.insert(s.key_version);
        signed.push(s);
    }
    rotator.await.unwrap();
    for s in &signed {
        let v = c.verify_jws(&s.jws, None, &[]).await.unwrap();
        assert_eq!(v.key_version, s.key_version);
    }
    assert!(versions.len() > 1, "no rotation seen while signing: {versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_jws_signs_and_verifies_attached_and_detached() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let c = client_for(&d).await;
    create(&c, "cli.sig", proto::Algorithm::EcdsaP256Sha256).await;
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, br#"{"Data":{"Amount":"1.00"}}"#).unwrap();
    let run = |args: &[&str]| {
        Command::new(kmsctl_bin())
            .args(args)
            .env("KMSD_ADDR", unix(&d))
            .env("KMSD_CA", dir.path().join("ca.pem"))
            .env("KMSD_CERT", dir.path().join("client.pem"))
            .env("KMSD_KEY", dir.path().join("client.key"))
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let o = run(args);
        assert!(
            o.status.success(),
            "kmsctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    let p = payload.to_str().unwrap();
    let jws = ok(&["jws", "sign", "--key", "cli.sig", "--typ", "JOSE", p]);
    assert_eq!(header(&jws), json!({"alg": "ES256", "kid": "cli.sig/1", "typ": "JOSE"}));
    assert_eq!(ok(&["jws", "verify", &jws]), "valid: signed by cli.sig/1 (ES256)");
    let det = ok(&[
        "jws",
        "sign",
        "--key",
        "cli.sig",
        "--detached",
        "--header",
        "http://openbanking.org.uk/iat=1700000000",
        "--header",
        "http://openbanking.org.uk/iss=0015800001041RHAAY",
        "--header",
        r#"crit=["http://openbanking.org.uk/iat","http://openbanking.org.uk/iss"]"#,
        p,
    ]);
    assert_eq!(header(&det)["http://openbanking.org.uk/iat"], json!(1_700_000_000));
    assert_eq!(
        header(&det)["http://openbanking.org.uk/iss"],
        json!("0015800001041RHAAY")
    );
    assert!(det.contains(".."), "{det}");
    let out = ok(&[
        "-o",
        "json",
        "jws",
        "verify",
        "--payload",
        p,
        "--accept-crit",
        "http://openbanking.org.uk/iat",
        "--accept-crit",
        "http://openbanking.org.uk/iss",
        &det,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["valid"].clone(), v["kid"].clone()),
        (json!(true), json!("cli.sig/1"))
    );
    // a changed payload fails, exit 1, one line naming why
    let other = dir.path().join("other.json");
    std::fs::write(&other, b"{}").unwrap();
    let o = run(&[
        "jws",
        "verify",
        "--payload",
        other.to_str().unwrap(),
        "--accept-crit",
        "http://openbanking.org.uk/iat",
        "--accept-crit",
        "http://openbanking.org.uk/iss",
        &det,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not verify under cli.sig/1"), "{err}");
    let o = run(&["jws", "sign", "--key", "cli.sig", "--header", "alg=none", p]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("set by the helper"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_indexes_are_truncated_macs_per_version_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let c = client_for(&d).await;
    create(&c, "bidx.pan", proto::Algorithm::HmacSha256).await;
    let idx = BlindIndex::new(c.clone(), "bidx.pan", 8).unwrap();
    let pans: Vec<String> = (0..2_500u64).map(|i| format!("4{:015}", i * 7_919)).collect();
    let all = idx.compute_many(&pans).await.unwrap();
    assert_eq!(all.len(), 2_500); // three MacBatch calls
    assert!(all.iter().all(|v| v.key_version == 1 && v.index.len() == 8));
    // the same value, normalised, gives the same index one at a time
    let one = idx
        .compute(
            card_number_digits(&format!("{} {}", &pans[1234][..8], &pans[1234][8..]))
                .unwrap()
                .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(one, all[1234]);
    // it is the full MAC's prefix
    let full = c
        .mac(proto::MacRequest {
            key: "bidx.pan".into(),
            data: pans[7].clone().into_bytes(),
            key_version: 0,
        })
        .await
        .unwrap();
    assert_eq!(all[7].index, full.mac[..8]);
    // after a rotation new indexes carry version 2, and a lookup of an old
    // row recomputes under version 1
    c.rotate_key(proto::RotateKeyRequest {
        name: "bidx.pan".into(),
    })
    .await
    .unwrap();
    let new = idx.compute(pans[7].as_bytes()).await.unwrap();
    assert_eq!(new.key_version, 2);
    assert_ne!(new.index, all[7].index);
    assert_eq!(idx.compute_at(pans[7].as_bytes(), 1).await.unwrap(), all[7]);
    assert!(BlindIndex::new(c.clone(), "bidx.pan", 1).is_err());
    assert!(BlindIndex::new(c.clone(), "bidx.pan", 33)
        .unwrap()
        .compute(b"x")
        .await
        .is_err());
}
