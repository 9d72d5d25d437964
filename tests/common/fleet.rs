//! A fleet on one token behind the distribution's HAProxy: [`Fleet`] starts N daemons on the
//! fixture's SoftHSM2 token (distinct fixed loopback ports, state directories, admin sockets,
//! audit files) and HAProxy running the shipped `deploy/haproxy/haproxy.cfg`, rewritten only
//! where the file marks a line `site:` and in its check timings; [`Load`] keeps signed Encrypt
//! requests flowing through the balancer the way KMS does (keep-alive, reconnecting when a
//! response says `Connection: close`) and counts every request that did not get a 200.

use crate::common::client::{tls_config, Client};
use crate::common::fixture::{section, toml_strings, Fixture, BASE, KEY_AES};
use crate::common::process::{wait_until, Spawned, BIN, WAIT};
use crate::common::xks::{encrypt_body, Xks};
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The check timings the tests use instead of the shipped ones (same shape, five times faster),
/// so a rolling restart of three instances takes seconds.
pub const SHIPPED_CHECK_TIMING: &str = "inter 1s fastinter 500ms downinter 1s rise 2 fall 2";
pub const TEST_CHECK_TIMING: &str = "inter 200ms fastinter 100ms downinter 200ms rise 2 fall 2";

/// A port on 127.0.0.1 that was free a moment ago (fixed ports let an instance come back
/// where HAProxy expects it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// One instance of the fleet.
pub struct Instance {
    /// Its config file.
    pub config: PathBuf,
    /// Its API address.
    pub addr: SocketAddr,
    /// The running daemon, if any.
    pub proc: Option<Spawned>,
}

impl Instance {
    /// Starts (or restarts) the daemon; panics with its stderr when it does not come up.
    pub fn start(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("SOFTHSM2_CONF");
        let proc =
            Spawned::start(cmd).unwrap_or_else(|e| panic!("instance {} did not start: {e}", self.addr));
        assert_eq!(
            proc.first_line(),
            format!("xks-bridge listening on https://{}", self.addr),
            "{}",
            proc.stderr_text()
        );
        self.proc = Some(proc);
    }

    /// The running daemon.
    #[track_caller]
    pub fn proc(&mut self) -> &mut Spawned {
        self.proc.as_mut().expect("instance running")
    }

    /// A signed session straight to this instance (not through the balancer).
    pub fn xks(&self, fx: &Fixture) -> Xks {
        Xks {
            client: Client::connect(self.addr, tls(fx)).expect("connect to instance"),
            signer: fx.signer(),
            base: BASE.to_owned(),
        }
    }

    /// `GET /ping` straight to this instance: status and body.
    pub fn ping(&self, fx: &Fixture) -> (u16, String) {
        let r = Client::connect(self.addr, tls(fx))
            .expect("connect to instance")
            .send("GET", "/ping", &[], b"");
        (r.status, r.text())
    }
}

/// HAProxy in the foreground, killed on drop.
pub struct HaProxy {
    child: Child,
    /// Its runtime API socket.
    pub stats: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its stdout and stderr (logs, server state changes).
    pub log: PathBuf,
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HaProxy {
    /// Server name -> status (`UP`, `DOWN`, `UP 1/2`, ...) from `show stat`.
    pub fn statuses(&self) -> Vec<(String, String)> {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.stats) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(WAIT));
        let mut text = String::new();
        if s.write_all(b"show stat\n").is_err() || s.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[px] == "xks_bridges" && f[sv].starts_with("xks"))
            .map(|f| (f[sv].to_owned(), f[st].to_owned()))
            .collect()
    }

    /// The status of one server.
    pub fn status(&self, server: &str) -> String {
        self.statuses()
            .into_iter()
            .find(|(s, _)| s == server)
            .map(|(_, st)| st)
            .unwrap_or_default()
    }

    /// Waits (bounded) until `server` has status `want`; the time it took.
    pub fn wait_status(&self, server: &str, want: &str, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        wait_until(limit, || self.status(server) == want).then(|| start.elapsed())
    }

    /// HAProxy's own output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// N instances on the fixture's token behind HAProxy.
pub struct Fleet {
    pub fx: Fixture,
    pub instances: Vec<Instance>,
    pub lb: HaProxy,
}

impl Fleet {
    /// Starts `n` instances (each with `fleet_size = n` and `drain_delay_ms`) and HAProxy, and
    /// waits until HAProxy has every instance UP.
    pub fn start(n: usize, drain_delay_ms: u64) -> Fleet {
        let fx = Fixture::new();
        let mut instances: Vec<Instance> = (1..=n)
            .map(|i| {
                let port = free_port();
                let mut cfg = fx.config();
                let srv = section(&mut cfg, "server");
                srv.insert("listen".into(), toml_strings(&[&format!("127.0.0.1:{port}")]));
                srv.insert("fleet_size".into(), (n as i64).into());
                srv.insert("drain_delay_ms".into(), (drain_delay_ms as i64).into());
                srv.insert("drain_grace_ms".into(), 5000.into());
                section(&mut cfg, "state").insert("directory".into(), format!("state-{i}").into());
                section(&mut cfg, "admin").insert("socket".into(), format!("admin-{i}.sock").into());
                section(&mut cfg, "audit").insert("file".into(), format!("audit-{i}/audit.jsonl").into());
                Instance {
                    config: fx.write_config(&cfg),
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    proc: None,
                }
            })
            .collect();
        instances.iter_mut().for_each(Instance::start);
        let lb = start_haproxy(&fx, &instances);
        for i in 1..=n {
            let name = format!("xks{i}");
            assert!(
                lb.wait_status(&name, "UP", WAIT).is_some(),
                "HAProxy never saw {name} UP: {:?}\n{}",
                lb.statuses(),
                lb.log_text()
            );
        }
        Fleet { fx, instances, lb }
    }

