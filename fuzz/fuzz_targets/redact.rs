//! The redaction scanner on arbitrary text: never panics, reports findings
//! in order, inside the text and on character boundaries, leaves text
//! without findings unchanged, at most doubles it (name initials are
//! longer than one-letter names) plus a mask per finding, and stays linear: the input repeated to 32 KiB is redacted
//! well within a time budget (a detector that rescans to the end of the
//! text from each of its triggers takes seconds there).
#![no_main]
use kmsd::masking::{redact, RedactOptions};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

/// Most a finding's mask adds beyond twice the value (`[REDACTED]` for a
/// one-byte value, `a***` for a one-letter e-mail local part).
const MASK_GROWTH: usize = 16;

fn check(text: &str) {
    let opts = RedactOptions::default();
    let r = redact(text, &opts);
    let mut last = 0;
    for f in &r.findings {
        assert!(f.start >= last && f.start < f.end && f.end <= text.len(), "finding out of order or bounds");
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end), "finding not on a char boundary");
        last = f.end;
    }
    if r.findings.is_empty() {
        assert_eq!(r.text, text, "text without findings changed");
    }
    assert!(r.text.len() <= 2 * text.len() + MASK_GROWTH * r.findings.len(), "output grew too much");
    // What was before the first finding and after the last is unchanged.
    if let (Some(first), Some(end)) = (r.findings.first(), r.findings.last()) {
        assert!(r.text.starts_with(&text[..first.start]));
        assert!(r.text.ends_with(&text[end.end..]));
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    if text.is_empty() {
        return;
    }
    // Amplify: the same bytes over and over, no newline added.
    let mut big = String::with_capacity(32 * 1024 + text.len());
    while big.len() < 32 * 1024 {
        big.push_str(&text);
    }
    let t = Instant::now();
    let _ = redact(&big, &RedactOptions::default());
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "redaction of {} bytes took {took:?}: not linear",
        big.len()
    );
});
