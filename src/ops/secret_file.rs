//! The one rule for files that hold secrets (the master key, the TLS
//! private key): readable by the kmsd user alone. A leaf: `config` (master
//! key) and `tls` (private key) both call it.
use std::path::Path;

/// Refuses a secret file (master key, TLS private key) that group or
/// others may read or write, as OpenSSH does for private keys: on a shared
/// host a `0644` key is a key every local account holds. Files under
/// systemd's `$CREDENTIALS_DIRECTORY` are exempt: systemd makes that
/// directory readable by the service alone (and the files are not ours to
/// chmod). A file that cannot be inspected is left to the loader, whose
/// error says why it cannot be read. The error is the operator's message.
pub fn check(path: &Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 || in_credentials_directory(path) {
        return Ok(());
    }
    Err(format!(
        "{} is accessible by group or others (mode {mode:04o}): a {what} must be readable by the kmsd \
         user alone (chmod 600 {})",
        path.display(),
        path.display()
    ))
}

/// Whether `path` (symlinks resolved) lies in systemd's credentials
/// directory.
fn in_credentials_directory(path: &Path) -> bool {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return false;
    };
    match (Path::new(&dir).canonicalize(), path.canonicalize()) {
        (Ok(dir), Ok(file)) => file.starts_with(dir),
        _ => false,
    }
}
