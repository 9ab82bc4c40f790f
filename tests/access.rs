//! Who may do what, against the real daemon over real mTLS: policy
//! (deny wins, nothing leaks), identities from SPIFFE SAN and key hash,
//! policy reload, officer TOTP (missing, wrong, replayed, locked out), dual
//! control, the tamper-evident audit trail, and failing closed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, admin_client::AdminClient, crypto_client::CryptoClient, keys_client::KeysClient};
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};

const POLICY: &str = r#"
[identities]
"spiffe://bank/admin" = ["setup"]
"spiffe://bank/payments" = ["payments"]
"spiffe://bank/alice" = ["officer"]
"spiffe://bank/bob" = ["officer"]
"spiffe://bank/carol" = ["officer"]
"spiffe://bank/dave" = ["officer"]
"spiffe://bank/erin" = ["payments-officer"]
"spiffe://bank/auditor" = ["auditor"]
HASH_LINE

[roles.setup]
dev_no_second_factor = true
allow = [{ ops = ["*"], keys = ["*"] }]

[roles.payments]
allow = [{ ops = ["encrypt", "decrypt"], keys = ["payments.*"] }]
deny = [{ ops = ["decrypt"], keys = ["payments.archive-*"] }]

[roles.reader]
allow = [{ ops = ["key.read"], keys = ["payments.*"] }]

[roles.auditor]
allow = [{ ops = ["audit.read"], keys = ["*"] }]

[roles.officer]
officer = true
allow = [{ ops = ["key.*", "approval", "restore", "backup", "officer.enroll"], keys = ["*"] }]

[roles.payments-officer]
officer = true
allow = [{ ops = ["key.*"], keys = ["payments.*"] }, { ops = ["approval"], keys = ["*"] }]

[settings]
otp_max_failures = 3
otp_lockout = "60s"
approval_ttl = "3s"
"#;

