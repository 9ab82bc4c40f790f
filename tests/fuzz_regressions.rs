//! The fuzz targets on stable: every seed input (`fuzz/corpus/<target>/`)
//! and every input that once found a bug (`fuzz/regressions/<target>/`)
//! goes through the very function its cargo-fuzz target calls
//! (`fuzz/src/lib.rs`, included here), so the parsers of untrusted bytes
//! are exercised by `cargo test` and a fixed bug stays fixed without the
//! nightly toolchain. The seeds are written by
//! `cargo test --test fuzz_regressions -- --ignored write_seed_corpus`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs every input under `fuzz/<kind>/<target>/` through its target;
/// returns how many ran and the failures (file: panic message).
fn replay(kind: &str) -> (usize, Vec<String>) {
    let mut ran = 0;
    let mut failed = Vec::new();
    for (name, body) in harness::TARGETS {
        for file in inputs(&fuzz_dir().join(kind).join(name)) {
            let data = std::fs::read(&file).unwrap();
            ran += 1;
            if let Err(e) = std::panic::catch_unwind(|| body(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failed.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    (ran, failed)
}

#[test]
fn every_fuzz_target_is_listed_and_has_seeds() {
    let listed: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in harness::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} is not a [[bin]] in fuzz/Cargo.toml"
        );
        assert!(
            !inputs(&fuzz_dir().join("corpus").join(name)).is_empty(),
            "fuzz/corpus/{name}/ has no seed input"
        );
    }
    for target in inputs(&fuzz_dir().join("fuzz_targets")) {
        let stem = target.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            listed.contains(&stem.as_str()),
            "fuzz_targets/{stem}.rs has no entry in fuzz/src/lib.rs TARGETS, so it is never replayed on stable"
        );
    }
}

#[test]
fn seed_corpus_replays_on_stable() {
    let (ran, failed) = replay("corpus");
    assert!(ran >= harness::TARGETS.len(), "only {ran} seed inputs");
    assert!(failed.is_empty(), "seed inputs fail:\n{}", failed.join("\n"));
}

#[test]
fn inputs_that_found_bugs_stay_fixed() {
    let (_, failed) = replay("regressions");
    assert!(failed.is_empty(), "regressions are back:\n{}", failed.join("\n"));
}

