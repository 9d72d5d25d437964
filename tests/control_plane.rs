//! The kill switch's control plane, end to end: one daemon per state directory (an exclusive
//! lock naming its pid), what the operator CLI may do when the admin socket is gone, what
//! `status` reports, and engage/release issued concurrently (two CLI processes, or SIGUSR1
//! against a socket release), checked round after round against what the daemon actually does.
//!
//! Real daemon, real CLI, real SoftHSM2 token. Everything on 127.0.0.1 and in temp dirs.

mod common;
mod control_support;

use common::*;
use control_support::*;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_daemon_holds_an_exclusive_lock_on_its_state_directory_naming_its_pid_for_its_whole_life() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let lock = lock_file(&fx);
    let text = std::fs::read_to_string(&lock)
        .unwrap_or_else(|e| panic!("the running daemon has no lock file {}: {e}", lock.display()));
    assert_eq!(
        text.trim(),
        proxy.pid().to_string(),
        "the lock file must contain the daemon's pid"
    );
    assert!(
        !lock_is_free(&lock),
        "another process could take the state lock while the daemon runs"
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        !lock_is_free(&lock),
        "the daemon let go of its lock while running"
    );
    drop(proxy);
    assert!(
        lock_is_free(&lock),
        "the lock must be released when the daemon is gone (even killed)"
    );
}

#[test]
fn a_second_daemon_on_the_same_state_directory_exits_69_naming_the_first_and_leaves_it_serving() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);
    let sock = admin_socket(&fx);
    let inode = std::fs::metadata(&sock).expect("admin socket").ino();

    let mut second = Command::new(BIN);
    second
        .arg("serve")
        .arg("--config")
        .arg(&proxy.config)
        .env_remove("RUST_LOG");
    let (code, out, err) = run_limited(second, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("a second daemon on the same state directory kept running: {e}"));
    assert_eq!(
        code,
        Some(EXIT_UNAVAILABLE),
        "second daemon: stdout {out}\nstderr {err}"
    );
    let pid = proxy.pid().to_string();
    assert!(
        err.contains(&pid) || out.contains(&pid),
        "the refusal must name the running daemon's pid {pid}: {out}{err}"
    );
    assert_eq!(
        std::fs::metadata(&sock)
            .map(|m| m.ino())
            .unwrap_or_else(|e| panic!("the second daemon removed the admin socket: {e}")),
        inode,
        "the second daemon replaced the first one's admin socket"
    );

    // The first daemon still answers its socket, and an engage still reaches it.
    let s = status(&proxy.config);
    assert_ne!(
        s.get("daemon").and_then(Value::as_str),
        Some("not running"),
        "status no longer reaches the running daemon: {s}"
    );
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);
    cli_ok(
        &proxy.config,
        &["kill-switch", "engage", "--reason", "after a second serve"],
    );
    assert_refusing(&proxy, &fx, "engage after a refused second daemon");
}

/// Holds an exclusive flock on `lock` in a separate process (a shell exec'ing `sleep`, so one
/// process holds it and killing it frees it), writing that process's pid into the file.
struct LockHolder(std::process::Child);

impl LockHolder {
    fn hold(lock: &std::path::Path) -> LockHolder {
        require_tool("flock", "util-linux");
        let child = Command::new("sh")
            .args([
                "-c",
                r#"exec 9>>"$1" && flock 9 && echo $$ > "$1" && exec sleep 120"#,
                "sh",
            ])
            .arg(lock)
            .spawn()
            .expect("spawn lock holder");
        let holder = LockHolder(child);
        // The probe holds the lock for an instant too; the helper waits for it (no -n).
        let held = wait_until(WAIT, || !lock_is_free(lock));
        assert!(held, "the helper process did not take the lock");
        holder
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_cli_does_not_act_offline_while_another_process_holds_the_state_lock() {
    let fx = Fixture::new();
    let config = fx.path("config.toml");
    std::fs::create_dir_all(state_dir(&fx)).unwrap();
    let state_path = state_dir(&fx).join("kill-switch.json");
    let before = std::fs::read(&state_path).ok();
    let holder = LockHolder::hold(&lock_file(&fx));

    for args in [
        vec![
            "kill-switch",
            "engage",
            "--keystore",
            PREFIX,
            "--reason",
            "locked",
        ],
        vec!["kill-switch", "engage", "--key", KEY_AES, "--reason", "locked"],
    ] {
        let (code, out, err) = cli(&config, &args);
        assert_ne!(
            code,
            Some(0),
            "{args:?} acted offline although another process holds the state lock: {out}{err}"
        );
        assert!(!err.trim().is_empty(), "{args:?} failed without a message");
    }
    assert_eq!(
        std::fs::read(&state_path).ok(),
        before,
        "the state file changed while another process held the lock"
    );

    // Nothing changed on the token or in the state either: a daemon started once the lock is
    // free serves the keystore and the key.
    drop(holder);
    let proxy = TestProxy::start(&fx);
    assert_eq!(
        encrypt_outcome(&proxy, &fx, KEY_AES),
        (200, String::new()),
        "a refused offline engage left something engaged"
    );
}

#[test]
fn proxy_engage_with_the_admin_socket_removed_reaches_the_daemon_by_signal_and_is_confirmed() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);
    std::fs::remove_file(admin_socket(&fx)).expect("remove the admin socket");

