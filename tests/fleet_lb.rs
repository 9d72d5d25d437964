//! A fleet of three instances on one SoftHSM2 token behind the distribution's HAProxy, running
//! the shipped `deploy/haproxy/haproxy.cfg`, under continuous signed load: a rolling SIGTERM
//! restart loses no request; `kill -9` of one instance fails only the requests on its
//! connections and HAProxy marks it down within its check interval; `xks-bridge drain` answers
//! `/ping` with 503 for the drain delay while Encrypt still works, then the daemon exits 0; and
//! every instance reports the configured fleet size. The counts are printed (run with
//! `--nocapture` to see them).
//!
//! The three tests take turns: each runs four processes on a machine that may have two cores,
//! and a fleet competing with another fleet would measure the machine, not the proxy.

mod common;

use common::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_FLEET_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Long enough for HAProxy's test timings (2 checks, 100-200 ms apart) to see the 503.
const DRAIN_DELAY_MS: u64 = 1000;
const WORKERS: usize = 3;
const PAUSE: Duration = Duration::from_millis(5);

fn fleet() -> (std::sync::MutexGuard<'static, ()>, Fleet) {
    require_tool("haproxy", "haproxy");
    let guard = ONE_FLEET_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    (guard, Fleet::start(3, DRAIN_DELAY_MS))
}

#[test]
fn rolling_sigterm_restart_behind_haproxy_loses_no_request() {
    let (_turn, mut f) = fleet();
    let load = Load::start(&f.fx, f.lb.addr, WORKERS, PAUSE);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    for i in 0..f.instances.len() {
        let name = format!("xks{}", i + 1);
        let inst = &mut f.instances[i];
        send_signal(inst.proc().pid(), "TERM");
        let down = f.lb.wait_status(&name, "DOWN", WAIT);
        let status = inst.proc().wait_exit(WAIT).expect("instance exits after SIGTERM");
        let logs = inst.proc().stderr_text();
        assert_eq!(status.code(), Some(0), "{name} after SIGTERM: {status:?}\n{logs}");
        assert!(
            down.is_some(),
            "HAProxy never marked {name} DOWN during its drain: {:?}",
            f.lb.statuses()
        );
        assert!(logs.contains("drain started"), "{logs}");
        assert!(logs.contains("drain: listeners closed"), "{logs}");
        assert!(logs.contains("drain: all connections drained"), "{logs}");
        inst.start();
        let up = f.lb.wait_status(&name, "UP", WAIT);
        assert!(
            up.is_some(),
            "HAProxy never saw {name} UP again: {:?}",
            f.lb.statuses()
        );
        eprintln!(
            "{name}: marked DOWN {:?} after SIGTERM, UP {:?} after restart",
            down.unwrap(),
            up.unwrap()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = load.finish();
    eprintln!(
        "rolling restart of 3 instances in {:?}: {} requests answered 200 on {} connections, {} failed",
        started.elapsed(),
        t.ok,
        t.connections,
        t.failed.len()
    );
    assert!(t.ok > 300, "the load did not run: {t:?}");
    assert!(
        t.failed.is_empty(),
        "requests failed during the rolling restart: {:?}",
        t.failed
    );

    // Every restarted instance, asked directly and through the balancer, reports the fleet.
    for inst in &f.instances {
        let r = inst.xks(&f.fx).health();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["xksProxyFleetSize"], 3, "{v}");
        assert_eq!(v["ekmFleetDetails"][0]["healthStatus"], "ACTIVE", "{v}");
    }
    let r = f.xks().health();
    assert_eq!(r.json()["xksProxyFleetSize"], 3, "{}", r.text());

    // `bench` through the balancer reports each instance's share from its metrics.
    let report = bench_through(&f);
    let shares = report["instances"]
        .as_array()
        .expect("instances in the bench report");
    assert_eq!(shares.len(), 3, "{report}");
    let counted: u64 = shares.iter().map(|s| s["requests"].as_u64().unwrap_or(0)).sum();
    let sent = report["total"].as_u64().unwrap_or(0) + report["warmup"]["requests"].as_u64().unwrap_or(0);
    eprintln!("bench through HAProxy: {sent} requests sent; per instance: {shares:?}");
    for s in shares {
        assert!(
            s["requests"].as_u64().unwrap_or(0) > 0,
            "an instance got no request: {report}"
        );
    }
    // The bench also sends a few requests outside its tally (set-up, the last in flight).
    assert!(
        (sent..=sent + 64).contains(&counted),
        "the instances counted {counted} requests for {sent} sent: {report}"
    );
}

/// `xks-bridge bench --json` through the balancer for 1 s, with every instance's metrics.
fn bench_through(f: &Fleet) -> serde_json::Value {
    let endpoint = format!("https://{}", f.lb.addr);
    let secret = f.fx.path("secrets/sigv4-secret");
    let ca = f.fx.ca_pem();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["bench", "--json", "--endpoint", &endpoint, "--uri-path", BASE])
        .args(["--access-key-id", &f.fx.access_key_id, "--key-id", KEY_AES])
        .arg("--secret-file")
        .arg(&secret)
        .arg("--ca-file")
        .arg(&ca)
        .args([
            "--duration",
            "1",
            "--warmup",
            "0",
            "--connections",
            "6",
            "--client-threads",
            "1",
        ])
        .env_remove("XKS_BENCH_SECRET");
    for inst in &f.instances {
        cmd.arg("--instance-metrics").arg(metrics_url(inst));
    }
    let (code, out, err) = run_bounded(cmd, WAIT);
    assert_eq!(code, Some(0), "bench: {out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench JSON ({e}): {out}"))
}

