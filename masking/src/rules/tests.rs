//! Pattern rules, field rules, rule files and their errors.

use super::*;
use crate::detect::Rule;
use crate::{redact_with, RedactOptions};

const FILE: &str = r#"
# internal ids
[[rules]]
name = "customer-id"
kind = "CUSTOMER_ID"
pattern = 'CUST-[0-9]{8}'
mask = "last4"

[[rules]]
name = "employee"
kind = "EMPLOYEE_ID"
pattern = '(?-u:\b)E[0-9]{6}(?-u:\b)'
context = ["employee", "staff"]
window = 24

[[rules]]
name = "loyalty-card"
pattern = '(?-u:\b)9[0-9]{9}(?-u:\b)'
validator = "luhn"

[[rules]]
name = "partner-ref"
kind = "PARTNER_REF"
pattern = '(?-u:\b)PR[0-9A-Z]{9}(?-u:\b)'
validator = "mod97"
mask = "stars"

[[fields]]
path = "$.customer.dob"
kind = "DATE_OF_BIRTH"
mask = "stars"

[[fields]]
path = "*.memo"

[[fields]]
path = "$.items.secretNote"
"#;

fn rules() -> Rules {
    parse_toml(FILE).unwrap()
}

fn r(text: &str) -> String {
    redact_with(text, &RedactOptions::default(), &rules()).text
}

#[test]
fn pattern_rules_mask_in_their_style() {
    assert_eq!(r("order for CUST-12345678 ok"), "order for ****-****5678 ok");
    // context words, either side, case-insensitive
    assert_eq!(r("Staff member E123456 logged in"), "Staff member [REDACTED] logged in");
    assert_eq!(r("E123456 (employee) logged in"), "[REDACTED] (employee) logged in");
    assert_eq!(r("part E123456 shipped"), "part E123456 shipped");
    // validators
    let luhn_ok = "9123456783";
    assert!(crate::luhn::is_valid(luhn_ok.as_bytes()));
    assert_eq!(r(&format!("card {luhn_ok} used")), "card [REDACTED] used");
    assert_eq!(r("card 9123456784 used"), "card 9123456784 used");
}

#[test]
fn mod97_validator() {
    // find a suffix making PR + 9 chars pass mod 97 (IBAN-style rotation)
    let ok = (0..100)
        .map(|n| format!("PR{n:02}ABC1234"))
        .find(|v| Validator::Mod97.check(v.as_bytes()))
        .unwrap();
    let bad = (0..100)
        .map(|n| format!("PR{n:02}ABC1234"))
        .find(|v| !Validator::Mod97.check(v.as_bytes()))
        .unwrap();
    assert_eq!(r(&format!("ref {ok} ok")), "ref *********** ok");
    assert_eq!(r(&format!("ref {bad} ok")), format!("ref {bad} ok"));
}

#[test]
fn findings_name_the_rule() {
    let rs = rules();
    let red = redact_with("CUST-12345678 {\"memo\":\"call me\"}", &RedactOptions::default(), &rs);
    let described: Vec<(String, String)> = red
        .findings
        .iter()
        .filter_map(|f| rs.describe(f.rule).map(|(k, n)| (k.to_owned(), n)))
        .collect();
    assert_eq!(
        described,
        vec![
            ("CUSTOMER_ID".to_owned(), "rule:customer-id".to_owned()),
            ("CUSTOM".to_owned(), "field:*.memo".to_owned())
        ]
    );
    assert_eq!(red.findings[0].kind, Kind::Custom);
    assert_eq!(red.findings[0].rule, Rule::Custom(0));
}

