//! Offline verification of a trail: `seq` continuity and `prev` links across files given in
//! chain order, stopping at the first broken link.
//!
//! Where a break is reported:
//! - a line that is not JSON or lacks `seq`/`prev`: that line ([`BreakReason::BadJson`]);
//! - a deleted or reordered line: the first line whose `seq` is not the expected one
//!   ([`BreakReason::SeqGap`]), i.e. the position of the deleted or moved line;
//! - an edited line: the next line's `prev` no longer matches. If the line after that still
//!   links to it, the next line is intact and the edited line is the earlier one: it is reported
//!   as [`BreakReason::Altered`]. Otherwise the line whose `prev` does not match is reported
//!   ([`BreakReason::PrevMismatch`]: it, or the line before it, was changed).
//! - a line without a newline before the end of the last file ([`BreakReason::TornLine`]).
//!
//! A torn final line of the last file is what a crash during a write leaves: it is reported in
//! [`VerifyReport::incomplete_tail`], not as tampering. If the first record's `prev` is not the
//! genesis value (e.g. only the files after a rotation were given, or the start of the trail
//! was removed), its link cannot be checked: the report says `anchored: false` and only vouches
//! for the chain from that record on; callers that need the whole trail must require
//! `anchored`.
//!
//! [`verify_points`] also checks chain positions held outside the file ([`Checkpoint`]s): the
//! only way to detect a rewrite by someone who recomputed the chain.

use super::checkpoint::Checkpoint;
use super::record::{ChainHead, GENESIS_PREV};
use super::recover::{line_hash, parse_head};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::iter::Peekable;
use std::path::PathBuf;

/// A line in one of the verified files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number; 0 when the file itself could not be read.
    pub line: u64,
}

/// Why the chain is broken at a [`Location`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    /// The file could not be opened or read.
    Unreadable(String),
    /// The line is not a JSON object with a numeric `seq` and a hex `prev`.
    BadJson(String),
    /// `seq` is not the previous one plus one (1 for a genesis record).
    SeqGap {
        /// The seq the line should have.
        expected: u64,
        /// The seq it has.
        found: u64,
    },
    /// `prev` is not the hash of the previous line: this line or the previous one changed.
    PrevMismatch,
    /// The line's hash no longer matches the next line's `prev`, while the next line is
    /// confirmed by the one after it: this line was changed after it was written.
    Altered,
    /// A line without its newline that is not at the very end of the trail.
    TornLine,
}

/// The first broken link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// Where.
    pub at: Location,
    /// What.
    pub reason: BreakReason,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files examined.
    pub files: usize,
    /// Records verified before the first break (all of them if intact).
    pub records: u64,
    /// `seq` of the first verified record.
    pub first_seq: Option<u64>,
    /// `seq` of the last verified record.
    pub last_seq: Option<u64>,
    /// Hash of the last verified line: keep it elsewhere to anchor the tail.
    pub last_hash: Option<String>,
    /// The first record is the start of a trail (`seq` 1, genesis `prev`); if false, its own
    /// link to earlier records was not checked.
    pub anchored: bool,
    /// The last file ends in an incomplete line (a crash during a write, not tampering).
    pub incomplete_tail: Option<Location>,
    /// The first broken link, if any.
    pub broken: Option<Break>,
}

impl VerifyReport {
    /// No broken link (an incomplete tail is not a break).
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakReason::Unreadable(e) => write!(f, "unreadable: {e}"),
            BreakReason::BadJson(e) => write!(f, "not a chain record: {e}"),
            BreakReason::SeqGap { expected, found } => {
                write!(
                    f,
                    "seq {found} where {expected} was expected (line deleted, inserted or moved)"
                )
            }
            BreakReason::PrevMismatch => {
                write!(
                    f,
                    "prev does not match the previous line (this line or the previous one changed)"
                )
            }
            BreakReason::Altered => write!(f, "line changed after it was written"),
            BreakReason::TornLine => write!(f, "incomplete line before the end of the trail"),
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.broken {
            None => write!(f, "intact: {} records in {} files", self.records, self.files)?,
            Some(b) => write!(
                f,
                "BROKEN at {}:{}: {}; {} records verified before it",
                b.at.file.display(),
                b.at.line,
                b.reason,
                self.records
            )?,
        }
        if let (Some(first), Some(last)) = (self.first_seq, self.last_seq) {
            write!(f, ", seq {first}-{last}")?;
        }
        if !self.anchored && self.records > 0 {
            write!(
                f,
                ", first record not linked to the trail's start (earlier files not given)"
            )?;
        }
        if let Some(t) = &self.incomplete_tail {
            write!(
                f,
                ", incomplete final line at {}:{} (crash during a write)",
                t.file.display(),
                t.line
            )?;
        }
        if let Some(h) = &self.last_hash {
            write!(f, ", last hash {h}")?;
        }
        Ok(())
    }
}

