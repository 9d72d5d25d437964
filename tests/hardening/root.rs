//! Root refusal: as root, `serve` needs `server.allow_root`; as an unprivileged user it does
//! not.

use crate::common::*;
use std::process::Command;

/// As root, `serve` refuses to start unless `server.allow_root` is true: exit 64 naming the
/// option, nothing listening.
#[test]
fn serve_as_root_without_allow_root_exits_64_naming_server_allow_root() {
    require_root("it checks what the daemon does when started as root");
    let fx = Fixture::new();
    for allow_root in [None, Some(false)] {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(fx.write_config(&without_allow_root(&fx, allow_root)))
            .env_remove("RUST_LOG");
        let (code, out, err) = run_bounded(cmd, WAIT);
        assert_eq!(code, Some(64), "allow_root {allow_root:?}: {out}\n{err}");
        assert!(err.contains("server.allow_root"), "stderr: {err}");
        assert!(!out.contains("listening"), "stdout: {out}");
    }
}

/// The same configs serve when the daemon runs as an unprivileged user (dropped to with
/// `setpriv`): the refusal is about root only.
#[test]
fn serve_as_an_unprivileged_user_without_allow_root_serves() {
    for allow_root in [None, Some(false)] {
        let fx = Fixture::new();
        let cfg = without_allow_root(&fx, allow_root);
        let proxy = TestProxy::start_as_nobody(&fx, &cfg);
        assert_eq!(ping(&proxy), 200, "allow_root {allow_root:?}");
        let health = assert_ok(&proxy.xks(&fx).health());
        assert_eq!(
            health["ekmFleetDetails"][0]["healthStatus"], "ACTIVE",
            "allow_root {allow_root:?}: {health}"
        );
        let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("daemon status");
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .expect("Uid line");
        assert_eq!(
            uid.split_whitespace().next(),
            Some(NOBODY.to_string().as_str()),
            "the daemon does not run as {NOBODY}: {uid}"
        );
    }
}

/// The fixture's config with `server.allow_root` removed (`None`) or set to `value`.
fn without_allow_root(fx: &Fixture, value: Option<bool>) -> toml::Table {
    let mut cfg = fx.config();
    let server = section(&mut cfg, "server");
    server.remove("allow_root");
    if let Some(v) = value {
        server.insert("allow_root".into(), v.into());
    }
    cfg
}
