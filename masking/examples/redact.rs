//! `cargo run -p kmsd-masking --example redact < lines`: the built-in
//! detectors as a line filter (one output line per input line), for the
//! corpus scorer and quick experiments without building the daemon.
use std::io::{BufRead, Write};

fn main() -> std::io::Result<()> {
    let opts = kmsd_masking::RedactOptions::default();
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in stdin.lines() {
        let line = line?;
        writeln!(out, "{}", kmsd_masking::redact(&line, &opts).text)?;
    }
    out.flush()
}