    let (code, out, err) = cli(
        &proxy.config,
        &["kill-switch", "engage", "--reason", "socket deleted"],
    );
    assert_eq!(
        code,
        Some(0),
        "a proxy engage must still reach a running daemon whose socket is gone: {out}{err}"
    );
    assert_refusing(&proxy, &fx, "right after the CLI reported the engage");
    assert!(
        state_file(&fx)["proxy"].is_object(),
        "the engage is not in the state file: {}",
        state_file(&fx)
    );

    // And it is the daemon's own durable state: a restart keeps it engaged.
    drop(proxy);
    let proxy = TestProxy::start(&fx);
    assert_refusing(&proxy, &fx, "after a restart");
}

#[test]
fn with_the_admin_socket_removed_no_engage_reports_success_while_requests_are_still_served() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);
    std::fs::remove_file(admin_socket(&fx)).expect("remove the admin socket");

    // Each scope is checked on what it cuts off, in an order where an earlier engage that took
    // effect cannot mask a later one: the key (KEY_AES), the keystore (seen through another
    // key), then the proxy (/ping).
    let (code, out, err) = cli(
        &proxy.config,
        &["kill-switch", "engage", "--key", KEY_AES, "--reason", "no socket"],
    );
    let enc = encrypt_outcome(&proxy, &fx, KEY_AES);
    if code == Some(0) {
        assert_ne!(
            enc.0, 200,
            "key engage exited 0 but Encrypt under {KEY_AES} still succeeds: {out}{err}"
        );
    } else {
        assert!(!err.trim().is_empty(), "key engage failed without a message");
    }

    let (code, out, err) = cli(
        &proxy.config,
        &[
            "kill-switch",
            "engage",
            "--keystore",
            PREFIX,
            "--reason",
            "no socket",
        ],
    );
    let enc = encrypt_outcome(&proxy, &fx, KEY_ENCRYPT_ONLY);
    if code == Some(0) {
        assert_ne!(
            enc.0, 200,
            "keystore engage exited 0 but the keystore still encrypts: {out}{err}"
        );
    } else {
        assert!(!err.trim().is_empty(), "keystore engage failed without a message");
    }

    let (code, out, err) = cli(&proxy.config, &["kill-switch", "engage", "--reason", "no socket"]);
    let p = ping(&proxy);
    let enc = encrypt_outcome(&proxy, &fx, KEY_ENCRYPT_ONLY);
    if code == Some(0) {
        assert!(
            p != 200 && enc.0 != 200,
            "proxy engage exited 0 but the daemon still serves (ping {p}, Encrypt {enc:?}): {out}{err}"
        );
    } else {
        assert!(!err.trim().is_empty(), "proxy engage failed without a message");
    }
}

