//! `kmsctl`: the command-line client. Errors print one line and exit 1.
#![forbid(unsafe_code)]
use base64::Engine as _;
use clap::{Parser, Subcommand};
use kmsd::client::{self, ClientSettings};
use kmsd::proto;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_stream::StreamExt as _;

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
    /// An officer's one-time code (TOTP) for administrative calls; asked
    /// for interactively when needed and not given.
    #[arg(long, env = "KMSD_OTP", global = true)]
    otp: Option<String>,
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
    /// Re-encrypt a base64 ciphertext under the key's primary version (no plaintext returned).
    Rewrap {
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
    /// Generate a data key: prints JSON with the plaintext key (base64) and its wrapped form.
    Datakey {
        /// Key that wraps the data key.
        #[arg(long)]
        key: String,
        /// 128, 192 or 256.
        #[arg(long, default_value_t = 256)]
        bits: u32,
        /// Associated data bound to the wrapped key.
        #[arg(long, default_value = "")]
        aad: String,
        /// Return only the wrapped form.
        #[arg(long)]
        wrapped_only: bool,
    },
    /// Write an integrity-protected snapshot of every key ring to FILE (records stay sealed).
    Backup {
        /// Output file (created, mode 0600).
        file: PathBuf,
    },
    /// Daemon health, version, uptime, key count and next scheduled rotation.
    Status,
    /// Officers' second factor.
    #[command(subcommand)]
    Officer(OfficerCmd),
    /// Dual-control requests.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Re-read the daemon's policy file (as SIGHUP does).
    ReloadPolicy,
    /// Redact text lines from stdin to stdout, exactly one output line per
    /// input line. Offline: no daemon needed.
    Redact {
        /// Only these kinds (comma-separated, e.g. PAN,IBAN); default all.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
    },
    /// Mask one value of a kind (PAN, IBAN, UK_SORT_CODE, UK_ACCOUNT_NUMBER,
    /// EMAIL, PHONE, NAME, SECRET, ...). Offline.
    Mask {
        /// The kind.
        #[arg(long)]
        kind: String,
        /// PAN only: also keep the 6- or 8-digit BIN.
        #[arg(long)]
        keep_bin: Option<u8>,
        /// The value.
        value: String,
    },
    /// Tokenize a value under a kmsd key (deterministic, reversible).
    Tokenize {
        /// Tokenization key name.
        #[arg(long)]
        key: String,
        /// The kind.
        #[arg(long)]
        kind: String,
        /// The value.
        value: String,
    },
    /// Reverse a token.
    Detokenize {
        /// Tokenization key name.
        #[arg(long)]
        key: String,
        /// The kind.
        #[arg(long)]
        kind: String,
        /// Key version printed by tokenize (required for PAN, sort code,
        /// account number and phone tokens; 0 = primary for the others).
        #[arg(long, default_value_t = 0)]
        key_version: u32,
        /// The token.
        token: String,
    },
    /// Restore a snapshot into the daemon's empty store (same master key).
    Restore {
        /// Snapshot file from `kmsctl backup`.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum OfficerCmd {
    /// Create an officer's TOTP secret. Your own: prints the otpauth URI and
    /// a QR code. Another identity's: the secret waits for that officer to
    /// run `kmsctl officer claim` with its own certificate (`--replace` of
    /// another officer's enrolment also needs a second officer's approval).
    Enroll {
        /// The officer's identity (URI SAN or sha256:<SPKI hash>).
        identity: String,
        /// Replace an existing enrolment.
        #[arg(long)]
        replace: bool,
    },
    /// Take the TOTP secret waiting for your own identity (once): prints
    /// the otpauth URI and a QR code.
    Claim,
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Pending dual-control requests.
    List,
    /// Approve a request (as a second, different officer).
    Approve {
        /// Request id.
        id: String,
    },
    /// Reject a request.
    Reject {
        /// Request id.
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify an audit log (several files: in chain order); prints OK with a
    /// count, or the first broken record.
    Verify {
        /// Audit log file(s).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PolicyArgs {
    /// Rotate when the primary is this old (e.g. 90d, 12h; 0 disables).
    #[arg(long, value_parser = humantime::parse_duration)]
    rotation_period: Option<std::time::Duration>,
    /// Rotate before a version encrypts more than N messages (0 disables).
    #[arg(long)]
    max_encryptions: Option<u64>,
    /// Versions below this never decrypt.
    #[arg(long)]
    min_decryption_version: Option<u32>,
    /// Versions below this never encrypt.
    #[arg(long)]
    min_encryption_version: Option<u32>,
    /// Whether the whole key may be scheduled for deletion.
    #[arg(long)]
    deletion_allowed: Option<bool>,
    /// Whether a manual rotation restarts the schedule.
    #[arg(long)]
    manual_rotation_resets_schedule: Option<bool>,
    /// What the key is for, at creation: `encrypt` (default) or `tokenize`
    /// (a token key never rotates by itself unless --allow-token-rotation).
    #[arg(long, value_parser = ["encrypt", "tokenize"])]
    purpose: Option<String>,
    /// Let a token key rotate automatically (every token then changes).
    #[arg(long)]
    allow_token_rotation: Option<bool>,
}

impl PolicyArgs {
    fn to_proto(&self) -> proto::KeyPolicy {
        proto::KeyPolicy {
            rotation_period_seconds: self.rotation_period.map(|d| d.as_secs()),
            max_encryptions_per_version: self.max_encryptions,
            min_decryption_version: self.min_decryption_version,
            min_encryption_version: self.min_encryption_version,
            deletion_allowed: self.deletion_allowed,
            manual_rotation_resets_schedule: self.manual_rotation_resets_schedule,
            purpose: self.purpose.as_deref().map(|p| match p {
                "tokenize" => proto::KeyPurpose::Tokenize as i32,
                _ => proto::KeyPurpose::EncryptDecrypt as i32,
            }),
            allow_token_rotation: self.allow_token_rotation,
        }
    }
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key.
    Create {
        /// Key name.
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
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
    /// Show each version's state and usage (is it still used? safe to retire?).
    Versions {
        /// Key name.
        name: String,
    },
    /// Add a new version and make it primary.
    Rotate {
        /// Key name.
        name: String,
    },
    /// Change a key's policy (only the given fields).
    Policy {
        /// Key name.
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Set a non-primary version to decrypt-only or disabled.
    SetState {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
        /// decrypt-only or disabled.
        state: String,
    },
    /// Schedule a version's destruction after a waiting period.
    DestroyVersion {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
        /// Waiting period (default 30d; at least 1d, 1s in dev mode).
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Cancel a scheduled version destruction (the version becomes disabled).
    CancelDestroy {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Schedule deletion of the whole key (needs deletion_allowed).
    Delete {
        /// Key name.
        name: String,
        /// Waiting period (default 30d).
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Cancel a scheduled key deletion.
    CancelDelete {
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
    if s.code() == tonic::Code::FailedPrecondition {
        if let Some(id) = s.metadata().get("x-kmsd-approval-id").and_then(|v| v.to_str().ok()) {
            return format!("{APPROVAL_PENDING}{id}: {}", s.message());
        }
    }
    format!("{:?}: {}", s.code(), s.message())
}

/// Prints an officer's new TOTP secret: URI, base32 and a QR code.
fn print_enrolment(r: &proto::EnrollOfficerResponse) {
    println!("{}", r.otpauth_uri);
    println!("secret (base32): {}", r.secret_base32);
    match qrcode::QrCode::new(r.otpauth_uri.as_bytes()) {
        Ok(code) => println!(
            "{}",
            code.render::<qrcode::render::unicode::Dense1x2>()
                .quiet_zone(true)
                .build()
        ),
        Err(e) => eprintln!("kmsctl: no QR code: {e}"),
    }
}

/// Marks an error that is really "waiting for a second officer".
const APPROVAL_PENDING: &str = "pending approval ";

/// The one-time code, sent as `x-kmsd-otp` on every call when set.
static OTP: std::sync::OnceLock<http::HeaderValue> = std::sync::OnceLock::new();

fn add_otp(mut req: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    if let Some(v) = OTP.get() {
        req.headers_mut().insert("x-kmsd-otp", v.clone());
    }
    req
}

type Chan = tower::util::MapRequest<
    tonic::transport::Channel,
    fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>,
>;

fn time(t: i64) -> String {
    if t <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64)).to_string()
}

fn state_name(s: i32) -> &'static str {
    proto::VersionState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

fn print_key(k: &proto::KeyInfo) {
    println!("name: {}", k.name);
    println!("primary_version: {}", k.primary_version);
    println!("created_at: {}", time(k.created_at));
    println!("next_rotation_at: {}", time(k.next_rotation_at));
    if k.delete_at > 0 {
        println!("delete_at: {}", time(k.delete_at));
    }
    if let Some(p) = &k.policy {
        println!(
            "policy: rotation_period={}s max_encryptions_per_version={} min_decryption_version={} \
             min_encryption_version={} deletion_allowed={} manual_rotation_resets_schedule={}",
            p.rotation_period_seconds.unwrap_or(0),
            p.max_encryptions_per_version.unwrap_or(0),
            p.min_decryption_version.unwrap_or(0),
            p.min_encryption_version.unwrap_or(0),
            p.deletion_allowed.unwrap_or(false),
            p.manual_rotation_resets_schedule.unwrap_or(false)
        );
    }
    for v in &k.versions {
        println!(
            "version {}: {} created_at={}",
            v.version,
            state_name(v.state),
            time(v.created_at)
        );
    }
    for e in &k.rotations {
        let reason = proto::RotationReason::try_from(e.reason)
            .map(|r| r.as_str_name())
            .unwrap_or("UNKNOWN");
        println!(
            "rotation: {} v{} -> v{} ({reason})",
            time(e.at),
            e.from_version,
            e.to_version
        );
    }
}

fn print_versions(k: &proto::KeyInfo) {
    println!(
        "{:>7}  {:<26} {:>12} {:>12}  {:<20} {:<20} DESTROY_AT",
        "VERSION", "STATE", "ENCRYPTIONS", "DECRYPTIONS", "LAST_USED", "CREATED"
    );
    for v in &k.versions {
        println!(
            "{:>7}  {:<26} {:>12} {:>12}  {:<20} {:<20} {}",
            v.version,
            state_name(v.state),
            v.encryptions,
            v.decryptions,
            time(v.last_used_at),
            time(v.created_at),
            time(v.destroy_at)
        );
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &[u8]) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(text).trim())
        .map_err(|_| "the ciphertext is not valid base64".to_string())
}

fn bar(total: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

fn parse_kind(s: &str) -> Result<kmsd::masking::Kind, String> {
    s.to_ascii_uppercase()
        .replace('-', "_")
        .parse()
        .map_err(|_| format!("unknown kind {s:?}"))
}

fn proto_kind(s: &str) -> Result<i32, String> {
    let k = parse_kind(s)?;
    proto::DataKind::from_str_name(k.as_str())
        .map(|k| k as i32)
        .ok_or_else(|| format!("unknown kind {s:?}"))
}

/// `kmsctl redact`: one line in, one line out, bytes preserved except the
/// findings (a line that is not UTF-8 is read lossily).
fn redact_stdin(kinds: &[String]) -> Result<(), String> {
    use std::io::BufRead;
    let kinds = if kinds.is_empty() {
        None
    } else {
        Some(kinds.iter().map(|k| parse_kind(k)).collect::<Result<Vec<_>, _>>()?)
    };
    let opts = kmsd::masking::RedactOptions { kinds };
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            break;
        }
        let had_newline = line.last() == Some(&b'\n');
        if had_newline {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        let r = kmsd::masking::redact(&text, &opts);
        out.write_all(r.text.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(|e| format!("writing: {e}"))?;
        if input.buffer().is_empty() {
            out.flush().map_err(|e| format!("writing: {e}"))?;
        }
    }
    out.flush().map_err(|e| format!("writing: {e}"))
}

async fn run(cli: Cli) -> Result<(), String> {
    match &cli.cmd {
        Cmd::Redact { kinds } => return redact_stdin(kinds),
        Cmd::Mask { kind, keep_bin, value } => {
            let m = kmsd::masking::mask(
                value,
                parse_kind(kind)?,
                &kmsd::masking::MaskOptions {
                    pan_keep_bin: *keep_bin,
                },
            )
            .map_err(|e| e.to_string())?;
            println!("{}", m.masked);
            if !m.valid {
                eprintln!("kmsctl: note: the value did not pass its {kind} validator");
            }
            return Ok(());
        }
        _ => {}
    }
    if let Some(code) = &cli.otp {
        let v =
            http::HeaderValue::from_str(code.trim()).map_err(|_| "the one-time code is not valid text".to_string())?;
        let _ = OTP.set(v);
    }
    let raw = client::connect(&settings(&cli)?).await.map_err(|e| e.to_string())?;
    let channel: Chan = tower::ServiceBuilder::new()
        .map_request(add_otp as fn(_) -> _)
        .service(raw);
    let mut keys = proto::keys_client::KeysClient::new(channel.clone());
    let channel = channel.clone();
    let mut crypto = proto::crypto_client::CryptoClient::new(channel.clone());
    let secs = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_secs());
    match cli.cmd {
        Cmd::Key(cmd) => {
            let info = match cmd {
                KeyCmd::Create { name, policy } => keys
                    .create_key(proto::CreateKeyRequest {
                        name,
                        algorithm: 0,
                        policy: Some(policy.to_proto()),
                    })
                    .await
                    .map_err(status_line)?,
                KeyCmd::Show { name } => keys.get_key(proto::GetKeyRequest { name }).await.map_err(status_line)?,
                KeyCmd::Versions { name } => {
                    let k = keys.get_key(proto::GetKeyRequest { name }).await.map_err(status_line)?;
                    print_versions(k.get_ref());
                    return Ok(());
                }
                KeyCmd::Rotate { name } => keys
                    .rotate_key(proto::RotateKeyRequest { name })
                    .await
                    .map_err(status_line)?,
                KeyCmd::Policy { name, policy } => keys
                    .update_key_policy(proto::UpdateKeyPolicyRequest {
                        name,
                        policy: Some(policy.to_proto()),
                    })
                    .await
                    .map_err(status_line)?,
                KeyCmd::SetState { name, version, state } => {
                    let state = match state.to_ascii_lowercase().replace('_', "-").as_str() {
                        "decrypt-only" => proto::VersionState::DecryptOnly,
                        "disabled" => proto::VersionState::Disabled,
                        _ => return Err("state must be decrypt-only or disabled".into()),
                    };
                    keys.set_version_state(proto::SetVersionStateRequest {
                        name,
                        version,
                        state: state as i32,
                    })
                    .await
                    .map_err(status_line)?
                }
                KeyCmd::DestroyVersion { name, version, wait } => keys
                    .schedule_version_destruction(proto::ScheduleVersionDestructionRequest {
                        name,
                        version,
                        waiting_period_seconds: secs(wait),
                    })
                    .await
                    .map_err(status_line)?,
                KeyCmd::CancelDestroy { name, version } => keys
                    .cancel_version_destruction(proto::CancelVersionDestructionRequest { name, version })
                    .await
                    .map_err(status_line)?,
                KeyCmd::Delete { name, wait } => keys
                    .schedule_key_deletion(proto::ScheduleKeyDeletionRequest {
                        name,
                        waiting_period_seconds: secs(wait),
                    })
                    .await
                    .map_err(status_line)?,
                KeyCmd::CancelDelete { name } => keys
                    .cancel_key_deletion(proto::CancelKeyDeletionRequest { name })
                    .await
                    .map_err(status_line)?,
                KeyCmd::List { prefix } => {
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
                            return Ok(());
                        }
                        page_token = r.next_page_token;
                    }
                }
            };
            print_key(info.get_ref());
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
            println!("{}", b64(&r.get_ref().ciphertext));
        }
        Cmd::Decrypt { key, aad, data } => {
            let ciphertext = unb64(&read_input(&data)?)?;
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
        Cmd::Rewrap { key, aad, data } => {
            let ciphertext = unb64(&read_input(&data)?)?;
            let r = crypto
                .rewrap(proto::RewrapRequest {
                    key,
                    ciphertext,
                    associated_data: aad.into_bytes(),
                })
                .await
                .map_err(status_line)?;
            println!("{}", b64(&r.get_ref().ciphertext));
        }
        Cmd::Datakey {
            key,
            bits,
            aad,
            wrapped_only,
        } => {
            let req = proto::GenerateDataKeyRequest {
                key,
                bits,
                associated_data: aad.into_bytes(),
            };
            let r = if wrapped_only {
                crypto.generate_data_key_without_plaintext(req).await
            } else {
                crypto.generate_data_key(req).await
            }
            .map_err(status_line)?
            .into_inner();
            let mut out = serde_json::json!({"ciphertext": b64(&r.ciphertext), "key_version": r.key_version});
            if !wrapped_only {
                out["plaintext"] = serde_json::Value::String(b64(&r.plaintext));
            }
            println!("{out}");
        }
        Cmd::Backup { file } => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut stream = keys
                .backup(proto::BackupRequest {})
                .await
                .map_err(status_line)?
                .into_inner();
            let tmp = file.with_extension("partial");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
            let mut pb: Option<indicatif::ProgressBar> = None;
            let mut bytes = 0u64;
            while let Some(chunk) = stream.message().await.map_err(status_line)? {
                if chunk.total_records > 0 {
                    pb = Some(bar(chunk.total_records, "backup"));
                }
                bytes += chunk.data.len() as u64;
                f.write_all(&chunk.data)
                    .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            }
            f.sync_all().map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &file).map_err(|e| format!("renaming to {}: {e}", file.display()))?;
            if let Some(pb) = pb {
                pb.set_position(pb.length().unwrap_or(0));
                pb.finish();
            }
            eprintln!("wrote {} ({bytes} bytes)", file.display());
        }
        Cmd::Status => {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let h = health
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map_err(status_line)?
                .into_inner();
            let health_name = tonic_health::pb::health_check_response::ServingStatus::try_from(h.status)
                .map(|s| s.as_str_name())
                .unwrap_or("UNKNOWN");
            let s = proto::admin_client::AdminClient::new(channel.clone())
                .status(proto::StatusRequest {})
                .await
                .map_err(status_line)?
                .into_inner();
            println!("health: {health_name}");
            println!("version: {}", s.version);
            println!(
                "uptime: {}",
                humantime::format_duration(std::time::Duration::from_secs(s.uptime_seconds))
            );
            println!("keys: {}", s.keys);
            let names = [
                "active",
                "decrypt_only",
                "disabled",
                "scheduled_for_destruction",
                "destroyed",
            ];
            let versions: Vec<String> = names
                .iter()
                .zip(&s.versions_by_state)
                .map(|(n, c)| format!("{n}={c}"))
                .collect();
            println!("versions: {}", versions.join(" "));
            println!("next_scheduled: {}", time(s.next_scheduled_at));
            if health_name != "SERVING" {
                return Err(format!("kmsd is {health_name}"));
            }
        }
        Cmd::Redact { .. } | Cmd::Mask { .. } => {}
        Cmd::ReloadPolicy => {
            proto::admin_client::AdminClient::new(channel.clone())
                .reload_policy(proto::ReloadPolicyRequest {})
                .await
                .map_err(status_line)?;
            println!("policy reloaded");
        }
        Cmd::Officer(OfficerCmd::Enroll { identity, replace }) => {
            let r = proto::admin_client::AdminClient::new(channel.clone())
                .enroll_officer(proto::EnrollOfficerRequest {
                    identity: identity.clone(),
                    replace,
                })
                .await
                .map_err(status_line)?
                .into_inner();
            if r.otpauth_uri.is_empty() {
                println!(
                    "the second factor of officer {identity} waits until {}: that officer runs \
                     `kmsctl officer claim` with its own certificate to take it (once)",
                    time(r.claim_by)
                );
            } else {
                println!("officer {identity} enrolled. Add this to your authenticator app, then discard it:");
                print_enrolment(&r);
            }
        }
        Cmd::Officer(OfficerCmd::Claim) => {
            let r = proto::admin_client::AdminClient::new(channel.clone())
                .claim_officer_secret(proto::ClaimOfficerSecretRequest {})
                .await
                .map_err(status_line)?
                .into_inner();
            println!("second factor claimed. Add this to your authenticator app, then discard it:");
            print_enrolment(&r);
        }
        Cmd::Approvals(cmd) => {
            let mut admin = proto::admin_client::AdminClient::new(channel.clone());
            match cmd {
                ApprovalsCmd::List => {
                    let r = admin
                        .list_approvals(proto::ListApprovalsRequest {})
                        .await
                        .map_err(status_line)?
                        .into_inner();
                    if r.approvals.is_empty() {
                        println!("no pending requests");
                    }
                    for a in r.approvals {
                        println!(
                            "{}  {}  requested by {}  expires {}",
                            a.id,
                            a.operation,
                            a.requester,
                            time(a.expires_at)
                        );
                        println!("    {}", a.description);
                    }
                }
                ApprovalsCmd::Approve { id } => {
                    let r = admin
                        .approve(proto::ApproveRequest { id })
                        .await
                        .map_err(status_line)?
                        .into_inner();
                    println!("approved: {}", r.result);
                }
                ApprovalsCmd::Reject { id } => {
                    admin
                        .reject(proto::RejectRequest { id: id.clone() })
                        .await
                        .map_err(status_line)?;
                    println!("rejected {id}");
                }
            }
        }
        Cmd::Audit(AuditCmd::Verify { files }) => {
            let mut admin = proto::admin_client::AdminClient::new(channel.clone());
            // The daemon's last durable record first: the files read after it
            // must reach it, so a cut tail is caught.
            let head = admin
                .audit_head(proto::AuditHeadRequest {})
                .await
                .map_err(status_line)?
                .into_inner();
            // Streamed in 1 MiB pieces, read as they are sent: neither side
            // holds the whole log.
            let mut open = Vec::new();
            for f in &files {
                open.push(std::fs::File::open(f).map_err(|e| format!("reading {}: {e}", f.display()))?);
            }
            let mut open = open.into_iter();
            let mut current = open.next();
            let mut head = Some(head);
            let read_error: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
            let errors = read_error.clone();
            let chunks = std::iter::from_fn(move || {
                use std::io::Read as _;
                loop {
                    let Some(f) = current.as_mut() else {
                        // (an empty log still sends the head once)
                        return head.take().map(|h| proto::AuditChunk {
                            data: vec![],
                            head: Some(h),
                        });
                    };
                    let mut buf = vec![0u8; 1 << 20];
                    match f.read(&mut buf) {
                        Ok(0) => current = open.next(),
                        Ok(n) => {
                            buf.truncate(n);
                            return Some(proto::AuditChunk {
                                data: buf,
                                head: head.take(),
                            });
                        }
                        Err(e) => {
                            if let Ok(mut slot) = errors.lock() {
                                *slot = Some(e.to_string());
                            }
                            return None;
                        }
                    }
                }
            });
            let r = admin
                .verify_audit(tokio_stream::iter(chunks))
                .await
                .map_err(status_line)?
                .into_inner();
            if let Some(e) = read_error.lock().ok().and_then(|mut e| e.take()) {
                return Err(format!("reading the audit log: {e}"));
            }
            if r.ok {
                println!("OK {} records (seq {}..{})", r.records, r.first_seq, r.last_seq);
            } else {
                println!("BROKEN at line {} (seq {}): {}", r.broken_line, r.broken_seq, r.reason);
                return Err(format!("audit log broken at line {}", r.broken_line));
            }
        }
        Cmd::Tokenize { key, kind, value } => {
            let r = proto::mask_client::MaskClient::new(channel.clone())
                .tokenize(proto::TokenizeRequest {
                    key,
                    value,
                    kind: proto_kind(&kind)?,
                })
                .await
                .map_err(status_line)?
                .into_inner();
            println!("{}", r.token);
            eprintln!("key_version: {}", r.key_version);
        }
        Cmd::Detokenize {
            key,
            kind,
            key_version,
            token,
        } => {
            let r = proto::mask_client::MaskClient::new(channel.clone())
                .detokenize(proto::DetokenizeRequest {
                    key,
                    token,
                    kind: proto_kind(&kind)?,
                    key_version,
                })
                .await
                .map_err(status_line)?
                .into_inner();
            println!("{}", r.value);
        }
        Cmd::Restore { file } => {
            let data = std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
            let pb = bar(data.len() as u64, "upload");
            let chunks: Vec<proto::RestoreChunk> = data
                .chunks(1 << 20)
                .map(|c| proto::RestoreChunk { data: c.to_vec() })
                .collect();
            let pbc = pb.clone();
            let stream = tokio_stream::iter(chunks).map(move |c| {
                pbc.inc(c.data.len() as u64);
                c
            });
            let r = keys.restore(stream).await.map_err(status_line)?.into_inner();
            pb.finish();
            println!("restored {} records ({} keys)", r.records, r.keys);
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
    let mut result = rt.block_on(run(cli));
    if let Err(e) = &result {
        // Asked for a second factor and none given: ask on the terminal, retry once.
        if e.contains("x-kmsd-otp") && std::io::IsTerminal::is_terminal(&std::io::stdin()) && OTP.get().is_none() {
            eprint!("one-time code: ");
            let mut code = String::new();
            if std::io::stdin().read_line(&mut code).is_ok() {
                if let Ok(v) = http::HeaderValue::from_str(code.trim()) {
                    let _ = OTP.set(v);
                    result = rt.block_on(run(Cli::parse()));
                }
            }
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.starts_with(APPROVAL_PENDING) => {
            println!("{e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kmsctl: {e}");
            ExitCode::FAILURE
        }
    }
}
