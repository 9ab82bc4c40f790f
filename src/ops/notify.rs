//! The systemd notification protocol (`sd_notify`) through the maintained
//! `sd-notify` crate: READY, RELOADING, STOPPING, WATCHDOG and STATUS.
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op;
//! a failed notification is logged, never fatal.
use sd_notify::NotifyState;
use std::time::Duration;

/// Sends one notification: the states in one datagram, as systemd reads
/// them (`READY=1` and `STATUS=…` together, for example).
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = send(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

fn send(states: &[NotifyState<'_>]) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    // sd-notify 0.5 connects to the path as given; an abstract socket
    // (`@name`, which systemd may hand out) is sent here with the same
    // message the crate would build.
    let Some(name) = path.as_encoded_bytes().strip_prefix(b"@") else {
        return sd_notify::notify(states);
    };
    use std::os::linux::net::SocketAddrExt;
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

/// The watchdog interval requested by systemd (`WATCHDOG_USEC`, for this
/// pid), if any. Pings should be sent at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}