#[test]
fn status_reports_each_scope_with_who_engaged_it_and_whether_that_is_durable() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let s = status(&proxy.config);
    assert_eq!(s["proxy"]["engaged"], false, "{s}");
    assert_eq!(
        s["proxy"]["durable"], true,
        "a released proxy on a writable state dir: {s}"
    );
    assert!(s["proxy"]["by"].is_null(), "{s}");
    let ks = &s["keystores"][0];
    assert_eq!(
        (&ks["prefix"], &ks["engaged"], &ks["durable"]),
        (&Value::from(PREFIX), &Value::from(false), &Value::from(true)),
        "{s}"
    );
    assert!(ks["by"].is_null(), "{s}");
    let t = &s["tokens"][0];
    assert_eq!(t["name"], "quickstart-softhsm", "{s}");
    assert_eq!(t["connected"], true, "{s}");
    assert_eq!(t["disabled_keys"], serde_json::json!([]), "{s}");
    assert_eq!(t["local_denies"], serde_json::json!([]), "{s}");

    cli_ok(
        &proxy.config,
        &[
            "kill-switch",
            "engage",
            "--keystore",
            PREFIX,
            "--reason",
            "tenant paused",
        ],
    );
    cli_ok(
        &proxy.config,
        &[
            "kill-switch",
            "engage",
            "--key",
            KEY_NO_USAGE,
            "--reason",
            "key drill",
        ],
    );
    let s = status(&proxy.config);
    let ks = &s["keystores"][0];
    assert_eq!(
        (&ks["engaged"], &ks["durable"]),
        (&Value::from(true), &Value::from(true)),
        "{s}"
    );
    assert_eq!(ks["by"]["reason"], "tenant paused", "{s}");
    assert_eq!(ks["by"]["via"], "admin-socket", "{s}");
    assert_eq!(ks["by"]["by_uid"], 0, "tests run as root: {s}");
    let t = &s["tokens"][0];
    assert_eq!(t["disabled_keys"], serde_json::json!([KEY_NO_USAGE]), "{s}");
    assert_eq!(
        t["local_denies"],
        serde_json::json!([]),
        "the token accepted the mark: {s}"
    );

    cli_ok(
        &proxy.config,
        &["kill-switch", "engage", "--reason", "whole proxy drill"],
    );
    let s = status(&proxy.config);
    assert_eq!(
        (&s["proxy"]["engaged"], &s["proxy"]["durable"]),
        (&Value::from(true), &Value::from(true)),
        "{s}"
    );
    assert_eq!(s["proxy"]["by"]["reason"], "whole proxy drill", "{s}");
    assert_eq!(s["proxy"]["by"]["via"], "admin-socket", "{s}");
}

// ---------------------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------------------

const ROUNDS: usize = 100;

/// xorshift64*, seeded from the clock (or `RACE_SEED`), printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("RACE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{test}: RACE_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A gap of 0–10 ms.
    fn gap(&mut self) -> Duration {
        Duration::from_micros(self.next() % 10_001)
    }
}

/// One CLI run with its wall-clock start and end.
struct Timed {
    code: Option<i32>,
    out: String,
    err: String,
    start: time::OffsetDateTime,
    end: time::OffsetDateTime,
}

fn timed_cli(config: &std::path::Path, args: &[&str], delay: Duration) -> Timed {
    std::thread::sleep(delay);
    let start = now();
    let (code, out, err) = cli(config, args);
    Timed {
        code,
        out,
        err,
        start,
        end: now(),
    }
}

/// After a round: status, the daemon's behaviour and the state file all tell the same story.
/// Returns whether the proxy is engaged.
#[track_caller]
fn assert_consistent(proxy: &TestProxy, fx: &Fixture, round: usize, what: &str) -> bool {
    let s = status(&proxy.config);
    let engaged = s["proxy"]["engaged"]
        .as_bool()
        .unwrap_or_else(|| panic!("round {round}: no proxy.engaged in status: {s}"));
    let enc = encrypt_outcome(proxy, fx, KEY_AES);
    let p = ping(proxy);
    if engaged {
        assert_eq!(
            (enc.0, enc.1.as_str()),
            (400, "InvalidStateException"),
            "round {round} ({what}): status says engaged but Encrypt answered {enc:?}"
        );
        assert_ne!(
            p, 200,
            "round {round} ({what}): status says engaged but /ping is 200"
        );
    } else {
        assert_eq!(
            enc.0, 200,
            "round {round} ({what}): status says released but Encrypt answered {enc:?}"
        );
        assert_eq!(
            p, 200,
            "round {round} ({what}): status says released but /ping is {p}"
        );
    }
    let file = state_file(fx);
    assert_eq!(
        file["proxy"].is_object(),
        engaged,
        "round {round} ({what}): both commands succeeded (durable), yet the state file disagrees \
         with status (engaged={engaged}): {file}"
    );
    engaged
}

