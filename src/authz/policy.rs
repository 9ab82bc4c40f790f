//! Who may do what: identities → roles → allow/deny rules on operations
//! and key-name globs. Deny wins; anything not allowed is denied.
//!
//! The policy file (TOML, unknown fields rejected):
//! ```toml
//! [identities]
//! "spiffe://bank.internal/payments" = ["payments"]
//! "sha256:3f1c…"                    = ["officer"]
//!
//! [roles.payments]
//! allow = [{ ops = ["encrypt", "decrypt"], keys = ["payments.*"] }]
//! deny  = [{ ops = ["decrypt"], keys = ["payments.archive-*"] }]
//!
//! [roles.officer]
//! officer = true                 # administrative calls need a TOTP code
//! allow = [{ ops = ["key.*", "backup", "approval"], keys = ["*"] }]
//!
//! [settings]                     # optional
//! otp_max_failures = 5
//! otp_lockout = "5m"                # doubled for each further lock-out
//! otp_lockout_max = "24h"
//! approval_ttl = "1h"
//! enrolment_claim_ttl = "24h"
//! ```
//! Globs: `*` matches any run of characters, `?` one character; they apply
//! to key names and to operation names (`key.*`). Operations that name no
//! key (`backup`, `restore`, `master.rekey`, `audit.read`, `mask`,
//! `redact`, `approval`, `admin.reload`, `officer.enroll`, `status`) match
//! a rule only if its `keys` contain `"*"`.
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// An operation a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Op {
    Encrypt,
    Decrypt,
    Rewrap,
    Datakey,
    Mask,
    Redact,
    Tokenize,
    Detokenize,
    KeyRead,
    KeyCreate,
    KeyRotate,
    KeyPolicy,
    KeyVersionState,
    KeyDestroy,
    MasterRekey,
    Backup,
    Restore,
    AuditRead,
    Approval,
    AdminReload,
    OfficerEnroll,
    Status,
    Import,
    Export,
    Mac,
    Sign,
    Verify,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 27] = [
        Op::Encrypt,
        Op::Decrypt,
        Op::Rewrap,
        Op::Datakey,
        Op::Mask,
        Op::Redact,
        Op::Tokenize,
        Op::Detokenize,
        Op::KeyRead,
        Op::KeyCreate,
        Op::KeyRotate,
        Op::KeyPolicy,
        Op::KeyVersionState,
        Op::KeyDestroy,
        Op::MasterRekey,
        Op::Backup,
        Op::Restore,
        Op::AuditRead,
        Op::Approval,
        Op::AdminReload,
        Op::OfficerEnroll,
        Op::Status,
        Op::Import,
        Op::Export,
        Op::Mac,
        Op::Sign,
        Op::Verify,
    ];

    /// The name used in policies, logs, audit records and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Rewrap => "rewrap",
            Op::Datakey => "datakey",
            Op::Mask => "mask",
            Op::Redact => "redact",
            Op::Tokenize => "tokenize",
            Op::Detokenize => "detokenize",
            Op::KeyRead => "key.read",
            Op::KeyCreate => "key.create",
            Op::KeyRotate => "key.rotate",
            Op::KeyPolicy => "key.policy",
            Op::KeyVersionState => "key.version_state",
            Op::KeyDestroy => "key.destroy",
            Op::MasterRekey => "master.rekey",
            Op::Backup => "backup",
            Op::Restore => "restore",
            Op::AuditRead => "audit.read",
            Op::Approval => "approval",
            Op::AdminReload => "admin.reload",
            Op::OfficerEnroll => "officer.enroll",
            Op::Status => "status",
            Op::Import => "import",
            Op::Export => "export",
            Op::Mac => "mac",
            Op::Sign => "sign",
            Op::Verify => "verify",
        }
    }

    /// Administrative operations: an officer must present a fresh TOTP
    /// code for these (`key.*` except `key.read`, `master.*`, `backup`,
    /// `restore`, approving dual-control requests, enrolling officers,
    /// `import` and `export` of key material).
    pub const fn is_admin(self) -> bool {
        matches!(
            self,
            Op::KeyCreate
                | Op::KeyRotate
                | Op::KeyPolicy
                | Op::KeyVersionState
                | Op::KeyDestroy
                | Op::MasterRekey
                | Op::Backup
                | Op::Restore
                | Op::Approval
                | Op::OfficerEnroll
                | Op::Import
                | Op::Export
        )
    }

    /// Parses an operation name.
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// Matches `text` against a glob of `*` and `?`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some(pi);
                mark = ti;
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ti = mark;
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    ops: Vec<String>,
    keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    #[serde(default)]
    officer: bool,
    /// DEV ONLY: administrative calls without a second factor or a second officer.
    #[serde(default)]
    dev_no_second_factor: bool,
    #[serde(default)]
    allow: Vec<RuleFile>,
    #[serde(default)]
    deny: Vec<RuleFile>,
}

