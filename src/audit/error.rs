//! Errors of the audit layer. Operators, tests and docs match the messages, so each `Display`
//! reads exactly as the plain strings these replaced did; that is also why a message repeats
//! its `source` (the OS error) instead of leaving it to the error chain.

use std::path::PathBuf;

/// Why an audit trail could not be opened, written, flushed or closed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// [`super::AuditOptions::queue_capacity`] is 0.
    #[error("audit queue capacity must be at least 1")]
    ZeroQueueCapacity,
    /// [`super::AuditOptions::rotate_at_bytes`] is `Some(0)`.
    #[error("audit rotate_at_bytes must be positive")]
    ZeroRotateSize,
    /// [`super::FsyncPolicy::Interval`] of zero.
    #[error("audit fsync interval must be positive (or use EveryRecord)")]
    ZeroFsyncInterval,
    /// [`super::CheckpointOptions`] with a zero record count or interval.
    #[error("audit checkpoints need a positive record count and interval")]
    ZeroCheckpointCadence,
    /// Opening or creating a trail file.
    #[error("audit trail {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Making the creation of the active file durable in its directory.
    #[error("audit trail {}: {source}", path.display())]
    SyncDir {
        /// The active file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Reading a trail file's size or its last lines.
    #[error("audit trail {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said (or that no line end was found).
        source: std::io::Error,
    },
    /// Listing the rotated files next to the active one.
    #[error("audit trail {}: {source}", path.display())]
    ListRotated {
        /// The active file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Cutting away a torn last line, or making that cut durable.
    #[error("audit trail {}: {source}", path.display())]
    CutTornLine {
        /// The active file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The last complete line of a trail file does not carry the chain fields.
    #[error(
        "audit trail {}: the last line is not a chain record ({source}); refusing to guess where \
         the chain continues: run verify and move the file aside",
        path.display()
    )]
    LastLineNotChained {
        /// The file.
        path: PathBuf,
        /// What is wrong with the line.
        source: HeadError,
    },
    /// The first line of the active file does not carry the chain fields.
    #[error("audit trail {}: line 1 is not a chain record ({source})", path.display())]
    FirstLineNotChained {
        /// The active file.
        path: PathBuf,
        /// What is wrong with the line.
        source: HeadError,
    },
    /// Starting the writer thread.
    #[error("cannot start the audit writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
    /// fdatasync of the active file.
    #[error("audit trail {}: fsync: {source}", path.display())]
    Fsync {
        /// The active file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The trail was closed before the record or request reached the writer.
    #[error("the audit trail is closed")]
    Closed,
    /// The writer ended without answering.
    #[error("the audit writer stopped")]
    WriterStopped,
    /// The writer thread panicked while closing.
    #[error("the audit writer thread panicked")]
    WriterPanicked,
}

/// Why a line is not a chain record.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// Not JSON, or the chain fields are missing or of the wrong type.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// `prev` is not a SHA-256 in the form the writer produces.
    #[error("prev is not 64 lowercase hex digits")]
    BadPrev,
    /// A rotated file with no complete line has no head to continue from.
    #[error("the file is empty")]
    Empty,
}

/// Why a checkpoint (`--anchor`) or a checkpoint list (`--checkpoints`) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// No `:` between seq and hash; carries the input.
    #[error("{0:?}: expected SEQ:HASH")]
    NoSeparator(String),
    /// A seq that is not decimal or a hash that is not 64 hex digits; carries the input.
    #[error("{0:?}: expected SEQ:HASH (decimal seq, 64 hex digits)")]
    BadFields(String),
    /// A logged checkpoint line whose fields cannot be read: it must not pass for a check.
    #[error("line {line}: a checkpoint line without a readable seq and hash")]
    UnreadableLine {
        /// 1-based line number in the list.
        line: usize,
    },
    /// The list holds no checkpoint at all: it must not pass for a check.
    #[error("no checkpoint found")]
    NoneFound,
}
