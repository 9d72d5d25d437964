//! Restarts and crashes: SIGTERM under load drains every accepted request and exits 0, and a
//! second SIGTERM cuts the drain delay short; `drain` with no delay still gets its answer;
//! `kill -9` at random moments during kill switch changes never tears or loses the state, and
//! the audit trail still verifies up to its last complete record.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Starts `serve` on the fixture config, keeping the child handle (exit status needed).
fn start_daemon(fx: &Fixture) -> (Spawned, SocketAddr) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(fx.path("config.toml"))
        .env_remove("RUST_LOG");
    let proc = Spawned::start(cmd).expect("daemon starts");
    let addr = proc
        .first_line()
        .strip_prefix("xks-bridge listening on https://")
        .and_then(|a| a.parse().ok())
        .expect("listening line");
    (proc, addr)
}

fn xks_at(fx: &Fixture, addr: SocketAddr) -> Xks {
    let client = Client::connect(addr, tls_config(&fx.ca_pem(), None, None, &[])).expect("connect");
    Xks {
        client,
        signer: fx.signer(),
        base: BASE.to_owned(),
    }
}

#[test]
fn sigterm_under_load_finishes_every_accepted_request_and_exits_zero() {
    let fx = Fixture::new();
    let (mut proc, addr) = start_daemon(&fx);
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Result<u16, String>>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            let mut xks = xks_at(&fx, addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("{BASE}/keys/{KEY_AES}/encrypt");
                    let body = encrypt_body(b"drain me", None, false).to_string();
                    let authority = xks.client.authority.clone();
                    let mut headers = xks.signer.headers("POST", &authority, &path, body.as_bytes());
                    headers.push(("host".to_owned(), authority));
                    let r = xks
                        .client
                        .try_send_raw("POST", &path, &headers, body.into_bytes());
                    let failed = r.is_err();
                    outcomes.lock().unwrap().push(r.map(|r| r.status));
                    if failed {
                        break; // the connection was closed by the shutdown: not an accepted request
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    send_signal(proc.pid(), "TERM");
    let status = proc
        .wait_exit(Duration::from_secs(20))
        .expect("daemon exits after SIGTERM");
    stop.store(true, Ordering::SeqCst);
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\n{}",
        proc.stderr_text()
    );

    let outcomes = outcomes.lock().unwrap();
    let answered: Vec<u16> = outcomes.iter().filter_map(|o| o.as_ref().ok().copied()).collect();
    assert!(
        answered.len() > 20,
        "the load did not run: {} answers",
        answered.len()
    );
    assert!(
        answered.iter().all(|s| *s == 200),
        "an accepted request failed during the drain: {answered:?}"
    );
    let logs = strip_ansi(&proc.stderr_text());
    assert!(logs.contains("SIGTERM: shutting down"), "{logs}");
    assert!(logs.contains("all connections drained"), "{logs}");
}

#[test]
fn a_second_sigterm_cuts_the_drain_delay_short() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "server").insert("drain_delay_ms".into(), 60_000.into());
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(fx.write_config(&cfg))
        .env_remove("RUST_LOG");
    let mut proc = Spawned::start(cmd).expect("daemon starts");
    let addr: SocketAddr = proc
        .first_line()
        .strip_prefix("xks-bridge listening on https://")
        .and_then(|a| a.parse().ok())
        .expect("listening line");
    let ping = || {
        Client::connect(addr, tls_config(&fx.ca_pem(), None, None, &[]))
            .map(|mut c| c.send("GET", "/ping", &[], b"").status)
            .unwrap_or(0)
    };
    assert_eq!(ping(), 200);
    send_signal(proc.pid(), "TERM");
    assert!(
        wait_until(Duration::from_secs(5), || ping() == 503),
        "/ping never answered 503 after SIGTERM"
    );
    // Still draining a moment later: the delay is a minute.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ping(), 503);
    let second = std::time::Instant::now();
    send_signal(proc.pid(), "TERM");
    let status = proc
        .wait_exit(Duration::from_secs(20))
        .expect("the second SIGTERM ends the drain delay");
    assert_eq!(status.code(), Some(0), "{}", proc.stderr_text());
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        second.elapsed()
    );
    let logs = proc.stderr_text();
    assert!(logs.contains("cutting the drain delay short"), "{logs}");
}

#[test]
fn drain_command_without_delay_gets_its_answer_and_the_daemon_exits_zero() {
    let fx = Fixture::new();
    let mut cfg = fx.config();
    section(&mut cfg, "server").insert("drain_delay_ms".into(), 0.into());
    let config = fx.write_config(&cfg);
    for round in 0..3 {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG");
        let mut proc = Spawned::start(cmd).expect("daemon starts");
        let pid = proc.pid();
        // The daemon has nothing to wait for: it exits as soon as the drain starts, and must
        // still answer the command that stopped it.
        let (code, out, err) = cli(&config, &["drain", "--reason", "no delay"]);
        assert_eq!(code, Some(0), "round {round}: {out}\n{err}");
        assert!(out.contains(&format!("draining (pid {pid})")), "{out}");
        assert!(out.contains("exited"), "{out}");
        let status = proc.wait_exit(WAIT).expect("daemon exits");
        assert_eq!(status.code(), Some(0), "{}", proc.stderr_text());
        let logs = proc.stderr_text();
        assert!(logs.contains("drain started"), "{logs}");
        assert!(logs.contains("no delay"), "the reason is logged: {logs}");
    }
}

