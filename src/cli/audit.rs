//! `audit verify`: the hash chain of an audit trail, and the checks against positions kept
//! elsewhere (start of the trail, anchors, checkpoints).

use super::{emit, CliResult, EXIT_FAILED};
use clap::Subcommand;
use std::path::PathBuf;

/// `audit` subcommands.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain of an audit trail; reports the first broken link. With a single
    /// file, its rotated predecessors (`FILE.<first>-<last>`) are included in chain order.
    ///
    /// The chain alone detects lines edited, deleted, inserted or reordered without the chain
    /// being recomputed. It does not detect: a missing start of the trail (unless
    /// `--require-start`), lines cut from the end, or a rewrite whose author recomputed the
    /// later links (anyone who can write the file can). Those are detected only against chain
    /// positions kept elsewhere: `--anchor` and `--checkpoints`.
    Verify {
        /// Fail unless the trail begins with its first record (seq 1, genesis link): detects
        /// removal of the start.
        #[arg(long)]
        require_start: bool,
        /// Fail unless the chain passes through record SEQ with hash HASH (as printed by an
        /// earlier `verify` as the last hash, or from a checkpoint). Repeatable.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Vec<xks_bridge::audit::Checkpoint>,
        /// A list of checkpoints: `SEQ:HASH` lines, or the daemon's `audit checkpoint` lines
        /// as found in the journal, syslog or stderr (other lines are skipped). Fails on a
        /// mismatch or a checkpoint past the end of the trail; checkpoints before the first
        /// record given are reported and skipped.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// Trail files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// What `audit verify` checks beyond the chain itself.
pub struct VerifyChecks {
    /// `--require-start`.
    pub require_start: bool,
    /// `--anchor`: each must be matched.
    pub anchors: Vec<xks_bridge::audit::Checkpoint>,
    /// `--checkpoints`: each must be matched or lie before the first record given.
    pub checkpoints: Option<PathBuf>,
}

/// Verifies audit trail files; exit 0 when intact (an incomplete last line from a crash is
/// reported but is not tampering) and every requested check passes, 1 otherwise.
pub fn audit_verify(files: &[PathBuf], checks: &VerifyChecks) -> CliResult {
    use xks_bridge::audit::PointOutcome;
    let files = match files {
        [one] => xks_bridge::audit::trail_files(one)
            .map_err(|e| (EXIT_FAILED, format!("{}: {e}", one.display())))?,
        many => many.to_vec(),
    };
    let listed = match &checks.checkpoints {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| xks_bridge::audit::parse_checkpoints(&t).map_err(|e| e.to_string()))
            .map_err(|e| (EXIT_FAILED, format!("--checkpoints {}: {e}", path.display())))?,
        None => Vec::new(),
    };
    let points: Vec<_> = checks.anchors.iter().chain(&listed).cloned().collect();
    let (report, results) = xks_bridge::audit::verify_points(&files, &points);
    emit(&format!("{report}\n"));
    let mut failures = Vec::new();
    if !report.is_intact() {
        failures.push("the chain is broken".to_owned());
    }
    if checks.require_start && !report.anchored {
        emit("the trail does not begin with its first record (seq 1, genesis link): its start is missing\n");
        failures.push("--require-start".to_owned());
    }
    let (anchors, listed) = results.split_at(checks.anchors.len());
    for r in anchors {
        emit(&format!("anchor: {r}\n"));
        if r.outcome != PointOutcome::Matched {
            failures.push(format!("--anchor {}", r.point));
        }
    }
    let mut matched = 0;
    for r in listed {
        match r.outcome {
            PointOutcome::Matched => matched += 1,
            PointOutcome::BeforeTrail => emit(&format!("{r}\n")),
            _ => {
                emit(&format!("{r}\n"));
                failures.push(format!("checkpoint {}", r.point));
            }
        }
    }
    if checks.checkpoints.is_some() {
        emit(&format!("{matched} of {} checkpoints match\n", listed.len()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err((
            EXIT_FAILED,
            format!("audit trail verification failed: {}", failures.join(", ")),
        ))
    }
}