#[test]
fn field_rules_by_key_name_and_json_path() {
    assert_eq!(
        r("{\"customer\":{\"dob\":\"1990-01-02\",\"name\":\"x\"},\"dob\":\"keep\"}"),
        "{\"customer\":{\"dob\":\"****-**-**\",\"name\":\"x\"},\"dob\":\"keep\"}"
    );
    assert_eq!(r("memo=hello; other=1"), "memo=[REDACTED]; other=1");
    assert_eq!(
        r("{\"a\":{\"memo\":\"lunch with bob\"}}"),
        "{\"a\":{\"memo\":\"[REDACTED]\"}}"
    );
    assert_eq!(r("{\"memo\":null}"), "{\"memo\":null}");
    // arrays are transparent; an object value is masked whole
    assert_eq!(
        r("log {\"items\":[{\"secretNote\":\"a\"},{\"secretNote\":{\"x\":[1,2]}}]} end"),
        "log {\"items\":[{\"secretNote\":\"[REDACTED]\"},{\"secretNote\":[REDACTED]}]} end"
    );
    // not JSON: nothing breaks, the text is kept
    assert_eq!(r("{ broken \"customer\": {\"dob\""), "{ broken \"customer\": {\"dob\"");
    // a key that merely ends with the name is another key
    assert_eq!(r("dememo=1"), "dememo=1");
}

#[test]
fn unusable_rules_are_refused_with_their_line() {
    let bad_pattern = "[[rules]]\nname = \"a\"\npattern = 'x'\n\n[[rules]]\nname = \"b\"\npattern = '(unclosed'\n";
    let e = parse_toml(bad_pattern).unwrap_err();
    assert_eq!(e.line, Some(5), "{e}");
    assert!(
        e.to_string()
            .starts_with("line 5: rule \"b\": pattern does not compile"),
        "{e}"
    );
    for (text, line, what) in [
        ("[[rules]]\nname = \"e\"\npattern = 'a*'\n", 1, "empty string"),
        (
            "[[rules]]\nname = \"v\"\npattern = 'a'\nvalidator = \"crc\"\n",
            1,
            "unknown validator",
        ),
        (
            "\n[[rules]]\nname = \"m\"\npattern = 'a'\nmask = \"blur\"\n",
            2,
            "unknown mask",
        ),
        (
            "[[rules]]\nname = \"k\"\npattern = 'a'\nkind = \"lower\"\n",
            1,
            "kind must be",
        ),
        ("[[fields]]\npath = \"$.\"\n", 1, "a path is"),
        ("[[rules]]\nname = \"x\"\npatern = 'a'\n", 3, "unknown field"),
        (
            "[[rules]]\nname = \"big\"\npattern = '\\w{1000}\\w{1000}\\w{1000}'\n",
            1,
            "does not compile",
        ),
    ] {
        let e = parse_toml(text).unwrap_err();
        assert_eq!(e.line, Some(line), "{text}: {e}");
        assert!(e.to_string().contains(what), "{text}: {e}");
    }
    let long = format!(
        "[[rules]]\nname = \"l\"\npattern = '{}'\n",
        "a".repeat(MAX_PATTERN_BYTES + 1)
    );
    assert!(parse_toml(&long).unwrap_err().to_string().contains("longer than"));
    let many: String = (0..=MAX_RULES)
        .map(|i| format!("[[rules]]\nname = \"r{i}\"\npattern = 'x{i}y'\n"))
        .collect();
    assert!(parse_toml(&many).unwrap_err().to_string().contains("at most 256"));
}

#[test]
fn a_run_on_pattern_stays_linear() {
    // `a*b|a` over a run of `a`s: each match's real end is searched at most
    // MAX_OVERRUN bytes past its earliest end, never to the end of the text.
    let rs = Rules::new(
        &[RuleSpec {
            name: "runon".into(),
            pattern: "a*b|a".into(),
            ..Default::default()
        }],
        &[],
    )
    .unwrap();
    let text = "a".repeat(100_000);
    let t = std::time::Instant::now();
    let red = redact_with(&text, &RedactOptions::default(), &rs);
    assert_eq!(red.findings.len(), 100_000);
    // a quadratic search would take minutes here even in a release build
    assert!(t.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn secrets_never_reach_error_messages() {
    let e = parse_toml("[[rules]]\nname = \"s\"\npattern = '(hunter2'\n").unwrap_err();
    // the pattern is the operator's, not data; but no input text is ever there
    assert!(!e.to_string().contains("4111"));
}
