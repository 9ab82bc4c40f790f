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

/// Runs `tests/python/byok.py ARGS` with `python`.
fn byok(python: &str, args: &[&std::ffi::OsStr]) {
    let o = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/byok.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "byok.py: {}", String::from_utf8_lossy(&o.stderr));
}

/// Wraps the material in file `material` for the job whose public key is
/// in `job_pem`, with Python `cryptography` (tests/python/byok.py), into `out`.
fn python_wrap(python: &str, job_pem: &std::path::Path, material: &std::path::Path, out: &std::path::Path) {
    byok(
        python,
        &[os("wrap"), job_pem.as_os_str(), material.as_os_str(), out.as_os_str()],
    );
}

/// Decrypts the kmsd ciphertext in `ciphertext` (key "byok", no associated
/// data) with the raw AES material in `material`, in Python, into `out`.
fn python_decrypt(python: &str, material: &std::path::Path, ciphertext: &std::path::Path, out: &std::path::Path) {
    byok(
        python,
        &[
            os("decrypt"),
            material.as_os_str(),
            os("byok"),
            os(""),
            ciphertext.as_os_str(),
            out.as_os_str(),
        ],
    );
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

fn import_req(key: &str, job: &str, wrapped: Vec<u8>, algorithm: proto::Algorithm) -> proto::ImportKeyVersionRequest {
    proto::ImportKeyVersionRequest {
        key: key.into(),
        import_job: job.into(),
        wrapped_key: wrapped,
        algorithm: algorithm as i32,
        policy: None,
        exportable: false,
    }
}

/// Wraps `material` for `job` with openssl's command line: `pkeyutl` for
/// the RSA-OAEP half, `enc -id-aes256-wrap-pad` for the RFC 5649 half
/// (the README's "Bringing keys from an HSM" recipe).
fn openssl_wrap(dir: &std::path::Path, job: &proto::ImportJob, material: &[u8]) -> Vec<u8> {
    let p = |n: &str| dir.join(n);
    std::fs::write(p("job.pem"), &job.public_key_pem).unwrap();
    std::fs::write(p("material.bin"), material).unwrap();
    let ephemeral: [u8; 32] = rand::random();
    std::fs::write(p("ephemeral.bin"), ephemeral).unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        "job.pem",
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-in",
        "ephemeral.bin",
        "-out",
        "rsa.bin",
    ]);
    run(&[
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        &hex::encode(ephemeral),
        "-iv",
        "A65959A6",
        "-in",
        "material.bin",
        "-out",
        "kwp.bin",
    ]);
    let mut wrapped = std::fs::read(p("rsa.bin")).unwrap();
    wrapped.extend_from_slice(&std::fs::read(p("kwp.bin")).unwrap());
    for f in ["material.bin", "ephemeral.bin", "rsa.bin", "kwp.bin"] {
        std::fs::remove_file(p(f)).unwrap();
    }
    wrapped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_imported_from_python_and_openssl_wrapped_blobs_decrypts_what_python_encrypted() {
    let Some(python) = python_with("cryptography") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);

    // the material, and a ciphertext made from it by Python alone
    let material: [u8; 32] = rand::random();
    std::fs::write(w("material"), material).unwrap();
    std::fs::write(w("plaintext"), b"made in python").unwrap();
    byok(
        &python,
        &[
            os("encrypt"),
            w("material").as_os_str(),
            os("byok"),
            os("1"),
            os("ctx"),
            w("plaintext").as_os_str(),
            w("ct").as_os_str(),
        ],
    );

    // wrapped by Python for a job, imported: a new key, version 1
    let job = keys.create_import_job(job_req("byok", 0)).await.unwrap().into_inner();
    std::fs::write(w("job.pem"), &job.public_key_pem).unwrap();
    python_wrap(&python, &w("job.pem"), &w("material"), &w("wrapped"));
    let wrapped = std::fs::read(w("wrapped")).unwrap();
    let info = keys
        .import_key_version(import_req(
            "byok",
            &job.id,
            wrapped.clone(),
            proto::Algorithm::Aes256Gcm,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.primary_version, 1);
    assert_eq!(info.versions[0].origin, proto::KeyOrigin::Imported as i32);
    assert!(!info.exportable, "exportable only if asked for");
    let ct = std::fs::read(w("ct")).unwrap();
    let pt = crypto
        .decrypt(dec("byok", &ct, b"ctx"))
        .await
        .expect("kmsd decrypts what Python encrypted under the same material")
        .into_inner();
    assert_eq!(pt.plaintext, b"made in python");
    // and the other way: Python decrypts what kmsd encrypts
    std::fs::write(w("kmsd-ct"), encrypted(&mut crypto, "byok", b"made in kmsd").await).unwrap();
    python_decrypt(&python, &w("material"), &w("kmsd-ct"), &w("out"));
    assert_eq!(std::fs::read(w("out")).unwrap(), b"made in kmsd");

    // the job is reusable until it expires: openssl wraps the next version
    let material2: [u8; 32] = rand::random();
    let wrapped2 = openssl_wrap(work.path(), &job, &material2);
    let info = keys
        .import_key_version(import_req("byok", &job.id, wrapped2, proto::Algorithm::Aes256Gcm))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.primary_version, 2);
    assert_eq!(info.versions[0].state, proto::VersionState::DecryptOnly as i32);
    assert_eq!(info.versions[1].origin, proto::KeyOrigin::Imported as i32);
    let last = info.rotations.last().unwrap();
    assert_eq!(
        (last.from_version, last.to_version, last.reason),
        (1, 2, proto::RotationReason::Import as i32)
    );
    std::fs::write(w("material2"), material2).unwrap();
    std::fs::write(w("kmsd-ct2"), encrypted(&mut crypto, "byok", b"version 2").await).unwrap();
    python_decrypt(&python, &w("material2"), &w("kmsd-ct2"), &w("out2"));
    assert_eq!(std::fs::read(w("out2")).unwrap(), b"version 2");
    let pt = crypto.decrypt(dec("byok", &ct, b"ctx")).await.unwrap().into_inner();
    assert_eq!(pt.plaintext, b"made in python", "version 1 still decrypts");

    // refusals, each with its own status
    let refuse = |key: &str, job: &str, wrapped: Vec<u8>, alg| import_req(key, job, wrapped, alg);
    let aes = proto::Algorithm::Aes256Gcm;
    let mut tampered = wrapped.clone();
    let last_byte = tampered.len() - 1;
    tampered[last_byte] ^= 1;
    let e = keys
        .import_key_version(refuse("byok", &job.id, tampered, aes))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("does not unwrap"), "{}", e.message());
    let mut tampered = wrapped.clone();
    tampered[10] ^= 1;
    let e2 = keys
        .import_key_version(refuse("byok", &job.id, tampered, aes))
        .await
        .unwrap_err();
    assert_eq!(
        (e2.code(), e2.message()),
        (e.code(), e.message()),
        "one answer whichever half was changed"
    );
    let e = keys
        .import_key_version(refuse("byok", &job.id, wrapped[..100].to_vec(), aes))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("malformed"), "{}", e.message());
    let e = keys
        .import_key_version(refuse("byok", &job.id, wrapped.clone(), proto::Algorithm::HmacSha256))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("AES_256_GCM") && e.message().contains("HMAC_SHA256"),
        "{}",
        e.message()
    );
    let other = keys.create_import_job(job_req("other", 0)).await.unwrap().into_inner();
    let e = keys
        .import_key_version(refuse("byok", &other.id, wrapped.clone(), aes))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("is for key \"other\""), "{}", e.message());
    let e = keys
        .import_key_version(refuse("byok", &"f".repeat(32), wrapped.clone(), aes))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // material of the wrong length for AES-256
    std::fs::write(w("short"), [7u8; 16]).unwrap();
    python_wrap(&python, &w("job.pem"), &w("short"), &w("wrapped-short"));
    let short = std::fs::read(w("wrapped-short")).unwrap();
    let e = keys
        .import_key_version(refuse("byok", &job.id, short, aes))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let info = get(&mut keys, "byok").await;
    assert_eq!(info.primary_version, 2, "nothing refused was imported");

    // an imported key does not rotate to generated material unless its policy allows it
    let e = keys
        .rotate_key(proto::RotateKeyRequest { name: "byok".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    set_policy(&mut keys, "byok", |p| p.allow_generated_rotation = Some(true))
        .await
        .unwrap();
    let info = keys
        .rotate_key(proto::RotateKeyRequest { name: "byok".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.versions[2].origin, proto::KeyOrigin::Generated as i32);

    // an HMAC key imported likewise (a new key of that algorithm)
    let hjob = keys
        .create_import_job(job_req("byok.hmac", 0))
        .await
        .unwrap()
        .into_inner();
    std::fs::write(w("hjob.pem"), &hjob.public_key_pem).unwrap();
    let hkey: [u8; 32] = rand::random();
    std::fs::write(w("hkey"), hkey).unwrap();
    python_wrap(&python, &w("hjob.pem"), &w("hkey"), &w("hwrapped"));
    let info = keys
        .import_key_version(import_req(
            "byok.hmac",
            &hjob.id,
            std::fs::read(w("hwrapped")).unwrap(),
            proto::Algorithm::HmacSha256,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.algorithm, proto::Algorithm::HmacSha256 as i32);
    assert_eq!(info.versions[0].origin, proto::KeyOrigin::Imported as i32);
    // kmsd's MAC under the imported key is the MAC Python computes locally
    std::fs::write(w("mac-data"), b"webhook body").unwrap();
    byok(
        &python,
        &[
            os("hmac"),
            w("hkey").as_os_str(),
            w("mac-data").as_os_str(),
            w("mac").as_os_str(),
        ],
    );
    let mac = crypto
        .mac(proto::MacRequest {
            key: "byok.hmac".into(),
            data: b"webhook body".to_vec(),
            key_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mac.mac, std::fs::read(w("mac")).unwrap());

    // nothing of the material in the daemon's files (store, audit, log)
    for f in walk(dir.path()).into_iter().filter(|f| f.is_file()) {
        let bytes = std::fs::read(&f).unwrap();
        for (what, secret) in [
            ("material", &material[..]),
            ("material 2", &material2[..]),
            ("HMAC key", &hkey[..]),
        ] {
            assert!(!contains(&bytes, secret), "{} holds the {what}", f.display());
            assert!(
                !contains(&bytes, hex::encode(secret).as_bytes()),
                "{} holds the {what} in hex",
                f.display()
            );
        }
    }
}

fn approval_id(e: &tonic::Status) -> String {
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    e.metadata()
        .get("x-kmsd-approval-id")
        .unwrap_or_else(|| panic!("no approval id: {e:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn export_req(key: &str, pem: &str) -> proto::ExportKeyVersionRequest {
    proto::ExportKeyVersionRequest {
        key: key.into(),
        version: 0,
        wrapping_public_key_pem: pem.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_needs_two_officers_and_the_key_decrypts_in_the_other_daemon() {
    let mut env = Env::new().await;
    // the destination: another daemon, with its own master key and job
    let dest_dir = tempfile::tempdir().unwrap();
    Pki::new(dest_dir.path());
    let dest = Daemon::start(dest_dir.path());
    let (mut dest_crypto, mut dest_keys) = dest.clients().await;
    let job = dest_keys
        .create_import_job(job_req("payments.moved", 0))
        .await
        .unwrap()
        .into_inner();

    // the source key: exportable, with data encrypted under it
    let mut admin = env.keys("admin");
    admin
        .create_key(proto::CreateKeyRequest {
            name: "payments.moved".into(),
            exportable: true,
            ..Default::default()
        })
        .await
        .unwrap();
    create(&mut admin, "payments.kept").await;
    let ct = encrypted(&mut env.crypto("admin"), "payments.moved", b"moved with its key").await;

    // not exportable, no export right, no code: refused at once
    let code = env.code("alice");
    let e = env
        .keys("alice")
        .export_key_version(with_otp(export_req("payments.kept", &job.public_key_pem), Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not exportable"), "{}", e.message());
    assert!(e.metadata().get("x-kmsd-approval-id").is_none());
    let e = env
        .keys("payments")
        .export_key_version(export_req("payments.moved", &job.public_key_pem))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = env
        .keys("alice")
        .export_key_version(with_otp(export_req("payments.moved", &job.public_key_pem), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // one officer alone gets a pending request, never the key
    let code = env.code("alice");
    let e = env
        .keys("alice")
        .export_key_version(with_otp(export_req("payments.moved", &job.public_key_pem), Some(&code)))
        .await
        .unwrap_err();
    let id = approval_id(&e);
    assert!(
        e.message().contains("export version 1 of key \"payments.moved\""),
        "{}",
        e.message()
    );
    let e = env.approve("alice", &id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "not her own request");
    // a second officer approves: the wrapped key comes back to the approver
    let r = env.approve("bob", &id).await.unwrap();
    assert!(r.result.contains("exported"), "{}", r.result);
    let exported = <proto::ExportKeyVersionResponse as prost::Message>::decode(r.payload.as_slice()).unwrap();
    assert_eq!(
        (exported.version, exported.algorithm),
        (1, proto::Algorithm::Aes256Gcm as i32)
    );

    // imported at the destination, it decrypts the source's ciphertext
    let info = dest_keys
        .import_key_version(import_req(
            "payments.moved",
            &job.id,
            exported.wrapped_key,
            proto::Algorithm::Aes256Gcm,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.versions[0].origin, proto::KeyOrigin::Imported as i32);
    assert_eq!(
        decrypted(&mut dest_crypto, "payments.moved", &ct).await,
        b"moved with its key"
    );

    // audited with both identities
    wait_for("the approval's audit record", || {
        audit_lines(&std::fs::read_to_string(env.d.dir.join("audit.log")).unwrap_or_default())
            .iter()
            .any(|r| {
                let s = r.to_string();
                r["op"] == "approval"
                    && r["identity"] == "spiffe://bank/bob"
                    && r["result"] == "OK"
                    && s.contains(&id)
                    && s.contains("spiffe://bank/alice")
                    && s.contains("export")
            })
    });
}

/// Runs kmsctl (`-o json`) against `d` as client `who`, with a one-time
/// code if given; its stdout as JSON, or the failure.
fn kmsctl_json(d: &Daemon, who: &str, otp: Option<&str>, args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(kmsctl_bin());
    cmd.args(["-o", "json"])
        .args(args)
        .env("KMSD_ADDR", format!("unix:{}", d.socket.display()))
        .env("KMSD_CA", d.dir.join("ca.pem"))
        .env("KMSD_CERT", d.dir.join(format!("{who}.pem")))
        .env("KMSD_KEY", d.dir.join(format!("{who}.key")))
        .stdin(std::process::Stdio::null());
    if let Some(code) = otp {
        cmd.env("KMSD_OTP", code);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "kmsctl {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("kmsctl {args:?}: {e}: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_moves_a_key_between_daemons_with_two_officers() {
    let mut env = Env::new().await;
    let dest_dir = tempfile::tempdir().unwrap();
    Pki::new(dest_dir.path());
    let dest = Daemon::start(dest_dir.path());
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n).to_str().unwrap().to_owned();

    // the destination's job, its public key in a file
    let job = kmsctl_json(
        &dest,
        "client",
        None,
        &[
            "import-job",
            "create",
            "--key",
            "payments.cli",
            "--ttl",
            "1h",
            "--public-key-out",
            &w("dest.pem"),
        ],
    );
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["key"], "payments.cli");
    let shown = kmsctl_json(&dest, "client", None, &["import-job", "show", &job_id]);
    assert_eq!(shown["public_key_pem"], job["public_key_pem"]);
    assert_eq!(
        std::fs::read_to_string(w("dest.pem")).unwrap(),
        job["public_key_pem"].as_str().unwrap()
    );

    // the source key, exportable, and a ciphertext under it
    kmsctl_json(
        &env.d,
        "admin",
        None,
        &["key", "create", "payments.cli", "--exportable"],
    );
    let ct = encrypted(&mut env.crypto("admin"), "payments.cli", b"moved by kmsctl").await;

    // one officer asks (kmsctl prints the approval id), another approves into a file
    let code = env.code("alice");
    let pending = kmsctl_json(
        &env.d,
        "alice",
        Some(&code),
        &["key", "export", "payments.cli", "--wrapping-key", &w("dest.pem")],
    );
    let id = pending["pending_approval"].as_str().unwrap().to_owned();
    let code = env.code("bob");
    let approved = kmsctl_json(
        &env.d,
        "bob",
        Some(&code),
        &["approvals", "approve", &id, "--out", &w("wrapped.bin")],
    );
    assert_eq!(approved["approved"], true);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(w("wrapped.bin")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // imported at the destination with kmsctl, it decrypts there
    let info = kmsctl_json(
        &dest,
        "client",
        None,
        &[
            "key",
            "import",
            "payments.cli",
            "--job",
            &job_id,
            "--wrapped",
            &w("wrapped.bin"),
        ],
    );
    assert_eq!(info["primary_version"], 1);
    let (mut dest_crypto, _) = dest.clients().await;
    assert_eq!(
        decrypted(&mut dest_crypto, "payments.cli", &ct).await,
        b"moved by kmsctl"
    );

    // --material: raw material in a file, wrapped by kmsctl with the job's key
    let job2 = kmsctl_json(
        &dest,
        "client",
        None,
        &["import-job", "create", "--key", "cli.material"],
    );
    let material: [u8; 32] = rand::random();
    std::fs::write(w("key.bin"), material).unwrap();
    let info = kmsctl_json(
        &dest,
        "client",
        None,
        &[
            "key",
            "import",
            "cli.material",
            "--job",
            job2["id"].as_str().unwrap(),
            "--material",
            &w("key.bin"),
        ],
    );
    assert_eq!(info["name"], "cli.material");
    let ct = encrypted(&mut dest_crypto, "cli.material", b"x").await;
    assert_eq!(decrypted(&mut dest_crypto, "cli.material", &ct).await, b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecdsa_key_imported_from_python_signs_what_python_verifies() {
    let Some(python) = python_with("cryptography") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let (mut crypto, mut keys) = d.clients().await;
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str| work.path().join(n);

    let job = keys.create_import_job(job_req("signer", 0)).await.unwrap().into_inner();
    std::fs::write(w("job.pem"), &job.public_key_pem).unwrap();
    // a P-384 key is not an ECDSA_P256_SHA256 key
    byok(&python, &[os("ecgen"), os("P-384"), w("p384.der").as_os_str()]);
    python_wrap(&python, &w("job.pem"), &w("p384.der"), &w("p384.wrapped"));
    let e = keys
        .import_key_version(import_req(
            "signer",
            &job.id,
            std::fs::read(w("p384.wrapped")).unwrap(),
            proto::Algorithm::EcdsaP256Sha256,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    // a P-256 PKCS#8 key is
    byok(&python, &[os("ecgen"), os("P-256"), w("p256.der").as_os_str()]);
    python_wrap(&python, &w("job.pem"), &w("p256.der"), &w("p256.wrapped"));
    let info = keys
        .import_key_version(import_req(
            "signer",
            &job.id,
            std::fs::read(w("p256.wrapped")).unwrap(),
            proto::Algorithm::EcdsaP256Sha256,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.algorithm, proto::Algorithm::EcdsaP256Sha256 as i32);
    let sig = crypto
        .sign(proto::SignRequest {
            key: "signer".into(),
            input: Some(proto::sign_request::Input::Message(b"statement".to_vec())),
            encoding: proto::SignatureEncoding::Der as i32,
        })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(w("data"), b"statement").unwrap();
    std::fs::write(w("sig"), &sig.signature).unwrap();
    byok(
        &python,
        &[
            os("ecverify"),
            w("p256.der").as_os_str(),
            w("data").as_os_str(),
            w("sig").as_os_str(),
        ],
    );
}
