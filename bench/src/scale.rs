//! Many keys, many versions: readiness, memory and throughput against one
//! key in the same run.
use super::*;

/// Readiness, memory and throughput with many keys / many versions,
/// against one key measured in the same run.
pub(crate) async fn scale(cli: &Cli, dir: &Path, _single: &Target) -> Result<(), BoxError> {
    use kmsd_keystore::keyring::{KeyPolicy, RotationReason};
    use kmsd_keystore::{Algorithm, KeyName, KeyRing, KeyStore, MasterKey, RingStore, Sealer, SledStore};
    let name = "scale";
    {
        let store = Arc::new(SledStore::open(&dir.join(format!("{name}-store")))?);
        store.danger_unsynced_writes(true);
        let rings = RingStore::open(store.clone(), Sealer::new(MasterKey::load(&dir.join("master-key"))?))?;
        let started = Instant::now();
        for i in 0..cli.keys {
            rings.create(KeyRing::new(
                KeyName::parse(&format!("k{i:06}"))?,
                Algorithm::Aes256Gcm,
                KeyPolicy::default(),
                0,
            )?)?;
        }
        let mut big = KeyRing::new(
            KeyName::parse("many-versions")?,
            Algorithm::Aes256Gcm,
            KeyPolicy::default(),
            0,
        )?;
        for t in 0..cli.versions {
            big.rotate(i64::from(t), RotationReason::Manual)?;
        }
        rings.create(big)?;
        store.sync()?;
        println!(
            "# seeded {} keys + one key of {} versions in {:.1} s",
            cli.keys,
            cli.versions + 1,
            started.elapsed().as_secs_f64()
        );
    }
    let tcp = format!("127.0.0.1:{}", free_port()?);
    let (proc_, ready) = start_kmsd(dir, name, &tcp).await?;
    let pid = proc_.child.id();
    println!(
        "# with {} keys: ready in {:.0} ms, RSS {:.0} MiB",
        cli.keys,
        ready.as_secs_f64() * 1000.0,
        rss_mib(pid)
    );
    let addr = format!("unix:{}", dir.join(format!("{name}.sock")).display());
    let t = Target {
        channels: connect_n(dir, &addr, cli.connections).await?,
        pid,
    };
    let mut keys = KeysClient::new(t.channels[0].clone());
    keys.create_key(proto::CreateKeyRequest {
        name: "one".into(),
        algorithm: 0,
        policy: None,
        exportable: false,
    })
    .await?;
    let w = Work::Encrypt(vec![1; 64]);
    let conc = cli.concurrency.iter().copied().max().unwrap_or(64);
    for (label, key) in [
        ("a key among many", "k000042"),
        ("the 1,000-version key", "many-versions"),
    ] {
        let mut base = Vec::new();
        let mut many = Vec::new();
        for _ in 0..cli.repeat.max(1) {
            base.push(load(&t, "one", w.clone(), conc, cli.duration, 64).await?);
            many.push(load(&t, key, w.clone(), conc, cli.duration, 64).await?);
        }
        let (b, m) = (median(base), median(many));
        println!(
            "# encrypt 64 B c={conc}: {label} {:.0} op/s vs a lone key {:.0} op/s: ratio {:.2}x",
            m.ops_per_s,
            b.ops_per_s,
            m.ops_per_s / b.ops_per_s.max(1e-9)
        );
    }
    Ok(())
}