/// The metrics URL an instance printed.
fn metrics_url(inst: &Instance) -> String {
    let lines = inst.proc.as_ref().expect("running").stdout_lines();
    lines
        .iter()
        .find_map(|l| l.strip_prefix("xks-bridge metrics on ").map(str::to_owned))
        .expect("metrics address printed")
}

#[test]
fn kill_9_behind_haproxy_fails_only_requests_on_its_connections() {
    let (_turn, mut f) = fleet();
    let load = Load::start(&f.fx, f.lb.addr, WORKERS, PAUSE);
    std::thread::sleep(Duration::from_millis(500));
    let status = f.instances[1].proc().stop();
    let down = f.lb.wait_status("xks2", "DOWN", WAIT);
    std::thread::sleep(Duration::from_millis(1000));
    let t = load.finish();
    eprintln!(
        "kill -9 of 1 of 3 instances ({status:?}): marked DOWN after {down:?}; {} requests answered 200, {} failed: {:?}",
        t.ok,
        t.failed.len(),
        t.failed
    );
    let down = down.unwrap_or_else(|| panic!("HAProxy never marked xks2 DOWN: {:?}", f.lb.statuses()));
    // Two failed checks, the second 100 ms after the first, each bounded by `timeout check`.
    assert!(
        down < Duration::from_millis(1500),
        "marked DOWN only after {down:?}"
    );
    assert!(t.ok > 100, "the load did not run: {t:?}");
    // At most the request each worker had on a connection to the killed instance.
    assert!(
        t.failed.len() <= WORKERS,
        "more failures than connections to the killed instance: {:?}",
        t.failed
    );
    // The survivors still serve, through the balancer.
    let mut x = f.xks();
    x.encrypt_ok(KEY_AES, b"after the kill", None);
}

#[test]
fn drain_command_answers_ping_503_while_serving_then_exits_zero() {
    let (_turn, mut f) = fleet();
    let load = Load::start(&f.fx, f.lb.addr, WORKERS, PAUSE);
    std::thread::sleep(Duration::from_millis(300));
    let config = f.instances[1].config.clone();
    let asked = Instant::now();
    let drain = std::thread::spawn(move || cli(&config, &["drain", "--reason", "test"]));
    let inst = &f.instances[1];
    assert!(
        wait_until(Duration::from_secs(2), || inst.ping(&f.fx)
            == (503, "draining".to_owned())),
        "/ping never answered 503 draining"
    );
    let announced = asked.elapsed();
    // Still served during the delay, and told to reconnect elsewhere.
    let r = inst
        .xks(&f.fx)
        .encrypt(KEY_AES, &encrypt_body(b"still here", None, false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let metrics = scrape_metrics_at(&f.instances[1]);
    assert!(metrics.contains("xks_bridge_draining 1"), "{metrics}");
    let st = kill_switch_status(&f.instances[1].config);
    assert_eq!(st["draining"]["stage"], "announcing", "{st}");
    assert_eq!(st["draining"]["drain_delay_ms"], DRAIN_DELAY_MS, "{st}");
    let other = kill_switch_status(&f.instances[0].config);
    assert!(
        other.get("draining").is_none(),
        "instance 1 is not draining: {other}"
    );
    let down = f.lb.wait_status("xks2", "DOWN", WAIT);
    assert!(
        down.is_some(),
        "HAProxy never marked xks2 DOWN: {:?}",
        f.lb.statuses()
    );
    let (code, out, err) = drain.join().expect("drain command");
    let exited = asked.elapsed();
    assert_eq!(code, Some(0), "drain: {out}\n{err}");
    assert!(out.contains("draining (pid"), "{out}");
    assert!(out.contains("exited"), "{out}");
    let status = f.instances[1].proc().wait_exit(WAIT).expect("daemon exits");
    assert_eq!(status.code(), Some(0), "{}", f.instances[1].proc().stderr_text());
    assert!(
        exited >= Duration::from_millis(DRAIN_DELAY_MS),
        "exited after {exited:?}, before the drain delay"
    );
    std::thread::sleep(Duration::from_millis(300));
    let t = load.finish();
    eprintln!(
        "drain: /ping 503 {announced:?} after the command, daemon gone {exited:?} after it; load: {} ok, {} failed",
        t.ok,
        t.failed.len()
    );
    assert!(
        t.failed.is_empty(),
        "requests failed during the drain: {:?}",
        t.failed
    );

    // Nothing left to drain: the command says so with exit 69, and acts on nothing offline.
    let (code, _, err) = cli(&f.instances[1].config, &["drain"]);
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("no daemon answers"), "{err}");
}

/// `GET /metrics` of an instance, from the address it printed.
fn scrape_metrics_at(inst: &Instance) -> String {
    use std::io::{Read, Write};
    let url = metrics_url(inst);
    let addr = url
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .expect("metrics URL");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("scrape");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read scrape");
    text
}
