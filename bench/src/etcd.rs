//! The etcd backend (issue 13), each figure against a baseline of the
//! same run: (a) encrypt/decrypt on a node serving from etcd against a
//! node serving from sled; (b) admin write latency against one raw etcd
//! transaction; (c) time to ready with many keys loaded from etcd (seeded
//! offline in sled, then `kmsd migrate`, as an operator would); (d) two
//! nodes on one etcd against one.
use super::*;
use kmsd_etcd::testing::Cluster;

/// Prefix of the nodes' records (a run on an external etcd adds its own
/// suffix: an earlier run's records are still there).
const PREFIX: &str = "/kmsd/bench/";

/// The etcd a run uses: the harness's, started for the run, or one the
/// operator keeps running (`--etcd-endpoints`: a store seeded once is
/// measured again and again, see `--work-dir`).
enum Etcd {
    Harness(Box<Cluster>),
    External(Vec<String>),
}

impl Etcd {
    /// Client URLs (`http://host:port`).
    fn urls(&self) -> Vec<String> {
        match self {
            Etcd::Harness(c) => c.endpoints().iter().map(|e| format!("http://{e}")).collect(),
            Etcd::External(e) => e
                .iter()
                .map(|e| {
                    if e.contains("://") {
                        e.clone()
                    } else {
                        format!("http://{e}")
                    }
                })
                .collect(),
        }
    }

    fn settings(&self) -> kmsd_etcd::Settings {
        match self {
            Etcd::Harness(c) => c.settings(),
            Etcd::External(_) => kmsd_etcd::Settings::new(self.urls()),
        }
    }
}

/// The `[store]` lines of a node on `etcd` (loopback, plain: the test
/// harness's members, or an external etcd on loopback).
fn etcd_store(etcd: &Etcd, prefix: &str) -> String {
    let eps: Vec<String> = etcd.urls().iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "backend = \"etcd\"\nmaster_key = \"master-key\"\n[store.etcd]\nendpoints = [{}]\nprefix = \"{prefix}\"\n\
         request_timeout = \"5s\"\nmax_staleness = \"30s\"\n",
        eps.join(", ")
    )
}

pub(crate) async fn etcd_suite(cli: &Cli) -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let dir = match &cli.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let dir = dir.as_path();
    pki(dir)?;
    let etcd = if cli.etcd_endpoints.is_empty() {
        Etcd::Harness(Box::new(Cluster::start(cli.etcd_members)?))
    } else {
        Etcd::External(cli.etcd_endpoints.clone())
    };
    println!(
        "# etcd: {}, kmsd {} build, audit on",
        match &etcd {
            Etcd::Harness(_) => format!("{} member(s) on loopback (test timers)", cli.etcd_members),
            Etcd::External(_) => format!("running at {}", etcd.urls().join(", ")),
        },
        if cfg!(debug_assertions) {
            "DEBUG (figures not comparable to release)"
        } else {
            "release"
        }
    );
    if !cli.ready_only {
        nodes(cli, dir, &etcd).await?;
    }
    // (c) time to ready with many keys loaded from etcd
    if cli.keys > 0 {
        seed_and_migrate(cli, dir, &etcd).await?;
    }
    Ok(())
}

