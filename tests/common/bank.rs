//! The bank: a daemon whose policy names an administrator, an application,
//! officers (one of them for `payments.*` only), an auditor, a reader known
//! by its key hash and a stranger, with a connected client for each and
//! the officers enrolled; the tests of who may do what
//! (`tests/access.rs`, `tests/officers.rs`, `tests/audit_trail.rs`) use it.
use super::{b32decode, Daemon, Pki};
use kmsd::proto::{self, admin_client::AdminClient, crypto_client::CryptoClient, keys_client::KeysClient};
use std::collections::HashMap;
use tonic::transport::Channel;
use tonic::Request;

/// The bank's policy; `Env::new` puts the key-hash reader in place of
/// `HASH_LINE`.
pub const POLICY: &str = r#"
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
allow = [{ ops = ["key.*", "approval", "restore", "backup", "officer.enroll", "import", "export"], keys = ["*"] }]

[roles.payments-officer]
officer = true
allow = [{ ops = ["key.*"], keys = ["payments.*"] }, { ops = ["approval"], keys = ["*"] }]

[settings]
otp_max_failures = 3
otp_lockout = "60s"
approval_ttl = "3s"
"#;

/// A daemon with the bank's policy, a connected client per identity, and
/// the officers enrolled (each claimed its own secret).
pub struct Env {
    _dir: tempfile::TempDir,
    pub d: Daemon,
    channels: HashMap<String, Channel>,
    /// Each officer's TOTP secret, as it claimed it.
    pub secrets: HashMap<String, Vec<u8>>,
    last_step: HashMap<String, i64>,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Env {
    pub async fn new() -> Self {
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
    pub fn latest_code(&mut self, who: &str) -> String {
        let step = now() / 30 + 1;
        assert!(self.last_step.get(who).is_none_or(|l| *l < step));
        self.last_step.insert(who.to_owned(), step);
        format!("{:06}", kmsd::authz::otp::code_at(&self.secrets[who], step * 30, 6))
    }

    /// Restarts the daemon (same state) and reconnects every client.
    pub async fn restart(&mut self) {
        self.d.restart();
        let who: Vec<String> = self.channels.keys().cloned().collect();
        for w in who {
            let ch = kmsd::client::connect(&self.d.settings(&w, None)).await.unwrap();
            self.channels.insert(w, ch);
        }
    }

    pub fn ch(&self, who: &str) -> Channel {
        self.channels[who].clone()
    }
    pub fn keys(&self, who: &str) -> KeysClient<Channel> {
        KeysClient::new(self.ch(who))
    }
    pub fn crypto(&self, who: &str) -> CryptoClient<Channel> {
        CryptoClient::new(self.ch(who))
    }
    pub fn admin(&self, who: &str) -> AdminClient<Channel> {
        AdminClient::new(self.ch(who))
    }

    /// `who` approves request `id` with a fresh code of its own.
    pub async fn approve(&mut self, who: &str, id: &str) -> Result<proto::ApproveResponse, tonic::Status> {
        let code = self.code(who);
        let msg = proto::ApproveRequest { id: id.to_owned() };
        self.admin(who)
            .approve(with_otp(msg, Some(&code)))
            .await
            .map(|r| r.into_inner())
    }

    /// `who` enrols `spiffe://bank/OFFICER` as an officer (`replace`: a new
    /// second factor for one already enrolled) with a fresh code of its own.
    pub async fn enroll(
        &mut self,
        who: &str,
        officer: &str,
        replace: bool,
    ) -> Result<proto::EnrollOfficerResponse, tonic::Status> {
        let code = self.code(who);
        let msg = proto::EnrollOfficerRequest {
            identity: format!("spiffe://bank/{officer}"),
            replace,
        };
        self.admin(who)
            .enroll_officer(with_otp(msg, Some(&code)))
            .await
            .map(|r| r.into_inner())
    }

    /// `who` rotates key `name` with a fresh code of its own.
    pub async fn rotate_as(&mut self, who: &str, name: &str) -> Result<proto::KeyInfo, tonic::Status> {
        let code = self.code(who);
        self.keys(who)
            .rotate_key(with_otp(rotate(name), Some(&code)))
            .await
            .map(|r| r.into_inner())
    }

    /// `who` schedules the destruction of `version` of key `name` after
    /// `wait` seconds, with a fresh code of its own.
    pub async fn destroy_as(
        &mut self,
        who: &str,
        name: &str,
        version: u32,
        wait: u64,
    ) -> Result<proto::KeyInfo, tonic::Status> {
        let code = self.code(who);
        let msg = proto::ScheduleVersionDestructionRequest {
            name: name.into(),
            version,
            waiting_period_seconds: wait,
        };
        self.keys(who)
            .schedule_version_destruction(with_otp(msg, Some(&code)))
            .await
            .map(|r| r.into_inner())
    }

    /// `who` claims the second-factor secret waiting for it.
    pub async fn claim(&self, who: &str) -> Result<proto::EnrollOfficerResponse, tonic::Status> {
        self.admin(who)
            .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
            .await
            .map(|r| r.into_inner())
    }

    /// A fresh, never-used code for `who` (steps only move forward).
    pub fn code(&mut self, who: &str) -> String {
        let step = now() / 30;
        let next = self.last_step.get(who).map_or(step - 1, |l| (l + 1).max(step - 1));
        assert!(next <= step + 1, "{who} used up its codes for this window");
        self.last_step.insert(who.to_owned(), next);
        format!("{:06}", kmsd::authz::otp::code_at(&self.secrets[who], next * 30, 6))
    }
}

/// `msg` with the officer code `code` in its `x-kmsd-otp` header.
pub fn with_otp<T>(msg: T, code: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(c) = code {
        r.metadata_mut().insert("x-kmsd-otp", c.parse().unwrap());
    }
    r
}

/// A rotation of key `name`.
pub fn rotate(name: &str) -> proto::RotateKeyRequest {
    proto::RotateKeyRequest { name: name.into() }
}