/// Writes a few small valid inputs per target into `fuzz/corpus/`
/// (run by hand when a format changes; the files are committed).
#[test]
#[ignore = "writes the committed seed corpus"]
fn write_seed_corpus() {
    use kmsd::masking::{tokenize, Kind};
    use kmsd_keystore::{KeyMaterial, KeyName, KeyRing, KeyStore, MasterKey, MemoryStore, RecordKind, Sealer};

    let put = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    // envelope: real ciphertexts under the target's key.
    let key = KeyMaterial::from_bytes(&[7; 32]);
    put(
        "envelope",
        "empty",
        &kmsd::crypto::encrypt(&key, "fuzz", 1, b"", b"").unwrap(),
    );
    put(
        "envelope",
        "short",
        &kmsd::crypto::encrypt(&key, "fuzz", 3, b"hello, world", b"").unwrap(),
    );
    // sealed_record: a key ring, sealed and in clear.
    let sealer = Sealer::new(MasterKey::from_bytes(&[1; 32]));
    let ring = KeyRing::new(
        KeyName::parse("k").unwrap(),
        kmsd_keystore::Algorithm::Aes256Gcm,
        Default::default(),
        1_700_000_000,
    )
    .unwrap();
    put(
        "sealed_record",
        "ring-sealed",
        &sealer.seal(RecordKind::KeyRing, "k", &ring.encode()).unwrap(),
    );
    put("sealed_record", "ring-clear", &ring.encode());
    // ... and format 3 (issue 17 key types): an Ed25519 ring and an
    // exportable HMAC ring, in clear.
    for (file, alg) in [
        ("ring-v3-ed25519-clear", kmsd_keystore::Algorithm::Ed25519),
        ("ring-v3-hmac-clear", kmsd_keystore::Algorithm::HmacSha256),
    ] {
        let r = KeyRing::new(KeyName::parse("k").unwrap(), alg, Default::default(), 1_700_000_000)
            .unwrap()
            .exportable(alg == kmsd_keystore::Algorithm::HmacSha256);
        put("sealed_record", file, &r.encode());
    }
    // backup / backup_records: a snapshot of a small store, and its body.
    let store = MemoryStore::new();
    store
        .put(
            RecordKind::KeyRing,
            "k",
            None,
            &sealer.seal(RecordKind::KeyRing, "k", &ring.encode()).unwrap(),
        )
        .unwrap();
    store
        .put(
            RecordKind::Meta,
            "m",
            None,
            &sealer.seal(RecordKind::Meta, "m", b"meta").unwrap(),
        )
        .unwrap();
    for (n, with) in [("empty", false), ("two-records", true)] {
        let mut snap = Vec::new();
        let empty = MemoryStore::new();
        let s: &dyn KeyStore = if with { &store } else { &empty };
        kmsd_keystore::backup::write_snapshot(s, &sealer, &mut snap, &mut |_, _| {}).unwrap();
        put("backup", n, &snap);
        put("backup_records", n, &snap[8..snap.len() - 32]);
    }
    // audit_verify / audit_recover: a real three-record log.
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut head) = (Vec::new(), None);
    for _ in 0..3 {
        let (text, h) = kmsd::audit::fuzzing::recover_and_append(dir.path(), &log, head.as_ref(), &[3; 32]).unwrap();
        log = text.into_bytes();
        head = Some(h);
    }
    let head = head.unwrap();
    let mut anchor = Vec::new();
    anchor.extend_from_slice(&head.seq.to_le_bytes());
    anchor.extend_from_slice(&head.file_first_seq.to_le_bytes());
    anchor.push(2);
    put("audit_verify", "log", &[&[0u8][..], &anchor, &log].concat());
    put("audit_verify", "log-anchored", &[&[4u8][..], &anchor, &log].concat());
    put("audit_verify", "log-resealed", &[&[7u8][..], &anchor, &log].concat());
    let head5 = [1u8, 2, 0, 1, 0];
    put("audit_recover", "no-head", &[&[0u8][..], &head5, &log].concat());
    put("audit_recover", "head", &[&[5u8][..], &head5, &log].concat());
    put("audit_recover", "head-torn", &[&[7u8][..], &head5, &log].concat());
    // policy and config: the shipped examples, and the dev policy.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read(root.join("policy.example.toml")).unwrap();
    put(
        "policy",
        "example",
        &[&example[..], b"\0spiffe://example.org/app\0payments/k\0pay*"].concat(),
    );
    let dev = kmsd::authz::dev_policy("spiffe://dev/app", "spiffe://dev/officer");
    put("policy", "dev", format!("{dev}\0spiffe://dev/officer\0k\0*").as_bytes());
    put(
        "config",
        "example",
        &std::fs::read(root.join("kmsd.example.toml")).unwrap(),
    );
    // detokenize: a token of every kind, then a value of every kind.
    let samples = [
        (Kind::Pan, "4111 1111 1111 1111"),
        (Kind::Iban, "GB82 WEST 1234 5698 7654 32"),
        (Kind::UkSortCode, "12-34-56"),
        (Kind::UkAccountNumber, "31926819"),
        (Kind::Email, "alice@example.com"),
        (Kind::Phone, "+44 20 7946 0958"),
        (Kind::Name, "Alice Smith"),
        (Kind::Secret, "1234"),
    ];
    for (kind, value) in samples {
        let id = Kind::ALL.iter().position(|k| *k == kind).unwrap() as u8;
        let token = tokenize(&[9; 32], b"t", value, kind).unwrap();
        put(
            "detokenize",
            &format!("{kind:?}-token"),
            &[&[id, 1, b't'][..], token.as_bytes()].concat(),
        );
        put(
            "detokenize",
            &format!("{kind:?}-value"),
            &[&[id, 1, b't'][..], value.as_bytes()].concat(),
        );
    }
    // wrapped_key: a blob wrapped for a job (of another key than the
    // target's: it reaches the RSA and RFC 5649 parsing, and fails there),
    // and a wrapping public key's PEM.
    let job = kmsd_keystore::wrap::WrappingKey::generate().unwrap();
    let pem = job.public_key_pem().unwrap();
    let public = kmsd_keystore::wrap::WrappingPublicKey::from_pem(&pem).unwrap();
    put("wrapped_key", "aes-256-material", &public.wrap(&[5; 32]).unwrap());
    put("wrapped_key", "public-key-pem", pem.as_bytes());
    put("wrapped_key", "small-material", b"0123456789");
}
