//! kmsctl's one error type: every failure prints as one line on stderr
//! and exits 1 (a dual-control request waiting for a second officer is
//! not a failure: it prints the request id and exits 0).
use std::path::{Path, PathBuf};

/// What can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A connection setting is missing.
    #[error("{var} is not set (flag {flag} or environment)")]
    NotSet {
        /// The environment variable.
        var: &'static str,
        /// The flag.
        flag: &'static str,
    },
    /// An argument or input cannot be used.
    #[error("{0}")]
    Input(String),
    /// Reading or writing a local file or stream.
    #[error("{what} {}: {cause}", path.display())]
    Io {
        /// "reading", "writing", ...
        what: &'static str,
        /// The file (`-` for stdin/stdout).
        path: PathBuf,
        /// The error.
        cause: std::io::Error,
    },
    /// The connection or the call (with the daemon's status).
    #[error(transparent)]
    Client(#[from] kmsd_client::Error),
    /// The daemon answers but does not serve.
    #[error("kmsd is {0}")]
    NotServing(String),
    /// `verify` / `verify-mac`: the signature or MAC does not verify.
    #[error("the {0} is not valid")]
    NotValid(&'static str),
    /// `audit verify` found a broken record.
    #[error("audit log broken at line {line}")]
    AuditBroken {
        /// The first broken line.
        line: u64,
    },
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Client(s.into())
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_owned();
        move |cause| Error::Io { what, path, cause }
    }

    /// The call needs an officer's one-time code and none was sent.
    pub fn needs_second_factor(&self) -> bool {
        matches!(self, Error::Client(e) if e.needs_second_factor())
    }

    /// The call created a dual-control request: its id, and the daemon's message.
    pub fn pending_approval(&self) -> Option<(&str, &str)> {
        match self {
            Error::Client(e) => e
                .pending_approval()
                .map(|id| (id, e.status().map_or("", |s| s.message()))),
            _ => None,
        }
    }
}
