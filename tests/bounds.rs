//! Resource bounds against the real daemon over real mTLS: usage
//! rotations per call, store reads for versions that do not exist,
//! pending dual-control requests, and tokens (rotation, versions, rate).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient};
use tonic::transport::Channel;
use tonic::Code;

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
    create_with(&mut keys, "tiny", policy).await;
    let items: Vec<_> = (0..1000).map(|_| enc("tiny", b"m", b"")).collect();
    let out = encrypt_batch(&mut crypto, items).await;
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
    let v = encrypt_ok(&mut crypto, "tiny", b"m").await.key_version;
    assert!(v > 1);
}

fn miss_reads(metrics: &std::path::Path) -> u64 {
    let body = scrape(metrics);
    body.lines()
        .find_map(|l| l.strip_prefix("kmsd_version_miss_store_reads_total "))
        .unwrap_or_else(|| panic!("no miss counter in {body}"))
        .trim()
        .parse()
        .unwrap()
}

/// A ciphertext naming a version the key does not have used to force a
/// store read and unseal per item: 10,000 in one DecryptBatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_unknown_versions_reads_the_store_once_per_key() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let (d, metrics) = Daemon::start_with_metrics(dir.path(), "");
    let (mut crypto, mut keys): (CryptoClient<Channel>, Keys) = d.clients().await;
    create(&mut keys, "neg").await;
    let ct = encrypted(&mut crypto, "neg", b"m").await;
    let with_version = |v: u32| {
        let mut c = ct.clone();
        c[2..6].copy_from_slice(&v.to_be_bytes());
        dec("neg", &c, b"")
    };
    let before = miss_reads(&metrics);
    // 10,000 items, each naming a different version that does not exist
    let items: Vec<_> = (0..10_000u32).map(|i| with_version(7 + i)).collect();
    let out = decrypt_batch(&mut crypto, items).await;
    use proto::decrypt_batch_item::Result as R;
    for i in &out {
        match &i.result {
            Some(R::Error(e)) => assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message),
            other => panic!("{other:?}"),
        }
    }
    let reads = miss_reads(&metrics) - before;
    // one read, or two if the batch straddled the 5-second trust window
    assert!((1..=2).contains(&reads), "{reads} store reads for one key");
    // a rotation makes the new version known at once (no stale negative answer)
    keys.rotate_key(proto::RotateKeyRequest { name: "neg".into() })
        .await
        .unwrap();
    let ct2 = encrypt_ok(&mut crypto, "neg", b"two").await;
    assert_eq!(ct2.key_version, 2);
    let back = crypto
        .decrypt(dec("neg", &ct2.ciphertext, b""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.plaintext, b"two");
    // and unknown versions are still answered, the same way, after it
    let e = crypto.decrypt(with_version(9)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

const OFFICER_POLICY: &str = r#"
[identities]
"spiffe://test.internal/app" = ["setup"]
"spiffe://bank/alice" = ["officer"]
"spiffe://bank/bob" = ["officer"]

[roles.setup]
dev_no_second_factor = true
allow = [{ ops = ["*"], keys = ["*"] }]

[roles.officer]
officer = true
allow = [{ ops = ["key.*", "approval", "restore", "backup"], keys = ["*"] }]
"#;

/// Fresh TOTP codes for one officer: each step at most once, moving forward.
struct Codes {
    secret: Vec<u8>,
    last: i64,
}

impl Codes {
    fn next(&mut self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let step = (self.last + 1).max(now / 30 - 1);
        assert!(step <= now / 30 + 1, "out of codes for this window");
        self.last = step;
        format!("{:06}", kmsd::authz::otp::code_at(&self.secret, step * 30, 6))
    }
}

fn with_otp<T>(msg: T, code: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-kmsd-otp", code.parse().unwrap());
    r
}

/// Pending dual-control requests live in memory (a restore with its whole
/// snapshot) until approved or expired: their number and bytes are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approvals_are_capped_in_number_and_bytes() {
    use proto::admin_client::AdminClient;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    for who in ["alice", "bob"] {
        pki.client(who, Some(&format!("spiffe://bank/{who}")));
    }
    std::fs::write(dir.path().join("policy.toml"), OFFICER_POLICY).unwrap();
    let d = Daemon::start_with(
        dir.path(),
        "[limits]\nmax_pending_approvals = 3\nmax_pending_bytes = 1000\n",
    );
    let setup = d.channel().await;
    let mut codes = std::collections::HashMap::new();
    for who in ["alice", "bob"] {
        AdminClient::new(setup.clone())
            .enroll_officer(proto::EnrollOfficerRequest {
                identity: format!("spiffe://bank/{who}"),
                replace: false,
            })
            .await
            .unwrap();
        // the secret reaches only its officer
        let own = kmsd::client::connect(&d.settings(who, None)).await.unwrap();
        let r = AdminClient::new(own)
            .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
            .await
            .unwrap()
            .into_inner();
        codes.insert(
            who,
            Codes {
                secret: b32decode(&r.secret_base32),
                last: 0,
            },
        );
    }
    let mut keys = KeysClient::new(setup.clone());
    create(&mut keys, "ring").await;
    keys.rotate_key(proto::RotateKeyRequest { name: "ring".into() })
        .await
        .unwrap();
    let alice = KeysClient::new(kmsd::client::connect(&d.settings("alice", None)).await.unwrap());
    let bob = KeysClient::new(kmsd::client::connect(&d.settings("bob", None)).await.unwrap());
    // alice asks to destroy version 1 of "ring" with `code`
    let destroy = |code: String| {
        let mut alice = alice.clone();
        let msg = proto::ScheduleVersionDestructionRequest {
            name: "ring".into(),
            version: 1,
            waiting_period_seconds: 1,
        };
        async move { alice.schedule_version_destruction(with_otp(msg, &code)).await }
    };
    // two requests are parked
    for _ in 0..2 {
        let e = destroy(codes.get_mut("alice").unwrap().next()).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        assert!(e.metadata().get("x-kmsd-approval-id").is_some());
    }
    // a restore larger than the pending byte budget is refused while it streams
    let code = codes.get_mut("bob").unwrap().next();
    let big = vec![
        proto::RestoreChunk { data: vec![7u8; 600] },
        proto::RestoreChunk { data: vec![7u8; 600] },
    ];
    let e = bob
        .clone()
        .restore(with_otp(tokio_stream::iter(big), &code))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("max_pending_bytes"), "{}", e.message());
    // one within it is parked (it would be checked when approved)
    let code = codes.get_mut("bob").unwrap().next();
    let small = vec![proto::RestoreChunk { data: vec![7u8; 600] }];
    let e = bob
        .clone()
        .restore(with_otp(tokio_stream::iter(small), &code))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    // the fourth request finds three pending: refused, nothing parked
    let e = destroy(codes.get_mut("alice").unwrap().next()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("max_pending_approvals"), "{}", e.message());
    assert!(e.metadata().get("x-kmsd-approval-id").is_none());
    let pending = AdminClient::new(setup.clone())
        .list_approvals(proto::ListApprovalsRequest {})
        .await
        .unwrap()
        .into_inner()
        .approvals;
    assert_eq!(pending.len(), 3);
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        audit.contains("RESOURCE_EXHAUSTED"),
        "refusals are audited with their code"
    );
}

