//! `kmsctl`: the command-line client. Errors print one line and exit 1.
#![forbid(unsafe_code)]
use base64::Engine as _;
use clap::{Parser, Subcommand};
use kmsd::client::{self, ClientSettings};
use kmsd::proto;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kmsctl", version, about = "Command-line client for kmsd")]
struct Cli {
    /// Daemon address: unix:/path or host:port.
    #[arg(long, env = "KMSD_ADDR", global = true)]
    addr: Option<String>,
    /// CA certificate that signed the daemon's certificate.
    #[arg(long, env = "KMSD_CA", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, env = "KMSD_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client private key (`--key` names the kmsd key in subcommands).
    #[arg(long = "tls-key", env = "KMSD_KEY", global = true)]
    tls_key: Option<PathBuf>,
    /// Server name to verify (default: TCP host, or localhost for a socket).
    #[arg(long, env = "KMSD_SERVER_NAME", global = true)]
    server_name: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Key administration.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Encrypt DATA (or stdin with -) and print the ciphertext in base64.
    Encrypt {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Associated data (authenticated, not encrypted).
        #[arg(long, default_value = "")]
        aad: String,
        /// Plaintext, or - for stdin.
        #[arg(default_value = "-")]
        data: String,
    },
    /// Decrypt a base64 ciphertext (or stdin with -) and write the plaintext bytes.
    Decrypt {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Associated data given at encryption.
        #[arg(long, default_value = "")]
        aad: String,
        /// Base64 ciphertext, or - for stdin.
        #[arg(default_value = "-")]
        data: String,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key.
    Create {
        /// Key name.
        name: String,
    },
    /// List key names.
    List {
        /// Only names with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Show a key's metadata (never material).
    Show {
        /// Key name.
        name: String,
    },
    /// Add a new version and make it primary.
    Rotate {
        /// Key name.
        name: String,
    },
}

fn settings(cli: &Cli) -> Result<ClientSettings, String> {
    let need = |v: &Option<PathBuf>, what: &str| {
        v.clone()
            .ok_or_else(|| format!("{what} is not set (flag or environment)"))
    };
    Ok(ClientSettings {
        addr: cli
            .addr
            .clone()
            .ok_or("KMSD_ADDR is not set (flag --addr or environment)")?,
        ca: need(&cli.ca, "KMSD_CA")?,
        cert: need(&cli.cert, "KMSD_CERT")?,
        key: need(&cli.tls_key, "KMSD_KEY")?,
        server_name: cli.server_name.clone(),
    })
}

fn read_input(data: &str) -> Result<Vec<u8>, String> {
    if data == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading stdin: {e}"))?;
        Ok(buf)
    } else {
        Ok(data.as_bytes().to_vec())
    }
}

fn status_line(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn print_key(k: &proto::KeyInfo) {
    println!("name: {}", k.name);
    println!("primary_version: {}", k.primary_version);
    println!("created_at: {}", k.created_at);
    for v in &k.versions {
        let state = proto::VersionState::try_from(v.state)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        println!("version {}: {} created_at={}", v.version, state, v.created_at);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let channel = client::connect(&settings(&cli)?).await.map_err(|e| e.0)?;
    let mut keys = proto::keys_client::KeysClient::new(channel.clone());
    let mut crypto = proto::crypto_client::CryptoClient::new(channel);
    match cli.cmd {
        Cmd::Key(KeyCmd::Create { name }) => {
            let k = keys
                .create_key(proto::CreateKeyRequest { name, algorithm: 0 })
                .await
                .map_err(status_line)?;
            print_key(k.get_ref());
        }
        Cmd::Key(KeyCmd::Show { name }) => {
            let k = keys.get_key(proto::GetKeyRequest { name }).await.map_err(status_line)?;
            print_key(k.get_ref());
        }
        Cmd::Key(KeyCmd::Rotate { name }) => {
            let k = keys
                .rotate_key(proto::RotateKeyRequest { name })
                .await
                .map_err(status_line)?;
            print_key(k.get_ref());
        }
        Cmd::Key(KeyCmd::List { prefix }) => {
            let mut page_token = String::new();
            loop {
                let r = keys
                    .list_keys(proto::ListKeysRequest {
                        page_size: 1000,
                        page_token,
                        prefix: prefix.clone(),
                    })
                    .await
                    .map_err(status_line)?
                    .into_inner();
                for n in r.names {
                    println!("{n}");
                }
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
        }
        Cmd::Encrypt { key, aad, data } => {
            let plaintext = read_input(&data)?;
            let r = crypto
                .encrypt(proto::EncryptRequest {
                    key,
                    plaintext,
                    associated_data: aad.into_bytes(),
                })
                .await
                .map_err(status_line)?;
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(&r.get_ref().ciphertext)
            );
        }
        Cmd::Decrypt { key, aad, data } => {
            let text = read_input(&data)?;
            let ciphertext = base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&text).trim())
                .map_err(|_| "the ciphertext is not valid base64".to_string())?;
            let r = crypto
                .decrypt(proto::DecryptRequest {
                    key,
                    ciphertext,
                    associated_data: aad.into_bytes(),
                })
                .await
                .map_err(status_line)?;
            std::io::stdout()
                .write_all(&r.get_ref().plaintext)
                .map_err(|e| format!("writing stdout: {e}"))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kmsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmsctl: {e}");
            ExitCode::FAILURE
        }
    }
}