    /// A signed session through the balancer.
    pub fn xks(&self) -> Xks {
        Xks {
            client: Client::connect(self.lb.addr, tls(&self.fx)).expect("connect to HAProxy"),
            signer: self.fx.signer(),
            base: BASE.to_owned(),
        }
    }
}

fn tls(fx: &Fixture) -> Arc<ClientConfig> {
    tls_config(&fx.ca_pem(), None, None, &[])
}

/// The shipped HAProxy config with the `site:` lines set for loopback, the check timings of
/// [`TEST_CHECK_TIMING`] and one server line per instance.
pub fn haproxy_config(
    shipped: &str,
    bind: SocketAddr,
    stats: &Path,
    ca: &Path,
    instances: &[SocketAddr],
) -> String {
    let replacements = [
        (
            "log /dev/log local0 info",
            "log stdout format raw local0 info".to_owned(),
        ),
        (
            "stats socket /run/haproxy/admin.sock",
            format!("stats socket {}", stats.display()),
        ),
        ("bind :443", format!("bind {bind}")),
        ("/etc/haproxy/xks-bridge-ca.pem", ca.display().to_string()),
        ("check-sni xks.example.com", "check-sni localhost".to_owned()),
        (SHIPPED_CHECK_TIMING, TEST_CHECK_TIMING.to_owned()),
    ];
    let mut text = shipped.to_owned();
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "deploy/haproxy/haproxy.cfg no longer contains {from:?}"
        );
        text = text.replace(from, &to);
    }
    // Unprivileged, in the foreground: no chroot or user switch. The server list is replaced.
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("chroot ")
                || t.starts_with("user ")
                || t.starts_with("group ")
                || t.starts_with("server "))
        })
        .map(str::to_owned)
        .collect();
    for (i, a) in instances.iter().enumerate() {
        out.push(format!("    server xks{} {a}", i + 1));
    }
    out.join("\n") + "\n"
}

fn start_haproxy(fx: &Fixture, instances: &[Instance]) -> HaProxy {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy/haproxy.cfg"))
            .expect("deploy/haproxy/haproxy.cfg");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let stats = fx.path("haproxy.sock");
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let cfg = fx.path("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(&shipped, addr, &stats, &fx.ca_pem(), &addrs))
        .expect("write haproxy.cfg");
    let log = fx.path("haproxy.log");
    let out = std::fs::File::create(&log).expect("haproxy log");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out)
        .spawn()
        .expect("spawn haproxy (scripts/install-deps.sh installs it)");
    let mut lb = HaProxy {
        child,
        stats,
        addr,
        log,
    };
    let deadline = Instant::now() + WAIT;
    while lb.statuses().is_empty() {
        let exited = lb.child.try_wait().ok().flatten();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "HAProxy did not come up ({exited:?}):\n{}",
            lb.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lb
}

/// What one load worker saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests answered 200.
    pub ok: u64,
    /// Every other outcome: transport errors and non-200 answers, with what happened.
    pub failed: Vec<String>,
    /// Connections opened.
    pub connections: u64,
}

/// Signed Encrypt requests through the balancer on `workers` keep-alive connections.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts the workers; each pauses `pause` between requests.
    pub fn start(fx: &Fixture, lb: SocketAddr, workers: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (stop, tls, signer) = (stop.clone(), tls(fx), fx.signer());
                std::thread::spawn(move || {
                    let mut t = Tally::default();
                    let mut conn: Option<Client> = None;
                    let path = format!("{BASE}/keys/{KEY_AES}/encrypt");
                    let body = encrypt_body(b"fleet", None, false).to_string();
                    while !stop.load(Ordering::SeqCst) {
                        let client = match conn.as_mut() {
                            Some(c) => c,
                            None => match Client::connect(lb, tls.clone()) {
                                Ok(c) => {
                                    t.connections += 1;
                                    conn.insert(c)
                                }
                                Err(e) => {
                                    t.failed.push(format!("connect: {e}"));
                                    std::thread::sleep(pause);
                                    continue;
                                }
                            },
                        };
                        let authority = client.authority.clone();
                        let mut headers = signer.headers("POST", &authority, &path, body.as_bytes());
                        headers.push(("host".to_owned(), authority));
                        match client.try_send_raw("POST", &path, &headers, body.clone().into_bytes()) {
                            Ok(r) => {
                                let close = r
                                    .headers
                                    .get(http::header::CONNECTION)
                                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                                if r.status == 200 {
                                    t.ok += 1;
                                } else {
                                    t.failed.push(format!("{}: {}", r.status, r.text()));
                                }
                                if close {
                                    conn = None;
                                }
                            }
                            Err(e) => {
                                t.failed.push(e);
                                conn = None;
                            }
                        }
                        std::thread::sleep(pause);
                    }
                    t
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the workers and adds up what they saw.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Tally::default();
        for w in self.workers {
            let t = w.join().expect("load worker");
            all.ok += t.ok;
            all.connections += t.connections;
            all.failed.extend(t.failed);
        }
        all
    }
}
