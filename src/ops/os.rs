//! The one module that talks to the OS below std, and so the only place
//! with `unsafe`: process hardening (`prctl`, `setrlimit`, `mlockall`) and
//! taking over sockets passed by systemd (`LISTEN_FDS`), and peeking at a
//! socket's input without taking it.
//!
//! Each `unsafe` block is a single libc call whose arguments are plain
//! integers or pointers to locals; the safety comment on each says why.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// What process hardening achieved (logged at start).
#[derive(Debug, Clone, Default)]
pub struct Hardening {
    /// `prctl(PR_SET_DUMPABLE, 0)` succeeded: no core dumps, no ptrace by
    /// same-uid processes, /proc/self/mem unreadable to others.
    pub non_dumpable: bool,
    /// `RLIMIT_CORE` is 0.
    pub no_core: bool,
    /// All current and future memory is locked (never swapped).
    pub memory_locked: bool,
    /// Why memory is not locked, if it is not.
    pub memory_note: Option<String>,
}

/// Makes the process non-dumpable, disables core files, and locks memory
/// if `RLIMIT_MEMLOCK` is unlimited (a smaller limit would make later
/// allocations fail once reached, so then memory is left unlocked and
/// the reason reported: run with `LimitMEMLOCK=infinity`, or encrypted swap).
pub fn harden() -> Hardening {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let non_dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0;
    let mut h = Hardening {
        non_dumpable,
        ..Hardening::default()
    };
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call.
    h.no_core = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } == 0;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit that outlives the call.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0;
    if got && lim.rlim_cur == libc::RLIM_INFINITY {
        // SAFETY: mlockall takes flags only.
        h.memory_locked = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0;
        if !h.memory_locked {
            h.memory_note = Some(format!("mlockall failed: {}", std::io::Error::last_os_error()));
        }
    } else {
        h.memory_note = Some(format!(
            "RLIMIT_MEMLOCK is {} bytes, not unlimited: memory not locked (set LimitMEMLOCK=infinity)",
            lim.rlim_cur
        ));
    }
    h
}

/// A socket passed by the service manager.
#[derive(Debug)]
pub struct PassedSocket {
    /// Its `FileDescriptorName=` (or "unknown").
    pub name: String,
    /// The socket.
    pub fd: OwnedFd,
    /// Whether it is a Unix socket (else TCP).
    pub unix: bool,
}

static PASSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether sockets were taken from systemd (then systemd owns the files).
pub fn listen_fds_were_passed() -> bool {
    PASSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// First file descriptor systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// What `LISTEN_PID` / `LISTEN_FDS` / `LISTEN_FDNAMES` said: how many
/// sockets were passed to this process, and their names. `None` when the
/// variables are absent, malformed or meant for another process.
pub fn parse_listen_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
) -> Option<(RawFd, Vec<String>)> {
    let pid_ok = pid.and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p == own_pid);
    let count = fds.and_then(|n| n.parse::<RawFd>().ok()).unwrap_or(0);
    if !pid_ok || count <= 0 {
        return None;
    }
    let names = names
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    Some((count.min(64), names))
}

/// Takes the sockets passed through `LISTEN_FDS` / `LISTEN_FDNAMES`, if
/// they are meant for this process (`LISTEN_PID`), and unsets the
/// variables so that children do not inherit them.
///
/// Call it first thing in `main`, before any thread exists (the tokio
/// runtime, sled's flusher): changing the environment while another thread
/// may read it (`getenv` in libc, in a resolver, in a logging crate) is
/// undefined behaviour, which is why `remove_var` becomes `unsafe` in
/// edition 2024.
pub fn take_listen_fds() -> Vec<PassedSocket> {
    let var = |k: &str| std::env::var(k).ok();
    let parsed = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let Some((count, names)) = parsed else {
        return Vec::new();
    };
    PASSED.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    for i in 0..count {
        let raw = SD_LISTEN_FDS_START + i;
        // SAFETY: systemd passes `count` open descriptors starting at 3 to
        // this pid (checked above); each is taken exactly once here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on a descriptor we own, integer arguments only.
        unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
        let mut addr: libc::sockaddr_storage = unsafe_zeroed_storage();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are valid, writable locals of the sizes given.
        let ok = unsafe { libc::getsockname(raw, (&mut addr as *mut libc::sockaddr_storage).cast(), &mut len) } == 0;
        let unix = ok && i32::from(addr.ss_family) == libc::AF_UNIX;
        let name = names.get(i as usize).cloned().unwrap_or_else(|| "unknown".into());
        out.push(PassedSocket { name, fd, unix });
    }
    out
}

/// Whether the socket has unread input (or its peer has closed it) right
/// now: `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte, which takes nothing
/// from the socket. Any error but "would block" counts as input (the
/// handshake task will see it).
pub fn has_input(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: `byte` is a valid, writable local of the length passed; the
    // descriptor is borrowed, so it stays open for the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return true;
    }
    let e = std::io::Error::last_os_error().kind();
    !matches!(e, std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
}

/// Sets `TCP_DEFER_ACCEPT` on a listening TCP socket: the kernel hands a
/// connection to `accept` only once the client has sent data (a TLS client
/// sends its ClientHello at once), or after about `secs`. Sockets opened and
/// left silent then never take a handshake slot while they are fresh.
pub fn defer_accept(fd: std::os::fd::BorrowedFd<'_>, secs: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a valid c_int local that outlives the call, and its
    // size is passed; the descriptor is borrowed, so it stays open.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unsafe_zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::parse_listen_env;

    #[test]
    fn listen_env_is_only_taken_for_this_process() {
        assert_eq!(
            parse_listen_env(Some("42"), Some("2"), Some("grpc:tcp"), 42),
            Some((2, vec!["grpc".to_string(), "tcp".to_string()]))
        );
        assert_eq!(parse_listen_env(Some("42"), Some("1"), None, 42), Some((1, vec![])));
        // another process's sockets, none, garbage
        assert_eq!(parse_listen_env(Some("41"), Some("2"), None, 42), None);
        assert_eq!(parse_listen_env(None, Some("2"), None, 42), None);
        assert_eq!(parse_listen_env(Some("42"), Some("0"), None, 42), None);
        assert_eq!(parse_listen_env(Some("42"), Some("-3"), None, 42), None);
        assert_eq!(parse_listen_env(Some("42"), Some("x"), None, 42), None);
        // at most 64
        assert_eq!(
            parse_listen_env(Some("42"), Some("1000"), None, 42).map(|p| p.0),
            Some(64)
        );
    }
}
