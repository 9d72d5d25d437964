//! The dedicated writer thread: serializes each record into one chained line, appends the
//! records waiting in the queue with one write (a batch), fsyncs per policy and rotates. It
//! never panics; failures are counted and logged.
//!
//! Batching is what keeps the writer's cost flat under load: one `write` (and, with
//! `fsync = "every-record"`, one fsync) per wake-up instead of per record. A record is still on
//! disk (and synced, under that policy) before anything queued after it is acknowledged.
//!
//! After a write that emptied the queue the writer waits [`GATHER`] before it looks again. A
//! writer that parked after every record was woken once per request (a futex wake by the
//! sender, a context switch and a few `sched_yield`s in the channel's back-off here); with the
//! pause, records arrive in batches of (rate × `GATHER`) and senders find the writer awake, so
//! they skip the wake. A record waits at most `GATHER` longer before its `write`.

use super::checkpoint::{CheckpointOptions, Publisher};
use super::error::AuditError;
use super::record::{AuditEvent, AuditRecord, LineRef};
use super::recover::{line_hash, open_active_new, rotated_path, sync_dir, Resume};
use super::FsyncPolicy;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records written with one `write` at most (bounds the line buffer).
const MAX_BATCH: usize = 256;

/// Pause after a write that emptied the queue, so the next records are gathered into one batch.
const GATHER: Duration = Duration::from_millis(2);

/// Answer to a flush or close: `Err` carries the fsync failure.
pub(super) type Ack = Sender<Result<(), AuditError>>;

/// What the writer is asked to do, in order.
// Nearly every message is a record: boxing it would only add an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    Record(AuditRecord),
    /// Write everything queued before it, fsync, answer.
    Flush(Ack),
    /// Like flush, then stop.
    Close(Ack),
    /// Tests: say "holding" on the first channel, then block until the second one yields.
    #[cfg(test)]
    Hold(Sender<()>, Receiver<()>),
}

/// Shared with [`super::AuditLog`] so callers can read them without asking the thread.
#[derive(Default)]
pub(super) struct Counters {
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

pub(super) struct Writer {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    prev: String,
    first_seq_in_file: Option<u64>,
    fsync: FsyncPolicy,
    rotate_at: Option<u64>,
    unsynced: bool,
    last_sync: Instant,
    counters: Arc<Counters>,
    /// Counter values already reported by a `lost` record.
    reported: (u64, u64),
    /// Reused line buffer.
    buf: Vec<u8>,
    /// Publishes the chain position outside the file.
    checkpoints: Publisher,
}

impl Writer {
    pub(super) fn new(
        path: PathBuf,
        file: File,
        resume: Resume,
        fsync: FsyncPolicy,
        rotate_at: Option<u64>,
        counters: Arc<Counters>,
        checkpoints: CheckpointOptions,
    ) -> Writer {
        Writer {
            path,
            file,
            len: resume.file_len,
            next_seq: resume.next_seq,
            prev: resume.prev,
            first_seq_in_file: resume.first_seq_in_file,
            fsync,
            rotate_at,
            unsynced: false,
            last_sync: Instant::now(),
            counters,
            reported: (0, 0),
            buf: Vec::with_capacity(1024),
            checkpoints: Publisher::new(checkpoints),
        }
    }

