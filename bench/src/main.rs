//! `kmsd-bench`: drives a real kmsd over mTLS and reports every result as
//! a ratio to baselines measured in the same run with the same harness:
//! (1) a bare tonic echo service over the same mTLS transport and message
//! shape (the transport floor), (2) in-process AES-256-GCM envelopes (the
//! crypto floor), and (3) `openssl speed` for the raw AEAD.
//!
//! `kmsd-bench` alone starts its own daemon and echo server (audit trail
//! on), runs the matrix and prints a table; see `--help` and BENCHMARKS.md.
#![forbid(unsafe_code)]
mod client_lib;
mod echo;
mod etcd;
mod floors;
mod load;
mod matrix;
mod scale;
mod setup;
mod sign;

use clap::{Parser, Subcommand};
use kmsd::dev::{write_file, Ca};
use kmsd::proto::{self, crypto_client::CryptoClient, keys_client::KeysClient, mask_client::MaskClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
#[allow(unused_imports)]
use {echo::*, etcd::*, floors::*, load::*, matrix::*, scale::*, setup::*};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "kmsd-bench", about = "Benchmark kmsd against same-run baselines")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Measuring time per case.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent callers (comma-separated list).
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// HTTP/2 connections the callers are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Payload sizes in bytes.
    #[arg(long, default_value = "64,1024,16384,65536", value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Operations: encrypt, decrypt, rewrap, redact, batch.
    #[arg(long, default_value = "encrypt,decrypt,rewrap,redact,batch", value_delimiter = ',')]
    ops: Vec<String>,
    /// unix or tcp.
    #[arg(long, default_value = "unix")]
    transport: String,
    /// Runs per case; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Items per batch for the batch case.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Also measure a store with this many keys (ready time, RSS, throughput ratio).
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Also measure a key with this many versions.
    #[arg(long, default_value_t = 0)]
    versions: u32,
    /// Run the etcd-backend figures instead of the matrix (issue 13): a
    /// node on etcd against one on sled, admin writes against one etcd
    /// transaction, two nodes against one, and with --keys the time to
    /// ready with that many keys loaded from etcd.
    #[arg(long)]
    etcd: bool,
    /// etcd members (with --etcd).
    #[arg(long, default_value_t = 1)]
    etcd_members: usize,
    /// Use this running etcd (comma-separated client URLs) instead of
    /// starting the harness's (with --etcd): with --work-dir, a store of
    /// --keys keys seeded by an earlier run is reused, not seeded again.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Keep the PKI, master key and seeded stores here (with --etcd;
    /// default: a fresh temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Only (c), the time to ready with --keys keys (with --etcd).
    #[arg(long)]
    ready_only: bool,
    /// Sequential admin calls of each kind timed (with --etcd).
    #[arg(long, default_value_t = 200)]
    admin_calls: usize,
    /// Skip `openssl speed`.
    #[arg(long)]
    no_openssl: bool,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Drive a running `kmsd dev` in this directory (its socket and dev
    /// client certificate) instead of starting a daemon.
    #[arg(long)]
    dev_dir: Option<PathBuf>,
    /// The running daemon's pid, for its CPU seconds (with --dev-dir).
    #[arg(long)]
    daemon_pid: Option<u32>,
}

#[derive(Subcommand)]
enum Sub {
    /// The client library: envelope seal with cached data keys against
    /// direct Encrypt calls, and stream encryption against openssl speed.
    Client {
        /// Measuring time per case.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Runs per case; medians are reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Concurrent callers (comma-separated list).
        #[arg(long, default_value = "1,64", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// GiB per stream.
        #[arg(long, default_value_t = 1)]
        gib: u64,
    },
    /// Signatures and MACs (issue 17): Sign and Verify op/s for ES256,
    /// PS256-3072 and Ed25519 against `openssl speed` in the same run and
    /// the keystore's primitive in-process; Mac against Encrypt at 64 B.
    Sign {
        /// Measuring time per case (openssl speed gets the same, at least 1 s).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Runs per case; medians are reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Concurrent callers (comma-separated list).
        #[arg(long, default_value = "1,16", value_delimiter = ',')]
        concurrency: Vec<usize>,
        /// Skip `openssl speed`.
        #[arg(long)]
        no_openssl: bool,
    },
    /// (internal) The echo baseline server.
    EchoServer {
        /// Directory with the PKI.
        #[arg(long)]
        dir: PathBuf,
        /// Unix socket to serve on.
        #[arg(long)]
        socket: PathBuf,
        /// TCP address to serve on.
        #[arg(long)]
        tcp: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kmsd-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match &cli.cmd {
        Some(Sub::EchoServer { dir, socket, tcp }) => rt.block_on(echo_server(dir, socket, tcp)),
        Some(Sub::Client {
            duration,
            repeat,
            concurrency,
            gib,
        }) => rt.block_on(client_lib::client_bench(*duration, *repeat, concurrency, *gib)),
        Some(Sub::Sign {
            duration,
            repeat,
            concurrency,
            no_openssl,
        }) => rt.block_on(sign::sign_bench(*duration, *repeat, concurrency, *no_openssl)),
        None if cli.etcd => rt.block_on(etcd_suite(&cli)),
        None => rt.block_on(run(cli)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmsd-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