/// Policy-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Consecutive bad codes before an officer is locked out.
    pub otp_max_failures: u32,
    /// How long the first lock-out lasts; each further one (without a good
    /// code in between) lasts twice as long as the previous.
    #[serde(with = "humantime_serde")]
    pub otp_lockout: Duration,
    /// The longest a lock-out lasts (the doubling stops there).
    #[serde(with = "humantime_serde")]
    pub otp_lockout_max: Duration,
    /// How long a dual-control request waits for its second officer.
    #[serde(with = "humantime_serde")]
    pub approval_ttl: Duration,
    /// How long a new officer secret waits for its officer to claim it.
    #[serde(with = "humantime_serde")]
    pub enrolment_claim_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            otp_max_failures: 5,
            otp_lockout: Duration::from_secs(300),
            otp_lockout_max: Duration::from_secs(24 * 3600),
            approval_ttl: Duration::from_secs(3600),
            enrolment_claim_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    identities: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    roles: BTreeMap<String, RoleFile>,
    #[serde(default)]
    settings: Settings,
}

#[derive(Debug, Clone)]
struct Rule {
    ops: Vec<String>,
    keys: Vec<String>,
}

impl Rule {
    fn matches(&self, op: Op, key: Option<&str>) -> bool {
        self.ops.iter().any(|p| glob(p, op.as_str()))
            && match key {
                Some(k) => self.keys.iter().any(|p| glob(p, k)),
                None => self.keys.iter().any(|p| p == "*"),
            }
    }
}

#[derive(Debug, Clone)]
struct Role {
    officer: bool,
    dev_no_second_factor: bool,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

/// A parsed, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    identities: BTreeMap<String, Vec<String>>,
    roles: BTreeMap<String, Role>,
    /// Settings.
    pub settings: Settings,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// A denial, naming the operation (never whether the key exists).
#[derive(Debug, Clone, thiserror::Error)]
#[error("permission denied: {identity} may not {op}{on}")]
pub struct Denied {
    /// Caller.
    pub identity: String,
    /// Operation.
    pub op: &'static str,
    /// " on key \"…\"" or "".
    pub on: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError(format!("cannot read policy {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| PolicyError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses and checks policy text; errors name their line.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!("line {}: ", line_of(text, s.start)))
                .unwrap_or_default();
            PolicyError(format!("{at}{}", e.message().trim()))
        })?;
        let find_line = |needle: &str| {
            text.find(needle)
                .map(|o| format!("line {}: ", line_of(text, o)))
                .unwrap_or_default()
        };
        let mut roles = BTreeMap::new();
        for (name, r) in file.roles {
            let convert = |rules: Vec<RuleFile>, kind: &str| -> Result<Vec<Rule>, PolicyError> {
                rules
                    .into_iter()
                    .map(|rf| {
                        for op in &rf.ops {
                            if !Op::ALL.iter().any(|o| glob(op, o.as_str())) {
                                return Err(PolicyError(format!(
                                    "{}role {name:?}: unknown operation {op:?} in {kind}",
                                    find_line(&format!("\"{op}\""))
                                )));
                            }
                        }
                        if rf.ops.is_empty() || rf.keys.is_empty() || rf.keys.iter().any(|k| k.is_empty()) {
                            return Err(PolicyError(format!(
                                "role {name:?}: every {kind} rule needs operations and non-empty key patterns"
                            )));
                        }
                        Ok(Rule {
                            ops: rf.ops,
                            keys: rf.keys,
                        })
                    })
                    .collect()
            };
            let role = Role {
                officer: r.officer,
                dev_no_second_factor: r.dev_no_second_factor,
                allow: convert(r.allow, "allow")?,
                deny: convert(r.deny, "deny")?,
            };
            roles.insert(name, role);
        }
        for (id, rs) in &file.identities {
            for r in rs {
                if !roles.contains_key(r) {
                    return Err(PolicyError(format!(
                        "{}identity {id:?} refers to unknown role {r:?}",
                        find_line(&format!("\"{id}\""))
                    )));
                }
            }
        }
        Ok(Policy {
            identities: file.identities,
            roles,
            settings: file.settings,
        })
    }

