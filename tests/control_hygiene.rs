//! Hygiene of the control plane: the daemon refuses directories others could tamper with
//! (state, admin socket, audit trail) before it listens; the offline CLI refuses to write state
//! it does not own; the half-second poll of the disabled-key marks never releases a key because
//! its session lost the login (`hsm-fixtures/faultshim`, word `hide_private`); and a whole-proxy
//! engage while calls are inside the token finalizes the module only after they returned.
//!
//! Real daemon, real CLI, real SoftHSM2 token. Everything on 127.0.0.1 and in temp dirs.

mod common;
mod control_support;

use common::*;
use control_support::*;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bound on "the proxy serves again" after a fault clears or a switch is released.
const RECOVERY: Duration = Duration::from_secs(10);

/// `xks-bridge serve --config <config>` run to completion (a daemon that refuses to start
/// exits by itself): (exit code, stdout, stderr).
fn serve_to_exit(config: &Path) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("SOFTHSM2_CONF");
    run_bounded(cmd, WAIT)
}

/// The operator's message: the stderr line `xks-bridge: <what>: ...`, without the prefix.
fn start_message<'a>(err: &'a str, what: &str) -> Option<&'a str> {
    err.lines()
        .filter_map(|l| l.strip_prefix("xks-bridge: "))
        .find(|m| m.starts_with(&format!("{what}:")))
}

/// Serving `cfg` must fail with exit 69 before anything listens, with a message starting with
/// `what:` that names `dir` and contains every one of `says`.
#[track_caller]
fn assert_refused_at_start(
    fx: &Fixture,
    cfg: &toml::Table,
    what: &str,
    dir: &Path,
    says: &[&str],
    context: &str,
) {
    let config = fx.write_config(cfg);
    let (code, out, err) = serve_to_exit(&config);
    assert!(
        !out.contains("listening"),
        "{context}: the daemon listened although it must refuse to start:\n{out}\n{err}"
    );
    assert_eq!(
        code,
        Some(EXIT_UNAVAILABLE),
        "{context}: serve must exit 69:\n{out}\n{err}"
    );
    let msg = start_message(&err, what)
        .unwrap_or_else(|| panic!("{context}: no message starting with `{what}:` on stderr:\n{err}"));
    assert!(
        msg.contains(&dir.display().to_string()),
        "{context}: the message must name {}: {msg}",
        dir.display()
    );
    for s in says {
        assert!(msg.contains(s), "{context}: the message must say {s:?}: {msg}");
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Creates `dir` (if needed) with exactly `mode` (the umask does not apply).
fn dir_with_mode(dir: &Path, mode: u32) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    chmod(dir, mode);
    dir.to_owned()
}

#[test]
fn a_state_directory_writable_by_others_is_refused_at_start_naming_it() {
    let fx = Fixture::new();
    let cfg = fx.config();
    let state = dir_with_mode(&state_dir(&fx), 0o700);

    for mode in [0o777, 0o770] {
        chmod(&state, mode);
        assert_refused_at_start(
            &fx,
            &cfg,
            "state.directory",
            &state,
            &["writable"],
            &format!("state directory with mode {mode:o}"),
        );
        assert!(
            !state.join("kill-switch.json").exists(),
            "a refused start wrote the state file into the {mode:o} directory"
        );
    }
    chmod(&state, 0o700);

    // The admin socket's directory: a socket another user could replace.
    let sockets = dir_with_mode(&fx.path("sockets"), 0o777);
    let mut with_socket = cfg.clone();
    section(&mut with_socket, "admin").insert(
        "socket".into(),
        sockets.join("admin.sock").display().to_string().into(),
    );
    assert_refused_at_start(
        &fx,
        &with_socket,
        "admin.socket",
        &sockets,
        &["writable"],
        "admin socket in a 0777 directory",
    );
    assert!(
        !sockets.join("admin.sock").exists(),
        "a refused start created the admin socket"
    );

    // The audit trail's directory: a trail another user could rewrite.
    let trail = dir_with_mode(&fx.path("trail"), 0o777);
    let mut with_audit = cfg.clone();
    section(&mut with_audit, "audit").insert(
        "file".into(),
        trail.join("audit.jsonl").display().to_string().into(),
    );
    assert_refused_at_start(
        &fx,
        &with_audit,
        "audit.file",
        &trail,
        &["writable"],
        "audit file in a 0777 directory",
    );
    assert!(
        !trail.join("audit.jsonl").exists(),
        "a refused start created the audit file"
    );

    // The same directories made private again: the daemon starts and serves.
    chmod(&sockets, 0o700);
    chmod(&trail, 0o700);
    let mut both = with_socket.clone();
    section(&mut both, "audit").insert(
        "file".into(),
        trail.join("audit.jsonl").display().to_string().into(),
    );
    let proxy = TestProxy::start_with(&fx, &both, &[]);
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);
}

