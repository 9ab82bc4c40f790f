//! Officers and dual control, against the real daemon over real mTLS:
//! officer calls need a fresh one-time code (missing, wrong, replayed and
//! locked-out codes are refused, and the replay and lock-out memory
//! survives a restart); destructive and weakening calls need a second
//! officer who holds the right they approve; requests expire; an
//! officer's second factor reaches only that officer, and replacing
//! another's needs two.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::bank::*;
use common::*;
use kmsd::proto;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officers_need_fresh_codes_and_destructive_calls_need_two_officers() {
    let mut env = Env::new().await;
    let mut k = env.keys("admin");
    create(&mut k, "ring").await;
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
    let e = env.destroy_as("alice", "ring", 1, 86_400).await.unwrap_err();
    let id = approval_id(&e);
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
    let info = get(&mut env.keys("admin"), "ring").await;
    assert_eq!(info.versions[0].state, proto::VersionState::DecryptOnly as i32);
    let e = env.approve("alice", &id).await.unwrap_err();
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
    let r = env.approve("bob", &id).await.unwrap();
    assert!(r.result.contains("version 1"), "{}", r.result);
    let info = get(&mut env.keys("admin"), "ring").await;
    assert_eq!(
        info.versions[0].state,
        proto::VersionState::ScheduledForDestruction as i32
    );

    // an unapproved request expires (approval_ttl = 3 s in this policy)
    let e = env.destroy_as("carol", "ring", 2, 1).await.unwrap_err();
    let id2 = approval_id(&e);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let e = env.approve("bob", &id2).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let info = get(&mut env.keys("admin"), "ring").await;
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

fn min_dec(name: &str, v: u32) -> proto::UpdateKeyPolicyRequest {
    policy_change(name, |p| p.min_decryption_version = Some(v))
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
        create(&mut admin, name).await;
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
    set_policy(&mut admin, "mdv", |p| p.deletion_allowed = Some(true))
        .await
        .unwrap();
    // (a) erin is an officer for payments.* only: she may neither approve nor reject it
    let e = env.approve("erin", &raise).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("key.policy"), "{}", e.message());
    let code = env.code("erin");
    let e = env
        .admin("erin")
        .reject(with_otp(proto::RejectRequest { id: raise.clone() }, Some(&code)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let info = get(&mut admin, "mdv").await;
    assert_eq!(info.policy.unwrap().min_decryption_version, Some(0), "not applied");
    // bob may: (e) only the requested field is applied, the change made meanwhile stays
    env.approve("bob", &raise).await.unwrap();
    let p = get(&mut admin, "mdv").await.policy.unwrap();
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
    let p = get(&mut admin, "mdv").await.policy.unwrap();
    assert_eq!(p.min_decryption_version, Some(2), "neither change happened alone");
    env.approve("carol", &raise_disabled).await.unwrap();
    let p = get(&mut admin, "mdv").await.policy.unwrap();
    assert_eq!(p.min_decryption_version, Some(3));

    // (a) within her remit erin approves
    let e = env.destroy_as("carol", "payments.k", 1, 3600).await.unwrap_err();
    let destroy = approval_id(&e);
    env.approve("erin", &destroy).await.unwrap();
    let info = get(&mut admin, "payments.k").await;
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
    create(&mut env.keys("admin"), "r").await;
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
    let e = env.rotate_as("dave", "r").await.unwrap_err();
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
        let e = env.claim(who).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{who}: {e:?}");
    }
    // alice alone cannot replace bob's second factor
    let e = env.enroll("alice", "bob", true).await.unwrap_err();
    let id = approval_id(&e);
    assert!(e.message().contains("spiffe://bank/bob"), "{}", e.message());
    // nothing waits for bob yet, and his current secret still works
    let e = env.claim("bob").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = env.rotate_as("bob", "nothing-here").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "bob's current code is accepted: {e:?}");
    // carol approves: the answer carries no secret; the new one waits for bob
    let r = env.approve("carol", &id).await.unwrap();
    assert!(r.result.contains("claim"), "{}", r.result);
    // alice (and the approver) cannot take it
    for who in ["alice", "carol"] {
        let e = env.claim(who).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{who}");
    }
    let fresh = env.claim("bob").await.unwrap();
    assert!(fresh.otpauth_uri.contains("bob") && !fresh.secret_base32.is_empty());
    assert!(!r.result.contains(&fresh.secret_base32));
    let e = env.claim("bob").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "claimed once only");
    let old = env
        .secrets
        .insert("bob".into(), b32decode(&fresh.secret_base32))
        .unwrap();
    assert_ne!(old, env.secrets["bob"]);
    let e = env.rotate_as("bob", "nothing-here").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "the new secret is bob's second factor: {e:?}");
    // an officer re-enrols itself (with its current code) and gets the secret directly
    let mine = env.enroll("dave", "dave", true).await.unwrap();
    assert!(!mine.secret_base32.is_empty() && mine.claim_by == 0);
    // enrolling an identity already enrolled without --replace is refused
    let e = env.enroll("alice", "carol", false).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
}

/// `kmsctl` asks an officer for the one-time code on the terminal when the
/// daemon wants one (no `--otp`): without echo, and from the terminal even
/// when stdin carries data. The terminal is a pseudo-terminal with echo
/// turned on before kmsctl starts (so only kmsctl can turn it off); stdin
/// is a file holding a wrong code, which the daemon would refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsctl_reads_the_code_from_the_terminal_without_echo() {
    let mut env = Env::new().await;
    create(&mut env.keys("admin"), "ring").await;
    let dir = env.d.dir.clone();
    let stdin = dir.join("stdin-data");
    std::fs::write(&stdin, "999999\n").unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "stty echo && \"$0\" key rotate ring < \"$1\"; echo \"exit=$?\""])
        .arg(kmsctl_bin())
        .arg(&stdin)
        .env("KMSD_ADDR", format!("unix:{}", env.d.socket.display()))
        .env("KMSD_CA", dir.join("ca.pem"))
        .env("KMSD_CERT", dir.join("alice.pem"))
        .env("KMSD_KEY", dir.join("alice.key"))
        .env_remove("KMSD_OTP");
    let code = env.code("alice");
    let typed = code.clone();
    let (before, after) = tokio::task::spawn_blocking(move || {
        let mut tty = rexpect::session::spawn_command(cmd, Some(20_000)).unwrap();
        let before = tty.exp_string("one-time code: ").unwrap();
        tty.send_line(&typed).unwrap();
        let after = tty.exp_string("exit=").unwrap();
        let status = tty.read_line().unwrap();
        (before, format!("{after}exit={status}"))
    })
    .await
    .unwrap();
    assert!(after.ends_with("exit=0"), "kmsctl failed: {before}{after}");
    assert!(!after.contains(&code), "the code was echoed: {after:?}");
    assert_eq!(get(&mut env.keys("admin"), "ring").await.primary_version, 2);
}