    fn roles_of<'a>(&'a self, identity: &str) -> impl Iterator<Item = &'a Role> + 'a {
        self.identities
            .get(identity)
            .into_iter()
            .flatten()
            .filter_map(|r| self.roles.get(r))
    }

    /// Whether `identity` may perform `op` (on `key`). Deny wins.
    pub fn check(&self, identity: &str, op: Op, key: Option<&str>) -> Result<(), Denied> {
        let denied = self
            .roles_of(identity)
            .any(|role| role.deny.iter().any(|r| r.matches(op, key)));
        let allowed = self
            .roles_of(identity)
            .any(|role| role.allow.iter().any(|r| r.matches(op, key)));
        if allowed && !denied {
            Ok(())
        } else {
            Err(Denied {
                identity: identity.to_owned(),
                op: op.as_str(),
                on: key.map(|k| format!(" on key {k:?}")).unwrap_or_default(),
            })
        }
    }

    /// Whether `identity` may perform `op` on at least one key (some allow
    /// rule names the operation, and no deny rule forbids it on every key).
    /// Listings need this before they look at any name.
    pub fn allows_somewhere(&self, identity: &str, op: Op) -> Result<(), Denied> {
        let everywhere_denied = self
            .roles_of(identity)
            .any(|role| role.deny.iter().any(|r| r.matches(op, None)));
        let allowed = self
            .roles_of(identity)
            .any(|role| role.allow.iter().any(|r| r.ops.iter().any(|p| glob(p, op.as_str()))));
        if allowed && !everywhere_denied {
            Ok(())
        } else {
            Err(Denied {
                identity: identity.to_owned(),
                op: op.as_str(),
                on: " on any key".to_owned(),
            })
        }
    }

    /// Whether the identity holds an officer role.
    pub fn is_officer(&self, identity: &str) -> bool {
        self.roles_of(identity).any(|r| r.officer)
    }

    /// DEV ONLY bypass: a role that may do administrative calls without a
    /// second factor and without a second officer.
    pub fn dev_bypass(&self, identity: &str) -> bool {
        self.roles_of(identity).any(|r| r.dev_no_second_factor)
    }

    /// Whether `op` by `identity` needs a TOTP code.
    pub fn needs_second_factor(&self, identity: &str, op: Op) -> bool {
        op.is_admin() && self.is_officer(identity) && !self.dev_bypass(identity)
    }

    /// Refuses DEV ONLY roles unless the configuration is in dev mode: a
    /// policy that lets a role skip the second factor and the second
    /// officer must never reach production by accident. Checked by
    /// `check-config`, at start and on every reload.
    pub fn check_mode(&self, dev_mode: bool) -> Result<(), PolicyError> {
        let dev: Vec<&str> = self
            .roles
            .iter()
            .filter(|(_, r)| r.dev_no_second_factor)
            .map(|(n, _)| n.as_str())
            .collect();
        if dev_mode || dev.is_empty() {
            return Ok(());
        }
        Err(PolicyError(format!(
            "role(s) {dev:?} set dev_no_second_factor (DEV ONLY: no second factor, no second officer), \
             which is refused unless the configuration sets dev_mode = true"
        )))
    }

    /// Whether any role is flagged DEV ONLY.
    pub fn has_dev_roles(&self) -> bool {
        self.roles.values().any(|r| r.dev_no_second_factor)
    }
}

