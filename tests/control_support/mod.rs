//! Helpers shared by the control-plane test binaries (`control_plane`, `kill_switch_durability`,
//! `key_handles`): the operator CLI, status, the daemon's observable behaviour (signed Encrypt,
//! `/ping`), the fault shim, the state directory's lock and a state directory on which writes
//! fail even for root.
//!
//! Used next to `mod common;` (every harness name is reached as `crate::common::NAME`).
#![allow(dead_code)]

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit code: could not reach the daemon or act (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code: engaged and in force, but not durable yet (EX_TEMPFAIL).
pub const EXIT_NOT_DURABLE: i32 = 75;

/// `kill-switch status --json`.
#[track_caller]
pub fn status(config: &Path) -> Value {
    let out = cli_ok(config, &["kill-switch", "status", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
}

/// One signed Encrypt under `key` on a new connection: (status, errorName or "").
pub fn encrypt_outcome(proxy: &TestProxy, fx: &Fixture, key: &str) -> (u16, String) {
    let r = proxy.xks(fx).encrypt(key, &encrypt_body(b"probe", None, false));
    let name = if r.status == 200 {
        String::new()
    } else {
        serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["errorName"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("<non-JSON body: {}>", r.text()))
    };
    (r.status, name)
}

/// Asserts what an engaged proxy does: Encrypt answers 400 InvalidStateException and `/ping`
/// is not 200.
#[track_caller]
pub fn assert_refusing(proxy: &TestProxy, fx: &Fixture, context: &str) {
    let enc = encrypt_outcome(proxy, fx, KEY_AES);
    assert_eq!(
        enc,
        (400, "InvalidStateException".to_owned()),
        "{context}: Encrypt must be refused"
    );
    assert_ne!(ping(proxy), 200, "{context}: /ping must take the instance out");
}

/// The fixture's state directory (`[state] directory = "state"`).
pub fn state_dir(fx: &Fixture) -> PathBuf {
    fx.path("state")
}

/// The daemon's lock file: `<state.directory>/xks-bridge.lock`.
pub fn lock_file(fx: &Fixture) -> PathBuf {
    state_dir(fx).join("xks-bridge.lock")
}

/// The kill switch state file (`<state.directory>/kill-switch.json`), parsed.
#[track_caller]
pub fn state_file(fx: &Fixture) -> Value {
    let p = state_dir(fx).join("kill-switch.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("state file {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("state file is not JSON ({e}): {text}"))
}

/// The fixture's admin socket.
pub fn admin_socket(fx: &Fixture) -> PathBuf {
    fx.path("admin.sock")
}

/// Is an exclusive lock on `file` free? Asks flock(1) without waiting.
#[track_caller]
pub fn lock_is_free(file: &Path) -> bool {
    require_tool("flock", "util-linux");
    let mut c = Command::new("flock");
    c.args(["--nonblock", "--conflict-exit-code", "99"])
        .arg(file)
        .arg("true");
    let (code, out, err) = run_bounded(c, WAIT);
    match code {
        Some(0) => true,
        Some(99) => false,
        other => panic!("flock {} exited {other:?}: {out}{err}", file.display()),
    }
}

/// Runs `cmd` for at most `limit`. `Err` (with its output) when it was still running and had
/// to be killed.
pub fn run_limited(mut cmd: Command, limit: Duration) -> Result<(Option<i32>, String, String), String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_p = dir.path().join("out");
    let err_p = dir.path().join("err");
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_p).expect("stdout file"))
        .stderr(std::fs::File::create(&err_p).expect("stderr file"));
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = std::fs::read_to_string(&out_p).unwrap_or_default();
    let err = strip_ansi(&std::fs::read_to_string(&err_p).unwrap_or_default());
    match status {
        Some(st) => Ok((st.code(), out, err)),
        None => Err(format!(
            "still running after {limit:?} (killed); stdout:\n{out}\nstderr:\n{err}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// A directory on which writes fail, also for root
// ---------------------------------------------------------------------------------------------

/// A directory whose path no longer leads to a directory: nothing can be created under it,
/// whoever asks (root included, unlike a 0500 mode). Undone on drop, so the temp dir can be
/// removed.
pub struct FrozenDir {
    dir: PathBuf,
    aside: PathBuf,
    frozen: bool,
}

impl FrozenDir {
    /// Moves `dir` aside and puts a regular file in its place, so every write under the path
    /// fails with ENOTDIR, for root too and on any file system (tmpfs included); processes
    /// keep what they already hold open (the daemon's lock). Proves a write really fails.
    #[track_caller]
    pub fn freeze(dir: &Path) -> FrozenDir {
        let aside = dir.with_extension("aside");
        std::fs::rename(dir, &aside).unwrap_or_else(|e| panic!("move {} aside: {e}", dir.display()));
        std::fs::write(dir, b"not a directory: writes under this path fail")
            .unwrap_or_else(|e| panic!("plant a file at {}: {e}", dir.display()));
        let guard = FrozenDir {
            dir: dir.to_owned(),
            aside,
            frozen: true,
        };
        let wrote = std::fs::write(dir.join("write-probe"), b"x");
        assert!(
            wrote.is_err(),
            "{} is still writable: the test cannot make the state file unwritable",
            dir.display()
        );
        guard
    }

    /// Puts the directory back.
    #[track_caller]
    pub fn thaw(&mut self) {
        if self.frozen {
            std::fs::remove_file(&self.dir).unwrap_or_else(|e| panic!("remove {}: {e}", self.dir.display()));
            std::fs::rename(&self.aside, &self.dir)
                .unwrap_or_else(|e| panic!("restore {}: {e}", self.dir.display()));
            self.frozen = false;
        }
    }
}

impl Drop for FrozenDir {
    fn drop(&mut self) {
        if self.frozen {
            let _ = std::fs::remove_file(&self.dir);
            let _ = std::fs::rename(&self.aside, &self.dir);
        }
    }
}

/// Parses an RFC 3339 time (the `at` of history entries).
pub fn parse_time(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not an RFC 3339 time ({e}): {s:?}"))
}

/// The current time in the same form.
pub fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
