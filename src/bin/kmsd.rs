//! `kmsd`: the daemon. Parses flags, sets up logging, calls the server.
#![forbid(unsafe_code)]
use clap::{Parser, Subcommand};
use kmsd::config::{Config, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kmsd", version, about = "Isolated encryption and key-management daemon")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with a configuration file.
    Serve {
        /// TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Embedded dev setup: creates (or reuses) a dev CA, certificates, master
    /// key and store under DIR, and serves on DIR/kmsd.sock and 127.0.0.1:7443.
    Dev {
        /// State directory.
        #[arg(long, default_value = "kmsd-dev")]
        dir: PathBuf,
        /// TCP listener (loopback or private only).
        #[arg(long, default_value = "127.0.0.1:7443")]
        tcp: SocketAddr,
        /// Serve on the Unix socket only.
        #[arg(long)]
        no_tcp: bool,
    },
    /// Write a new random 32-byte master key file (mode 0600; never overwrites).
    Init {
        /// Where to write it.
        #[arg(long)]
        master_key: PathBuf,
    },
    /// Re-seal every stored record under a new master key (offline; resumable).
    /// While it is incomplete, set store.previous_master_key to the old key.
    Rekey {
        /// TOML configuration (its master key is the current one).
        #[arg(long)]
        config: PathBuf,
        /// The new master key file (make one with `kmsd init`).
        #[arg(long)]
        new_master_key: PathBuf,
    },
    /// Restore a snapshot from `kmsctl backup` into an empty store (offline).
    Restore {
        /// TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Snapshot file.
        file: PathBuf,
    },
    /// Copy every sealed record from one configuration's store to another's
    /// (offline; byte for byte, never unsealed; e.g. sled to etcd). Both must
    /// use the same master key; the source's daemon(s) must be stopped.
    Migrate {
        /// Configuration of the store to copy from.
        #[arg(long)]
        from: PathBuf,
        /// Configuration of the store to copy to (empty, unless --resume).
        #[arg(long)]
        to: PathBuf,
        /// Continue an interrupted migration: records already at the
        /// destination with the same bytes are skipped (different bytes stop it).
        #[arg(long)]
        resume: bool,
    },
    /// Enrol an officer's TOTP second factor (offline; for the first officer).
    OfficerEnroll {
        /// TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// The officer's identity.
        identity: String,
        /// Replace an existing enrolment.
        #[arg(long)]
        replace: bool,
    },
    /// Verify the audit log (offline): every retained file, oldest first,
    /// or the file(s) given, in chain order; or, given directories, one
    /// chain per directory (one per node of a cluster), each on its own.
    AuditVerify {
        /// TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Audit log file(s) of one chain, or one directory per node
        /// holding that node's files (named as `[audit] path` names them);
        /// default: the rotated files and the live log of `[audit] path`.
        files: Vec<PathBuf>,
    },
    /// Validate a configuration file and report every problem.
    CheckConfig {
        /// TOML configuration.
        file: PathBuf,
    },
}

#[cfg(feature = "dev")]
use kmsd::dev;

/// A build without the cargo feature `dev` (a packaged daemon): `kmsd dev`
/// says so and exits.
#[cfg(not(feature = "dev"))]
mod dev {
    use kmsd::config::Config;
    use std::net::SocketAddr;
    use std::path::Path;

    /// Never made: there is no dev setup in this build.
    pub enum DevPaths {}

    pub fn setup(_: &Path, _: Option<SocketAddr>) -> Result<(Config, DevPaths), String> {
        Err("the dev setup is not in this build (built without the cargo feature `dev`)".into())
    }

    pub fn print_exports(p: &DevPaths, _: &Config) -> Result<(), String> {
        match *p {}
    }
}

/// Prefix of kmsd's own journal fields (`KMSD_OP`, ...); the README names them.
const JOURNAL_FIELD_PREFIX: &str = "KMSD";

/// Logs to journald when started by systemd with its journal connected
/// (`JOURNAL_STREAM`), else to stderr as text or JSON. In the journal each
/// event field is its own field with a `KMSD_` prefix (`KMSD_IDENTITY`,
/// `KMSD_OP`, `KMSD_KEY`, `KMSD_CODE`, `KMSD_MICROS`, ...), so operators can
/// filter (`journalctl -u kmsd KMSD_OP=key.rotate`) and fields never
/// collide with journald's own (`PRIORITY`, `CODE_FILE`, ...).
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("KMSD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter())
                .with(
                    journald
                        .with_syslog_identifier("kmsd".into())
                        .with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into())),
                )
                .init();
            return;
        }
    }
    let filter = filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("kmsd: {msg}");
    ExitCode::FAILURE
}

