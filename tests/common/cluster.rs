//! A kmsd cluster for tests (issue 13): a real etcd cluster on loopback
//! (kmsd_etcd's harness: ephemeral ports, short raft timers) and N real
//! `kmsd serve` processes on it, each with its own directory (socket,
//! state, audit log, log file) and the same master key, CA and policy;
//! clients over real mTLS to any node; nodes killed and restarted, etcd
//! members killed, stopped and continued.
use super::{free_port, write_config, Daemon, Pki};
use kmsd::proto::{crypto_client::CryptoClient, keys_client::KeysClient};
use kmsd_etcd::testing::Cluster;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

/// The etcd key prefix every node of a test cluster uses.
pub const PREFIX: &str = "/kmsd/test/";

/// Timers for tests: etcd requests time out in 2 s, a node serves from
/// its cache at most 5 s after its last confirmation (generous: a loaded
/// CI machine must not see a stale cache where a test does not look for
/// one; tests of staleness set their own).
pub const STORE_TIMERS: &str = "connect_timeout = \"500ms\"\nrequest_timeout = \"2s\"\nmax_staleness = \"5s\"\n";

/// Short timers for the tests of a lost quorum: requests time out in 1 s,
/// the cache is refused 3 s after its last confirmation.
pub const SHORT_TIMERS: &str = "connect_timeout = \"500ms\"\nrequest_timeout = \"1s\"\nmax_staleness = \"3s\"\n";

/// etcd plus kmsd nodes (see the module documentation).
pub struct KmsCluster {
    /// The etcd members (kill/stop/cont/restart them through it).
    pub etcd: Cluster,
    /// Holds every node's directory.
    pub root: tempfile::TempDir,
    /// The nodes, in start order.
    pub nodes: Vec<Daemon>,
}

impl KmsCluster {
    /// `members` etcd members and `nodes` kmsd nodes with [`STORE_TIMERS`];
    /// `extra` is appended to each node's configuration (whole tables,
    /// such as `[limits]`).
    pub fn start(members: usize, nodes: usize, extra: &str) -> Self {
        Self::start_with(members, nodes, STORE_TIMERS, extra)
    }

    /// [`KmsCluster::start`] with other `[store.etcd]` timer lines.
    pub fn start_with(members: usize, nodes: usize, timers: &str, extra: &str) -> Self {
        Self::start_env(members, nodes, timers, extra, &[])
    }

    /// [`KmsCluster::start_with`], every node started with `env` in its
    /// environment (such as `FAILPOINTS`; a restarted node has it no more).
    pub fn start_env(members: usize, nodes: usize, timers: &str, extra: &str, env: &[(&str, &str)]) -> Self {
        Self::start_full(members, nodes, timers, extra, env, |_| {})
    }

    /// [`KmsCluster::start_with`] after `prepare` ran on the shared
    /// directory (more client certificates from its [`Pki`], another
    /// `policy.toml`): each node gets a copy of every file there.
    pub fn start_prepared(members: usize, nodes: usize, timers: &str, extra: &str, prepare: impl FnOnce(&Pki)) -> Self {
        Self::start_full(members, nodes, timers, extra, &[], prepare)
    }

    fn start_full(
        members: usize,
        nodes: usize,
        timers: &str,
        extra: &str,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Pki),
    ) -> Self {
        let etcd = Cluster::start(members).expect("a real etcd cluster (apt-get install etcd-server)");
        let root = tempfile::Builder::new().prefix("kmsd-cluster-").tempdir().unwrap();
        // one CA, server and client certificate, master key and policy
        let shared = root.path().join("shared");
        let pki = Pki::new(&shared);
        kmsd_keystore::MasterKey::create_file(&shared.join("master-key")).unwrap();
        std::fs::write(shared.join("policy.toml"), super::TEST_POLICY).unwrap();
        prepare(&pki);
        let mut c = KmsCluster {
            etcd,
            root,
            nodes: Vec::new(),
        };
        for i in 0..nodes {
            let dir = c.root.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in std::fs::read_dir(&shared).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
            }
            let tcp = format!("127.0.0.1:{}", free_port());
            let config = write_config(&dir, Some(&tcp), "");
            set_store(&config, &c.store_section(timers), extra);
            let mut d = Daemon::new(&dir, Some(tcp));
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"));
            cmd.args(["serve", "--config"]).arg(&config).envs(env.iter().copied());
            d.spawn_command(cmd);
            c.nodes.push(d);
        }
        c
    }

    /// The `[store]` section of every node.
    fn store_section(&self, timers: &str) -> String {
        let endpoints: Vec<String> = self
            .etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"http://{e}\""))
            .collect();
        format!(
            "backend = \"etcd\"\nmaster_key = \"master-key\"\n[store.etcd]\nendpoints = [{}]\nprefix = \"{PREFIX}\"\n{timers}",
            endpoints.join(", ")
        )
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Daemon {
        &self.nodes[i]
    }

    /// Node `i`'s directory.
    pub fn dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// Crypto and Keys clients of node `i` (mTLS over its Unix socket).
    pub async fn clients(&self, i: usize) -> (CryptoClient<Channel>, KeysClient<Channel>) {
        self.nodes[i].clients().await
    }

    /// Kills node `i` (`SIGKILL`).
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again (after [`KmsCluster::kill_node`] or not) on
    /// its directory, and waits until it is ready.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i].restart_after_stop();
    }

    /// What the scheduler leader record (`<prefix>lleader`) holds: the
    /// leader's host and pid, `None` when no node leads.
    pub fn leader_record(&self) -> Option<String> {
        let settings = self.etcd.settings();
        kmsd_etcd::testing::block_on(async move {
            let c = kmsd_etcd::EtcdClient::connect(&settings).unwrap();
            c.get(format!("{PREFIX}lleader").into_bytes()).await.unwrap()
        })
        .map(|kv| String::from_utf8(kv.value).unwrap())
    }

    /// The node the leader record names (`None`: none, or a process that
    /// is not one of the running nodes).
    pub fn leader(&self) -> Option<usize> {
        let record = self.leader_record()?;
        self.nodes
            .iter()
            .position(|d| d.child.is_some() && record.ends_with(&format!(" pid {}", d.pid())))
    }

    /// Every node's audit log.
    pub fn audit_logs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|d| d.dir.join("audit.log")).collect()
    }
}

/// Replaces the `[store]` section of the config at `config` with `store`,
/// then appends `extra`.
fn set_store(config: &Path, store: &str, extra: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let (head, _) = text.split_once("[store]").unwrap();
    std::fs::write(config, format!("{head}[store]\n{store}\n{extra}")).unwrap();
}
