//! Checkpoints: published through syslog after the records they name, parsed back from every
//! form they reach an operator in, and the only thing that catches a recomputed chain.

use super::*;
use crate::audit::recover::line_hash;
use std::os::unix::net::UnixDatagram;

fn request(n: u64) -> AuditRecord {
    AuditRecord::now(AuditEvent::Request(RequestEvent {
        request_id: n,
        kms_request_id: Some(format!("req-{n}")),
        outcome: "OK".into(),
        status: 200,
        ..RequestEvent::default()
    }))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Rewrites line `index` with `edit` and recomputes every later `prev`, as someone with the
/// daemon's uid can.
fn rewrite_and_rechain(lines: &mut [String], index: usize, edit: impl Fn(&str) -> String) {
    lines[index] = edit(&lines[index]);
    for i in index + 1..lines.len() {
        let prev = line_hash(lines[i - 1].as_bytes());
        let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
        v["prev"] = prev.into();
        lines[i] = serde_json::to_string(&v).unwrap();
    }
}

#[test]
fn checkpoints_are_sent_to_syslog_every_n_records_and_at_close_and_match_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let sock_path = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            checkpoints: CheckpointOptions {
                every_records: 4,
                interval: Duration::from_secs(3600),
                syslog: Some(sock_path.clone()),
            },
            ..AuditOptions::default()
        },
    )
    .unwrap();
    for i in 1..=10 {
        assert!(log.record(request(i)));
    }
    log.flush_and_close().unwrap();
    let mut received = String::new();
    let mut buf = [0u8; 512];
    for _ in 0..3 {
        let n = syslog.recv(&mut buf).expect("a checkpoint datagram");
        received.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        received.push('\n');
    }
    assert!(received.starts_with("<86>xks-bridge["), "{received}");
    let points = parse_checkpoints(&received).unwrap();
    // After records 4 and 8 (the count), then 10 at close (records pending).
    assert_eq!(points.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![4, 8, 10]);
    let (report, checks) = verify_points(&[path], &points);
    assert!(report.is_intact() && report.anchored);
    assert!(
        checks.iter().all(|c| c.outcome == PointOutcome::Matched),
        "{checks:?}"
    );
}

#[test]
fn a_checkpoint_is_published_after_the_interval_when_records_are_pending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let sock_path = dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            checkpoints: CheckpointOptions {
                every_records: 1000,
                interval: Duration::from_millis(100),
                syslog: Some(sock_path),
            },
            ..AuditOptions::default()
        },
    )
    .unwrap();
    assert!(log.record(request(1)));
    assert!(log.record(request(2)));
    // The log stays open: only the interval can have sent this.
    let mut buf = [0u8; 512];
    let n = syslog.recv(&mut buf).expect("an interval checkpoint");
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    let point = &parse_checkpoints(text).unwrap()[0];
    assert_eq!(point.seq, 2, "{text}");
    assert_eq!(point.hash, line_hash(lines(&path)[1].as_bytes()));
}

#[test]
fn checkpoint_lists_are_read_from_plain_text_json_and_journal_lines() {
    let h = "ab".repeat(32);
    let text = format!(
        "7:{h}\n\
         Nov 23 01:36:42 host xks-bridge[311]: \u{1b}[2m2026-11-23T01:36:42Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mxks_bridge::audit::checkpoint\u{1b}[0m\u{1b}[2m:\u{1b}[0m audit checkpoint \u{1b}[3mseq\u{1b}[0m\u{1b}[2m=\u{1b}[0m8 \u{1b}[3mhash\u{1b}[0m\u{1b}[2m=\u{1b}[0m{h}\n\
         {{\"timestamp\":\"x\",\"level\":\"INFO\",\"message\":\"audit checkpoint\",\"seq\":9,\"hash\":\"{h}\",\"target\":\"xks_bridge::audit::checkpoint\"}}\n\
         Nov 23 01:36:43 host xks-bridge[311]: some other line seq=1\n\
         <86>xks-bridge[311]: audit checkpoint seq=10 hash={}\n",
        h.to_uppercase()
    );
    let points = parse_checkpoints(&text).unwrap();
    assert_eq!(
        points.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    assert!(points.iter().all(|p| p.hash == h));
    let message = |r: Result<_, CheckpointError>| r.map(|_: Vec<Checkpoint>| ()).unwrap_err().to_string();
    assert_eq!(
        message(parse_checkpoints("nothing here\n")),
        "no checkpoint found",
        "an empty list must not pass"
    );
    assert_eq!(
        message(parse_checkpoints("x\naudit checkpoint seq=x hash=y\n")),
        "line 2: a checkpoint line without a readable seq and hash"
    );
    let err = "12:abc".parse::<Checkpoint>().unwrap_err();
    assert_eq!(err, CheckpointError::BadFields("12:abc".into()));
    assert_eq!(
        err.to_string(),
        r#""12:abc": expected SEQ:HASH (decimal seq, 64 hex digits)"#
    );
    assert_eq!(
        "12".parse::<Checkpoint>().unwrap_err().to_string(),
        r#""12": expected SEQ:HASH"#
    );
}

#[test]
fn a_recomputed_chain_passes_verify_alone_but_not_against_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path, FsyncPolicy::Never).unwrap();
    for i in 1..=12 {
        assert!(log.record(request(i)));
    }
    log.flush_and_close().unwrap();
    let original = lines(&path);
    let at = |seq: usize| Checkpoint {
        seq: seq as u64,
        hash: line_hash(original[seq - 1].as_bytes()),
    };
    let points = vec![at(4), at(8), at(12)];
    let mut forged = original.clone();
    rewrite_and_rechain(&mut forged, 5, |l| l.replace("req-6", "req-X"));
    std::fs::write(&path, forged.join("\n") + "\n").unwrap();
    // The documented limit: the chain alone cannot tell.
    assert!(verify(std::slice::from_ref(&path)).is_intact());
    let (_, checks) = verify_points(std::slice::from_ref(&path), &points);
    let outcomes: Vec<_> = checks.iter().map(|c| &c.outcome).collect();
    assert_eq!(outcomes[0], &PointOutcome::Matched, "before the rewrite");
    assert!(
        matches!(outcomes[1], PointOutcome::Mismatch { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], PointOutcome::Mismatch { .. }),
        "{outcomes:?}"
    );

    // Cutting the tail after a checkpoint is caught; cutting it after the last one is not.
    std::fs::write(&path, original[..10].join("\n") + "\n").unwrap();
    let (report, checks) = verify_points(std::slice::from_ref(&path), &points);
    assert!(report.is_intact());
    assert_eq!(checks[2].outcome, PointOutcome::NotReached);
    // Removing the start: not anchored, and earlier checkpoints cannot be checked.
    std::fs::write(&path, original[5..].join("\n") + "\n").unwrap();
    let (report, checks) = verify_points(std::slice::from_ref(&path), &points);
    assert!(report.is_intact() && !report.anchored);
    assert_eq!(checks[0].outcome, PointOutcome::BeforeTrail);
    assert_eq!(checks[1].outcome, PointOutcome::Matched);
}

#[test]
fn checkpoint_options_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    for checkpoints in [
        CheckpointOptions {
            every_records: 0,
            ..CheckpointOptions::default()
        },
        CheckpointOptions {
            interval: Duration::ZERO,
            ..CheckpointOptions::default()
        },
    ] {
        let options = AuditOptions {
            checkpoints,
            ..AuditOptions::default()
        };
        let err = AuditLog::open_with(&dir.path().join("a.log"), options).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("audit checkpoints need a positive record count and interval")
        );
    }
}