#[test]
fn release_and_engage_racing_over_the_socket_leave_status_behaviour_and_state_file_in_agreement() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let mut rng = Rng::new("socket race");
    let started = Instant::now();
    let mut outcomes = [0usize; 2];
    for round in 0..ROUNDS {
        let gap = rng.gap();
        let engage_first = rng.next().is_multiple_of(2);
        let (e_delay, r_delay) = if engage_first {
            (Duration::ZERO, gap)
        } else {
            (gap, Duration::ZERO)
        };
        let (engage, release) = std::thread::scope(|s| {
            let cfg = &proxy.config;
            let e = s.spawn(move || {
                timed_cli(
                    cfg,
                    &["kill-switch", "engage", "--reason", "race engage"],
                    e_delay,
                )
            });
            let r = s.spawn(move || {
                timed_cli(
                    cfg,
                    &["kill-switch", "release", "--reason", "race release"],
                    r_delay,
                )
            });
            (e.join().unwrap(), r.join().unwrap())
        });
        assert_eq!(
            engage.code,
            Some(0),
            "round {round}: engage failed: {}\n{}",
            engage.out,
            engage.err
        );
        let superseded = release_superseded(round, &release);
        let what = format!(
            "gap {gap:?}, {} first",
            if engage_first { "engage" } else { "release" }
        );
        let engaged = assert_consistent(&proxy, &fx, round, &what);
        assert!(
            !superseded || engaged,
            "round {round} ({what}): the release said an engage superseded it, yet the proxy is released"
        );
        if engage.end < release.start {
            assert!(
                !engaged,
                "round {round} ({what}): the release started after the engage was acknowledged, \
                 yet the proxy stayed engaged"
            );
        }
        if release.end < engage.start {
            assert!(
                engaged,
                "round {round} ({what}): the engage started after the release returned, yet the \
                 proxy is released: an acknowledged engage did not hold"
            );
        }
        outcomes[engaged as usize] += 1;
    }
    eprintln!(
        "socket race: {ROUNDS} rounds in {:?}; ended released {} times, engaged {} times",
        started.elapsed(),
        outcomes[0],
        outcomes[1]
    );
}

/// A release either succeeds (exit 0) or reports, exit 1, that an engage of the same scope
/// arrived while it was in progress and stays in force (the proxy must then be engaged).
/// Returns whether it was superseded; any other outcome fails the round.
fn release_superseded(round: usize, release: &Timed) -> bool {
    match release.code {
        Some(0) => false,
        Some(1) if release.err.contains("stays ENGAGED") => true,
        _ => panic!("round {round}: release failed: {}\n{}", release.out, release.err),
    }
}

/// The `at` of the newest history entry recorded for a SIGUSR1 engage at or after `since`.
fn signal_engage_recorded(s: &Value, since: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
    s["history"]
        .as_array()?
        .iter()
        .filter(|e| e["action"] == "engage" && e["via"] == "signal SIGUSR1")
        .filter_map(|e| e["at"].as_str().map(parse_time))
        .filter(|at| *at >= since)
        .max()
}

#[test]
fn sigusr1_engage_racing_a_socket_release_leaves_status_behaviour_and_state_file_in_agreement() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    let pid = proxy.pid();
    let mut rng = Rng::new("SIGUSR1 race");
    let started = Instant::now();
    let mut outcomes = [0usize; 2];
    for round in 0..ROUNDS {
        let gap = rng.gap();
        let signal_first = rng.next().is_multiple_of(2);
        let (s_delay, r_delay) = if signal_first {
            (Duration::ZERO, gap)
        } else {
            (gap, Duration::ZERO)
        };
        let (sent, release) = std::thread::scope(|s| {
            let cfg = &proxy.config;
            let sig = s.spawn(move || {
                std::thread::sleep(s_delay);
                let sent = now();
                send_signal(pid, "USR1");
                sent
            });
            let r = s.spawn(move || {
                timed_cli(
                    cfg,
                    &["kill-switch", "release", "--reason", "race release"],
                    r_delay,
                )
            });
            (sig.join().unwrap(), r.join().unwrap())
        });
        let superseded = release_superseded(round, &release);
        // The signal has no reply: wait until the daemon has recorded acting on it.
        let mut last = Value::Null;
        let handled = wait_until(Duration::from_secs(10), || {
            last = status(&proxy.config);
            signal_engage_recorded(&last, sent).is_some()
        });
        assert!(
            handled,
            "round {round}: no SIGUSR1 engage recorded in the history 10 s after the signal: {last}"
        );
        let what = format!(
            "gap {gap:?}, {} first",
            if signal_first { "signal" } else { "release" }
        );
        let engaged = assert_consistent(&proxy, &fx, round, &what);
        assert!(
            !superseded || engaged,
            "round {round} ({what}): the release said an engage superseded it, yet the proxy is released"
        );
        if release.end < sent {
            assert!(
                engaged,
                "round {round} ({what}): SIGUSR1 was sent after the release returned, yet the \
                 proxy is released"
            );
        }
        outcomes[engaged as usize] += 1;
    }
    eprintln!(
        "SIGUSR1 race: {ROUNDS} rounds in {:?}; ended released {} times, engaged {} times",
        started.elapsed(),
        outcomes[0],
        outcomes[1]
    );
}
