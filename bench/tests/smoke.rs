//! The benchmark harness runs end to end (daemon, echo baseline, crypto
//! floor) for about a second and reports numbers. No timed assertions: the
//! figures themselves are recorded in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn kmsd_bench_runs_and_reports_ratios() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd-bench"))
        .args([
            "--duration",
            "200ms",
            "--sizes",
            "64",
            "--concurrency",
            "2",
            "--ops",
            "encrypt,batch",
            "--repeat",
            "1",
        ])
        .args(["--batch", "50", "--no-openssl"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = text
        .lines()
        .find(|l| l.starts_with("encrypt"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let kmsd_ops: f64 = cols[4].parse().unwrap();
    assert!(kmsd_ops > 0.0, "{row}");
    assert!(row.contains('x'), "ratio column: {row}");
    assert!(
        text.lines().any(|l| l.starts_with("batch") && l.contains("items/s")),
        "{text}"
    );
    assert!(text.contains("# AEAD 16 KiB: kmsd"), "{text}");
}