#[test]
fn a_state_directory_owned_by_another_user_is_refused_at_start() {
    require_root("it hands the state directory to another user and starts the daemon as root");
    let fx = Fixture::new();
    let state = dir_with_mode(&state_dir(&fx), 0o700);
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY))
        .unwrap_or_else(|e| panic!("chown {NOBODY} {}: {e}", state.display()));
    assert_refused_at_start(
        &fx,
        &fx.config(),
        "state.directory",
        &state,
        &[&format!("owned by uid {NOBODY}")],
        "state directory owned by another user",
    );
    assert!(
        !state.join("kill-switch.json").exists() && !state.join("xks-bridge.lock").exists(),
        "a refused start wrote into another user's state directory"
    );
}

/// `xks-bridge kill-switch engage --keystore PREFIX --config <config>` run by `cmd` (the binary
/// itself, or a wrapper that runs it as another user).
fn engage_keystore_with(mut cmd: Command, config: &Path) -> (Option<i32>, String, String) {
    cmd.args([
        "kill-switch",
        "engage",
        "--keystore",
        PREFIX,
        "--reason",
        "offline",
    ])
    .arg("--config")
    .arg(config)
    .env_remove("SOFTHSM2_CONF")
    .env_remove("RUST_LOG");
    run_bounded(cmd, WAIT)
}

#[test]
fn the_offline_cli_refuses_to_write_state_it_does_not_own() {
    require_root("the state belongs to another user and the command runs as root, then as that user");
    let fx = Fixture::new();
    let config = fx.write_config(&fx.config());
    let state = dir_with_mode(&state_dir(&fx), 0o700);
    // The whole fixture (config, secrets, state) belongs to the daemon's user, as installed.
    give_to_nobody(&fx.dir);
    let file = state.join("kill-switch.json");
    let before = std::fs::read(&file).ok();

    // No daemon runs: root's command would act offline, on a state it does not own.
    let (code, out, err) = engage_keystore_with(Command::new(BIN), &config);
    assert!(
        matches!(code, Some(c) if c != 0),
        "root wrote another user's state offline: exit {code:?}\n{out}\n{err}"
    );
    let said = format!("{out}\n{err}");
    assert!(
        said.contains(&format!("uid {NOBODY}")) && said.contains("as that user"),
        "the refusal must name the owning uid and tell to run as that user:\n{said}"
    );
    assert_eq!(
        std::fs::read(&file).ok(),
        before,
        "the refused command changed the state file"
    );

    // The owner's command acts offline and leaves the state file the daemon's user's.
    let (code, out, err) = engage_keystore_with(as_nobody(BIN, None), &config);
    assert_eq!(code, Some(0), "the owner's offline engage failed:\n{out}\n{err}");
    let owner = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("no state file after the offline engage ({e}):\n{out}\n{err}"))
        .uid();
    assert_eq!(owner, NOBODY, "the state file must stay the daemon user's");
    let st = state_file(&fx);
    assert!(
        st["keystores"][PREFIX].is_object(),
        "the offline engage is not in the state file: {st}"
    );
}

// ---------------------------------------------------------------------------------------------
// A poll from a session that lost its login
// ---------------------------------------------------------------------------------------------

/// What the supervisor logs when its poll session is not logged in (src/hsm/supervisor.rs).
const KEPT_MARKS_WARNING: &str = "poll session is not logged in; disabled-key marks kept as last read";

fn lists(list: &Value, id: &str) -> bool {
    list.as_array().is_some_and(|a| a.iter().any(|v| v == id))
}

