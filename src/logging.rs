//! Log set-up: text or JSON lines on stderr (stdout carries only the readiness lines and the
//! quickstart banner). `RUST_LOG` overrides the configured level. Colour codes only when
//! stderr is a terminal: the journal, a log file or a pipe get plain text.
//!
//! Lines are written by a thread of their own (`tracing-appender`'s non-blocking writer), not
//! by the thread that logs. Under systemd, stderr is a stream socket to journald: when journald
//! stalls (a full disk, a starved host), a write blocks, and a request thread blocked in a log
//! write stops serving; with the async runtime's few workers, the whole endpoint stops. The
//! writer threads take lines from bounded queues ([`BUFFERED_LINES`] each); when one is
//! full, lines are dropped and counted ([`dropped_lines`], the `xks_bridge_log_lines_dropped`
//! metric) rather than holding up requests. `WARN` and `ERROR` lines (operator actions, token
//! failures, refused reloads) have a queue of their own, so a flood of request lines cannot
//! crowd them out. The audit trail is written separately and is never dropped this way. The
//! writers also batch: every line queued while one wrote goes out in one `write` (stderr is
//! unbuffered otherwise, one system call per line), whole lines at a time under stderr's lock,
//! so lines from the two writers never interleave.

use crate::config::{LogFormat, LoggingConfig};
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use tracing::Level;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

/// Lines queued for the writer thread at most (about 5-10 MB of request lines); more are
/// dropped while it is stuck.
pub const BUFFERED_LINES: usize = 16_384;

/// Bytes the writer gathers before a `write`; the queue's lines are flushed as soon as it is
/// empty, so this bounds a write's size, not a line's delay.
const WRITE_BUFFER: usize = 64 * 1024;

/// How long the writers wait after a batch before taking the next one: a line waits at most
/// this long longer, far below anything a reader of the journal notices.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

static DROPPED: OnceLock<[ErrorCounter; 2]> = OnceLock::new();

/// Keeps the writer threads running; dropping it writes out what is queued (waiting at most
/// about a second for a stuck stderr) and stops the threads. Hold it until the process ends.
#[must_use = "dropping the guard stops log output"]
pub struct LogGuard {
    _writers: Vec<WorkerGuard>,
}

/// Installs the global subscriber; a second call is a no-op (and its guard holds nothing).
pub fn init(cfg: &LoggingConfig) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let ansi = std::io::stderr().is_terminal();
    let writer = |name: &str| {
        NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(BUFFERED_LINES)
            .thread_name(name)
            .finish(std::io::BufWriter::with_capacity(WRITE_BUFFER, WholeWrites))
    };
    let (alerts, alerts_guard) = writer("log-writer-warn");
    let (lines, lines_guard) = writer("log-writer");
    let counters = [alerts.error_counter(), lines.error_counter()];
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(alerts.with_max_level(Level::WARN).or_else(lines));
    let installed = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_err() {
        return LogGuard { _writers: Vec::new() };
    }
    let _ = DROPPED.set(counters);
    LogGuard {
        _writers: vec![alerts_guard, lines_guard],
    }
}

/// Log lines dropped because the writers could not keep up (stderr blocked); 0 before
/// [`init`].
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| c.iter().map(|c| c.dropped_lines() as u64).sum())
}

/// stderr, each buffer written whole under its lock: the `BufWriter` around it hands over
/// whole lines only, so the two writer threads never interleave within a line.
struct WholeWrites;

impl Write for WholeWrites {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().lock().write_all(buf)?;
        Ok(buf.len())
    }

    /// Called once per batch, after it was written. The pause lets the lines logged meanwhile
    /// gather in the queue for the next batch, and a request thread that logs then finds the
    /// writer busy rather than asleep, so it does not pay for waking it: at one request in
    /// flight, waking the writer for every line cost about 15 CPU-µs per request.
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().lock().flush()?;
        std::thread::sleep(GATHER);
        Ok(())
    }
}
