//! Append-only audit trail: one JSON line per event (authenticated XKS requests, kill switch
//! and key lifecycle actions), hash-chained so that [`verify()`] detects an edited, deleted or
//! reordered line *relative to the rest of the chain*, and checkpointed outside the file so
//! that a rewrite by whoever can write the file is detected against those checkpoints.
//!
//! # Line format
//!
//! ```text
//! {"seq":7,"prev":"<64 hex>","time":"2024-05-01T12:00:00.123456789Z","event":"request",...}\n
//! ```
//!
//! - `seq` starts at 1 and is continuous across rotated files.
//! - `prev` is the hex SHA-256 of the previous line's exact bytes, without its `\n` (after a
//!   rotation: of the previous file's last line). The first record of a brand new trail has
//!   [`GENESIS_PREV`] (64 zeros). Verification re-hashes lines as stored, so any change to a
//!   line breaks the next line's `prev`.
//! - The record fields follow (see [`AuditRecord`]); `None` fields are omitted. The types have
//!   no field for plaintext, AAD, secrets or signatures.
//!
//! # What is detected, and by whom
//!
//! The chain is unkeyed: anyone who can write the file (the daemon's user, root) can rewrite a
//! line and recompute every later link, and [`verify()`] alone then reports the trail intact.
//! What [`verify()`] alone detects is damage that did not recompute the chain: an edited, deleted,
//! inserted or reordered line followed by an untouched one. Beyond that:
//!
//! - Removal of the trail's start is detected only when verification requires it
//!   ([`VerifyReport::anchored`], `audit verify --require-start`).
//! - A rewrite (with the chain recomputed) or a cut is detected only at or before a
//!   [`Checkpoint`] held outside the file: the journal/syslog lines the writer publishes (see
//!   [`checkpoint`]), or a hash an operator copied elsewhere (`--anchor`). Records after the
//!   last such checkpoint can be removed or rewritten without detection.
//!
//! A keyed chain (HMAC) would not change this: the key would have to be readable by the
//! daemon's user, who is exactly the party the external checkpoints guard against.
//!
//! # Writing never blocks a request; operator actions are never dropped
//!
//! [`AuditLog::record`] hands a request record to a bounded queue drained by a dedicated OS
//! thread and returns at once. If the queue is full (the disk cannot keep up), the record is
//! dropped, counted in [`AuditLog::dropped`] and `record` returns `false` so the caller can
//! raise an alarm; the writer then puts a `lost` record with the count into the chain, so a
//! gap in coverage is itself recorded. Only authenticated requests are offered to the queue
//! (the daemon counts the others in metrics), so unauthenticated traffic cannot fill it.
//! [`AuditLog::record_waiting`] (operator actions) waits for room instead of dropping. Write
//! and fsync failures are counted in [`AuditLog::write_errors`], logged and reported the same
//! way; nothing panics.
//!
//! # Durability ([`FsyncPolicy`])
//!
//! Each line reaches the file with a single `write` to an `O_APPEND` descriptor, so a process
//! crash loses only records still queued in memory: written lines are in the page cache. What
//! an OS crash or power loss loses depends on the policy: `EveryRecord` loses nothing written;
//! `Interval(d)` (default 1 s) loses at most the lines written in the last `d`; `Never` leaves
//! it to the kernel's writeback (typically up to ~30 s). In every case the loss is a suffix of
//! the trail, never a record in the middle, and never a checkpointed record (checkpoints are
//! published after an fsync). [`AuditLog::flush`] and [`AuditLog::flush_and_close`] (also run
//! on drop) write everything queued and fsync, whatever the policy.
//!
//! # Crash recovery
//!
//! [`AuditLog::open`] continues the chain from the last complete line. A torn final line (no
//! trailing newline: the crash hit during a write) is cut away with a warning, and the first
//! record written afterwards is a `recovered` event giving the number of bytes removed. If the
//! active file is empty or missing, the chain continues from the newest rotated file. A last
//! line that is complete but not a chain record is an error: the operator must look.
//!
//! # Rotation
//!
//! With `rotate_at_bytes`, once the active file reaches that size it is fsynced, renamed to
//! `<path>.<first seq>-<last seq>` (20-digit zero-padded, so names sort in chain order), the
//! directory is fsynced, and a new active file is started whose first `prev` links to the old
//! file's last line. [`trail_files`] lists a trail's files in order. Only one process may
//! write a trail.

pub mod checkpoint;
#[cfg(test)]
mod checkpoint_tests;
mod error;
mod record;
mod recover;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

pub use checkpoint::{parse_checkpoints, Checkpoint, CheckpointOptions};
pub use error::{AuditError, CheckpointError, HeadError};
pub use record::{
    now_rfc3339_nanos, AdminEvent, AuditEvent, AuditLine, AuditRecord, RequestEvent, GENESIS_PREV,
};
pub use recover::trail_files;
pub use verify::{
    verify, verify_points, Break, BreakReason, Location, PointCheck, PointOutcome, VerifyReport,
};

use crossbeam_channel::Sender;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use writer::{Ack, Counters, Msg, Writer};