/// Runs an offline command against the store of the configuration at
/// `config`, printing what it did.
fn offline<T: std::fmt::Display>(config: &std::path::Path, f: impl FnOnce(&Config) -> Result<T, String>) -> ExitCode {
    init_tracing(LogFormat::Text);
    match Config::load(config).map_err(|e| e.to_string()).and_then(|c| f(&c)) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// A progress bar on stderr for an offline command.
fn progress(what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

/// Runs `f` with a progress callback drawing a bar, finished if it succeeds.
fn with_progress<T, E>(what: &str, f: impl FnOnce(kmsd::offline::Progress<'_>) -> Result<T, E>) -> Result<T, E> {
    let pb = progress(what);
    let out = f(&mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    if out.is_ok() {
        pb.finish();
    }
    out
}

fn main() -> ExitCode {
    // Before anything can start a thread (sled, tokio): this clears LISTEN_*.
    let passed = kmsd::ops::os::take_listen_fds();
    let cli = Cli::parse();
    // Test builds only (kmsd_keystore::failpoints): injected faults.
    match kmsd_keystore::failpoints::configure_from_env() {
        Ok(0) => {}
        Ok(n) => eprintln!("kmsd: {n} failpoint(s) configured from FAILPOINTS (a test build)"),
        Err(e) => return fail(e),
    }
    let (config, dev) = match cli.cmd {
        Cmd::Init { master_key } => {
            return match kmsd_keystore::MasterKey::create_file(&master_key) {
                Ok(_) => {
                    println!("wrote a new master key to {} (mode 0600)", master_key.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            };
        }
        Cmd::Rekey { config, new_master_key } => {
            return offline(&config, |cfg| {
                with_progress("rekey", |p| kmsd::offline::rekey(cfg, &new_master_key, p))
            })
        }
        Cmd::Restore { config, file } => {
            return offline(&config, |cfg| {
                with_progress("restore", |p| kmsd::offline::restore(cfg, &file, p))
            })
        }
        Cmd::Migrate { from, to, resume } => {
            return offline(&from, |src| {
                let dst = Config::load(&to).map_err(|e| e.to_string())?;
                with_progress("migrate", |p| kmsd::offline::migrate(src, &dst, resume, p))
            })
        }
        Cmd::OfficerEnroll {
            config,
            identity,
            replace,
        } => return offline(&config, |cfg| kmsd::offline::officer_enrol(cfg, &identity, replace)),
        Cmd::AuditVerify { config, files } => {
            let dirs = files.iter().filter(|f| f.is_dir()).count();
            return match dirs {
                0 => offline(&config, |cfg| kmsd::offline::audit_verify(cfg, files)),
                n if n == files.len() => offline(&config, |cfg| kmsd::offline::audit_verify_nodes(cfg, &files)),
                _ => fail("give the files of one chain, or one directory per node, not both"),
            };
        }
        Cmd::CheckConfig { file } => {
            let problems = Config::check_file(&file);
            if problems.is_empty() {
                println!("{}: OK", file.display());
                return ExitCode::SUCCESS;
            }
            for p in &problems {
                eprintln!("{p}");
            }
            return fail(format!("{} problem(s) found", problems.len()));
        }
        Cmd::Serve { config } => match Config::load(&config) {
            Ok(c) => (c, None),
            Err(e) => return fail(e),
        },
        Cmd::Dev { dir, tcp, no_tcp } => match dev::setup(&dir, (!no_tcp).then_some(tcp)) {
            Ok((c, paths)) => (c, Some(paths)),
            Err(e) => return fail(e),
        },
    };
    let hardening = kmsd::ops::os::harden();
    init_tracing(config.log.format);
    tracing::info!(
        non_dumpable = hardening.non_dumpable,
        no_core_dumps = hardening.no_core,
        memory_locked = hardening.memory_locked,
        "process hardening"
    );
    if let Some(note) = &hardening.memory_note {
        tracing::warn!("{note}");
    }
    if let Some(p) = &dev {
        if let Err(e) = dev::print_exports(p, &config) {
            return fail(e);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    match rt.block_on(async { kmsd::server::run(config, passed, kmsd::server::Signals::from_os()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kmsd failed");
            fail(e)
        }
    }
}