struct Env {
    _dir: tempfile::TempDir,
    d: Daemon,
    channels: HashMap<String, Channel>,
    secrets: HashMap<String, Vec<u8>>,
    last_step: HashMap<String, i64>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Env {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        for who in [
            "admin", "payments", "alice", "bob", "carol", "dave", "erin", "auditor", "stranger",
        ] {
            pki.client(who, Some(&format!("spiffe://bank/{who}")));
        }
        pki.client("hashed", None); // no URI SAN: named by its key hash
        let der = kmsd::tls::load_certs(&dir.path().join("hashed.pem")).unwrap();
        let hashed_id = kmsd::tls::PeerIdentity::from_cert(&der[0], String::new())
            .unwrap()
            .id()
            .to_owned();
        assert!(hashed_id.starts_with("sha256:") && hashed_id.len() == 7 + 64);
        std::fs::write(
            dir.path().join("policy.toml"),
            POLICY.replace("HASH_LINE", &format!("\"{hashed_id}\" = [\"reader\"]")),
        )
        .unwrap();
        let d = Daemon::start(dir.path());
        let mut channels = HashMap::new();
        for who in [
            "admin", "payments", "alice", "bob", "carol", "dave", "erin", "auditor", "stranger", "hashed",
        ] {
            channels.insert(
                who.to_owned(),
                kmsd::client::connect(&d.settings(who, None)).await.unwrap(),
            );
        }
        let mut env = Env {
            _dir: dir,
            d,
            channels,
            secrets: HashMap::new(),
            last_step: HashMap::new(),
        };
        // the setup identity (no second factor: DEV ONLY role) enrols the
        // officers; the secrets go to the officers alone, who claim them
        for who in ["alice", "bob", "carol", "dave", "erin"] {
            let r = env
                .admin("admin")
                .enroll_officer(proto::EnrollOfficerRequest {
                    identity: format!("spiffe://bank/{who}"),
                    replace: false,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.otpauth_uri.is_empty() && r.secret_base32.is_empty(), "{r:?}");
            assert!(r.claim_by > now());
            let r = env
                .admin(who)
                .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
                .await
                .unwrap()
                .into_inner();
            assert!(r.otpauth_uri.starts_with("otpauth://totp/kmsd:"));
            env.secrets.insert(who.to_owned(), b32decode(&r.secret_base32));
        }
        env
    }

    /// The code for the latest step the server accepts now (one ahead),
    /// marking every step up to it as used by the test.
    fn latest_code(&mut self, who: &str) -> String {
        let step = now() / 30 + 1;
        assert!(self.last_step.get(who).is_none_or(|l| *l < step));
        self.last_step.insert(who.to_owned(), step);
        format!("{:06}", kmsd::authz::otp::code_at(&self.secrets[who], step * 30, 6))
    }

    /// Restarts the daemon (same state) and reconnects every client.
    async fn restart(&mut self) {
        self.d.restart();
        let who: Vec<String> = self.channels.keys().cloned().collect();
        for w in who {
            let ch = kmsd::client::connect(&self.d.settings(&w, None)).await.unwrap();
            self.channels.insert(w, ch);
        }
    }

    fn ch(&self, who: &str) -> Channel {
        self.channels[who].clone()
    }
    fn keys(&self, who: &str) -> KeysClient<Channel> {
        KeysClient::new(self.ch(who))
    }
    fn crypto(&self, who: &str) -> CryptoClient<Channel> {
        CryptoClient::new(self.ch(who))
    }
    fn admin(&self, who: &str) -> AdminClient<Channel> {
        AdminClient::new(self.ch(who))
    }

    /// A fresh, never-used code for `who` (steps only move forward).
    fn code(&mut self, who: &str) -> String {
        let step = now() / 30;
        let next = self.last_step.get(who).map_or(step - 1, |l| (l + 1).max(step - 1));
        assert!(next <= step + 1, "{who} used up its codes for this window");
        self.last_step.insert(who.to_owned(), next);
        format!("{:06}", kmsd::authz::otp::code_at(&self.secrets[who], next * 30, 6))
    }
}

fn with_otp<T>(msg: T, code: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(c) = code {
        r.metadata_mut().insert("x-kmsd-otp", c.parse().unwrap());
    }
    r
}

fn rotate(name: &str) -> proto::RotateKeyRequest {
    proto::RotateKeyRequest { name: name.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denies_everything_not_allowed_and_deny_wins() {
    let env = Env::new().await;
    let mut k = env.keys("admin");
    for name in ["payments.pan", "payments.archive-2020", "hr.salaries"] {
        k.create_key(proto::CreateKeyRequest {
            name: name.into(),
            algorithm: 0,
            policy: None,
        })
        .await
        .unwrap();
    }
    let mut pay = env.crypto("payments");
    let ct = pay
        .encrypt(enc("payments.pan", b"x", b""))
        .await
        .unwrap()
        .into_inner()
        .ciphertext;
    pay.decrypt(dec("payments.pan", &ct, b"")).await.unwrap();
    // deny beats allow
    let archived = pay
        .encrypt(enc("payments.archive-2020", b"x", b""))
        .await
        .unwrap()
        .into_inner()
        .ciphertext;
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
        (
            "encrypt",
            c.encrypt(proto::EncryptRequest {
                key: key(),
                plaintext: vec![],
                associated_data: vec![],
            })
            .await
            .unwrap_err(),
        ),
        (
            "decrypt",
            c.decrypt(proto::DecryptRequest {
                key: key(),
                ciphertext: ct.clone(),
                associated_data: vec![],
            })
            .await
            .unwrap_err(),
        ),
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
        k.create_key(proto::CreateKeyRequest {
            name: (*name).into(),
            algorithm: 0,
            policy: None,
        })
        .await
        .unwrap();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_from_spiffe_san_and_key_hash_and_policy_reload() {
    let env = Env::new().await;
    env.keys("admin")
        .create_key(proto::CreateKeyRequest {
            name: "payments.x".into(),
            algorithm: 0,
            policy: None,
        })
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_need_fresh_codes_and_destructive_calls_need_two_officers() {
    let mut env = Env::new().await;
    let mut k = env.keys("admin");
    k.create_key(proto::CreateKeyRequest {
        name: "ring".into(),
        algorithm: 0,
        policy: None,
    })
    .await
    .unwrap();
    k.rotate_key(rotate("ring")).await.unwrap();
    k.rotate_key(rotate("ring")).await.unwrap();

    let mut alice = env.keys("alice");
    // no code
    let e = alice.rotate_key(with_otp(rotate("ring"), None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("second factor") && e.message().contains("x-kmsd-otp"),
        "{}",
        e.message()
    );
    // marked for clients (kmsctl asks its officer on this mark)
    assert!(kmsd::client::Error::from(e).needs_second_factor());
    // wrong code
    let e = alice
        .rotate_key(with_otp(rotate("ring"), Some("000000")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!kmsd::client::Error::from(e).needs_second_factor());
    // reading needs no code
    alice
        .get_key(proto::GetKeyRequest { name: "ring".into() })
        .await
        .unwrap();
    // a good code works once
    let code = env.code("alice");
    let info = alice
        .rotate_key(with_otp(rotate("ring"), Some(&code)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.primary_version, 4);
    let e = alice
        .rotate_key(with_otp(rotate("ring"), Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("already used"), "{}", e.message());

    // dual control: alice asks, alice cannot approve, bob approves (a day's
    // wait, so the state read after the approval is still SCHEDULED however
    // slow the machine: with 1 s it was DESTROYED under load)
    let code = env.code("alice");
    let req = proto::ScheduleVersionDestructionRequest {
        name: "ring".into(),
        version: 1,
        waiting_period_seconds: 86_400,
    };
    let e = alice
        .schedule_version_destruction(with_otp(req, Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let id = e
        .metadata()
        .get("x-kmsd-approval-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(e.message().contains("version 1 of key \"ring\""), "{}", e.message());
    let pending = env
        .admin("bob")
        .list_approvals(proto::ListApprovalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id.as_str(), pending[0].requester.as_str()),
        (id.as_str(), "spiffe://bank/alice")
    );
    // nothing happened yet
    let info = env
        .keys("admin")
        .get_key(proto::GetKeyRequest { name: "ring".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.versions[0].state, proto::VersionState::DecryptOnly as i32);
    let code = env.code("alice");
    let e = env
        .admin("alice")
        .approve(with_otp(proto::ApproveRequest { id: id.clone() }, Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("own request"), "{}", e.message());
    let e = env
        .admin("bob")
        .approve(with_otp(proto::ApproveRequest { id: id.clone() }, None))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "approving needs the approver's own code"
    );
    let code = env.code("bob");
    let r = env
        .admin("bob")
        .approve(with_otp(proto::ApproveRequest { id: id.clone() }, Some(&code)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.result.contains("version 1"), "{}", r.result);
    let info = env
        .keys("admin")
        .get_key(proto::GetKeyRequest { name: "ring".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        info.versions[0].state,
        proto::VersionState::ScheduledForDestruction as i32
    );

    // an unapproved request expires (approval_ttl = 3 s in this policy)
    let code = env.code("carol");
    let req = proto::ScheduleVersionDestructionRequest {
        name: "ring".into(),
        version: 2,
        waiting_period_seconds: 1,
    };
    let e = env
        .keys("carol")
        .schedule_version_destruction(with_otp(req, Some(&code)))
        .await
        .unwrap_err();
    let id2 = e
        .metadata()
        .get("x-kmsd-approval-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let code = env.code("bob");
    let e = env
        .admin("bob")
        .approve(with_otp(proto::ApproveRequest { id: id2 }, Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let info = env
        .keys("admin")
        .get_key(proto::GetKeyRequest { name: "ring".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.versions[1].state, proto::VersionState::DecryptOnly as i32);

    // lock-out after 3 bad codes: even a good code is refused, and it is audited
    let mut dave = env.keys("dave");
    for _ in 0..3 {
        let _ = dave.rotate_key(with_otp(rotate("ring"), Some("999999"))).await;
    }
    let code = env.code("dave");
    let e = dave
        .rotate_key(with_otp(rotate("ring"), Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("locked out"), "{}", e.message());
    // (refusals are data-path records: group-committed within a few ms)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let audit = std::fs::read_to_string(env.d.dir.join("audit.log")).unwrap();
        if audit.contains("officer locked out") || std::time::Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(audit.contains("officer locked out"));
    // codes never reach the audit trail or the log
    assert!(!audit.contains(&code) && !env.d.log_text().contains(&code));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_detects_tampering_and_admin_calls_fail_closed() {
    let env = Env::new().await;
    let marker = b"AUDIT-MARKER-PLAINTEXT-55ab";
    let mut k = env.keys("admin");
    k.create_key(proto::CreateKeyRequest {
        name: "payments.a".into(),
        algorithm: 0,
        policy: None,
    })
    .await
    .unwrap();
    let mut pay = env.crypto("payments");
    for _ in 0..10 {
        let ct = pay
            .encrypt(enc("payments.a", marker, b""))
            .await
            .unwrap()
            .into_inner()
            .ciphertext;
        pay.decrypt(dec("payments.a", &ct, b"")).await.unwrap();
    }
    let _ = env.crypto("stranger").encrypt(enc("payments.a", marker, b"")).await;
    k.rotate_key(rotate("payments.a")).await.unwrap(); // durable: everything before it is on disk too
    let path = env.d.dir.join("audit.log");
    let head_first = env
        .admin("auditor")
        .audit_head(proto::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= 23,
        "one record per request (+ intent records for admin calls): {}",
        lines.len()
    );
    assert!(text.contains("\"op\":\"encrypt\"") && text.contains("\"result\":\"PERMISSION_DENIED\""));
    assert!(
        !text.contains(std::str::from_utf8(marker).unwrap())
            && !env.d.log_text().contains(std::str::from_utf8(marker).unwrap())
    );
    let rec: serde_json::Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("\"op\":\"decrypt\"")).unwrap()).unwrap();
    for field in [
        "time",
        "request_id",
        "identity",
        "op",
        "key",
        "key_version",
        "result",
        "peer",
        "latency_us",
        "prev",
        "mac",
    ] {
        assert!(!rec[field].is_null(), "{field} in {rec}");
    }

    let verify = |content: String| async {
        env.admin("auditor")
            .verify_audit(tokio_stream::iter(vec![proto::AuditChunk {
                data: content.into_bytes(),
                head: Some(head_first.clone()),
            }]))
            .await
            .unwrap()
            .into_inner()
    };
    let join = |v: &[&str]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    let ok = verify(join(&lines)).await;
    assert!(ok.ok && ok.records == lines.len() as u64, "{ok:?}");
    let mut edited = lines.clone();
    let e5 = edited[5].replace("\"OK\"", "\"NOT_FOUND\"");
    edited[5] = &e5;
    let r = verify(join(&edited)).await;
    assert!(!r.ok && r.broken_line == 6, "{r:?}");
    let mut deleted = lines.clone();
    deleted.remove(7);
    assert_eq!(verify(join(&deleted)).await.broken_line, 8);
    let mut inserted = lines.clone();
    inserted.insert(9, lines[3]);
    assert_eq!(verify(join(&inserted)).await.broken_line, 10);
    let mut swapped = lines.clone();
    swapped.swap(10, 11);
    assert_eq!(verify(join(&swapped)).await.broken_line, 11);
    let cut = verify(join(&lines[..lines.len() - 2])).await;
    assert!(!cut.ok && cut.reason.contains("truncated"), "{cut:?}");
    // kmsctl audit verify (on the live log) prints OK with a count
    let file = path.clone();
    let out = std::process::Command::new(common::kmsctl_bin())
        .args(["audit", "verify", file.to_str().unwrap()])
        .env("KMSD_ADDR", format!("unix:{}", env.d.socket.display()))
        .env("KMSD_CA", env.d.dir.join("ca.pem"))
        .env("KMSD_CERT", env.d.dir.join("auditor.pem"))
        .env("KMSD_KEY", env.d.dir.join("auditor.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("OK "),
        "{out:?}"
    );

    // the audit file becomes unwritable: administrative calls are refused, and not performed
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = k.rotate_key(rotate("payments.a")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not performed"), "{}", e.message());
    // (on_failure = "fail": data-path calls are refused too while the log cannot be written)
    let e = pay.encrypt(enc("payments.a", marker, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // writable again: the writer recovers on its own
    std::fs::remove_dir(&path).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let info = loop {
        match k
            .get_key(proto::GetKeyRequest {
                name: "payments.a".into(),
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(std::time::Instant::now() < deadline, "no recovery");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(info.primary_version, 2, "the refused rotation did not happen");
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
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

fn get_key(name: &str) -> proto::GetKeyRequest {
    proto::GetKeyRequest { name: name.into() }
}

fn min_dec(name: &str, v: u32) -> proto::UpdateKeyPolicyRequest {
    proto::UpdateKeyPolicyRequest {
        name: name.into(),
        policy: Some(proto::KeyPolicy {
            min_decryption_version: Some(v),
            ..Default::default()
        }),
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

/// Dual control that one insider cannot get around: the approver needs
/// the right they approve; `min_decryption_version` moves (up whatever the
/// versions' states, and down) need two officers; an approved policy
/// change applies only the fields it asked for, on the policy of the day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_need_the_right_and_min_decryption_version_is_guarded_both_ways() {
    let mut env = Env::new().await;
    let mut admin = env.keys("admin");
    for name in ["mdv", "payments.k"] {
        admin
            .create_key(proto::CreateKeyRequest {
                name: name.into(),
                algorithm: 0,
                policy: None,
            })
            .await
            .unwrap();
        admin.rotate_key(rotate(name)).await.unwrap();
        admin.rotate_key(rotate(name)).await.unwrap();
    }
    // alice asks to raise the minimum past version 1 (DECRYPT_ONLY)
    let code = env.code("alice");
    let e = env
        .keys("alice")
        .update_key_policy(with_otp(min_dec("mdv", 2), Some(&code)))
        .await
        .unwrap_err();
    let raise = approval_id(&e);
    assert!(e.message().contains("min_decryption_version=2"), "{}", e.message());
    // meanwhile a change that needs no second officer
    admin
        .update_key_policy(proto::UpdateKeyPolicyRequest {
            name: "mdv".into(),
            policy: Some(proto::KeyPolicy {
                deletion_allowed: Some(true),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // (a) erin is an officer for payments.* only: she may neither approve nor reject it
    let code = env.code("erin");
    let e = env
        .admin("erin")
        .approve(with_otp(proto::ApproveRequest { id: raise.clone() }, Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("key.policy"), "{}", e.message());
    let code = env.code("erin");
    let e = env
        .admin("erin")
        .reject(with_otp(proto::RejectRequest { id: raise.clone() }, Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let info = admin.get_key(get_key("mdv")).await.unwrap().into_inner();
    assert_eq!(info.policy.unwrap().min_decryption_version, Some(0), "not applied");
    // bob may: (e) only the requested field is applied, the change made meanwhile stays
    let code = env.code("bob");
    env.admin("bob")
        .approve(with_otp(proto::ApproveRequest { id: raise }, Some(&code)))
        .await
        .unwrap();
    let p = admin
        .get_key(get_key("mdv"))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(p.min_decryption_version, Some(2));
    assert_eq!(
        p.deletion_allowed,
        Some(true),
        "an approval must not revert changes made meanwhile"
    );

    // (d) lowering it again needs a second officer too
    let code = env.code("alice");
    let e = env
        .keys("alice")
        .update_key_policy(with_otp(min_dec("mdv", 1), Some(&code)))
        .await
        .unwrap_err();
    approval_id(&e);
    // (d) disable version 2, raise past it, re-enable: the raise is guarded whatever the state
    let code = env.code("alice");
    env.keys("alice")
        .set_version_state(with_otp(
            proto::SetVersionStateRequest {
                name: "mdv".into(),
                version: 2,
                state: proto::VersionState::Disabled as i32,
            },
            Some(&code),
        ))
        .await
        .unwrap();
    let code = env.code("dave");
    let e = env
        .keys("dave")
        .update_key_policy(with_otp(min_dec("mdv", 3), Some(&code)))
        .await
        .unwrap_err();
    let raise_disabled = approval_id(&e);
    let p = admin
        .get_key(get_key("mdv"))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(p.min_decryption_version, Some(2), "neither change happened alone");
    let code = env.code("carol");
    env.admin("carol")
        .approve(with_otp(proto::ApproveRequest { id: raise_disabled }, Some(&code)))
        .await
        .unwrap();
    let p = admin
        .get_key(get_key("mdv"))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(p.min_decryption_version, Some(3));

    // (a) within her remit erin approves
    let code = env.code("carol");
    let e = env
        .keys("carol")
        .schedule_version_destruction(with_otp(
            proto::ScheduleVersionDestructionRequest {
                name: "payments.k".into(),
                version: 1,
                waiting_period_seconds: 3600,
            },
            Some(&code),
        ))
        .await
        .unwrap_err();
    let destroy = approval_id(&e);
    let code = env.code("erin");
    env.admin("erin")
        .approve(with_otp(proto::ApproveRequest { id: destroy }, Some(&code)))
        .await
        .unwrap();
    let info = admin.get_key(get_key("payments.k")).await.unwrap().into_inner();
    assert_eq!(
        info.versions[0].state,
        proto::VersionState::ScheduledForDestruction as i32
    );
}

/// The officers' replay and lock-out memory is sealed in the store: a code
/// used before a restart stays used, and a lock-out stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_code_replay_and_lock_out_survive_a_restart() {
    let mut env = Env::new().await;
    env.keys("admin")
        .create_key(proto::CreateKeyRequest {
            name: "r".into(),
            algorithm: 0,
            policy: None,
        })
        .await
        .unwrap();
    // the latest code the window allows: still in the window after the
    // restart (up to a minute), so its refusal can only be replay memory
    let used = env.latest_code("alice");
    env.keys("alice")
        .rotate_key(with_otp(rotate("r"), Some(&used)))
        .await
        .unwrap();
    let mut dave = env.keys("dave");
    let mut last = None;
    for _ in 0..3 {
        last = Some(
            dave.rotate_key(with_otp(rotate("r"), Some("999999")))
                .await
                .unwrap_err(),
        );
    }
    assert!(last.unwrap().message().contains("locked out"));
    env.restart().await;
    let e = env
        .keys("alice")
        .rotate_key(with_otp(rotate("r"), Some(&used)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("already used"), "{}", e.message());
    let code = env.code("dave");
    let e = env
        .keys("dave")
        .rotate_key(with_otp(rotate("r"), Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("locked out"), "{}", e.message());
}

/// An officer's second factor reaches only that officer: enrolling another
/// identity leaves the secret waiting for it to claim with its own
/// certificate (once), and replacing another officer's enrolment needs a
/// second officer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_an_officers_second_factor_needs_two_officers_and_reaches_only_them() {
    let mut env = Env::new().await;
    // (Env::new enrolled the officers: the enroller got no secret, each
    // officer claimed its own.) Nothing waits for anyone now.
    for who in ["stranger", "alice", "admin"] {
        let e = env
            .admin(who)
            .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{who}: {e:?}");
    }
    // alice alone cannot replace bob's second factor
    let code = env.code("alice");
    let e = env
        .admin("alice")
        .enroll_officer(with_otp(
            proto::EnrollOfficerRequest {
                identity: "spiffe://bank/bob".into(),
                replace: true,
            },
            Some(&code),
        ))
        .await
        .unwrap_err();
    let id = approval_id(&e);
    assert!(e.message().contains("spiffe://bank/bob"), "{}", e.message());
    // nothing waits for bob yet, and his current secret still works
    let e = env
        .admin("bob")
        .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let code = env.code("bob");
    let e = env
        .keys("bob")
        .rotate_key(with_otp(rotate("nothing-here"), Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "bob's current code is accepted: {e:?}");
    // carol approves: the answer carries no secret; the new one waits for bob
    let code = env.code("carol");
    let r = env
        .admin("carol")
        .approve(with_otp(proto::ApproveRequest { id }, Some(&code)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.result.contains("claim"), "{}", r.result);
    // alice (and the approver) cannot take it
    for who in ["alice", "carol"] {
        let e = env
            .admin(who)
            .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{who}");
    }
    let fresh = env
        .admin("bob")
        .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.otpauth_uri.contains("bob") && !fresh.secret_base32.is_empty());
    assert!(!r.result.contains(&fresh.secret_base32));
    let e = env
        .admin("bob")
        .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "claimed once only");
    let old = env
        .secrets
        .insert("bob".into(), b32decode(&fresh.secret_base32))
        .unwrap();
    assert_ne!(old, env.secrets["bob"]);
    let code = env.code("bob");
    let e = env
        .keys("bob")
        .rotate_key(with_otp(rotate("nothing-here"), Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "the new secret is bob's second factor: {e:?}");
    // an officer re-enrols itself (with its current code) and gets the secret directly
    let code = env.code("dave");
    let mine = env
        .admin("dave")
        .enroll_officer(with_otp(
            proto::EnrollOfficerRequest {
                identity: "spiffe://bank/dave".into(),
                replace: true,
            },
            Some(&code),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!mine.secret_base32.is_empty() && mine.claim_by == 0);
    // enrolling an identity already enrolled without --replace is refused
    let code = env.code("alice");
    let e = env
        .admin("alice")
        .enroll_officer(with_otp(
            proto::EnrollOfficerRequest {
                identity: "spiffe://bank/carol".into(),
                replace: false,
            },
            Some(&code),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
}
