//! Writes a small store with the store format of commit 13c12ab (sealed
//! record format 1, backup format 1), for the migration test. Run once:
//! `cargo run -p kmsd-keystore --example make_legacy_store -- OUT_DIR`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
use kmsd_keystore::*;
use std::sync::Arc;

fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).expect("OUT_DIR"));
    let mk = [0x4bu8; 32]; // test data only: the README states it
    let store: Arc<dyn KeyStore> = Arc::new(SledStore::open(&out.join("store")).unwrap());
    let rings = RingStore::open(store.clone(), Sealer::new(MasterKey::from_bytes(&mk))).unwrap();
    let mut expected = serde_json::Map::new();
    // "payments": 3 versions, v1 destroyed, v2 decrypt-only, v3 primary
    let payments = KeyName::parse("payments").unwrap();
    rings.create(KeyRing::new(payments.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1_700_000_000)).unwrap();
    rings.update(&payments, |r| r.rotate(1_700_000_100, RotationReason::Manual)).unwrap();
    rings.update(&payments, |r| r.rotate(1_700_000_200, RotationReason::Scheduled)).unwrap();
    rings.update(&payments, |r| r.schedule_destruction(1, 1_700_000_300)).unwrap();
    rings.update(&payments, |r| Ok(r.destroy_due(1_700_000_300))).unwrap();
    // "disabled": 2 versions, v1 disabled, min_decryption_version 2
    let disabled = KeyName::parse("disabled").unwrap();
    rings.create(KeyRing::new(disabled.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1_700_000_000)).unwrap();
    rings.update(&disabled, |r| r.rotate(1_700_000_050, RotationReason::Usage)).unwrap();
    rings.update(&disabled, |r| r.set_version_state(1, VersionState::Disabled)).unwrap();
    rings.update(&disabled, |r| {
        let mut p = r.policy.clone();
        p.min_decryption_version = 2;
        r.set_policy(p)
    }).unwrap();
    // "plain": one version
    let plain = KeyName::parse("plain").unwrap();
    rings.create(KeyRing::new(plain.clone(), Algorithm::Aes256Gcm, KeyPolicy::default(), 1_700_000_000)).unwrap();
    for name in [&payments, &disabled, &plain] {
        let ring = rings.get(name).unwrap().unwrap();
        let versions: Vec<serde_json::Value> = ring
            .versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version,
                    "state": v.state.as_str(),
                    "material": v.material.as_ref().map(|m| hex::encode(m.expose_secret())),
                })
            })
            .collect();
        expected.insert(
            name.to_string(),
            serde_json::json!({"primary": ring.primary, "min_decryption_version": ring.policy.min_decryption_version, "versions": versions}),
        );
    }
    // officer enrolment and audit key, as kmsd's access module seals them
    let sealer = rings.sealer();
    let totp = [0x11u8; 20];
    store.put(RecordKind::Secret, "totp:spiffe://legacy.test/officer", None,
        &sealer.seal(RecordKind::Secret, "totp:spiffe://legacy.test/officer", &totp)).unwrap();
    let audit = [0x22u8; 32];
    store.put(RecordKind::Secret, "audit-key", None, &sealer.seal(RecordKind::Secret, "audit-key", &audit)).unwrap();
    expected.insert("secrets".into(), serde_json::json!({
        "totp:spiffe://legacy.test/officer": hex::encode(totp),
        "audit-key": hex::encode(audit),
    }));
    // a backup (format 1) of all of it
    let mut snap = Vec::new();
    backup::write_snapshot(store.as_ref(), sealer, &mut snap, &mut |_, _| {}).unwrap();
    std::fs::write(out.join("backup-v1.kmsdbak"), snap).unwrap();
    store.sync().unwrap();
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&expected).unwrap()).unwrap();
}
