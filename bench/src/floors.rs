//! In-process baselines: the envelope (crypto floor), the AEAD alone,
//! `openssl speed`, and the redaction input.
use super::*;

/// In-process envelope encryption: the crypto floor (one thread).
pub(crate) fn crypto_floor(size: usize, duration: Duration) -> f64 {
    let key = kmsd_keystore::KeyMaterial::generate();
    let p = vec![7u8; size];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        for _ in 0..64 {
            let _ = std::hint::black_box(kmsd::crypto::encrypt(&key, "bench", 1, &p, b""));
        }
        n += 64;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// MB/s of the AEAD alone at `size` (one thread).
pub(crate) fn aead_mb_s(size: usize) -> f64 {
    let mut buf = vec![7u8; size];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        buf.truncate(size);
        let _ = kmsd_keystore::aead::seal(&[9; 32], &[1; 12], b"", &mut buf);
        n += 1;
    }
    (n as f64 * size as f64) / started.elapsed().as_secs_f64() / 1e6
}

pub(crate) fn openssl_mb_s(size: usize) -> Option<f64> {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-gcm",
            "-seconds",
            "2",
            "-bytes",
            &size.to_string(),
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with("aes-256-gcm"))?;
    let k = line
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse::<f64>()
        .ok()?;
    Some(k * 1000.0 / 1e6)
}

pub(crate) fn log_text(size: usize) -> String {
    let base = "2026-11-24T06:00:00Z INFO payment accepted card=4111 1111 1111 1111 iban=GB82 WEST 1234 5698 7654 32 \
                email=lucy.j@example.co.uk order=ORD-20261124-0042 amount=1,234.56 request_id=a6cecc1b-78e5-1061-7311-d8a3c2ce6f44 ";
    base.repeat(size / base.len() + 1).chars().take(size).collect()
}
