//! The daemon under test: [`TestProxy`] runs `xks-bridge serve --config FILE` on an ephemeral
//! 127.0.0.1 port; [`Harness`] is a fixture + a daemon + a signed session in one value.

use crate::common::cli::send_signal;
use crate::common::client::{tls_config, Client};
use crate::common::fixture::{Fixture, BASE};
use crate::common::host::{as_nobody, give_to_nobody, NOBODY};
use crate::common::process::{wait_until, Spawned, BIN, WAIT};
use crate::common::xks::Xks;
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A running `xks-bridge serve --config FILE`.
pub struct TestProxy {
    proc: Spawned,
    /// The bound address (127.0.0.1, ephemeral port).
    pub addr: SocketAddr,
    /// The fixture CA, for clients.
    pub ca: PathBuf,
    /// The config file the daemon runs with.
    pub config: PathBuf,
}

impl TestProxy {
    /// Serves the fixture's own config.
    pub fn start(fx: &Fixture) -> TestProxy {
        Self::start_with(fx, &fx.config(), &[])
    }

    /// Serves `cfg` (written into the fixture dir) with extra environment variables.
    pub fn start_with(fx: &Fixture, cfg: &toml::Table, env: &[(&str, &str)]) -> TestProxy {
        Self::try_start(fx, cfg, env).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// Like [`TestProxy::start_with`] but returns the failure.
    pub fn try_start(fx: &Fixture, cfg: &toml::Table, env: &[(&str, &str)]) -> Result<TestProxy, String> {
        let config = fx.write_config(cfg);
        Self::start_command(fx, config, Command::new(BIN), env)
    }

    /// Serves `cfg` with the daemon's stderr going to `path` (a FIFO, say) instead of to the
    /// harness, whose [`TestProxy::logs`] then stay empty.
    pub fn start_with_stderr_to(fx: &Fixture, cfg: &toml::Table, path: &Path) -> TestProxy {
        let config = fx.write_config(cfg);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 2>"$XKS_TEST_STDERR""#)
            .arg(BIN)
            .env("XKS_TEST_STDERR", path);
        Self::start_command(fx, config, cmd, &[]).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// Serves `cfg` with systemd's watchdog enabled: `WATCHDOG_USEC` from `env`, and
    /// `WATCHDOG_PID` set to the daemon's own pid (as systemd does; a shell `exec`s the binary
    /// so the pid is known before it starts).
    pub fn start_with_watchdog(fx: &Fixture, cfg: &toml::Table, env: &[(&str, &str)]) -> TestProxy {
        let config = fx.write_config(cfg);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"WATCHDOG_PID=$$ exec "$0" "$@""#)
            .arg(BIN)
            .env_remove("WATCHDOG_PID");
        Self::start_command(fx, config, cmd, env).unwrap_or_else(|e| panic!("daemon did not start: {e}"))
    }

    /// Serves `cfg` as the unprivileged user [`NOBODY`] (through `setpriv`): the whole fixture
    /// directory is handed to that user first. Needs root.
    pub fn start_as_nobody(fx: &Fixture, cfg: &toml::Table) -> TestProxy {
        let config = fx.write_config(cfg);
        give_to_nobody(&fx.dir);
        Self::start_command(fx, config, as_nobody(BIN, None), &[])
            .unwrap_or_else(|e| panic!("daemon did not start as user {NOBODY}: {e}"))
    }

    /// Runs `cmd` (the binary, or a wrapper that runs it) with `serve --config <config>`, without
    /// the caller's `RUST_LOG`, with `env` set.
    fn start_command(
        fx: &Fixture,
        config: PathBuf,
        mut cmd: Command,
        env: &[(&str, &str)],
    ) -> Result<TestProxy, String> {
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Spawned::start(cmd)?;
        let line = proc.first_line().to_owned();
        let addr = line
            .strip_prefix("xks-bridge listening on https://")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .parse::<SocketAddr>()
            .map_err(|e| format!("{line:?}: {e}"))?;
        assert!(addr.ip().is_loopback(), "daemon must bind 127.0.0.1 only: {addr}");
        Ok(TestProxy {
            proc,
            addr,
            ca: fx.ca_pem(),
            config,
        })
    }

    /// A new keep-alive HTTPS connection trusting the fixture CA (TLS 1.2/1.3, no ALPN).
    pub fn client(&self) -> Client {
        Client::connect(self.addr, tls_config(&self.ca, None, None, &[])).expect("connect to daemon")
    }

    /// A new connection with a specific TLS client config.
    pub fn client_with(&self, tls: Arc<ClientConfig>) -> std::io::Result<Client> {
        Client::connect(self.addr, tls)
    }

    /// A signed-request session against the fixture's keystore, with the fixture's credential.
    pub fn xks(&self, fx: &Fixture) -> Xks {
        Xks {
            client: self.client(),
            signer: fx.signer(),
            base: BASE.to_owned(),
        }
    }

    /// The daemon's logs (stderr) so far.
    pub fn logs(&self) -> String {
        self.proc.stderr_text()
    }

    /// The daemon's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Every stdout line so far (the listening line, then e.g. the metrics address).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    /// Polls (bounded) until the logs contain `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        self.proc.wait_for_stderr(needle, WAIT)
    }

    /// Stops the daemon as a service manager does (SIGTERM, then a second one to cut the drain
    /// delay short), asserts that it exits 0, and returns its complete logs. A restart in a
    /// test that goes on using the token uses this, not the kill -9 of `Drop`: SoftHSM2 runs
    /// inside the daemon and rewrites its token file in place at every login (a fleet-engaged
    /// instance logs in every 2 s to look for the release), and a kill that lands during that
    /// write leaves the emulated token empty for good, which a separate HSM never is.
    #[track_caller]
    pub fn terminate(mut self) -> String {
        send_signal(self.pid(), "TERM");
        let pid = self.pid();
        if !wait_until(Duration::from_millis(200), || self.proc.has_exited()) {
            send_signal(pid, "TERM");
        }
        let status = self.proc.wait_exit(WAIT);
        assert!(
            status.is_some_and(|s| s.success()),
            "the daemon did not exit 0 on SIGTERM ({status:?}):\n{}",
            self.proc.stderr_text()
        );
        self.proc.stderr_text()
    }

    /// Stops the daemon and returns its complete logs.
    pub fn stop(mut self) -> String {
        self.proc.stop();
        self.proc.stderr_text()
    }
}

/// A fixture, a daemon serving it and a signed session. Fields drop in order: the connection,
/// then the daemon, then the fixture's temp dir.
pub struct Harness {
    pub xks: Xks,
    pub proxy: TestProxy,
    pub fx: Fixture,
}

impl Harness {
    /// The fixture's own config.
    pub fn start() -> Harness {
        Self::start_with(|_, _| {}, &[])
    }

