#![allow(clippy::panic)]
//! Micro-benchmarks: envelope encode/decode, per-message key derivation,
//! the AEAD at each size on both backends, and redaction against a plain
//! copy of the same text (its same-run baseline).
//! `cargo bench --bench micro`
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kmsd_keystore::aead::{Aead, RingAead, RustCryptoAead};
use kmsd_keystore::KeyMaterial;

const SIZES: [usize; 4] = [64, 1024, 16384, 65536];

fn envelope(c: &mut Criterion) {
    let key = KeyMaterial::from_bytes(&[7; 32]);
    let mut g = c.benchmark_group("envelope");
    for size in SIZES {
        let pt = vec![1u8; size];
        let ct = kmsd::crypto::encrypt(&key, "bench", 1, &pt, b"").unwrap_or_else(|e| panic!("{e}"));
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encrypt", size), &pt, |b, pt| {
            b.iter(|| kmsd::crypto::encrypt(&key, "bench", 1, black_box(pt), b""))
        });
        g.bench_with_input(BenchmarkId::new("decrypt", size), &ct, |b, ct| {
            b.iter(|| kmsd::crypto::decrypt(&key, "bench", black_box(ct), b""))
        });
    }
    g.finish();
    // key derivation + AEAD set-up dominate an empty message
    c.bench_function("envelope/encrypt-empty (key derivation)", |b| {
        b.iter(|| kmsd::crypto::encrypt(&key, "bench", 1, black_box(b""), b""))
    });
}

fn aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for (name, backend) in [("ring", &RingAead as &dyn Aead), ("rustcrypto", &RustCryptoAead)] {
            let mut buf = Vec::with_capacity(size + 16);
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    buf.clear();
                    buf.resize(size, 1);
                    let _ = backend.seal(&[9; 32], &[1; 12], b"", &mut buf);
                })
            });
        }
    }
    g.finish();
}

fn redaction(c: &mut Criterion) {
    let line = "2026-11-24T06:00:00Z INFO payment accepted card=4111 1111 1111 1111 iban=GB82 WEST 1234 5698 7654 32 \
                email=lucy.j@example.co.uk order=ORD-20261124-0042 amount=1,234.56 request_id=a6cecc1b-78e5-1061-7311-d8a3c2ce6f44\n\
                2026-11-24T06:00:01Z INFO GET /v1/accounts/8842/balance 200 latency_ms=12 trace=5f2c9a1e0b7d4c3a\n";
    let text = line.repeat(2000);
    let mut g = c.benchmark_group("redaction");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("copy (baseline)", |b| b.iter(|| black_box(text.as_bytes().to_vec())));
    let opts = kmsd::masking::RedactOptions { kinds: None };
    g.bench_function("redact", |b| {
        b.iter(|| {
            for l in text.lines() {
                black_box(kmsd::masking::redact(l, &opts));
            }
        })
    });
    g.finish();
}

fn audit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let metrics = std::sync::Arc::new(kmsd::ops::metrics::Metrics::default());
    let handle = kmsd::audit::spawn(
        &dir.path().join("audit.log"),
        kmsd::audit::AuditKey::from_bytes(&[1; 32]),
        kmsd::audit::Options {
            rotate_bytes: 1 << 30,
            ..Default::default()
        },
        metrics,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ev = kmsd::audit::Event {
        request_id: "0a1b2c3d-1f".into(),
        identity: "spiffe://bank.internal/payments".into(),
        op: "encrypt",
        key: Some("payments.pan".into()),
        key_version: Some(3),
        result: "OK",
        detail: None,
        peer: "unix".into(),
        latency_us: 41,
    };
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(1000));
    // 1,000 data-path records group-committed, then one durable record
    // (which waits for everything before it): records/s including fsync.
    g.bench_function("1000 records, group commit", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                let _ = handle.record(ev.clone());
            }
            let _ = handle.record_durable(ev.clone());
        })
    });
    g.finish();
}

criterion_group!(benches, envelope, aead, redaction, audit);
criterion_main!(benches);