/// The proxy switch state as stored: Some(true/false), or None if the file is absent.
fn stored_proxy_state(fx: &Fixture) -> Option<bool> {
    let path = fx.path("state/kill-switch.json");
    let bytes = std::fs::read(&path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "torn kill switch state ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Some(!v["proxy"].is_null())
}

/// Replaces the fixture's token directory with `from` (a copy made with `cp -a`).
fn restore_token_dir(fx: &Fixture, from: &std::path::Path) {
    let tokens = fx.path("tokens");
    std::fs::remove_dir_all(&tokens).expect("remove the token directory");
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(from).arg(&tokens);
    let (code, out, err) = run_bounded(cp, WAIT);
    assert_eq!(code, Some(0), "cp -a {}: {out}{err}", from.display());
}

#[test]
fn kill_9_during_engage_and_release_never_tears_or_loses_the_kill_switch_state() {
    let fx = Fixture::new();
    let config = fx.path("config.toml");
    // SoftHSM2 runs inside the daemon and rewrites its token file in place (at login, for
    // example), so a kill -9 can leave the emulated token empty, which a separate HSM never is.
    // The subject here is the kill switch state: every round starts from the intact token.
    let pristine = fx.path("tokens.pristine");
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(fx.path("tokens")).arg(&pristine);
    let (code, out, err) = run_bounded(cp, WAIT);
    assert_eq!(code, Some(0), "cp -a tokens: {out}{err}");
    let mut rounds = 0;
    let mut kills_mid_command = 0;
    for i in 0..16u64 {
        let (mut proc, _) = start_daemon(&fx);
        // Confirmed: the state after the last command that returned success.
        let confirmed = Arc::new(Mutex::new(stored_proxy_state(&fx).unwrap_or(false)));
        let in_flight: Arc<Mutex<Option<bool>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let (confirmed, in_flight, stop, config) =
                (confirmed.clone(), in_flight.clone(), stop.clone(), config.clone());
            std::thread::spawn(move || {
                let mut engage = !*confirmed.lock().unwrap();
                while !stop.load(Ordering::SeqCst) {
                    *in_flight.lock().unwrap() = Some(engage);
                    let verb = if engage { "engage" } else { "release" };
                    let mut c = Command::new(BIN);
                    c.args(["kill-switch", verb, "--reason", "crash loop", "--config"])
                        .arg(&config);
                    let (code, _, _) = run_bounded(c, WAIT);
                    if stop.load(Ordering::SeqCst) {
                        break; // the daemon is gone: this command's fate is "in flight"
                    }
                    if code == Some(0) {
                        *confirmed.lock().unwrap() = engage;
                        *in_flight.lock().unwrap() = None;
                        engage = !engage;
                    }
                }
            })
        };
        // A pseudo-random moment between 50 and 350 ms.
        std::thread::sleep(Duration::from_millis(50 + (i * 7919) % 300));
        let _ = Command::new("kill")
            .args(["-9", &proc.pid().to_string()])
            .status();
        stop.store(true, Ordering::SeqCst);
        let _ = proc.wait_exit(WAIT);
        driver.join().unwrap();
        restore_token_dir(&fx, &pristine);

        let stored = stored_proxy_state(&fx).unwrap_or(false);
        let confirmed = *confirmed.lock().unwrap();
        let in_flight = *in_flight.lock().unwrap();
        if in_flight.is_some() {
            kills_mid_command += 1;
        }
        assert!(
            stored == confirmed || Some(stored) == in_flight,
            "round {i}: stored {stored}, last confirmed {confirmed}, in flight {in_flight:?}"
        );
        rounds += 1;
    }
    eprintln!("kill -9 loop: {rounds} rounds, {kills_mid_command} with a command in flight");
    // Every kill switch change was audited; the chain verifies up to the last complete record.
    let mut c = Command::new(BIN);
    c.args(["audit", "verify"]).arg(fx.path("audit/audit.jsonl"));
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "audit chain broken after kill -9 loop: {out}{err}");
    assert!(out.contains("intact"), "{out}");
    // The daemon comes back in whatever state was stored, and a release always works.
    let (_proc, addr) = start_daemon(&fx);
    let mut c = Command::new(BIN);
    c.args(["kill-switch", "release", "--config"]).arg(&config);
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(xks_at(&fx, addr).health().status, 200);
}
