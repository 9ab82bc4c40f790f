//! The shipped systemd units: the service's exposure rating from
//! `systemd-analyze security` must be 1.0 or better, and the socket unit
//! must repeat the IP filter. The units running under a real systemd is
//! `tests/systemd_real.rs`; the static checks here guard the two fixes it
//! found where it cannot run (not root).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::process::Command;

#[test]
fn service_unit_security_rating_is_at_most_1_0() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = match Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(format!("{root}/systemd/kmsd.service"))
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            assert!(
                std::env::var_os("KMSD_REQUIRE_SYSTEMD").is_none(),
                "systemd-analyze is required"
            );
            eprintln!("SKIPPED: systemd-analyze not installed");
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for kmsd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 1.0, "exposure {score} is above 1.0:\n{text}");
    // the hardening the issue names is all there
    let unit = std::fs::read_to_string(format!("{root}/systemd/kmsd.service")).unwrap();
    for setting in [
        "Type=notify",
        "WatchdogSec=",
        "LoadCredentialEncrypted=master-key:",
        "StateDirectory=kmsd",
        "LogsDirectory=kmsd",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "IPAddressDeny=any",
        "RestrictAddressFamilies=",
        "MemoryDenyWriteExecute=yes",
        "LimitCORE=0",
        "UMask=0077",
    ] {
        assert!(unit.contains(setting), "kmsd.service lacks {setting:?}");
    }
    let socket = std::fs::read_to_string(format!("{root}/systemd/kmsd.socket")).unwrap();
    assert!(socket.contains("IPAddressDeny=any") && socket.contains("IPAddressAllow="));
    assert!(socket.contains("FileDescriptorName=grpc"));
}

/// What a real systemd 252 showed (tests/systemd_real.rs): a
/// `RuntimeDirectory=` chowns the client socket to kmsd:kmsd at each start,
/// and `NoExecPaths=/` forbids `ExecReload=` unless `ExecPaths=` names it.
#[test]
fn socket_directory_and_reload_command_survive_the_sandbox() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/kmsd.service")).unwrap();
    let setting = |name: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        setting("RuntimeDirectory").is_empty(),
        "RuntimeDirectory= would chown kmsd.sock to kmsd:kmsd"
    );
    assert_eq!(setting("ReadWritePaths"), ["/run/kmsd"]);
    let reload = setting("ExecReload");
    let exec_paths: Vec<String> = setting("ExecPaths")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(setting("NoExecPaths"), ["/"]);
    for cmd in setting("ExecStart").iter().chain(&reload) {
        let bin = cmd.split_whitespace().next().unwrap();
        assert!(
            exec_paths.iter().any(|p| p == bin),
            "{bin} is not in ExecPaths={exec_paths:?}"
        );
    }
    assert_eq!(reload, ["/bin/kill -HUP $MAINPID"]);
    let tmpfiles = std::fs::read_to_string(format!("{root}/systemd/tmpfiles.d/kmsd.conf")).unwrap();
    assert!(
        tmpfiles.lines().any(
            |l| l.split_whitespace().collect::<Vec<_>>() == ["d", "/run/kmsd", "0710", "kmsd", "kmsd-clients", "-"]
        ),
        "tmpfiles.d must make /run/kmsd 0710 kmsd:kmsd-clients"
    );
    let socket = std::fs::read_to_string(format!("{root}/systemd/kmsd.socket")).unwrap();
    for s in [
        "ListenStream=/run/kmsd/kmsd.sock",
        "SocketGroup=kmsd-clients",
        "SocketMode=0660",
    ] {
        assert!(socket.contains(s), "kmsd.socket lacks {s}");
    }
}