    /// The fixture's config edited by `edit`, with extra environment variables for the daemon.
    pub fn start_with(edit: impl FnOnce(&mut toml::Table, &Fixture), env: &[(&str, &str)]) -> Harness {
        let fx = Fixture::new();
        let mut cfg = fx.config();
        edit(&mut cfg, &fx);
        let proxy = TestProxy::start_with(&fx, &cfg, env);
        let xks = proxy.xks(&fx);
        Harness { xks, proxy, fx }
    }

    /// A second connection with the fixture's credential.
    pub fn session(&self) -> Xks {
        self.proxy.xks(&self.fx)
    }
}

/// `GET /ping` on a new connection; the status.
pub fn ping(proxy: &TestProxy) -> u16 {
    proxy.client().send("GET", "/ping", &[], b"").status
}

/// The daemon's metrics address (`IP:PORT`), from the line it prints on stdout.
#[track_caller]
pub fn metrics_addr(proxy: &TestProxy) -> String {
    let mut addr = None;
    assert!(
        crate::common::process::wait_until(WAIT, || {
            addr = proxy.stdout_lines().iter().find_map(|l| {
                l.strip_prefix("xks-bridge metrics on http://")?
                    .strip_suffix("/metrics")
                    .map(String::from)
            });
            addr.is_some()
        }),
        "the daemon never printed its metrics address"
    );
    addr.expect("metrics address")
}

/// One `GET /metrics` on a new connection: the whole HTTP response, head included.
#[track_caller]
pub fn scrape_metrics(proxy: &TestProxy) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics_addr(proxy)).expect("connect to /metrics");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send the scrape");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the scrape");
    text
}
