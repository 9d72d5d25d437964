//! Child processes: the binary under test, a child whose first stdout line is awaited
//! ([`Spawned`]), bounded runs of a command ([`run_bounded`]) and bounded polling.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_xks-bridge");
/// Bound on every wait in the harness (daemon start, one HTTP exchange, a child's exit).
pub const WAIT: Duration = Duration::from_secs(30);

/// A child process whose first stdout line is awaited and whose stderr is captured.
pub struct Spawned {
    child: Child,
    first_line: Option<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Spawned {
    /// Spawns `cmd` with piped stdout/stderr and waits (bounded) for its first stdout line.
    /// Returns `Err(stderr)` when the child exits or closes stdout before printing one.
    pub fn start(mut cmd: Command) -> Result<Spawned, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let out_lines = lines.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                out_lines.lock().unwrap().push(line);
            }
        });
        let err_sink = err_buf.clone();
        let err_reader = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0u8; 4096];
            loop {
                match stderr.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err_sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });
        let mut s = Spawned {
            child,
            first_line: None,
            stdout: lines,
            stderr: err_buf,
            readers: vec![out_reader, err_reader],
        };
        match rx.recv_timeout(WAIT) {
            Ok(line) => {
                s.first_line = Some(line);
                Ok(s)
            }
            Err(_) => {
                let status = s.stop();
                Err(format!(
                    "child printed no line within {WAIT:?} (exit {status:?}); stderr:\n{}",
                    s.stderr_text()
                ))
            }
        }
    }

    /// The first line printed on stdout.
    pub fn first_line(&self) -> &str {
        self.first_line.as_deref().unwrap_or("")
    }

    /// Every stdout line read so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything written on stderr so far, with ANSI colour codes removed.
    pub fn stderr_text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.stderr.lock().unwrap()))
    }

    /// Kills the child (if running), reaps it and waits for the pipes to drain.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    /// Has the child exited (reaped now if so)?
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits (bounded) for the child to exit on its own; `None` on timeout (child killed).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        None
    }

    /// Polls (bounded) until stderr contains `needle`.
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.stderr_text().contains(needle))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion with a bound on its run time.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Option<i32>, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    assert!(
        status.is_some(),
        "command did not finish within {limit:?}: {out}\n{err}"
    );
    (status.and_then(|s| s.code()), out, strip_ansi(&err))
}

/// Polls `f` every few milliseconds until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes ANSI escape sequences (the text log format colours its fields).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
