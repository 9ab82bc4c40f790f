//! Dual control across the nodes of a cluster (issue 13): pending requests
//! live sealed in the shared store, so a request made on node A is listed,
//! approved or rejected on node B; two officers approving at once on two
//! nodes execute it once; the requester cannot approve on the other node;
//! expiry and the bounds on pending requests hold cluster-wide. Real etcd,
//! real daemons over real mTLS (tests/common/cluster.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::bank::{now, rotate, with_otp};
use common::cluster::{KmsCluster, STORE_TIMERS};
use common::*;
use kmsd::proto::{self, admin_client::AdminClient, keys_client::KeysClient};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const POLICY: &str = r#"
[identities]
"spiffe://bank/admin" = ["setup"]
"spiffe://bank/alice" = ["officer"]
"spiffe://bank/bob" = ["officer"]
"spiffe://bank/carol" = ["officer"]
"spiffe://bank/dave" = ["officer"]

[roles.setup]
dev_no_second_factor = true
allow = [{ ops = ["*"], keys = ["*"] }]

[roles.officer]
officer = true
allow = [{ ops = ["key.*", "approval"], keys = ["*"] }]

[settings]
approval_ttl = "6s"
"#;

const PEOPLE: [&str; 5] = ["admin", "alice", "bob", "carol", "dave"];

/// Two nodes with the policy above, the officers enrolled (through node
/// 0) and a client per identity on each node.
struct Bank {
    c: KmsCluster,
    /// channels[node][identity]
    channels: Vec<HashMap<&'static str, Channel>>,
    secrets: HashMap<&'static str, Vec<u8>>,
    last_step: HashMap<&'static str, i64>,
}

impl Bank {
    async fn start(extra: &str) -> Self {
        let c = KmsCluster::start_prepared(1, 2, STORE_TIMERS, extra, |pki| {
            for who in PEOPLE {
                pki.client(who, Some(&format!("spiffe://bank/{who}")));
            }
            std::fs::write(pki.dir.join("policy.toml"), POLICY).unwrap();
        });
        let mut channels = Vec::new();
        for node in &c.nodes {
            let mut m = HashMap::new();
            for who in PEOPLE {
                m.insert(who, kmsd::client::connect(&node.settings(who, None)).await.unwrap());
            }
            channels.push(m);
        }
        let mut bank = Bank {
            c,
            channels,
            secrets: HashMap::new(),
            last_step: HashMap::new(),
        };
        for who in ["alice", "bob", "carol", "dave"] {
            bank.admin(0, "admin")
                .enroll_officer(proto::EnrollOfficerRequest {
                    identity: format!("spiffe://bank/{who}"),
                    replace: false,
                })
                .await
                .unwrap();
            let r = bank
                .admin(0, who)
                .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
                .await
                .unwrap()
                .into_inner();
            bank.secrets.insert(who, b32decode(&r.secret_base32));
        }
        bank
    }

    fn keys(&self, node: usize, who: &str) -> KeysClient<Channel> {
        KeysClient::new(self.channels[node][who].clone())
    }

    fn admin(&self, node: usize, who: &str) -> AdminClient<Channel> {
        AdminClient::new(self.channels[node][who].clone())
    }

    /// A never-used code for `who` (codes are shared cluster-wide: a code
    /// used on one node is a replay on the other).
    fn code(&mut self, who: &'static str) -> String {
        let step = now() / 30;
        let next = self.last_step.get(who).map_or(step - 1, |l| (l + 1).max(step - 1));
        assert!(next <= step + 1, "{who} used up its codes for this window");
        self.last_step.insert(who, next);
        format!("{:06}", kmsd::authz::otp::code_at(&self.secrets[who], next * 30, 6))
    }

    /// `who` asks, on `node`, to destroy `version` of `ring` after a day;
    /// returns the request's id.
    async fn request_destroy(&mut self, node: usize, who: &'static str, version: u32) -> Result<String, tonic::Status> {
        let code = self.code(who);
        let msg = proto::ScheduleVersionDestructionRequest {
            name: "ring".into(),
            version,
            waiting_period_seconds: 86_400,
        };
        let e = self
            .keys(node, who)
            .schedule_version_destruction(with_otp(msg, Some(&code)))
            .await
            .unwrap_err();
        if e.code() != Code::FailedPrecondition {
            return Err(e);
        }
        Ok(e.metadata()
            .get("x-kmsd-approval-id")
            .unwrap_or_else(|| panic!("no approval id: {e:?}"))
            .to_str()
            .unwrap()
            .to_owned())
    }

    /// The approval call of `who` on `node` for request `id` (the code is
    /// taken now, so two of them can be sent at once).
    fn approve(
        &mut self,
        node: usize,
        who: &'static str,
        id: &str,
    ) -> impl std::future::Future<Output = Result<String, tonic::Status>> {
        let code = self.code(who);
        let mut admin = self.admin(node, who);
        let msg = proto::ApproveRequest { id: id.to_owned() };
        async move {
            admin
                .approve(with_otp(msg, Some(&code)))
                .await
                .map(|r| r.into_inner().result)
        }
    }