/// One raw line, without its newline.
struct RawLine {
    file: usize,
    line: u64,
    bytes: Vec<u8>,
    terminated: bool,
}

/// Lines of every file in turn.
struct Lines<'a> {
    files: &'a [PathBuf],
    next_file: usize,
    reader: Option<BufReader<File>>,
    line: u64,
}

impl Iterator for Lines<'_> {
    type Item = Result<RawLine, Break>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let file = self.next_file;
            let path = self.files.get(file)?;
            let reader = match &mut self.reader {
                Some(r) => r,
                None => match File::open(path) {
                    Ok(f) => {
                        self.line = 0;
                        self.reader.insert(BufReader::new(f))
                    }
                    Err(e) => return Some(Err(self.stop(file, 0, e))),
                },
            };
            let mut bytes = Vec::new();
            match reader.read_until(b'\n', &mut bytes) {
                Ok(0) => {
                    self.reader = None;
                    self.next_file += 1;
                }
                Ok(_) => {
                    self.line += 1;
                    let terminated = bytes.last() == Some(&b'\n');
                    if terminated {
                        bytes.pop();
                    }
                    return Some(Ok(RawLine {
                        file,
                        line: self.line,
                        bytes,
                        terminated,
                    }));
                }
                Err(e) => return Some(Err(self.stop(file, self.line + 1, e))),
            }
        }
    }
}

impl Lines<'_> {
    fn stop(&mut self, file: usize, line: u64, e: std::io::Error) -> Break {
        self.next_file = self.files.len();
        self.reader = None;
        Break {
            at: Location {
                file: self.files[file].clone(),
                line,
            },
            reason: BreakReason::Unreadable(e.to_string()),
        }
    }
}

/// The last accepted line.
struct Link {
    seq: u64,
    hash: String,
    at: Location,
}

/// What the trail says about one [`Checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointOutcome {
    /// The verified chain has that record with that hash.
    Matched,
    /// The verified chain has that record with another hash: it was rewritten (at or before
    /// that record).
    Mismatch {
        /// The hash the record has now.
        found: String,
    },
    /// The record lies before the first record given (earlier files not given, or the start of
    /// the trail removed): it could not be checked.
    BeforeTrail,
    /// The verified chain ends before that record: it was cut (or the chain broke before it).
    NotReached,
}

/// One checkpoint and what the trail says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointCheck {
    /// The checkpoint.
    pub point: Checkpoint,
    /// Its outcome.
    pub outcome: PointOutcome,
}

impl fmt::Display for PointCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (seq, hash) = (self.point.seq, &self.point.hash);
        match &self.outcome {
            PointOutcome::Matched => write!(f, "checkpoint seq {seq}: matches"),
            PointOutcome::Mismatch { found } => write!(
                f,
                "checkpoint seq {seq}: MISMATCH: expected {hash}, the trail has {found} (rewritten at or before this record)"
            ),
            PointOutcome::BeforeTrail => write!(
                f,
                "checkpoint seq {seq}: not checked (before the first record given)"
            ),
            PointOutcome::NotReached => write!(
                f,
                "checkpoint seq {seq}: NOT REACHED: the verified chain ends before it (trail cut or broken)"
            ),
        }
    }
}

/// Verifies the trail like [`verify`] and says, for each of `points`, whether the verified
/// chain passes through that record with that hash.
pub fn verify_points(files: &[PathBuf], points: &[Checkpoint]) -> (VerifyReport, Vec<PointCheck>) {
    let mut seen: BTreeMap<u64, String> = points.iter().map(|p| (p.seq, String::new())).collect();
    let report = verify_inner(files, &mut |seq, hash| {
        if let Some(h) = seen.get_mut(&seq) {
            hash.clone_into(h);
        }
    });
    let checks = points
        .iter()
        .map(|p| {
            let found = seen.get(&p.seq).filter(|h| !h.is_empty());
            let verified = report.last_seq.is_some_and(|last| p.seq <= last);
            let outcome = match (found, report.first_seq) {
                // A line seen but no longer counted (an altered culprit) is not verified.
                (Some(h), _) if verified && *h == p.hash => PointOutcome::Matched,
                (Some(h), _) if verified => PointOutcome::Mismatch { found: h.clone() },
                (_, Some(first)) if p.seq < first => PointOutcome::BeforeTrail,
                _ => PointOutcome::NotReached,
            };
            PointCheck {
                point: p.clone(),
                outcome,
            }
        })
        .collect();
    (report, checks)
}