#[test]
fn a_poll_from_a_session_that_lost_its_login_does_not_release_disabled_keys() {
    let fx = Fixture::new();
    let (cfg, control) = shimmed_config(&fx);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);

    cli_ok(
        &proxy.config,
        &["keys", "disable", KEY_AES, "--reason", "lost-login poll"],
    );
    let s = status(&proxy.config);
    assert!(
        lists(&s["tokens"][0]["disabled_keys"], KEY_AES) && !lists(&s["tokens"][0]["local_denies"], KEY_AES),
        "the disable must be a mark on the token: {s}"
    );
    assert_eq!(
        encrypt_outcome(&proxy, &fx, KEY_AES),
        (400, "InvalidStateException".to_owned())
    );

    // The token now hides every private object (keys and marks) from the daemon's sessions.
    set_control(&control, "hide_private");
    // The fault is in effect: a listing through the daemon no longer finds the (private) key.
    let listed = cli_ok(&proxy.config, &["keys", "list", "--json"]);
    assert!(
        !listed.contains(KEY_AES),
        "hide_private did not hide the private key from the token's searches: {listed}"
    );
    std::thread::sleep(Duration::from_secs(2)); // four polls of the marks

    let s = status(&proxy.config);
    assert!(
        lists(&s["tokens"][0]["disabled_keys"], KEY_AES),
        "a poll that saw no marks released the disabled key: {s}"
    );
    let enc = encrypt_outcome(&proxy, &fx, KEY_AES);
    assert!(
        enc == (400, "InvalidStateException".to_owned()) || enc.0 == 503,
        "Encrypt under the disabled key must be refused (400 InvalidStateException) or unavailable \
         (503), got {enc:?}"
    );
    assert!(
        proxy.logs().contains(KEPT_MARKS_WARNING),
        "the daemon must log that it kept the marks (\"{KEPT_MARKS_WARNING}\"):\n{}",
        proxy.logs()
    );

    // The token is back: the key is released by the operator, not by a poll.
    set_control(&control, "none");
    let s = status(&proxy.config);
    assert!(lists(&s["tokens"][0]["disabled_keys"], KEY_AES), "{s}");
    cli_ok(&proxy.config, &["keys", "enable", KEY_AES, "--reason", "done"]);
    let mut last = (0, String::new());
    let served = wait_until(RECOVERY, || {
        last = encrypt_outcome(&proxy, &fx, KEY_AES);
        last.0 == 200
    });
    assert!(
        served,
        "Encrypt under the released key does not work again: {last:?}\n{}",
        proxy.logs()
    );
    let s = status(&proxy.config);
    assert!(!lists(&s["tokens"][0]["disabled_keys"], KEY_AES), "{s}");
}

// ---------------------------------------------------------------------------------------------
// A proxy engage while calls are inside the token
// ---------------------------------------------------------------------------------------------

/// What the control plane and the connection log when they finalize with work still in
/// progress (src/control/verbs.rs, src/hsm/connection/module.rs).
const FINALIZED_ANYWAY: [&str; 2] = ["module finalized anyway", "finalizing the module anyway"];
/// What a whole-proxy disconnect logs per token when it is done (src/control/verbs.rs).
const DISCONNECT_DONE: [&str; 2] = [
    "token disconnected: logged out, sessions closed, module finalized",
    "sessions still open after the wait; module finalized anyway",
];

/// One Encrypt sent by a client thread.
struct Sent {
    after_engage: bool,
    outcome: Result<(u16, String), String>,
}

fn error_name(r: &Resp) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["errorName"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sends Encrypt under KEY_AES in a loop until `stop`, recording each outcome and whether it
/// was sent after the engage returned. A transport failure is recorded and the connection
/// replaced.
fn encrypt_loop(
    proxy: &TestProxy,
    fx: &Fixture,
    engaged: &AtomicBool,
    stop: &AtomicBool,
    log: &Mutex<Vec<Sent>>,
) {
    let body = serde_json::to_vec(&encrypt_body(b"in flight", None, false)).expect("body");
    let path = format!("{BASE}/keys/{KEY_AES}/encrypt");
    let signer = fx.signer();
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match proxy.client_with(tls_config(&proxy.ca, None, None, &[])) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    let after_engage = engaged.load(Ordering::SeqCst);
                    log.lock().unwrap().push(Sent {
                        after_engage,
                        outcome: Err(format!("connect: {e}")),
                    });
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let mut headers = vec![("host".to_owned(), c.authority.clone())];
        headers.extend(signer.headers("POST", &c.authority, &path, &body));
        let after_engage = engaged.load(Ordering::SeqCst);
        let outcome = c
            .try_send_raw("POST", &path, &headers, body.clone())
            .map(|r| (r.status, error_name(&r)));
        if outcome.is_err() {
            client = None;
        }
        log.lock().unwrap().push(Sent {
            after_engage,
            outcome,
        });
    }
}