    async fn list(&self, node: usize) -> Vec<proto::Approval> {
        self.admin(node, "bob")
            .list_approvals(proto::ListApprovalsRequest {})
            .await
            .unwrap()
            .into_inner()
            .approvals
    }

    async fn version_state(&self, node: usize, version: u32) -> i32 {
        let r = self
            .keys(node, "admin")
            .get_key(proto::GetKeyRequest { name: "ring".into() })
            .await;
        let info = r
            .unwrap_or_else(|e| panic!("node {node}: {e:?}\n{}", self.logs()))
            .into_inner();
        info.versions.iter().find(|v| v.version == version).unwrap().state
    }

    /// The end of each node's log (for a failure's message).
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, d) in self.c.nodes.iter().enumerate() {
            let text = d.log_text();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- node {i} ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// Waits until `version` of `ring` is `state` on `node` (the watch
/// carries a change to the other node within milliseconds; generous for
/// a loaded machine).
async fn wait_state(bank: &Bank, node: usize, version: u32, state: proto::VersionState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while bank.version_state(node, version).await != state as i32 {
        assert!(
            Instant::now() < deadline,
            "node {node}: version {version} never became {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_made_on_one_node_is_decided_on_the_other_once() {
    let mut bank = Bank::start("").await;
    let mut admin = bank.keys(0, "admin");
    create(&mut admin, "ring").await;
    for _ in 0..3 {
        admin.rotate_key(rotate("ring")).await.unwrap();
    }

    // alice asks on A; B lists it
    let id = bank.request_destroy(0, "alice", 1).await.unwrap();
    let listed = bank.list(1).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].requester.as_str()),
        (id.as_str(), "spiffe://bank/alice")
    );
    assert!(listed[0].description.contains("version 1 of key \"ring\""));
    // the requester cannot approve on the other node either
    let e = bank.approve(1, "alice", &id).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("own request"), "{}", e.message());
    assert_eq!(bank.list(0).await.len(), 1, "still pending");

    // bob on A and carol on B approve at once: one executes, the other is told
    let (on_a, on_b) = (bank.approve(0, "bob", &id), bank.approve(1, "carol", &id));
    let (a, b) = tokio::join!(on_a, on_b);
    let (won, lost) = match (a, b) {
        (Ok(r), Err(e)) | (Err(e), Ok(r)) => (r, e),
        other => panic!("exactly one approval executes: {other:?}"),
    };
    assert!(won.contains("version 1"), "{won}");
    assert_eq!(lost.code(), Code::NotFound, "{lost:?}\n{}", bank.logs());
    // the effect is seen on both nodes, and nothing is pending on either
    for node in [0, 1] {
        wait_state(&bank, node, 1, proto::VersionState::ScheduledForDestruction).await;
        assert!(bank.list(node).await.is_empty());
    }
    // and each node's audit trail says who decided: one approval in all
    let approvals: usize = bank
        .c
        .audit_logs()
        .iter()
        .map(|p| {
            audit_lines(&std::fs::read_to_string(p).unwrap())
                .iter()
                .filter(|l| {
                    l["result"] == "OK" && l["detail"].as_str().is_some_and(|d| d.starts_with("approved request"))
                })
                .count()
        })
        .sum();
    assert_eq!(approvals, 1);

    // rejected on B, it cannot be approved on A
    let id = bank.request_destroy(0, "dave", 2).await.unwrap();
    let code = bank.code("bob");
    bank.admin(1, "bob")
        .reject(with_otp(proto::RejectRequest { id: id.clone() }, Some(&code)))
        .await
        .unwrap();
    let e = bank.approve(0, "carol", &id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // an expired request made on A is gone on B too (approval_ttl = 6 s)
    let id = bank.request_destroy(0, "dave", 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert!(bank.list(1).await.is_empty());
    let e = bank.approve(1, "bob", &id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for node in [0, 1] {
        for v in [2, 3] {
            assert_eq!(
                bank.version_state(node, v).await,
                proto::VersionState::DecryptOnly as i32,
                "node {node}, version {v}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_on_pending_requests_holds_across_nodes() {
    let mut bank = Bank::start("[limits]\nmax_pending_approvals = 2\n").await;
    let mut admin = bank.keys(0, "admin");
    create(&mut admin, "ring").await;
    for _ in 0..3 {
        admin.rotate_key(rotate("ring")).await.unwrap();
    }
    // one request on each node: the two the bound allows
    bank.request_destroy(0, "alice", 1).await.unwrap();
    let id = bank.request_destroy(1, "bob", 2).await.unwrap();
    // a third is refused on either node, and nothing is parked
    for node in [0, 1] {
        let e = bank.request_destroy(node, "carol", 3).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("max_pending_approvals"), "{}", e.message());
        assert_eq!(bank.list(node).await.len(), 2);
    }
    // deciding one (on the other node) makes room
    let code = bank.code("dave");
    bank.admin(0, "dave")
        .reject(with_otp(proto::RejectRequest { id }, Some(&code)))
        .await
        .unwrap();
    bank.request_destroy(1, "dave", 3).await.unwrap();
    assert_eq!(bank.list(0).await.len(), 2);
}
