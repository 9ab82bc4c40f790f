//! Redaction throughput on one core, with the built-in detectors alone and
//! with 20 operator pattern rules (plus 3 field rules) on top:
//!
//! `cargo run --release -p kmsd-masking --example throughput [LINES_FILE]`
//!
//! Without a file: the realistic log lines of `benches/micro.rs` (an
//! application log where one line in two carries a card, an IBAN and an
//! e-mail address) plus issue 16 shapes (a JSON KYC body, an ISO 8583 line,
//! a connection string), 4 MB of them. With a file: its lines (e.g. the
//! development corpus's texts). Prints the best of fifteen runs in MB per
//! second of this thread's CPU time (per core, whatever the load).
use std::time::Instant;

use kmsd_masking::{redact_with, rules::parse_toml, RedactOptions, Rules};

const LINES: &[&str] = &[
    "2026-11-24T06:00:00Z INFO payment accepted card=4111 1111 1111 1111 iban=GB82 WEST 1234 5698 7654 32 email=lucy.j@example.co.uk order=ORD-20261124-0042 amount=1,234.56 request_id=a6cecc1b-78e5-1061-7311-d8a3c2ce6f44",
    "2026-11-24T06:00:01Z INFO GET /v1/accounts/8842/balance 200 latency_ms=12 trace=5f2c9a1e0b7d4c3a",
    "2026-11-24T06:00:02Z INFO kyc submitted {\"customer\":{\"firstName\":\"Lucy\",\"lastName\":\"Johnson\",\"dateOfBirth\":\"1985-04-12\",\"nino\":\"JG103759A\",\"addressLine1\":\"12 High Street\",\"postcode\":\"SW1A 1AA\"},\"status\":\"PENDING\"}",
    "2026-11-24T06:00:03Z INFO GET /v1/health 200 latency_ms=1 trace=0b7d4c3a5f2c9a1e",
    "2026-11-24T06:00:04Z DEBUG iso8583 mti=0100 de35=4111111111111111=25121011234567890 de41=TERM0001 stan=004211",
    "2026-11-24T06:00:05Z WARN retrying postgres://ledger:S3cr3tPw@db.internal:5432/ledger after 250ms (attempt 2 of 5)",
    "2026-11-24T06:00:06Z INFO settlement batch=B-20261124-7 settled on 12-03-24 count=1423 total=98,123.40 commit=3f2c9a1e0b7d4c3a5f2c9a1e",
    "2026-11-24T06:00:07Z INFO GET /v1/rates?ccy=GBP 200 latency_ms=3 trace=9a1e0b7d4c3a5f2c",
    "2026-11-24T06:00:08Z INFO ticket TKT-00042113 opened by EMP4821X0Q7ZA for CUST-12345678 claim=CLM-GB-0042117",
];

fn twenty_rules() -> Result<Rules, String> {
    const PREFIXES: [&str; 20] = [
        "CUST", "EMP", "PR", "LOY", "MBR", "ACC", "TKT", "INV", "SUP", "VND", "POL", "CLM", "APP", "BRK", "AGT", "CNT",
        "DEV", "LN", "MRT", "SAV",
    ];
    let mut file = String::new();
    for (i, prefix) in PREFIXES.iter().enumerate() {
        let pattern = match i % 3 {
            0 => format!("(?-u:\\b){prefix}-[0-9]{{8}}(?-u:\\b)"),
            1 => format!("(?-u:\\b){prefix}[0-9A-Z]{{10}}(?-u:\\b)"),
            _ => format!("(?-u:\\b){prefix}-[A-Z]{{2}}-[0-9]{{6,9}}(?-u:\\b)"),
        };
        let validator = if i % 5 == 3 { "validator = \"luhn\"\n" } else { "" };
        let context = if i % 4 == 1 {
            "context = [\"employee\", \"staff\"]\n"
        } else {
            ""
        };
        file.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\nkind = \"INTERNAL_{i}\"\npattern = '{pattern}'\n{validator}{context}mask = \"last4\"\n\n"
        ));
    }
    file.push_str("[[fields]]\npath = \"*.memo\"\n[[fields]]\npath = \"$.customer.employer\"\n[[fields]]\npath = \"internal_note\"\n");
    parse_toml(&file).map_err(|e| format!("rules: {e}"))
}

/// This thread's CPU time in nanoseconds (Linux `schedstat`), so that the
/// figure is per core even on a loaded machine; wall time elsewhere.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn mbs(lines: &[String], rules: &Rules) -> f64 {
    let opts = RedactOptions::default();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let mut best = f64::MAX;
    for _ in 0..15 {
        let (t, c) = (Instant::now(), cpu_ns());
        for l in lines {
            std::hint::black_box(redact_with(l, &opts, rules));
        }
        let secs = match (c, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e9,
            _ => t.elapsed().as_secs_f64(),
        };
        best = best.min(secs);
    }
    bytes as f64 / best / 1e6
}

fn main() -> Result<(), String> {
    let lines: Vec<String> = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|e| format!("{path}: {e}"))?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => {
            let per_round: usize = LINES.iter().map(|l| l.len() + 1).sum();
            let rounds = 4_000_000 / per_round + 1;
            LINES
                .iter()
                .cycle()
                .take(rounds * LINES.len())
                .map(|l| (*l).to_owned())
                .collect()
        }
    };
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let rules = twenty_rules()?;
    println!("{} lines, {} bytes", lines.len(), bytes);
    println!(
        "built-in detectors:            {:8.1} MB/s",
        mbs(&lines, &Rules::default())
    );
    println!("built-in + 20 rules + 3 fields: {:8.1} MB/s", mbs(&lines, &rules));
    Ok(())
}