/// (a), (b) and (d): the data path, admin writes, two nodes against one.
async fn nodes(cli: &Cli, dir: &Path, etcd: &Etcd) -> Result<(), BoxError> {
    let prefix = match etcd {
        Etcd::Harness(_) => PREFIX.to_owned(),
        Etcd::External(_) => format!(
            "{PREFIX}{}/",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ),
    };
    let conc = cli.concurrency.iter().copied().max().unwrap_or(64);

    // (a) the data path: the same daemon on sled and on etcd, interleaved
    let (sled_p, _) = start_kmsd(dir, "sled", &format!("127.0.0.1:{}", free_port()?)).await?;
    let etcd_section = etcd_store(etcd, &prefix);
    let (a_p, _) = start_kmsd_store(dir, "node-a", &format!("127.0.0.1:{}", free_port()?), &etcd_section).await?;
    let sled_t = target(dir, "sled", &sled_p, cli.connections).await?;
    let a_t = target(dir, "node-a", &a_p, cli.connections).await?;
    for t in [&sled_t, &a_t] {
        KeysClient::new(t.channels[0].clone())
            .create_key(proto::CreateKeyRequest {
                name: "bench".into(),
                algorithm: 0,
                policy: None,
                exportable: false,
            })
            .await?;
    }
    let ct_for = |t: &Target| {
        let ch = t.channels[0].clone();
        async move {
            let r = CryptoClient::new(ch)
                .encrypt(proto::EncryptRequest {
                    key: "bench".into(),
                    plaintext: vec![1; 64],
                    associated_data: vec![],
                })
                .await?;
            Ok::<_, BoxError>(r.into_inner().ciphertext)
        }
    };
    let (sled_ct, etcd_ct) = (ct_for(&sled_t).await?, ct_for(&a_t).await?);
    for c in [1, conc] {
        for op in ["encrypt", "decrypt"] {
            let (mut s, mut e) = (Vec::new(), Vec::new());
            for _ in 0..cli.repeat.max(1) {
                let (ws, we) = match op {
                    "encrypt" => (Work::Encrypt(vec![1; 64]), Work::Encrypt(vec![1; 64])),
                    _ => (Work::Decrypt(sled_ct.clone()), Work::Decrypt(etcd_ct.clone())),
                };
                s.push(load(&sled_t, "bench", ws, c, cli.duration, 64).await?);
                e.push(load(&a_t, "bench", we, c, cli.duration, 64).await?);
            }
            let (s, e) = (median(s), median(e));
            println!(
                "# (a) {op} 64 B c={c}: etcd node {:.0} op/s (p99 {:.0} µs) vs sled node {:.0} op/s (p99 {:.0} µs): ratio {:.2}x",
                e.ops_per_s,
                e.p99_us,
                s.ops_per_s,
                s.p99_us,
                e.ops_per_s / s.ops_per_s.max(1e-9)
            );
        }
    }

    // (b) admin writes, one at a time, against one raw etcd round trip
    let calls = cli.admin_calls.max(5);
    let client = kmsd_etcd::EtcdClient::connect(&etcd.settings())?;
    let mut raw = Vec::with_capacity(calls);
    let key = format!("{prefix}raw-record").into_bytes();
    let value = vec![7u8; 200];
    let mut rev = 0i64;
    for _ in 0..calls {
        use kmsd_etcd::client::{Cmp, Compare, Txn, TxnOp};
        let t = Instant::now();
        let r = client
            .txn(
                Txn::new()
                    .when([Compare::ModRevision(key.clone(), Cmp::Equal, rev)])
                    .and_then([TxnOp::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease: 0,
                    }]),
            )
            .await?;
        raw.push(t.elapsed());
        if !r.succeeded {
            return Err("raw txn: compare failed".into());
        }
        rev = r.revision;
    }
    let raw_med = median_duration(raw);
    for (label, t) in [("etcd node", &a_t), ("sled node", &sled_t)] {
        let mut keys = KeysClient::new(t.channels[0].clone());
        let mut rotate = Vec::with_capacity(calls);
        let mut create = Vec::with_capacity(calls);
        for i in 0..calls {
            let s = Instant::now();
            keys.rotate_key(proto::RotateKeyRequest { name: "bench".into() })
                .await?;
            rotate.push(s.elapsed());
            let s = Instant::now();
            keys.create_key(proto::CreateKeyRequest {
                name: format!("admin-{i}"),
                algorithm: 0,
                policy: None,
                exportable: false,
            })
            .await?;
            create.push(s.elapsed());
        }
        let (r, c) = (median_duration(rotate), median_duration(create));
        println!(
            "# (b) {label}: RotateKey median {:.2} ms, CreateKey median {:.2} ms ({calls} each); one raw etcd txn \
             (compare mod_revision + put 200 B) median {:.2} ms: {:.1}x and {:.1}x",
            ms(r),
            ms(c),
            ms(raw_med),
            ms(r) / ms(raw_med).max(1e-9),
            ms(c) / ms(raw_med).max(1e-9)
        );
    }

    // (d) two nodes against one, same total callers
    let (b_p, _) = start_kmsd_store(dir, "node-b", &format!("127.0.0.1:{}", free_port()?), &etcd_section).await?;
    let b_t = target(dir, "node-b", &b_p, cli.connections).await?;
    // (node b knows the key through the watch)
    let w = Work::Encrypt(vec![1; 64]);
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..cli.repeat.max(1) {
        one.push(load(&a_t, "bench", w.clone(), conc, cli.duration, 64).await?.ops_per_s);
        let (x, y) = tokio::join!(
            load(&a_t, "bench", w.clone(), conc / 2, cli.duration, 64),
            load(&b_t, "bench", w.clone(), conc - conc / 2, cli.duration, 64)
        );
        two.push(x?.ops_per_s + y?.ops_per_s);
    }
    let (one, two) = (median_f(one), median_f(two));
    println!(
        "# (d) encrypt 64 B, {conc} callers in all: two nodes {two:.0} op/s vs one node {one:.0} op/s: ratio {:.2}x \
         (client and both nodes share this machine's cores)",
        two / one.max(1e-9)
    );
    drop((a_t, b_t, sled_t, a_p, b_p, sled_p));
    Ok(())
}

