//! Import (bring your own key) and export of key material wrapped for
//! transport, against the real daemon over real mTLS: import jobs are for
//! callers with the `import` right (officers with their second factor),
//! expire, are bounded, keep their private key sealed and stay out of
//! backups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod common;

use common::bank::*;
use common::*;
use kmsd::proto;
use kmsd_keystore::wrap::WrappingPublicKey;
use std::time::Duration;
use tonic::Code;

fn job_req(key: &str, ttl: u64) -> proto::CreateImportJobRequest {
    proto::CreateImportJobRequest {
        key: key.into(),
        ttl_seconds: ttl,
    }
}

fn get_job(id: &str) -> proto::GetImportJobRequest {
    proto::GetImportJobRequest { id: id.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_jobs_need_the_import_right_and_a_second_factor_and_expire() {
    let mut env = Env::new().await;
    // no `import` right
    let e = env
        .keys("payments")
        .create_import_job(job_req("payments.pan", 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    // an officer without a one-time code
    let e = env
        .keys("alice")
        .create_import_job(with_otp(job_req("payments.pan", 0), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    // with one
    let code = env.code("alice");
    let job = env
        .keys("alice")
        .create_import_job(with_otp(job_req("payments.pan", 0), Some(&code)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.id.len(), 32);
    assert_eq!(job.key, "payments.pan");
    assert_eq!(job.wrapping_method, "RSA_OAEP_3072_SHA256_AES_256");
    assert_eq!(job.expires_at - job.created_at, 24 * 3600, "the default lifetime");
    assert!(job.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    WrappingPublicKey::from_pem(&job.public_key_pem).expect("an RSA-3072 SPKI PEM");

    // reading a job: any caller with `import` on its key, no code needed
    let seen = env
        .keys("bob")
        .get_import_job(get_job(&job.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen, job);
    let e = env.keys("payments").get_import_job(get_job(&job.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = env
        .keys("bob")
        .get_import_job(get_job(&"0".repeat(32)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    for bad in ["", "../../etc", &"A".repeat(32), &"a".repeat(4096)] {
        let e = env.keys("bob").get_import_job(get_job(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {}", e.message());
    }

    // bounds of the request
    let mut admin = env.keys("admin");
    let e = admin.create_import_job(job_req("k", 8 * 24 * 3600)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("ttl_seconds must be at most 604800"),
        "{}",
        e.message()
    );
    let e = admin.create_import_job(job_req("bad name", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // a job expires, and is then removed
    let short = admin.create_import_job(job_req("k", 1)).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = admin.get_import_job(get_job(&short.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("expired"), "{}", e.message());
    let e = admin.get_import_job(get_job(&short.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // audited: who created which job
    wait_for("the audit record of the job's creation", || {
        audit_lines(&std::fs::read_to_string(env.d.dir.join("audit.log")).unwrap_or_default())
            .iter()
            .any(|r| {
                r["op"] == "import"
                    && r["identity"] == "spiffe://bank/alice"
                    && r["result"] == "OK"
                    && r.to_string().contains(&job.id)
            })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_jobs_are_bounded_sealed_and_left_out_of_backups() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let mut d = Daemon::start_with(dir.path(), "[limits]\nmax_import_jobs = 2\n");
    let (_, mut keys) = d.clients().await;
    let a = keys.create_import_job(job_req("a", 0)).await.unwrap().into_inner();
    keys.create_import_job(job_req("b", 0)).await.unwrap();
    let e = keys.create_import_job(job_req("c", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("limits.max_import_jobs"), "{}", e.message());

    // a backup restored elsewhere (same master key) has no jobs
    let mut snapshot = Vec::new();
    let mut stream = keys.backup(proto::BackupRequest {}).await.unwrap().into_inner();
    while let Some(c) = stream.message().await.unwrap() {
        snapshot.extend_from_slice(&c.data);
    }
    let dir2 = tempfile::tempdir().unwrap();
    Pki::new(dir2.path());
    std::fs::copy(dir.path().join("master-key"), dir2.path().join("master-key")).unwrap();
    let d2 = Daemon::start(dir2.path());
    let (_, mut keys2) = d2.clients().await;
    keys2
        .restore(tokio_stream::iter(vec![proto::RestoreChunk { data: snapshot }]))
        .await
        .unwrap();
    let e = keys2.get_import_job(get_job(&a.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());

    // the private key is sealed: read it back through the master key, then
    // look for its private part in every file the daemon wrote
    d.stop();
    let private = {
        let store = kmsd_keystore::SledStore::open(&dir.path().join("store")).unwrap();
        let sealer =
            kmsd_keystore::Sealer::new(kmsd_keystore::MasterKey::load(&dir.path().join("master-key")).unwrap());
        let jobs = kmsd::import::Jobs {
            store: &store,
            sealer: &sealer,
        };
        let job = jobs.get(&a.id, now()).unwrap();
        job.wrapping_key().unwrap().to_pkcs8_der().unwrap().to_vec()
    };
    // (the DER's tail: the CRT coefficient, private; its head holds the
    // public modulus, which is in the PEM anyway)
    let secret_tail = &private[private.len() - 96..];
    for f in walk(dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, secret_tail),
            "{} holds the job's private key",
            f.display()
        );
    }
}
