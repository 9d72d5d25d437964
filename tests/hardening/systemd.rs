//! The systemd unit (`systemd/xks-bridge.service`) and the sd_notify protocol the daemon
//! speaks to it: READY=1, watchdog pings, STOPPING=1.

use crate::common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze", "systemd");
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/xks-bridge.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the unit");
    // ExecStart= and ExecReload= name the installed binary; point them at the one under test.
    let installed = "/usr/local/bin/xks-bridge ";
    assert!(
        unit.contains(&format!("ExecStart={installed}")),
        "unexpected ExecStart in {unit_path:?}"
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let copy = tmp.path().join("xks-bridge.service");
    std::fs::write(&copy, unit.replace(installed, &format!("{BIN} "))).expect("write unit copy");
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&copy);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "systemd-analyze verify: {out}\n{err}");
    let complaints: Vec<&str> = err
        .lines()
        .chain(out.lines())
        .filter(|l| l.contains("xks-bridge.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:#?}");
}

/// The unit waits for the daemon's READY=1, arms the watchdog the daemon pings (see the
/// sd_notify test below) and reloads through `xks-bridge reload`.
#[test]
fn systemd_unit_uses_the_daemons_readiness_watchdog_and_reload_protocols() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/xks-bridge.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the unit");
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(directives.contains(&"Type=notify"), "{directives:#?}");
    assert!(
        directives
            .iter()
            .any(|l| l.starts_with("WatchdogSec=") && *l != "WatchdogSec=0"),
        "{directives:#?}"
    );
    assert!(
        directives
            .iter()
            .any(|l| l.starts_with("ExecReload=") && l.contains(" reload --config ")),
        "{directives:#?}"
    );
}

/// Receives datagrams until one equals `want` (or [`WAIT`] passes); all are kept in `seen`.
fn recv_until(sock: &std::os::unix::net::UnixDatagram, want: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn sd_notify_reports_ready_then_watchdog_pings_then_stopping_on_sigterm() {
    let fx = Fixture::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let sock_path = tmp.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let config = fx.write_config(&fx.config());
    // systemd sets WATCHDOG_PID to the service's main pid; `exec` keeps the shell's pid.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" serve --config "$1""#)
        .arg(BIN)
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG");
    let mut daemon = Spawned::start(cmd).unwrap_or_else(|e| panic!("daemon did not start: {e}"));
    assert!(
        daemon
            .first_line()
            .starts_with("xks-bridge listening on https://127.0.0.1:"),
        "{}",
        daemon.first_line()
    );

    let mut seen = Vec::new();
    assert!(
        recv_until(&sock, "READY=1", &mut seen),
        "no READY=1; got {seen:?}"
    );
    assert_eq!(
        seen[0], "READY=1",
        "the first notification is not READY=1: {seen:?}"
    );
    assert!(
        recv_until(&sock, "WATCHDOG=1", &mut seen),
        "no WATCHDOG=1; got {seen:?}"
    );
    assert!(
        recv_until(&sock, "WATCHDOG=1", &mut seen),
        "one WATCHDOG=1 only; got {seen:?}"
    );

    send_signal(daemon.pid(), "TERM");
    assert!(
        recv_until(&sock, "STOPPING=1", &mut seen),
        "no STOPPING=1; got {seen:?}"
    );
    let status = daemon.wait_exit(WAIT).expect("daemon exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}: {}",
        daemon.stderr_text()
    );
}