/// Seeds `cli.keys` keys in a sled store offline, migrates them to a
/// fresh etcd prefix with `kmsd migrate`'s code, then starts a node on it.
/// On an external etcd with `--work-dir`, a store an earlier run seeded
/// and copied (its mark file names the same etcd) is measured again
/// instead.
async fn seed_and_migrate(cli: &Cli, dir: &Path, etcd: &Etcd) -> Result<(), BoxError> {
    let prefix = format!("/kmsd/bench-many-{}/", cli.keys);
    let mark = dir.join(format!("many-{}.seeded", cli.keys));
    let reuse = matches!(etcd, Etcd::External(_))
        && cli.work_dir.is_some()
        && std::fs::read_to_string(&mark).is_ok_and(|m| m == etcd.urls().join(","));
    if reuse {
        println!(
            "# (c) {} keys seeded by an earlier run at {prefix} ({})",
            cli.keys,
            mark.display()
        );
    } else {
        seed(cli, dir, etcd, &prefix).await?;
        std::fs::write(&mark, etcd.urls().join(","))?;
    }
    let mut readies = Vec::new();
    let mut rss = 0.0;
    for _ in 0..cli.repeat.max(1) {
        let (p, ready) = start_kmsd_store(
            dir,
            "many",
            &format!("127.0.0.1:{}", free_port()?),
            &etcd_store(etcd, &prefix),
        )
        .await?;
        rss = rss_mib(p.child.id());
        readies.push(ready);
        drop(p);
    }
    let all: Vec<String> = readies.iter().map(|d| format!("{:.0}", ms(*d))).collect();
    println!(
        "# (c) {} keys from etcd: ready in {:.0} ms (median of {} starts: {} ms), RSS {rss:.0} MiB",
        cli.keys,
        ms(median_duration(readies.clone())),
        readies.len(),
        all.join(", ")
    );
    Ok(())
}

/// Seeds the keys in sled and copies them to `prefix` with `kmsd
/// migrate`'s code.
async fn seed(cli: &Cli, dir: &Path, etcd: &Etcd, prefix: &str) -> Result<(), BoxError> {
    use kmsd_keystore::keyring::KeyPolicy;
    use kmsd_keystore::{Algorithm, KeyName, KeyRing, KeyStore, MasterKey, RingStore, Sealer, SledStore};
    let started = Instant::now();
    let seed_dir = dir.join("seed-store");
    if seed_dir.exists() {
        std::fs::remove_dir_all(&seed_dir)?; // an earlier run's, perhaps of another size
    }
    {
        let store = Arc::new(SledStore::open(&seed_dir)?);
        store.danger_unsynced_writes(true);
        let rings = RingStore::open(store.clone(), Sealer::new(MasterKey::load(&dir.join("master-key"))?))?;
        for i in 0..cli.keys {
            rings.create(KeyRing::new(
                KeyName::parse(&format!("k{i:06}"))?,
                Algorithm::Aes256Gcm,
                KeyPolicy::default(),
                0,
            )?)?;
        }
        store.sync()?;
    }
    let seeded = started.elapsed();
    let from = write_config_store(
        dir,
        "seed",
        "127.0.0.1:1",
        "path = \"seed-store\"\nmaster_key = \"master-key\"\n",
    )?;
    let to = write_config_store(dir, "many", "127.0.0.1:1", &etcd_store(etcd, prefix))?;
    let (from, to) = (kmsd::config::Config::load(&from)?, kmsd::config::Config::load(&to)?);
    let started = Instant::now();
    let migrated = tokio::task::spawn_blocking(move || kmsd::offline::migrate(&from, &to, false, &mut |_, _| {}))
        .await?
        .map_err(|e| -> BoxError { e.into() })?;
    let copied = started.elapsed();
    println!(
        "# (c) seeded {} keys in sled in {:.1} s; kmsd migrate to etcd in {:.1} s ({migrated:?})",
        cli.keys,
        seeded.as_secs_f64(),
        copied.as_secs_f64()
    );
    Ok(())
}

async fn target(dir: &Path, name: &str, p: &Proc, connections: usize) -> Result<Target, BoxError> {
    let addr = format!("unix:{}", dir.join(format!("{name}.sock")).display());
    Ok(Target {
        channels: connect_n(dir, &addr, connections).await?,
        pid: p.child.id(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_duration(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}
