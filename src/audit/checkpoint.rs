//! Checkpoints: the chain's position (`seq` and the hash of that line) published outside the
//! trail file, where the daemon's user cannot rewrite it afterwards, and checked by
//! `audit verify --checkpoints`.
//!
//! A hash chain only shows that lines were changed *relative to the chain itself*: whoever can
//! write the file can rewrite a line and recompute every later link, and the result verifies.
//! A checkpoint kept elsewhere (the journal, a syslog server, a ticket) pins the hash of one
//! record: a rewrite at or before it changes that hash, a cut before it removes the record.
//!
//! The writer thread publishes a checkpoint after every `every_records` records and, when
//! records were written since the last one, every `interval`; always after an fsync, so a
//! checkpoint never names a record that an OS crash could still take away. Each checkpoint is
//! one tracing line on stderr (target [`TARGET`], which systemd hands to the journal) and,
//! optionally, one syslog(3) datagram to a local socket (usually `/dev/log`).

use super::error::CheckpointError;
use std::fmt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Tracing target of checkpoint lines: lets `RUST_LOG` keep them when other INFO lines are off
/// (e.g. `warn,xks_bridge::audit::checkpoint=info`).
pub const TARGET: &str = "xks_bridge::audit::checkpoint";

/// The message of a checkpoint line, in the log and in syslog; [`parse_checkpoints`] looks for it.
pub const MESSAGE: &str = "audit checkpoint";

/// syslog priority: facility authpriv (10, security records) * 8 + severity info (6).
const SYSLOG_PRIORITY: u8 = 86;

/// When and where the writer publishes checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Publish after this many records since the last checkpoint.
    pub every_records: u64,
    /// Publish at most this long after a record was written, if no count-based one came first.
    pub interval: Duration,
    /// Also send each checkpoint as a syslog datagram to this socket (e.g. `/dev/log`).
    pub syslog: Option<PathBuf>,
}

impl Default for CheckpointOptions {
    fn default() -> CheckpointOptions {
        CheckpointOptions {
            // One line per 1,000 records keeps the journal quiet even at 10k req/s (10 lines/s)
            // while bounding how much an undetected rewrite of the tail can cover.
            every_records: 1000,
            interval: Duration::from_secs(60),
            syslog: None,
        }
    }
}

/// One chain position: the record `seq` and the hex SHA-256 of its line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    /// The record's `seq`.
    pub seq: u64,
    /// Hex SHA-256 of that line (what the next line's `prev` carries).
    pub hash: String,
}

impl FromStr for Checkpoint {
    type Err = CheckpointError;

    /// Parses `SEQ:HASH` (64 hex digits, either case).
    fn from_str(s: &str) -> Result<Checkpoint, CheckpointError> {
        let (seq, hash) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| CheckpointError::NoSeparator(s.to_owned()))?;
        checkpoint(seq, hash).ok_or_else(|| CheckpointError::BadFields(s.to_owned()))
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

fn checkpoint(seq: &str, hash: &str) -> Option<Checkpoint> {
    let seq = seq.trim().parse().ok()?;
    let hash = hash.trim().to_ascii_lowercase();
    let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(Checkpoint { seq, hash })
}

/// Reads a checkpoint list: lines `SEQ:HASH`, or checkpoint lines as the daemon logged them
/// (text or JSON format, from stderr, `journalctl` or syslog, colour codes included). Other
/// lines (the rest of a journal excerpt) are skipped. A list with no checkpoint at all, or a
/// checkpoint line whose fields cannot be read, is an error: it must not pass for a check.
pub fn parse_checkpoints(text: &str) -> Result<Vec<Checkpoint>, CheckpointError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = strip_ansi(raw);
        let line = line.trim();
        if let Ok(c) = line.parse::<Checkpoint>() {
            out.push(c);
        } else if line.contains(MESSAGE) {
            let seq = field(line, "seq");
            let hash = field(line, "hash");
            match seq.zip(hash).and_then(|(s, h)| checkpoint(s, h)) {
                Some(c) => out.push(c),
                None => return Err(CheckpointError::UnreadableLine { line: n + 1 }),
            }
        }
    }
    if out.is_empty() {
        return Err(CheckpointError::NoneFound);
    }
    Ok(out)
}

/// The value of `name` in `name=value` (text logs, syslog) or `"name":value` (JSON logs).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    for pattern in [format!(" {name}="), format!("\"{name}\":")] {
        if let Some(i) = line.find(&pattern) {
            let rest = line[i + pattern.len()..].trim_start_matches('"');
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
    }
    None
}

/// Removes terminal colour sequences (`ESC [ ... m`) that text logs carry on a terminal.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
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

/// Writer-side state: when the next checkpoint is due, and the syslog socket.
pub(super) struct Publisher {
    options: CheckpointOptions,
    /// Records written since the last checkpoint.
    since: u64,
    /// When the first record after the last checkpoint was written.
    pending_since: Option<Instant>,
    socket: Option<UnixDatagram>,
    /// A syslog failure is logged once until sending works again, not once per checkpoint.
    syslog_failing: bool,
}

impl Publisher {
    pub(super) fn new(options: CheckpointOptions) -> Publisher {
        Publisher {
            options,
            since: 0,
            pending_since: None,
            socket: None,
            syslog_failing: false,
        }
    }

    /// Notes one written record; true when the count says a checkpoint is due.
    pub(super) fn note_record(&mut self) -> bool {
        self.since += 1;
        self.pending_since.get_or_insert_with(Instant::now);
        self.since >= self.options.every_records
    }

    /// When the interval makes the next checkpoint due (`None`: nothing written since the last).
    pub(super) fn due_at(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + self.options.interval)
    }

    /// Retries one interval from now (the fsync before a checkpoint failed): no busy loop.
    pub(super) fn postpone(&mut self) {
        self.pending_since = Some(Instant::now());
    }

    /// Records written since the last checkpoint?
    pub(super) fn pending(&self) -> bool {
        self.since > 0
    }

    /// Publishes `seq`/`hash` (the last line written, already fsynced by the caller).
    pub(super) fn publish(&mut self, seq: u64, hash: &str) {
        self.since = 0;
        self.pending_since = None;
        tracing::info!(target: TARGET, seq, hash = %hash, "{MESSAGE}");
        if let Some(path) = self.options.syslog.clone() {
            let msg = format!(
                "<{SYSLOG_PRIORITY}>xks-bridge[{}]: {MESSAGE} seq={seq} hash={hash}",
                std::process::id()
            );
            match self.send_syslog(&path, msg.as_bytes()) {
                Ok(()) => self.syslog_failing = false,
                Err(e) if !self.syslog_failing => {
                    self.syslog_failing = true;
                    tracing::warn!(socket = %path.display(), error = %e, "audit checkpoint: syslog send failed (the journal line was written)");
                }
                Err(_) => {}
            }
        }
    }

    fn send_syslog(&mut self, path: &std::path::Path, msg: &[u8]) -> std::io::Result<()> {
        let socket = match &self.socket {
            Some(s) => s,
            None => self.socket.insert(UnixDatagram::unbound()?),
        };
        socket.send_to(msg, path).map(|_| ())
    }
}