/// When the writer fsyncs the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every line: an OS crash loses nothing that was written.
    EveryRecord,
    /// At most this long after a line is written: an OS crash loses at most that window.
    Interval(Duration),
    /// Leave it to the kernel (and to flush/close).
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> FsyncPolicy {
        FsyncPolicy::Interval(Duration::from_secs(1))
    }
}

/// Everything [`AuditLog::open_with`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditOptions {
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// Rotate once the active file reaches this many bytes; `None` never rotates.
    pub rotate_at_bytes: Option<u64>,
    /// Records that may wait for the writer before new ones are dropped.
    pub queue_capacity: usize,
    /// When and where the chain's position is published outside the file.
    pub checkpoints: CheckpointOptions,
}

impl Default for AuditOptions {
    fn default() -> AuditOptions {
        AuditOptions {
            fsync: FsyncPolicy::default(),
            rotate_at_bytes: None,
            // A few seconds of a busy proxy's requests, a few MiB of memory at worst.
            queue_capacity: 8192,
            checkpoints: CheckpointOptions::default(),
        }
    }
}

/// An open audit trail with its writer thread. Share it behind an `Arc`.
pub struct AuditLog {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the trail at `path` with default options.
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(
            path,
            AuditOptions {
                fsync,
                ..AuditOptions::default()
            },
        )
    }

    /// Opens the trail, recovering from a crash if needed, and starts the writer thread.
    pub fn open_with(path: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        if options.queue_capacity == 0 {
            return Err(AuditError::ZeroQueueCapacity);
        }
        if options.rotate_at_bytes == Some(0) {
            return Err(AuditError::ZeroRotateSize);
        }
        if options.fsync == FsyncPolicy::Interval(Duration::ZERO) {
            return Err(AuditError::ZeroFsyncInterval);
        }
        if options.checkpoints.every_records == 0 || options.checkpoints.interval.is_zero() {
            return Err(AuditError::ZeroCheckpointCadence);
        }
        let (file, resume) = recover::open_active(path)?;
        let (tx, rx) = crossbeam_channel::bounded(options.queue_capacity);
        if resume.truncated > 0 {
            let event = AuditEvent::Recovered {
                truncated_bytes: resume.truncated,
            };
            // The queue is empty and has room: this cannot be refused.
            let _ = tx.try_send(Msg::Record(AuditRecord::now(event)));
        }
        let counters = Arc::new(Counters::default());
        let writer = Writer::new(
            path.to_owned(),
            file,
            resume,
            options.fsync,
            options.rotate_at_bytes,
            counters.clone(),
            options.checkpoints,
        );
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(AuditError::SpawnWriter)?;
        Ok(AuditLog {
            tx,
            counters,
            writer: Mutex::new(Some(handle)),
            path: path.to_owned(),
        })
    }

    /// Queues a record without ever blocking (the request path). A full queue (or a closed
    /// trail) drops it, counts it in [`AuditLog::dropped`] and returns `false`: the caller owns
    /// the alarm (an ERROR line, a metric), since a lost request record is a gap in the trail.
    #[must_use = "a dropped audit record must be reported"]
    pub fn record(&self, rec: AuditRecord) -> bool {
        if self.tx.try_send(Msg::Record(rec)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a record, waiting for room if the queue is full: for operator actions, which are
    /// rare, must never be dropped, and are flushed before the command is acknowledged anyway.
    /// Fails only when the trail is closed (then the record is counted as dropped). Call it from
    /// a blocking context.
    pub fn record_waiting(&self, rec: AuditRecord) -> Result<(), AuditError> {
        self.tx.send(Msg::Record(rec)).map_err(|_| {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            AuditError::Closed
        })
    }

    /// Records dropped so far because the queue was full or the trail closed.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Writes, fsyncs and rotations that failed so far.
    pub fn write_errors(&self) -> u64 {
        self.counters.write_errors.load(Ordering::Relaxed)
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks until every record queued before this call is written and fsynced. Call it from a
    /// blocking context (e.g. `spawn_blocking`), e.g. before confirming a kill switch command.
    pub fn flush(&self) -> Result<(), AuditError> {
        self.ask(Msg::Flush)
    }

    /// Writes everything queued, fsyncs and stops the writer thread. Later records are counted
    /// as dropped. Calling it again does nothing.
    pub fn flush_and_close(&self) -> Result<(), AuditError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(handle) = writer.take() else {
            return Ok(());
        };
        let result = self.ask(Msg::Close);
        if handle.join().is_err() {
            return Err(AuditError::WriterPanicked);
        }
        result
    }

    fn ask(&self, msg: impl FnOnce(Ack) -> Msg) -> Result<(), AuditError> {
        let (ack, answer) = crossbeam_channel::bounded(1);
        self.tx.send(msg(ack)).map_err(|_| AuditError::Closed)?;
        answer.recv().map_err(|_| AuditError::WriterStopped)?
    }

    /// Tests: blocks the writer until the returned sender is dropped or sent to.
    #[cfg(test)]
    fn hold_writer(&self) -> Sender<()> {
        let (holding_tx, holding) = crossbeam_channel::bounded(1);
        let (release, release_rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Msg::Hold(holding_tx, release_rx))
            .expect("writer alive");
        holding.recv().expect("writer holding");
        release
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush_and_close() {
            tracing::warn!(file = %self.path.display(), error = %e, "closing the audit trail");
        }
    }
}