/// The dev policy `kmsd dev` writes.
pub fn dev_policy(client: &str, officer: &str) -> String {
    format!(
        r#"# kmsd DEV policy, written by `kmsd dev`. DEV ONLY: never use in production.
#
# The dev client may do everything without a second factor or a second
# officer (dev_no_second_factor). The dev officer is a real officer: every
# administrative call needs a fresh TOTP code (its secret is printed at
# start). Every other identity is denied, as anywhere.

[identities]
"{client}" = ["dev-everything"]
"{officer}" = ["officer"]

[roles.dev-everything]
dev_no_second_factor = true   # DEV ONLY
allow = [{{ ops = ["*"], keys = ["*"] }}]

[roles.officer]
officer = true
allow = [{{ ops = ["key.*", "backup", "restore", "approval", "audit.read", "officer.enroll", "status", "import", "export"], keys = ["*"] }}]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = r#"
[identities]
"spiffe://bank/payments" = ["payments"]
"spiffe://bank/both" = ["payments", "archive-deny"]
"sha256:ab" = ["officer"]

[roles.payments]
allow = [{ ops = ["encrypt", "decrypt"], keys = ["payments.*"] }, { ops = ["redact"], keys = ["*"] }]
deny = [{ ops = ["decrypt"], keys = ["payments.archive-*"] }]

[roles.archive-deny]
deny = [{ ops = ["encrypt"], keys = ["payments.cold"] }]

[roles.officer]
officer = true
allow = [{ ops = ["key.*"], keys = ["*"] }]
"#;

    #[test]
    fn globs() {
        assert!(glob("payments.*", "payments.pan"));
        assert!(glob("*", ""));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*-archive-*", "x-archive-2024"));
        assert!(!glob("payments.*", "payment.pan"));
        assert!(glob("key.*", "key.read"));
    }

    #[test]
    fn deny_wins_and_default_is_deny() {
        let p = Policy::parse(P).unwrap();
        let id = "spiffe://bank/payments";
        assert!(p.check(id, Op::Encrypt, Some("payments.pan")).is_ok());
        assert!(p.check(id, Op::Decrypt, Some("payments.pan")).is_ok());
        assert!(p.check(id, Op::Decrypt, Some("payments.archive-2020")).is_err());
        assert!(p.check(id, Op::Encrypt, Some("payments.archive-2020")).is_ok());
        assert!(p.check(id, Op::Encrypt, Some("hr.salaries")).is_err());
        assert!(p.check(id, Op::KeyRotate, Some("payments.pan")).is_err());
        assert!(p.check(id, Op::Redact, None).is_ok());
        assert!(
            p.check("spiffe://bank/both", Op::Encrypt, Some("payments.cold"))
                .is_err(),
            "deny in another role wins"
        );
        assert!(p.check("spiffe://unknown", Op::Encrypt, Some("payments.pan")).is_err());
        let e = p
            .check(id, Op::KeyDestroy, Some("payments.pan"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key.destroy"), "{e}");
        assert!(p.needs_second_factor("sha256:ab", Op::KeyRotate));
        assert!(!p.needs_second_factor("sha256:ab", Op::KeyRead));
        assert!(!p.needs_second_factor(id, Op::KeyRotate));
    }

    #[test]
    fn the_example_policy_parses() {
        let p = Policy::parse(include_str!("../../policy.example.toml")).unwrap();
        assert!(p
            .check("spiffe://bank.internal/payments", Op::Encrypt, Some("payments.pan"))
            .is_ok());
        assert!(p
            .check(
                "spiffe://bank.internal/payments",
                Op::Encrypt,
                Some("payments.archive-1")
            )
            .is_err());
        assert!(p.is_officer("spiffe://bank.internal/officer/bob"));
        assert!(!p.has_dev_roles());
    }

    #[test]
    fn bad_files_are_refused_with_their_line() {
        let e =
            Policy::parse("[roles.a]\nallow = [{ ops = [\"encrypt\"], keys = [\"*\"] }]\ncolour = 1\n").unwrap_err();
        assert!(e.0.contains("line 3") && e.0.contains("colour"), "{}", e.0);
        let e = Policy::parse("[roles.a]\nallow = [{ ops = [\"encrpyt\"], keys = [\"*\"] }]\n").unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("encrpyt"), "{}", e.0);
        let e = Policy::parse("[identities]\n\"x\" = [\"nobody\"]\n").unwrap_err();
        assert!(e.0.contains("unknown role"), "{}", e.0);
        let dev = Policy::parse(&dev_policy("spiffe://a", "spiffe://b")).unwrap();
        assert!(dev.has_dev_roles());
        assert!(dev.check_mode(true).is_ok());
        let e = dev.check_mode(false).unwrap_err();
        assert!(e.0.contains("dev-everything") && e.0.contains("dev_mode"), "{}", e.0);
        assert!(Policy::parse(P).unwrap().check_mode(false).is_ok());
    }
}