/// A random delay in 0..=300 ms.
fn random_delay() -> Duration {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("random bytes");
    Duration::from_millis(u64::from(u16::from_le_bytes(b)) % 301)
}

/// Is the process still running (not exited, not a zombie waiting to be reaped)?
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn count_any(logs: &str, needles: &[&str]) -> usize {
    logs.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .count()
}

#[test]
fn a_proxy_engage_while_calls_are_inside_the_token_finalizes_only_after_they_return() {
    let fx = Fixture::new();
    let (cfg, control) = shimmed_config(&fx);
    let proxy = TestProxy::start_with(&fx, &cfg, &[]);
    assert_eq!(encrypt_outcome(&proxy, &fx, KEY_AES).0, 200);

    for round in 1..=3usize {
        set_control(&control, "slow 300");
        let engaged = AtomicBool::new(false);
        let stop = AtomicBool::new(false);
        let log = Mutex::new(Vec::new());
        let delay = random_delay();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| encrypt_loop(&proxy, &fx, &engaged, &stop, &log));
            }
            // A first answer (a deadline, 240 ms, well before the shim's three 300 ms calls
            // end) means the workers are inside the token; then engage at a random moment.
            let started = wait_until(WAIT, || !log.lock().unwrap().is_empty());
            assert!(started, "round {round}: no Encrypt answered");
            std::thread::sleep(delay);
            let t = Instant::now();
            let (code, out, err) = cli(&proxy.config, &["kill-switch", "engage", "--reason", "in flight"]);
            engaged.store(true, Ordering::SeqCst);
            let engage_took = t.elapsed();
            // Keep sending while the disconnect waits for the calls and finalizes.
            let done = wait_until(WAIT, || count_any(&proxy.logs(), &DISCONNECT_DONE) >= round);
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::SeqCst);
            assert_eq!(
                code,
                Some(0),
                "round {round}: engage failed after {engage_took:?}:\n{out}\n{err}"
            );
            assert!(
                done,
                "round {round} (engage after {delay:?}): the disconnect never finished:\n{}",
                proxy.logs()
            );
        });

        let sent = log.into_inner().unwrap();
        let after: Vec<_> = sent.iter().filter(|s| s.after_engage).collect();
        assert!(
            !after.is_empty(),
            "round {round}: no request was sent after the engage"
        );
        for s in &after {
            assert_eq!(
                s.outcome,
                Ok((400, "InvalidStateException".to_owned())),
                "round {round} (engage after {delay:?}): a request sent after the engage returned \
                 was not refused"
            );
        }
        assert!(
            alive(proxy.pid()),
            "round {round}: the daemon died during the engage:\n{}",
            proxy.logs()
        );
        let st = status(&proxy.config);
        assert_eq!(st["proxy"]["engaged"], true, "round {round}: {st}");
        let logs = proxy.logs();
        for needle in FINALIZED_ANYWAY {
            assert!(
                !logs.contains(needle),
                "round {round} (engage after {delay:?}): the module was finalized while calls \
                 were in progress (\"{needle}\"):\n{logs}"
            );
        }

        set_control(&control, "none");
        cli_ok(
            &proxy.config,
            &["kill-switch", "release", "--reason", "round done"],
        );
        let mut last = (0, String::new());
        let served = wait_until(RECOVERY, || {
            last = encrypt_outcome(&proxy, &fx, KEY_AES);
            last.0 == 200
        });
        assert!(
            served,
            "round {round}: Encrypt does not work again after the release: {last:?}\n{}",
            proxy.logs()
        );
        eprintln!(
            "round {round}: engage after {delay:?}; {} requests, {} after the engage",
            sent.len(),
            after.len()
        );
    }
    assert!(alive(proxy.pid()), "the daemon died:\n{}", proxy.logs());
}
