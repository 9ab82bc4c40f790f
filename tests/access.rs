//! Who may do what, against the real daemon over real mTLS: the policy
//! denies everything it does not allow and deny wins, with the same answer
//! for an existing key and a missing one; listing and status reveal
//! nothing without rights; identities come from the SPIFFE SAN or the key
//! hash, and a policy reload takes effect (a bad one is refused); DEV ONLY
//! roles are refused outside dev mode. Officers and dual control are in
//! `tests/officers.rs`, the tamper-evident audit trail in
//! `tests/audit_trail.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::bank::*;
use common::*;
use kmsd::proto::{self, admin_client::AdminClient, keys_client::KeysClient};
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_everything_not_allowed_and_deny_wins() {
    let env = Env::new().await;
    let mut k = env.keys("admin");
    for name in ["payments.pan", "payments.archive-2020", "hr.salaries"] {
        create(&mut k, name).await;
    }
    let mut pay = env.crypto("payments");
    let ct = encrypted(&mut pay, "payments.pan", b"x").await;
    pay.decrypt(dec("payments.pan", &ct, b"")).await.unwrap();
    // deny beats allow
    let archived = encrypted(&mut pay, "payments.archive-2020", b"x").await;
    let e = pay
        .decrypt(dec("payments.archive-2020", &archived, b""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("decrypt"), "{}", e.message());
    // no leak: an existing key and a missing one answer the same
    let a = pay.encrypt(enc("hr.salaries", b"x", b"")).await.unwrap_err();
    let b = pay.encrypt(enc("hr.nothing", b"x", b"")).await.unwrap_err();
    assert_eq!((a.code(), b.code()), (Code::PermissionDenied, Code::PermissionDenied));
    assert_eq!(
        a.message().replace("salaries", "X"),
        b.message().replace("nothing", "X")
    );

    // every operation is denied to an identity without rights, naming the operation
    let s = "stranger";
    let (mut c, mut k, mut a, mut m) = (
        env.crypto(s),
        env.keys(s),
        env.admin(s),
        proto::mask_client::MaskClient::new(env.ch(s)),
    );
    let key = || "payments.pan".to_string();
    let checks: Vec<(&str, tonic::Status)> = vec![
        ("encrypt", c.encrypt(enc(&key(), b"", b"")).await.unwrap_err()),
        ("decrypt", c.decrypt(dec(&key(), &ct, b"")).await.unwrap_err()),
        (
            "rewrap",
            c.rewrap(proto::RewrapRequest {
                key: key(),
                ciphertext: ct.clone(),
                associated_data: vec![],
            })
            .await
            .unwrap_err(),
        ),
        (
            "datakey",
            c.generate_data_key(proto::GenerateDataKeyRequest {
                key: key(),
                bits: 256,
                associated_data: vec![],
            })
            .await
            .unwrap_err(),
        ),
        (
            "mask",
            m.mask(proto::MaskRequest {
                value: "4111111111111111".into(),
                kind: 1,
                pan_keep_bin: 0,
            })
            .await
            .unwrap_err(),
        ),
        (
            "redact",
            m.redact(proto::RedactRequest {
                text: "x".into(),
                kinds: vec![],
            })
            .await
            .unwrap_err(),
        ),
        (
            "tokenize",
            m.tokenize(proto::TokenizeRequest {
                key: key(),
                value: "4111111111111111".into(),
                kind: 1,
            })
            .await
            .unwrap_err(),
        ),
        (
            "detokenize",
            m.detokenize(proto::DetokenizeRequest {
                key: key(),
                token: "1".into(),
                kind: 1,
                key_version: 0,
            })
            .await
            .unwrap_err(),
        ),
        (
            "key.read",
            k.get_key(proto::GetKeyRequest { name: key() }).await.unwrap_err(),
        ),
        (
            "key.create",
            k.create_key(proto::CreateKeyRequest {
                name: "new".into(),
                algorithm: 0,
                policy: None,
                exportable: false,
            })
            .await
            .unwrap_err(),
        ),
        ("key.rotate", k.rotate_key(rotate("payments.pan")).await.unwrap_err()),
        (
            "key.policy",
            k.update_key_policy(proto::UpdateKeyPolicyRequest {
                name: key(),
                policy: None,
            })
            .await
            .unwrap_err(),
        ),
        (
            "key.version_state",
            k.set_version_state(proto::SetVersionStateRequest {
                name: key(),
                version: 1,
                state: 3,
            })
            .await
            .unwrap_err(),
        ),
        (
            "key.destroy",
            k.schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
                name: key(),
                version: 1,
                waiting_period_seconds: 0,
            })
            .await
            .unwrap_err(),
        ),
        (
            "backup",
            k.backup(proto::BackupRequest {}).await.map(|_| ()).unwrap_err(),
        ),
        (
            "restore",
            k.restore(tokio_stream::iter(vec![proto::RestoreChunk { data: vec![1] }]))
                .await
                .unwrap_err(),
        ),
        (
            "audit.read",
            a.verify_audit(tokio_stream::iter(vec![proto::AuditChunk {
                data: vec![],
                head: None,
            }]))
            .await
            .unwrap_err(),
        ),
        (
            "approval",
            a.list_approvals(proto::ListApprovalsRequest {}).await.unwrap_err(),
        ),
        (
            "admin.reload",
            a.reload_policy(proto::ReloadPolicyRequest {}).await.unwrap_err(),
        ),
        ("status", a.status(proto::StatusRequest {}).await.unwrap_err()),
        (
            "key.read",
            k.list_keys(proto::ListKeysRequest::default()).await.unwrap_err(),
        ),
    ];
    for (op, st) in checks {
        assert_eq!(st.code(), Code::PermissionDenied, "{op}: {st:?}");
        assert!(st.message().contains(op), "{op}: {}", st.message());
    }
    // batches: each item is checked on its own
    let out = env
        .crypto("payments")
        .encrypt_batch(proto::EncryptBatchRequest {
            items: vec![enc("payments.pan", b"a", b""), enc("hr.salaries", b"b", b"")],
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(matches!(out[0].result, Some(proto::encrypt_batch_item::Result::Ok(_))));
    match &out[1].result {
        Some(proto::encrypt_batch_item::Result::Error(e)) => assert_eq!(e.code, Code::PermissionDenied as i32),
        other => panic!("{other:?}"),
    }
    // listing shows only what the caller may read
    let names = env
        .keys("hashed")
        .list_keys(proto::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names, vec!["payments.archive-2020", "payments.pan"]);
}

/// `ListKeys` and `Status` tell a caller nothing it has no right to:
/// a stranger is refused outright, and a caller with `key.read` on some
/// keys pages through exactly those, with tokens that name no other key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_and_status_reveal_nothing_without_rights() {
    let env = Env::new().await;
    let mut k = env.keys("admin");
    let hidden = ["a.secret", "b.secret", "payments", "pz.secret", "z.secret"];
    for name in hidden.iter().chain(&["payments.a", "payments.b", "payments.c"]) {
        create(&mut k, name).await;
    }
    let list = |page_size: u32, page_token: &str, prefix: &str| proto::ListKeysRequest {
        page_size,
        page_token: page_token.into(),
        prefix: prefix.into(),
    };
    // a certificate outside the policy: refused, whatever the page size
    for page_size in [0, 1] {
        let e = env
            .keys("stranger")
            .list_keys(list(page_size, "", ""))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("key.read"), "{}", e.message());
        assert!(!hidden.iter().any(|h| e.message().contains(h)), "{}", e.message());
    }
    // a caller with rights on other keys (key.read on payments.*), one name
    // per page: only its names, and no token once they are exhausted
    // (although hidden names follow), and no token that spells a name
    let mut hashed = env.keys("hashed");
    for prefix in ["", "p", "payments."] {
        let (mut seen, mut token, mut pages) = (vec![], String::new(), 0);
        loop {
            let r = hashed.list_keys(list(1, &token, prefix)).await.unwrap().into_inner();
            pages += 1;
            assert_eq!(r.names.len(), 1, "every page shows a name (prefix {prefix:?}): {r:?}");
            seen.extend(r.names);
            for h in hidden.iter().chain(&["payments.a", "payments.b", "payments.c"]) {
                assert!(!r.next_page_token.contains(&hex::encode(h)), "token spells {h}");
            }
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
            assert!(pages < 10, "endless paging");
        }
        assert_eq!(seen, ["payments.a", "payments.b", "payments.c"], "prefix {prefix:?}");
        assert_eq!(pages, 3);
    }
    // a prefix under which it may read nothing: no names, no token
    for prefix in ["a", "z", "payments.d"] {
        let r = hashed.list_keys(list(1, "", prefix)).await.unwrap().into_inner();
        assert!(r.names.is_empty() && r.next_page_token.is_empty(), "{prefix}: {r:?}");
    }
    // tokens are opaque: a forged one (the old hex of a name), one of
    // another caller or another prefix are refused
    let first = hashed.list_keys(list(1, "", "")).await.unwrap().into_inner();
    for (who, token, prefix) in [
        ("hashed", hex::encode("a.secret"), ""),
        ("hashed", first.next_page_token.clone(), "p"),
        ("admin", first.next_page_token.clone(), ""),
    ] {
        let e = env.keys(who).list_keys(list(1, &token, prefix)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{who}: {e:?}");
    }
    // the admin (key.read on *) sees everything, page by page
    let (mut all, mut token) = (vec![], String::new());
    loop {
        let r = k.list_keys(list(3, &token, "")).await.unwrap().into_inner();
        all.extend(r.names);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(all.len(), 8);

    // Status needs the status right: a stranger and a reader are refused
    for who in ["stranger", "hashed"] {
        let e = env.admin(who).status(proto::StatusRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}: {e:?}");
        assert!(e.message().contains("status"), "{}", e.message());
    }
    let s = env
        .admin("admin")
        .status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.keys, 8);
    // alone on sled: the only writer always schedules, no election, no
    // staleness bound
    assert_eq!(s.backend, "sled");
    assert!(s.scheduler_leader);
    assert_eq!((s.leader.as_str(), s.leader_term, s.leader_terms_won), ("", 0, 0));
    assert_eq!((s.cache_age_ms, s.max_staleness_ms), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_from_spiffe_san_and_key_hash_and_policy_reload() {
    let env = Env::new().await;
    create(&mut env.keys("admin"), "payments.x").await;
    // the key-hash identity may read, via its sha256: entry
    env.keys("hashed")
        .get_key(proto::GetKeyRequest {
            name: "payments.x".into(),
        })
        .await
        .unwrap();
    // data-path records are group-committed: wait for the write
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = std::fs::read_to_string(env.d.dir.join("audit.log")).unwrap();
        if audit.contains("\"identity\":\"sha256:") && audit.contains("\"identity\":\"spiffe://bank/admin\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{audit}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // reload: grant the stranger encrypt
    let policy_path = env.d.dir.join("policy.toml");
    let original = std::fs::read_to_string(&policy_path).unwrap();
    let granted = original.replace(
        "[identities]\n",
        "[identities]\n\"spiffe://bank/stranger\" = [\"payments\"]\n",
    );
    std::fs::write(&policy_path, &granted).unwrap();
    assert_eq!(
        env.crypto("stranger")
            .encrypt(enc("payments.x", b"m", b""))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let off = env.d.log_text().len();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &env.d.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !env.d.log_text()[off..].contains("reloaded the policy") {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.crypto("stranger")
        .encrypt(enc("payments.x", b"m", b""))
        .await
        .unwrap();
    // a bad file is refused (SIGHUP and the admin call) and the old policy stays
    std::fs::write(
        &policy_path,
        format!("{granted}\n[roles.broken]\nallow = [{{ ops = [\"encrpyt\"], keys = [\"*\"] }}]\n"),
    )
    .unwrap();
    let e = env
        .admin("admin")
        .reload_policy(proto::ReloadPolicyRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("encrpyt"), "{}", e.message());
    let off = env.d.log_text().len();
    std::process::Command::new("kill")
        .args(["-HUP", &env.d.pid().to_string()])
        .status()
        .unwrap();
    while !env.d.log_text()[off..].contains("policy reload refused") {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.crypto("stranger")
        .encrypt(enc("payments.x", b"m", b""))
        .await
        .unwrap();
}

/// `dev_no_second_factor` is DEV ONLY: outside `dev_mode = true` a policy
/// that uses it is refused by `check-config`, at start and on reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_only_roles_are_refused_outside_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    std::fs::write(dir.path().join("policy.toml"), TEST_POLICY).unwrap();
    let config = write_production_config(dir.path());
    // check-config names the role and the switch
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted a DEV ONLY role: {out:?}");
    assert!(
        stderr.contains("dev_no_second_factor") && stderr.contains("\"all\"") && stderr.contains("dev_mode"),
        "{stderr}"
    );
    // serve refuses to start
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kmsd served with a DEV ONLY role outside dev mode");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("dev_no_second_factor"), "{stderr}");
    // a production policy starts; a reload that adds a DEV ONLY role is
    // refused (SIGHUP and the admin call) and the old policy stays
    let production = r#"
[identities]
"spiffe://test.internal/app" = ["ops"]
[roles.ops]
allow = [{ ops = ["admin.reload", "key.read", "status"], keys = ["*"] }]
"#;
    std::fs::write(dir.path().join("policy.toml"), production).unwrap();
    let d = Daemon::start_production(dir.path());
    let mut admin = AdminClient::new(d.channel().await);
    admin.status(proto::StatusRequest {}).await.unwrap();
    std::fs::write(dir.path().join("policy.toml"), TEST_POLICY).unwrap();
    let e = admin.reload_policy(proto::ReloadPolicyRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("dev_no_second_factor"), "{}", e.message());
    let off = d.log_text().len();
    std::process::Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.log_text()[off..].contains("policy reload refused") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.log_text()[off..].contains("dev_no_second_factor"));
    // still the production policy: the DEV ONLY role's rights were not granted
    let e = KeysClient::new(d.channel().await)
        .create_key(proto::CreateKeyRequest {
            name: "k".into(),
            algorithm: 0,
            policy: None,
            exportable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}
