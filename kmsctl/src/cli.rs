//! The command line: every command, flag and environment variable.
use clap::{Parser, Subcommand};
use kmsd_client::{env, proto};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "kmsctl", version, about = "Command-line client for kmsd")]
pub struct Cli {
    /// Daemon address: unix:/path or host:port; several separated by
    /// commas are tried in order (failover).
    #[arg(long, env = env::ADDR, global = true)]
    pub addr: Option<String>,
    /// CA certificate that signed the daemon's certificate.
    #[arg(long, env = env::CA, global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate.
    #[arg(long, env = env::CERT, global = true)]
    pub cert: Option<PathBuf>,
    /// Client private key (`--key` names the kmsd key in subcommands).
    #[arg(long = "tls-key", env = env::KEY, global = true)]
    pub tls_key: Option<PathBuf>,
    /// Server name to verify (default: TCP host, or localhost for a socket).
    #[arg(long, env = env::SERVER_NAME, global = true)]
    pub server_name: Option<String>,
    /// An officer's one-time code (TOTP) for administrative calls; asked
    /// for on the terminal (not echoed) when needed and not given.
    #[arg(long, env = "KMSD_OTP", global = true)]
    pub otp: Option<String>,
    /// Output format: aligned text for people, or one JSON document for
    /// scripts (errors stay one line on stderr).
    #[arg(long, short = 'o', value_enum, default_value_t = crate::output::Format::Text, global = true)]
    pub output: crate::output::Format,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    /// Encrypt file IN into OUT in the stream format (segments of 64 KiB
    /// under one data key from kmsd, constant memory). `-` is stdin/stdout;
    /// a file OUT is written beside it and renamed when complete.
    EncryptFile {
        /// Input file, or - for stdin.
        #[arg(value_name = "IN")]
        infile: PathBuf,
        /// Output file, or - for stdout.
        #[arg(value_name = "OUT")]
        outfile: PathBuf,
        /// Key that wraps the stream's data key.
        #[arg(long)]
        key: String,
        /// Associated data (authenticated, not encrypted; needed to decrypt).
        #[arg(long, default_value = "")]
        aad: String,
    },
    /// Decrypt a stream made by encrypt-file. A file OUT appears only if the
    /// whole stream authenticates (written beside it, renamed at the end);
    /// with - (stdout) output made before a failure must be discarded.
    DecryptFile {
        /// Input file, or - for stdin.
        #[arg(value_name = "IN")]
        infile: PathBuf,
        /// Output file, or - for stdout.
        #[arg(value_name = "OUT")]
        outfile: PathBuf,
        /// Associated data given at encryption.
        #[arg(long, default_value = "")]
        aad: String,
        /// Only open streams under these keys (comma-separated); default any.
        #[arg(long, value_delimiter = ',')]
        expect_key: Vec<String>,
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
        /// The operator's own pattern and field rules (TOML: `[[rules]]`,
        /// `[[fields]]`; see the README). A rule that cannot be used is
        /// refused with its line.
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Print, per input line, each finding's kind, byte span and the
        /// rule that fired (never the value) instead of the redacted line.
        /// With `--output json`, one JSON object per line.
        #[arg(long)]
        explain: bool,
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
    /// The MAC (HMAC) of DATA (or stdin with -) under an HMAC key: prints
    /// it in base64.
    Mac {
        /// HMAC key name.
        #[arg(long)]
        key: String,
        /// A version other than the primary (one that may still verify).
        #[arg(long, default_value_t = 0)]
        key_version: u32,
        /// The data, or - for stdin.
        #[arg(default_value = "-")]
        data: String,
    },
    /// Check a MAC (compared in constant time by kmsd); exits 1 if it is
    /// not valid.
    VerifyMac {
        /// HMAC key name.
        #[arg(long)]
        key: String,
        /// The MAC, base64.
        #[arg(long)]
        mac: String,
        /// The version that made it (0 = primary).
        #[arg(long, default_value_t = 0)]
        key_version: u32,
        /// The data, or - for stdin.
        #[arg(default_value = "-")]
        data: String,
    },
    /// Sign DATA (or stdin with -) with a signing key whose private key
    /// never leaves kmsd: prints the signature in base64.
    Sign {
        /// Signing key name.
        #[arg(long)]
        key: String,
        /// Hash the data here (SHA-256) and send kmsd only the digest
        /// (ECDSA and RSA-PSS; Ed25519 signs messages only).
        #[arg(long)]
        digest: bool,
        /// ECDSA signature encoding: der (default; OpenSSL, X.509) or
        /// p1363 (r||s, as JWS ES256 uses).
        #[arg(long, value_parser = ["der", "p1363"], default_value = "der")]
        encoding: String,
        /// Also write the raw signature bytes to FILE (for `openssl`).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// The data, or - for stdin.
        #[arg(default_value = "-")]
        data: String,
    },
    /// Verify a signature with a key's public half; exits 1 if it is not valid.
    Verify {
        /// Signing key name.
        #[arg(long)]
        key: String,
        /// The signature, base64 (or --signature-file).
        #[arg(long, required_unless_present = "signature_file")]
        signature: Option<String>,
        /// The raw signature bytes in FILE.
        #[arg(long, value_name = "FILE", conflicts_with = "signature")]
        signature_file: Option<PathBuf>,
        /// The version that signed (0 = primary).
        #[arg(long, default_value_t = 0)]
        key_version: u32,
        /// Hash the data here and send kmsd only the digest.
        #[arg(long)]
        digest: bool,
        /// ECDSA signature encoding: der or p1363.
        #[arg(long, value_parser = ["der", "p1363"], default_value = "der")]
        encoding: String,
        /// The data, or - for stdin.
        #[arg(default_value = "-")]
        data: String,
    },
    /// The public key of a signing key's version: SPKI PEM (default) or a
    /// JWK with kid "<key>/<version>".
    PublicKey {
        /// Signing key name.
        #[arg(long)]
        key: String,
        /// The version (0 = primary).
        #[arg(long, default_value_t = 0)]
        key_version: u32,
        /// pem or jwk.
        #[arg(long, value_parser = ["pem", "jwk"], default_value = "pem")]
        format: String,
    },
    /// Import jobs: RSA-3072 wrapping keys for bringing key material in
    /// (`kmsctl key import`).
    #[command(subcommand)]
    ImportJob(ImportJobCmd),
    /// JWS (RFC 7515) signed by a kmsd signing key (ES256, PS256, EdDSA).
    #[command(subcommand)]
    Jws(JwsCmd),
}

#[derive(Subcommand)]
pub enum ImportJobCmd {
    /// Create a job for key KEY: prints its id and the public wrapping key
    /// (PEM) to wrap material for (CKM_RSA_AES_KEY_WRAP:
    /// RSA-OAEP-SHA256 of an AES-256 key, then RFC 5649 key wrap).
    Create {
        /// The key the job imports into (it need not exist yet).
        #[arg(long)]
        key: String,
        /// Lifetime (default 24h, at most 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Also write the public wrapping key (PEM) to this file.
        #[arg(long, value_name = "FILE")]
        public_key_out: Option<PathBuf>,
    },
    /// Show a job (its key, expiry and public wrapping key).
    Show {
        /// Job id.
        id: String,
        /// Also write the public wrapping key (PEM) to this file.
        #[arg(long, value_name = "FILE")]
        public_key_out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum OfficerCmd {
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
pub enum ApprovalsCmd {
    /// Pending dual-control requests.
    List,
    /// Approve a request (as a second, different officer).
    Approve {
        /// Request id.
        id: String,
        /// An approved export: write the wrapped key (the bytes
        /// `kmsctl key import --wrapped` takes) to this file (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Reject a request.
    Reject {
        /// Request id.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum JwsCmd {
    /// Sign FILE (or - for stdin) and print the compact JWS: protected
    /// header alg (from the key), kid "<key>/<version>", typ, and each
    /// --header; --detached prints header..signature (RFC 7515 Appendix F,
    /// Open Banking's x-jws-signature).
    Sign {
        /// The signing key.
        #[arg(long)]
        key: String,
        /// Leave the payload out: header..signature.
        #[arg(long)]
        detached: bool,
        /// The header's typ (for example JOSE or JWT).
        #[arg(long)]
        typ: Option<String>,
        /// A protected header parameter, NAME=VALUE; VALUE is taken as JSON
        /// when it parses (1700000000, ["a","b"], "quoted") and as a string
        /// otherwise. Repeatable; kept in order.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        header: Vec<String>,
        /// The payload, or - for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// Verify a compact JWS (the argument, or - for stdin) made with a kmsd
    /// key: the key and version come from its kid; alg must be the key's.
    Verify {
        /// The payload of a detached JWS (header..signature).
        #[arg(long, value_name = "FILE")]
        payload: Option<PathBuf>,
        /// A crit header parameter this caller checks itself (repeatable);
        /// a JWS whose crit names another is refused (RFC 7515 4.1.11).
        #[arg(long = "accept-crit", value_name = "NAME")]
        accept_crit: Vec<String>,
        /// The JWS, or - for stdin.
        #[arg(default_value = "-")]
        jws: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify an audit log (several files: in chain order); prints OK with a
    /// count, or the first broken record.
    Verify {
        /// Audit log file(s).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Rotate when the primary is this old (e.g. 90d, 12h; 0 disables).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rotation_period: Option<std::time::Duration>,
    /// Rotate before a version encrypts more than N messages (0 disables).
    #[arg(long)]
    pub max_encryptions: Option<u64>,
    /// Versions below this never decrypt.
    #[arg(long)]
    pub min_decryption_version: Option<u32>,
    /// Versions below this never encrypt.
    #[arg(long)]
    pub min_encryption_version: Option<u32>,
    /// Whether the whole key may be scheduled for deletion.
    #[arg(long)]
    pub deletion_allowed: Option<bool>,
    /// Whether a manual rotation restarts the schedule.
    #[arg(long)]
    pub manual_rotation_resets_schedule: Option<bool>,
    /// What the key is for, at creation: `encrypt` (default) or `tokenize`
    /// (a token key never rotates by itself unless --allow-token-rotation).
    #[arg(long, value_parser = ["encrypt", "tokenize"])]
    pub purpose: Option<String>,
    /// Let a token key rotate automatically (every token then changes).
    #[arg(long)]
    pub allow_token_rotation: Option<bool>,
    /// Let a key whose primary version was imported rotate (scheduled,
    /// usage or manual) to material kmsd generates.
    #[arg(long)]
    pub allow_generated_rotation: Option<bool>,
}

impl PolicyArgs {
    pub fn to_proto(&self) -> proto::KeyPolicy {
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
            allow_generated_rotation: self.allow_generated_rotation,
        }
    }
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a key.
    Create {
        /// Key name.
        name: String,
        /// The key's type, fixed at creation: aes-256-gcm (default;
        /// encrypt or tokenize), hmac-sha256, hmac-sha512 (MACs),
        /// ecdsa-p256-sha256, rsa-pss-3072-sha256, rsa-pss-4096-sha256,
        /// ed25519 (signatures).
        #[arg(long, default_value = "aes-256-gcm", value_parser = [
            "aes-256-gcm", "hmac-sha256", "hmac-sha512", "ecdsa-p256-sha256",
            "rsa-pss-3072-sha256", "rsa-pss-4096-sha256", "ed25519",
        ])]
        algorithm: String,
        /// Versions of this key may be exported (wrapped, under dual
        /// control); fixed at creation.
        #[arg(long)]
        exportable: bool,
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
    /// Import key material wrapped for an import job as a new primary
    /// version (or as version 1 of a new key).
    Import {
        /// Key name (the job's).
        name: String,
        /// Import job id (`kmsctl import-job create`).
        #[arg(long)]
        job: String,
        /// The wrapped key: RSA-OAEP part (384 bytes) then the RFC 5649 part.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "material",
            required_unless_present = "material"
        )]
        wrapped: Option<PathBuf>,
        /// Convenience: raw material (32 bytes for AES_256_GCM, a PKCS#8
        /// DER for signing keys), wrapped here with the job's public key.
        /// The material then passes through this process: prefer wrapping
        /// it where it lives (an HSM) and giving --wrapped.
        #[arg(long, value_name = "FILE")]
        material: Option<PathBuf>,
        /// The material's algorithm (aes-256-gcm, hmac-sha256, ...).
        #[arg(long, default_value = "aes-256-gcm")]
        algorithm: String,
        /// A new key only: whether its versions may be exported later.
        #[arg(long)]
        exportable: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Export a version wrapped for another kmsd's import job. Always under
    /// dual control: prints the approval id; a second officer's
    /// `kmsctl approvals approve ID --out FILE` writes the wrapped key.
    Export {
        /// Key name.
        name: String,
        /// Version (default: the primary).
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// The destination job's public wrapping key (PEM file, from
        /// `kmsctl import-job create --public-key-out` on the destination).
        #[arg(long, value_name = "FILE")]
        wrapping_key: PathBuf,
    },
}
