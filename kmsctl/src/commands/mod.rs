//! One module per command group; [`run`] dispatches.
mod admin;
mod audit;
mod backup;
mod data;
mod files;
mod jws;
mod key;
mod mask;
mod sign;
mod transfer;

use crate::cli::{AuditCmd, Cli, Cmd, KeyCmd};
use crate::connection::{self, Otp};
use crate::error::Error;
use crate::output::Out;

/// Runs the command; calls carry `otp` when set.
pub async fn run(cli: &Cli, otp: Otp) -> Result<(), Error> {
    let out = Out(cli.output);
    // offline commands: no daemon, no settings needed
    match &cli.cmd {
        Cmd::Redact { kinds, rules, explain } => return mask::redact(kinds, rules.as_deref(), *explain, out),
        Cmd::Mask { kind, keep_bin, value } => return mask::mask(kind, *keep_bin, value, out),
        _ => {}
    }
    let client = connection::connect(cli, &otp).await?;
    match &cli.cmd {
        cmd @ (Cmd::Encrypt { .. } | Cmd::Decrypt { .. } | Cmd::Rewrap { .. } | Cmd::Datakey { .. }) => {
            return data::run(cmd, &client, out).await
        }
        Cmd::EncryptFile {
            infile,
            outfile,
            key,
            aad,
        } => return files::encrypt(&client, infile, outfile, key, aad).await,
        Cmd::DecryptFile {
            infile,
            outfile,
            aad,
            expect_key,
        } => return files::decrypt(&client, infile, outfile, aad, expect_key).await,
        Cmd::Jws(cmd) => return jws::run(cmd, &client, out).await,
        _ => {}
    }
    let channel = connection::channel(&client, otp).await?;
    match &cli.cmd {
        Cmd::Key(cmd @ (KeyCmd::Import { .. } | KeyCmd::Export { .. })) => transfer::key(cmd, channel, out).await,
        Cmd::Key(cmd) => key::run(cmd, channel, out).await,
        Cmd::ImportJob(cmd) => transfer::import_job(cmd, channel, out).await,
        Cmd::Backup { file } => backup::backup(channel, file, out).await,
        Cmd::Restore { file } => backup::restore(channel, file, out).await,
        Cmd::Status => admin::status(channel, out).await,
        Cmd::ReloadPolicy => admin::reload_policy(channel, out).await,
        Cmd::Officer(cmd) => admin::officer(cmd, channel, out).await,
        Cmd::Approvals(cmd) => admin::approvals(cmd, channel, out).await,
        Cmd::Audit(AuditCmd::Verify { files }) => audit::verify(channel, files, out).await,
        cmd @ (Cmd::Mac { .. }
        | Cmd::VerifyMac { .. }
        | Cmd::Sign { .. }
        | Cmd::Verify { .. }
        | Cmd::PublicKey { .. }) => sign::run(cmd, channel, out).await,
        Cmd::Tokenize { key, kind, value } => mask::tokenize(channel, key, kind, value, out).await,
        Cmd::Detokenize {
            key,
            kind,
            key_version,
            token,
        } => mask::detokenize(channel, (key, kind, *key_version, token), out).await,
        Cmd::Redact { .. }
        | Cmd::Mask { .. }
        | Cmd::Encrypt { .. }
        | Cmd::Decrypt { .. }
        | Cmd::Rewrap { .. }
        | Cmd::Datakey { .. }
        | Cmd::EncryptFile { .. }
        | Cmd::DecryptFile { .. }
        | Cmd::Jws(_) => Ok(()),
    }
}
