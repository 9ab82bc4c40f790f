//! `kmsctl`: the command-line client of kmsd.
//!
//! # Layout
//! - [`cli`]: every command, flag and environment variable (clap).
//! - [`commands`]: one module per command group.
//! - [`connection`]: settings from flags or `KMSD_*`, the one-time code.
//! - [`output`]: aligned text or `--output json`.
//! - [`error`]: the one error type; every failure is one line on stderr
//!   and exit status 1.
#![forbid(unsafe_code)]
mod cli;
mod commands;
mod connection;
mod error;
mod output;

use clap::Parser;
use connection::Otp;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kmsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let otp = match cli.otp.as_deref().map(Otp::new).transpose() {
        Ok(otp) => otp.unwrap_or_default(),
        Err(e) => {
            eprintln!("kmsctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut result = rt.block_on(commands::run(&cli, otp.clone()));
    if let Err(e) = &result {
        // Asked for a second factor and none given: ask on the terminal
        // (not echoed; the terminal, not stdin, which may carry data), retry once.
        if e.needs_second_factor() && !otp.is_set() {
            if let Ok(code) = rpassword::prompt_password("one-time code: ") {
                result = match Otp::new(&code) {
                    Ok(otp) => rt.block_on(commands::run(&cli, otp)),
                    Err(e) => Err(e),
                };
            }
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some((id, message)) = e.pending_approval() {
                // not a failure: the request waits for a second officer
                output::Out(cli.output).message(
                    &serde_json::json!({"pending_approval": id, "message": message}),
                    &format!("pending approval {id}: {message}"),
                );
                return ExitCode::SUCCESS;
            }
            eprintln!("kmsctl: {e}");
            ExitCode::FAILURE
        }
    }
}