/// Verifies the trail made of `files` in chain order (see [`super::trail_files`]).
pub fn verify(files: &[PathBuf]) -> VerifyReport {
    verify_inner(files, &mut |_, _| {})
}

/// [`verify`], telling `on_line` the seq and hash of every line accepted into the chain.
fn verify_inner(files: &[PathBuf], on_line: &mut dyn FnMut(u64, &String)) -> VerifyReport {
    let mut report = VerifyReport {
        files: files.len(),
        ..VerifyReport::default()
    };
    let mut lines = Lines {
        files,
        next_file: 0,
        reader: None,
        line: 0,
    }
    .peekable();
    let mut last: Option<Link> = None;
    let mut before_last: Option<(u64, String)> = None;
    while let Some(item) = lines.next() {
        let raw = match item {
            Ok(raw) => raw,
            Err(b) => {
                report.broken = Some(b);
                break;
            }
        };
        let at = Location {
            file: files[raw.file].clone(),
            line: raw.line,
        };
        let last_file = raw.file + 1 == files.len();
        match check(&raw, last_file, last.as_ref(), &mut lines) {
            Ok(head) => {
                if last.is_none() {
                    report.first_seq = Some(head.seq);
                    report.anchored = head.seq == 1 && head.prev == GENESIS_PREV;
                }
                before_last = last.map(|l| (l.seq, l.hash));
                let hash = line_hash(&raw.bytes);
                on_line(head.seq, &hash);
                last = Some(Link {
                    seq: head.seq,
                    hash,
                    at,
                });
                report.records += 1;
            }
            Err(Verdict::IncompleteTail) => {
                report.incomplete_tail = Some(at);
                break;
            }
            Err(Verdict::Broken(reason)) => {
                report.broken = Some(Break { at, reason });
                break;
            }
            Err(Verdict::PreviousAltered) => {
                // The previous line is the culprit: it no longer counts as verified.
                if let Some(culprit) = last.take() {
                    report.records -= 1;
                    report.broken = Some(Break {
                        at: culprit.at,
                        reason: BreakReason::Altered,
                    });
                }
                return finish(report, before_last);
            }
        }
    }
    finish(report, last.map(|l| (l.seq, l.hash)))
}

/// Fills in the last verified record.
fn finish(mut report: VerifyReport, last: Option<(u64, String)>) -> VerifyReport {
    if report.records == 0 {
        report.first_seq = None;
        report.anchored = false;
    }
    if let Some((seq, hash)) = last {
        report.last_seq = Some(seq);
        report.last_hash = Some(hash);
    }
    report
}

enum Verdict {
    IncompleteTail,
    Broken(BreakReason),
    PreviousAltered,
}

/// Checks one line against the last accepted one; returns its chain fields.
fn check(
    raw: &RawLine,
    last_file: bool,
    last: Option<&Link>,
    rest: &mut Peekable<Lines<'_>>,
) -> Result<ChainHead, Verdict> {
    if !raw.terminated {
        // Only the final line of a file can lack its newline; at the end of the trail that is
        // a crash during a write, anywhere else the file was cut short.
        return Err(if last_file {
            Verdict::IncompleteTail
        } else {
            Verdict::Broken(BreakReason::TornLine)
        });
    }
    let head = parse_head(&raw.bytes).map_err(|e| Verdict::Broken(BreakReason::BadJson(e.to_string())))?;
    let Some(last) = last else {
        if head.prev == GENESIS_PREV && head.seq != 1 {
            return Err(Verdict::Broken(BreakReason::SeqGap {
                expected: 1,
                found: head.seq,
            }));
        }
        return Ok(head);
    };
    let expected = last.seq.saturating_add(1);
    if head.seq != expected {
        return Err(Verdict::Broken(BreakReason::SeqGap {
            expected,
            found: head.seq,
        }));
    }
    if head.prev != last.hash {
        let hash = line_hash(&raw.bytes);
        let confirmed = matches!(rest.peek(), Some(Ok(next))
            if next.terminated && parse_head(&next.bytes).is_ok_and(|n| n.prev == hash));
        return Err(if confirmed {
            Verdict::PreviousAltered
        } else {
            Verdict::Broken(BreakReason::PrevMismatch)
        });
    }
    Ok(head)
}