fn tok(key: &str, value: &str, kind: proto::DataKind) -> proto::TokenizeRequest {
    proto::TokenizeRequest {
        key: key.into(),
        value: value.into(),
        kind: kind as i32,
    }
}

fn detok(key: &str, token: &str, kind: proto::DataKind, v: u32) -> proto::DetokenizeRequest {
    proto::DetokenizeRequest {
        key: key.into(),
        token: token.into(),
        kind: kind as i32,
        key_version: v,
    }
}

/// A format-preserving token carries no version: after a rotation the
/// default (primary) version "detokenized" an old token to a wrong value,
/// silently; and a token key rotated by itself like any key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_need_their_version_and_token_keys_do_not_rotate_by_themselves() {
    use proto::{mask_client::MaskClient, DataKind, KeyPurpose};
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let d = Daemon::start(dir.path());
    let ch = d.channel().await;
    let (mut m, mut keys, mut crypto) = (
        MaskClient::new(ch.clone()),
        KeysClient::new(ch.clone()),
        CryptoClient::new(ch),
    );
    let token_key = |extra: proto::KeyPolicy| proto::KeyPolicy {
        purpose: Some(KeyPurpose::Tokenize as i32),
        ..extra
    };
    // a token key with an automatic rotation is refused unless asked for
    let e = keys
        .create_key(proto::CreateKeyRequest {
            name: "tok.auto".into(),
            algorithm: 0,
            policy: Some(token_key(proto::KeyPolicy {
                rotation_period_seconds: Some(1),
                ..Default::default()
            })),
            exportable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("allow_token_rotation"), "{}", e.message());
    let info = create_with(&mut keys, "tok.pan", token_key(Default::default())).await;
    assert_eq!(info.policy.unwrap().purpose, Some(KeyPurpose::Tokenize as i32));
    assert_eq!(info.next_rotation_at, 0);
    let e = set_policy(&mut keys, "tok.pan", |p| p.max_encryptions_per_version = Some(10))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("allow_token_rotation"), "{}", e.message());
    // purpose separation: a token key does not encrypt
    let e = crypto.encrypt(enc("tok.pan", b"x", b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // an ordinary key that rotates by itself does not tokenize
    create_with(
        &mut keys,
        "rotating",
        proto::KeyPolicy {
            rotation_period_seconds: Some(3600),
            ..Default::default()
        },
    )
    .await;
    let pan = "4539148803436467";
    let e = m.tokenize(tok("rotating", pan, DataKind::Pan)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // versions: a manual rotation is still possible ("asked")
    let a = m
        .tokenize(tok("tok.pan", pan, DataKind::Pan))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.key_version, 1);
    keys.rotate_key(proto::RotateKeyRequest { name: "tok.pan".into() })
        .await
        .unwrap();
    // without the version a numeric token is refused (it used to answer
    // with the primary, version 2: a wrong value, silently)
    let e = m
        .detokenize(detok("tok.pan", &a.token, DataKind::Pan, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("key_version is required"), "{}", e.message());
    assert!(!e.message().contains(&a.token[..8]), "no token in errors");
    let back = m
        .detokenize(detok("tok.pan", &a.token, DataKind::Pan, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.value, pan);
    // tok_ tokens authenticate: 0 still means the primary
    let e1 = m
        .tokenize(tok("tok.pan", "a@example.com", DataKind::Email))
        .await
        .unwrap()
        .into_inner();
    let back = m
        .detokenize(detok("tok.pan", &e1.token, DataKind::Email, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.value, "a@example.com");
    // allow_token_rotation lets a token key rotate by itself
    let info = set_policy(&mut keys, "tok.pan", |p| {
        p.rotation_period_seconds = Some(3600);
        p.allow_token_rotation = Some(true);
    })
    .await
    .unwrap();
    assert!(info.next_rotation_at > 0);
    // the purpose is fixed at creation
    let e = set_policy(&mut keys, "tok.pan", |p| {
        p.purpose = Some(KeyPurpose::EncryptDecrypt as i32)
    })
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// A caller with only `tokenize` can enumerate a small domain; Tokenize is
/// rate-limited per identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_is_rate_limited_per_identity() {
    use proto::{mask_client::MaskClient, DataKind};
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.client("other", Some("spiffe://test.internal/other"));
    std::fs::write(
        dir.path().join("policy.toml"),
        TEST_POLICY.replace(
            "[identities]\n",
            "[identities]\n\"spiffe://test.internal/other\" = [\"all\"]\n",
        ),
    )
    .unwrap();
    let d = Daemon::start_with(dir.path(), "[limits]\ntokenize_rate = 1\ntokenize_burst = 5\n");
    let mut keys = KeysClient::new(d.channel().await);
    create(&mut keys, "tok").await;
    let mut m = MaskClient::new(d.channel().await);
    let sort_code = |i: u32| format!("{:06}", 100_000 + i);
    let mut refused = None;
    for i in 0..20 {
        match m.tokenize(tok("tok", &sort_code(i), DataKind::UkSortCode)).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = refused.expect("20 tokenize calls in a burst of 5 at 1/s were all served");
    assert!((5..=7).contains(&i), "refused after {i} calls");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("tokenize_rate"), "{}", e.message());
    // another identity has its own budget
    let other = kmsd::client::connect(&d.settings("other", None)).await.unwrap();
    MaskClient::new(other)
        .tokenize(tok("tok", &sort_code(0), DataKind::UkSortCode))
        .await
        .unwrap();
    // detokenize is not limited by it
    let t = {
        // wait for one call to come back
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        m.tokenize(tok("tok", &sort_code(1), DataKind::UkSortCode))
            .await
            .unwrap()
            .into_inner()
    };
    m.detokenize(detok("tok", &t.token, DataKind::UkSortCode, t.key_version))
        .await
        .unwrap();
}
