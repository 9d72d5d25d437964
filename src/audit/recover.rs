//! Opening a trail: find where the chain continues (last complete line of the active file, or
//! of the newest rotated file when the active one is empty or missing), cut away a torn final
//! line left by a crash, and name and list rotated files.

use super::error::{AuditError, HeadError};
use super::record::{ChainHead, GENESIS_PREV};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Lines are a few KiB at most (ARNs are capped at 2048 characters); a file whose last 16 MiB
/// hold no line end is not a trail this module wrote.
const MAX_TAIL_SCAN: u64 = 16 << 20;

/// Where the writer picks up.
#[derive(Debug)]
pub(super) struct Resume {
    /// `seq` of the next record.
    pub next_seq: u64,
    /// Hex hash of the last complete line (or [`GENESIS_PREV`]).
    pub prev: String,
    /// `seq` of the active file's first line, for naming it at rotation.
    pub first_seq_in_file: Option<u64>,
    /// Length of the active file after recovery.
    pub file_len: u64,
    /// Bytes of a torn final line that were cut away (0 if none).
    pub truncated: u64,
}

/// Hex SHA-256 of a line's bytes (without its newline): the value the next line's `prev`
/// must carry.
pub(super) fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// Parses the chain fields of a line; `prev` must be 64 lowercase hex digits.
pub(super) fn parse_head(line: &[u8]) -> Result<ChainHead, HeadError> {
    let head: ChainHead = serde_json::from_slice(line)?;
    let hex_ok = head.prev.len() == 64 && head.prev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex_ok {
        return Err(HeadError::BadPrev);
    }
    Ok(head)
}

/// Opens (creating 0600 if needed) the active file for appending and works out the resume point.
pub(super) fn open_active(path: &Path) -> Result<(File, Resume), AuditError> {
    let existed = path.exists();
    let file = open_active_new(path).map_err(|source| AuditError::Open {
        path: path.to_owned(),
        source,
    })?;
    if !existed {
        sync_dir(path).map_err(|source| AuditError::SyncDir {
            path: path.to_owned(),
            source,
        })?;
    }
    let (len, tail) = read_tail(&file, path)?;
    let truncated = len - tail.complete_len;
    if truncated > 0 {
        // Only the final line can be torn (one write per line, appended in order), so cutting
        // it loses the record that was being written at the crash and nothing before it.
        let cut = |source| AuditError::CutTornLine {
            path: path.to_owned(),
            source,
        };
        file.set_len(tail.complete_len).map_err(cut)?;
        file.sync_all().map_err(cut)?;
        tracing::warn!(
            file = %path.display(),
            truncated_bytes = truncated,
            "audit trail ended in an incomplete line (crash during a write); cut it away"
        );
    }
    let mut resume = match tail.last_line {
        Some(last) => {
            let head = parse_head(&last).map_err(|e| not_a_trail(path, e))?;
            Resume {
                next_seq: head.seq.saturating_add(1),
                prev: line_hash(&last),
                first_seq_in_file: Some(first_seq(path)?),
                file_len: tail.complete_len,
                truncated: 0,
            }
        }
        None => resume_from_rotated(path)?,
    };
    resume.truncated = truncated;
    Ok((file, resume))
}

