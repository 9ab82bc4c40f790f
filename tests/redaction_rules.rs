//! Issue 16 against the real binaries: the daemon's `[redaction]` rules over
//! `Redact` (real mTLS), `check-config` naming the line of a rule that
//! cannot be used, and `kmsctl redact --rules FILE --explain`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::*;
use kmsd::proto::{self, mask_client::MaskClient, DataKind};
use std::io::Write;
use std::process::{Command, Stdio};

const RULES_FILE: &str = r#"
[[rules]]
name = "employee"
kind = "EMPLOYEE_ID"
pattern = '(?-u:\b)EMP[0-9]{6}(?-u:\b)'
mask = "last4"

[[fields]]
path = "$.customer.memo"
"#;

/// Secrets of every issue 16 shape plus the operator's own; none may come
/// back, from the daemon or from kmsctl, in text, findings or explain mode.
const SECRETS: &[&str] = &[
    "EMP123456",
    "Lucy'sNote",
    "JG103759A",
    "25121011234567890",
    "Sup3rS3cret",
    "CUST00001234",
];

fn line() -> String {
    "emp EMP123456 {\"customer\":{\"memo\":\"Lucy'sNote\",\"nino\":\"JG103759A\"}} \
     DE35=4111111111111111=25121011234567890 db=postgres://app:Sup3rS3cret@db:5432/x partner CUST00001234 \
     settled on 12-03-24"
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_applies_its_configured_rules() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    std::fs::write(dir.path().join("rules.toml"), RULES_FILE).unwrap();
    let d = Daemon::start_with(
        dir.path(),
        "[redaction]\nrules_file = \"rules.toml\"\n\n[[redaction.rules]]\nname = \"partner\"\nkind = \"PARTNER_REF\"\n\
         pattern = 'CUST[0-9]{8}'\ncontext = [\"partner\"]\n",
    );
    let mut m = MaskClient::new(d.channel().await);
    let text = line();
    let r = m
        .redact(proto::RedactRequest {
            text: text.clone(),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    for s in SECRETS {
        assert!(!r.text.contains(s), "{s} in {}", r.text);
    }
    assert!(
        r.text.contains("emp *****3456 ") && r.text.contains("settled on 12-03-24"),
        "{}",
        r.text
    );
    let kinds: Vec<i32> = r.findings.iter().map(|f| f.kind).collect();
    for k in [
        DataKind::Custom,
        DataKind::NationalId,
        DataKind::TrackData,
        DataKind::Password,
    ] {
        assert!(kinds.contains(&(k as i32)), "{k:?} missing from {kinds:?}");
    }
    // the stream applies them too
    let out = m
        .redact_stream(tokio_stream::iter(vec![proto::RedactRequest {
            text: text.clone(),
            kinds: vec![],
        }]))
        .await
        .unwrap()
        .into_inner();
    use tokio_stream::StreamExt;
    let streamed: Vec<_> = out.collect().await;
    let first = streamed[0].as_ref().unwrap();
    assert_eq!(first.text, r.text);
    // only the filtered kinds
    let r = m
        .redact(proto::RedactRequest {
            text,
            kinds: vec![DataKind::NationalId as i32],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.text.contains("EMP123456") && !r.text.contains("JG103759A"));
    assert!(SECRETS.iter().all(|s| !d.log_text().contains(s)));
}

#[test]
fn check_config_and_start_refuse_a_rule_that_cannot_compile_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    Pki::new(dir.path());
    let config = write_config(
        dir.path(),
        None,
        "[redaction]\n\n[[redaction.rules]]\nname = \"ok\"\npattern = 'A[0-9]{4}'\n\n[[redaction.rules]]\nname = \"broken\"\npattern = '(EMP[0-9'\n",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().position(|l| l.contains("name = \"broken\"")).unwrap();
    // the error names the [[redaction.rules]] table's line, just above
    let table_line = line; // the header's 1-based line is the name line's 0-based index
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains(&format!("line {table_line}: rule \"broken\": pattern does not compile")),
        "{stderr}"
    );
    // a rules file that cannot be used: its own name and line
    std::fs::write(dir.path().join("bad.toml"), "\n\n[[fields]]\npath = \"$.\"\n").unwrap();
    let config = write_config(dir.path(), None, "[redaction]\nrules_file = \"bad.toml\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["check-config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.toml: line 3: field \"$.\""), "{stderr}");
    // and serve refuses to start
    let out = Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml: line 3"),
        "{out:?}"
    );
}

fn kmsctl_redact(args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(common::kmsctl_bin())
        .arg("redact")
        .args(args)
        .env_remove("KMSD_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kmsctl_redact_with_rules_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES_FILE).unwrap();
    let rules = rules.to_str().unwrap();
    let input = format!("{}\nnothing here\n", line());
    // redacted text, one line per line
    let out = kmsctl_redact(&["--rules", rules], &input);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.contains("emp *****3456 "), "{text}");
    for s in &SECRETS[..5] {
        assert!(!text.contains(s), "{s} in {text}");
    }
    // explain: kind, span, rule; never a value
    let out = kmsctl_redact(&["--rules", rules, "--explain"], &input);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let emp = line().find("EMP123456").unwrap();
    assert!(lines[0].starts_with("1: "), "{text}");
    assert!(
        lines[0].contains(&format!("EMPLOYEE_ID {emp}..{} rule:employee", emp + 9)),
        "{text}"
    );
    assert!(
        lines[0].contains("CUSTOM") && lines[0].contains("field:$.customer.memo"),
        "{text}"
    );
    assert!(lines[0].contains("TRACK_DATA") && lines[0].contains("track2"), "{text}");
    assert!(
        lines[0].contains("NATIONAL_ID") && lines[0].contains("key:national-id"),
        "{text}"
    );
    assert_eq!(lines[1], "2: -");
    for s in SECRETS {
        assert!(!text.contains(s), "{s} in explain output {text}");
    }
    // JSON
    let out = kmsctl_redact(&["--rules", rules, "--explain", "--output", "json"], &input);
    let text = String::from_utf8(out.stdout).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["line"], 1);
    let f = first["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == "rule:employee")
        .unwrap();
    assert_eq!(
        (f["kind"].as_str(), f["start"].as_u64()),
        (Some("EMPLOYEE_ID"), Some(emp as u64))
    );
    for s in SECRETS {
        assert!(!text.contains(s), "{s} in {text}");
    }
    // a rules file that cannot be used: refused with its line, nothing read
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[rules]]\nname = \"a\"\npattern = 'x'\n\n[[rules]]\nname = \"b\"\npattern = '[z'\n",
    )
    .unwrap();
    let out = kmsctl_redact(&["--rules", bad.to_str().unwrap()], "x\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml: line 5: rule \"b\": pattern does not compile"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