    /// Runs until closed or until every sender is gone.
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut pending = None;
        while let Some(msg) = pending.take().or_else(|| self.next_msg(&rx)) {
            match msg {
                Msg::Record(rec) => {
                    self.note_losses();
                    // The records already waiting go with it; a flush or close waits its turn.
                    batch.push(rec);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Msg::Record(r)) => batch.push(r),
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let drained = pending.is_none() && batch.len() < MAX_BATCH;
                    self.append_all(&batch);
                    batch.clear();
                    if drained {
                        std::thread::sleep(GATHER);
                    }
                }
                Msg::Flush(ack) => {
                    self.note_losses();
                    let _ = ack.send(self.sync());
                }
                Msg::Close(ack) => {
                    self.note_losses();
                    let result = self.sync();
                    if result.is_ok() && self.checkpoints.pending() {
                        self.checkpoint();
                    }
                    self.refuse_rest(&rx);
                    let _ = ack.send(result);
                    return;
                }
                #[cfg(test)]
                Msg::Hold(holding, release) => {
                    let _ = holding.send(());
                    let _ = release.recv();
                }
            }
        }
        self.sync_logged();
        if self.checkpoints.pending() {
            self.checkpoint();
        }
    }

    /// The next message; wakes up in time to fsync written lines under an interval policy and
    /// to publish a checkpoint when its interval is over.
    fn next_msg(&mut self, rx: &Receiver<Msg>) -> Option<Msg> {
        loop {
            let sync_at = match self.fsync {
                FsyncPolicy::Interval(every) if self.unsynced => Some(self.last_sync + every),
                _ => None,
            };
            let checkpoint_at = self.checkpoints.due_at();
            let wake = match (sync_at, checkpoint_at) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => return rx.recv().ok(),
                },
            };
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(msg) => return Some(msg),
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if sync_at.is_some_and(|t| t <= now) {
                        self.sync_logged();
                    }
                    if checkpoint_at.is_some_and(|t| t <= now) {
                        self.checkpoint();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Publishes the last written line's position, after making it durable: a checkpoint must
    /// never name a record that an OS crash could still remove. If the fsync fails, the
    /// checkpoint waits for the next occasion.
    fn checkpoint(&mut self) {
        if self.sync().is_err() {
            self.checkpoints.postpone();
            return;
        }
        let seq = self.next_seq.saturating_sub(1);
        if seq == 0 {
            return;
        }
        self.checkpoints.publish(seq, &self.prev);
    }

    /// Messages that raced with close: records count as dropped, waiters get an answer.
    fn refuse_rest(&self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Record(_) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Msg::Flush(ack) | Msg::Close(ack) => {
                    let _ = ack.send(Err(AuditError::Closed));
                }
                #[cfg(test)]
                Msg::Hold(..) => {}
            }
        }
    }

    /// Puts a `lost` record into the chain when records were dropped or failed since the last
    /// one, so that gaps in coverage are themselves tamper-evident.
    fn note_losses(&mut self) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        let errors = self.counters.write_errors.load(Ordering::Relaxed);
        if (dropped, errors) == self.reported {
            return;
        }
        let event = AuditEvent::Lost {
            dropped: dropped - self.reported.0,
            write_errors: errors - self.reported.1,
        };
        if self.append(&AuditRecord::now(event)) {
            self.reported = (dropped, errors);
        }
    }

    /// Appends one line; `false` if it did not reach the file (counted and logged).
    fn append(&mut self, rec: &AuditRecord) -> bool {
        self.append_all(std::slice::from_ref(rec)) == 1
    }

    /// Appends the records as consecutive chained lines, one write per chunk; returns how
    /// many reached the file (the others are counted and logged).
    fn append_all(&mut self, recs: &[AuditRecord]) -> usize {
        let (mut rest, mut written) = (recs, 0);
        while !rest.is_empty() {
            let (taken, ok) = self.append_chunk(rest);
            written += ok;
            rest = &rest[taken..];
        }
        written
    }

    /// Writes the longest prefix of `recs` that ends no later than where a checkpoint falls
    /// due or the file reaches its rotation size, exactly where one record at a time would
    /// have put them. Returns (records taken, records written).
    fn append_chunk(&mut self, recs: &[AuditRecord]) -> (usize, usize) {
        self.buf.clear();
        let (mut seq, mut prev) = (self.next_seq, self.prev.clone());
        let (mut taken, mut checkpoint) = (0, false);
        for rec in recs {
            taken += 1;
            let start = self.buf.len();
            let line = LineRef {
                seq,
                prev: &prev,
                record: rec,
            };
            if let Err(e) = serde_json::to_writer(&mut self.buf, &line) {
                self.buf.truncate(start);
                self.failed(1, "serialize", &e.to_string());
                continue;
            }
            prev = line_hash(&self.buf[start..]);
            self.buf.push(b'\n');
            seq += 1;
            if self.checkpoints.note_record() {
                checkpoint = true;
                break;
            }
            if self
                .rotate_at
                .is_some_and(|limit| self.len + self.buf.len() as u64 >= limit)
            {
                break;
            }
        }
        let written = (seq - self.next_seq) as usize;
        if written == 0 {
            return (taken, 0);
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            self.failed(written as u64, "write", &e.to_string());
            // Cut a partial line so that the next record starts on a clean line and the chain
            // (which has not advanced) stays valid.
            if let Err(e) = self.file.set_len(self.len) {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot cut a partial audit line");
            }
            return (taken, 0);
        }
        self.len += self.buf.len() as u64;
        self.first_seq_in_file.get_or_insert(self.next_seq);
        self.next_seq = seq;
        self.prev = prev;
        self.unsynced = true;
        match self.fsync {
            FsyncPolicy::EveryRecord => self.sync_logged(),
            FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => self.sync_logged(),
            _ => {}
        }
        if checkpoint {
            self.checkpoint();
        }
        if self.rotate_at.is_some_and(|limit| self.len >= limit) {
            self.rotate();
        }
        (taken, written)
    }

    /// Counts a failure: `records` records that did not reach the file, or 1 for a failed fsync
    /// or rotation step.
    fn failed(&self, records: u64, what: &str, error: &str) {
        self.counters.write_errors.fetch_add(records, Ordering::Relaxed);
        tracing::warn!(file = %self.path.display(), error, "audit trail {what} failed");
    }

    /// fdatasync if anything was written since the last one.
    fn sync(&mut self) -> Result<(), AuditError> {
        if !self.unsynced {
            return Ok(());
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.unsynced = false;
                self.last_sync = Instant::now();
                Ok(())
            }
            Err(e) => {
                self.failed(1, "fsync", &e.to_string());
                Err(AuditError::Fsync {
                    path: self.path.clone(),
                    source: e,
                })
            }
        }
    }

    fn sync_logged(&mut self) {
        // `sync` has already counted and logged a failure.
        let _ = self.sync();
    }

    /// Renames the full file to `<path>.<first>-<last>` and starts a new one. The chain simply
    /// continues: the new file's first `prev` is the hash of the renamed file's last line.
    fn rotate(&mut self) {
        let last = self.next_seq.saturating_sub(1);
        let first = self.first_seq_in_file.unwrap_or(last);
        let target = rotated_path(&self.path, first, last);
        // The rotated file must be complete on disk before it stops being written.
        if self.sync().is_err() || target.exists() {
            self.failed(1, "rotation", &format!("{} not rotated", self.path.display()));
            return;
        }
        if let Err(e) = std::fs::rename(&self.path, &target) {
            self.failed(1, "rotation", &e.to_string());
            return;
        }
        let new = match open_active_new(&self.path) {
            Ok(f) => f,
            Err(e) => {
                self.failed(1, "rotation", &e.to_string());
                // Keep appending to the old file under its old name rather than losing records.
                if let Err(e) = std::fs::rename(&target, &self.path) {
                    self.failed(1, "rotation rollback", &e.to_string());
                }
                return;
            }
        };
        if let Err(e) = sync_dir(&self.path) {
            self.failed(1, "rotation directory fsync", &e.to_string());
        }
        tracing::info!(rotated = %target.display(), first, last, "audit trail rotated");
        self.file = new;
        self.len = 0;
        self.first_seq_in_file = None;
    }
}