/// Opens the active file for reading and appending, creating it with mode 0600.
pub(super) fn open_active_new(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

fn not_a_trail(path: &Path, source: HeadError) -> AuditError {
    AuditError::LastLineNotChained {
        path: path.to_owned(),
        source,
    }
}

/// An empty or just-created active file: the chain continues from the newest rotated file (a
/// crash between rotation's rename and the first new record leaves exactly this), else it is a
/// brand new trail.
fn resume_from_rotated(path: &Path) -> Result<Resume, AuditError> {
    let rotated = rotated_files(path).map_err(|source| AuditError::ListRotated {
        path: path.to_owned(),
        source,
    })?;
    let Some((_, _, newest)) = rotated.last() else {
        return Ok(Resume {
            next_seq: 1,
            prev: GENESIS_PREV.to_owned(),
            first_seq_in_file: None,
            file_len: 0,
            truncated: 0,
        });
    };
    let file = File::open(newest).map_err(|source| AuditError::Open {
        path: newest.clone(),
        source,
    })?;
    let (_, tail) = read_tail(&file, newest)?;
    let last = tail
        .last_line
        .ok_or_else(|| not_a_trail(newest, HeadError::Empty))?;
    let head = parse_head(&last).map_err(|e| not_a_trail(newest, e))?;
    Ok(Resume {
        next_seq: head.seq.saturating_add(1),
        prev: line_hash(&last),
        first_seq_in_file: None,
        file_len: 0,
        truncated: 0,
    })
}

fn first_seq(path: &Path) -> Result<u64, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut line = Vec::new();
    BufReader::new(file.take(MAX_TAIL_SCAN))
        .read_until(b'\n', &mut line)
        .map_err(|source| AuditError::Read {
            path: path.to_owned(),
            source,
        })?;
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    parse_head(line)
        .map(|h| h.seq)
        .map_err(|source| AuditError::FirstLineNotChained {
            path: path.to_owned(),
            source,
        })
}

/// The end of the complete part of a file and its last complete line.
struct Tail {
    complete_len: u64,
    last_line: Option<Vec<u8>>,
}

/// Reads backwards from the end in a growing window until the last complete line is found.
/// The file's length and its tail, a read failure naming `path`.
fn read_tail(file: &File, path: &Path) -> Result<(u64, Tail), AuditError> {
    let read = |source| AuditError::Read {
        path: path.to_owned(),
        source,
    };
    let len = file.metadata().map_err(read)?.len();
    Ok((len, scan_tail(file, len).map_err(read)?))
}

fn scan_tail(file: &File, len: u64) -> std::io::Result<Tail> {
    let mut window: u64 = 64 << 10;
    loop {
        let off = len.saturating_sub(window);
        // At most MAX_TAIL_SCAN bytes, so the cast cannot truncate.
        let mut data = vec![0; (len - off) as usize];
        file.read_exact_at(&mut data, off)?;
        if let Some(tail) = find_tail(&data, off) {
            return Ok(tail);
        }
        if off == 0 || window >= MAX_TAIL_SCAN {
            return Err(std::io::Error::other(
                "no complete line in the last 16 MiB; not an audit trail",
            ));
        }
        window = window.saturating_mul(4);
    }
}

/// `None` when `data` (the file from offset `off` on) is too short to decide.
fn find_tail(data: &[u8], off: u64) -> Option<Tail> {
    let from_start = off == 0;
    let complete = match data.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if from_start => {
            return Some(Tail {
                complete_len: 0,
                last_line: None,
            })
        }
        None => return None,
    };
    let body = &data[..complete - 1];
    let start = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if from_start => 0,
        None => return None,
    };
    Some(Tail {
        complete_len: off + complete as u64,
        last_line: Some(body[start..].to_vec()),
    })
}

/// `<path>.<first-seq>-<last-seq>`, both zero-padded to 20 digits so names sort by position.
pub(super) fn rotated_path(path: &Path, first: u64, last: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{first:020}-{last:020}"));
    path.with_file_name(name)
}

/// Rotated files of the trail at `path` as `(first, last, path)`, oldest first.
fn rotated_files(path: &Path) -> std::io::Result<Vec<(u64, u64, PathBuf)>> {
    let dir = parent(path);
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(range) = name
            .to_str()
            .and_then(|n| n.strip_prefix(base)?.strip_prefix('.'))
        else {
            continue;
        };
        let Some((first, last)) = range.split_once('-') else {
            continue;
        };
        let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
        if let (true, true, Ok(f), Ok(l)) = (digits(first), digits(last), first.parse(), last.parse()) {
            out.push((f, l, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Every file of the trail whose active file is `path`, in chain order: rotated files by their
/// first seq, then the active file if it exists. Pass the result to [`super::verify()`].
pub fn trail_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated_files(path)?.into_iter().map(|(_, _, p)| p).collect();
    if path.exists() {
        files.push(path.to_owned());
    }
    Ok(files)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a creation or rename in `path`'s directory durable.
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(parent(path))?.sync_all()
}
