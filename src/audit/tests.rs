use super::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

fn request(n: u64) -> AuditRecord {
    AuditRecord::now(AuditEvent::Request(RequestEvent {
        request_id: n,
        kms_request_id: Some(format!("4112f4d6-db54-4af4-ae30-c55a22a8{n:04}")),
        keystore: Some("/tenant-a".into()),
        access_key_id: Some("AKIA4GBY3I6JCE5M2HPM".into()),
        principal: Some("arn:aws:iam::111122223333:role/app".into()),
        operation: Some("Encrypt".into()),
        key_id: Some("k1".into()),
        kms_operation: Some("GenerateDataKey".into()),
        outcome: "OK".into(),
        status: 200,
        latency_us: 250 + n,
        ..RequestEvent::default()
    }))
}

fn write_trail(path: &Path, options: AuditOptions, n: u64) {
    let log = AuditLog::open_with(path, options).unwrap();
    for i in 1..=n {
        assert!(log.record(request(i)));
    }
    log.flush_and_close().unwrap();
    assert_eq!((log.dropped(), log.write_errors()), (0, 0));
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn parsed(line: &str) -> AuditLine {
    serde_json::from_str(line).unwrap()
}

/// A trail of 40 records, for the tampering tests.
fn trail_of_40() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_trail(&path, AuditOptions::default(), 40);
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 40);
    (dir, path, lines)
}

fn broken_at(report: &VerifyReport) -> (u64, BreakReason) {
    let b = report.broken.clone().expect("a break");
    (b.at.line, b.reason)
}

#[test]
fn a_chain_of_records_verifies() {
    let (_dir, path, lines) = trail_of_40();
    let report = verify(std::slice::from_ref(&path));
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 40);
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(40)));
    assert!(report.anchored && report.incomplete_tail.is_none());
    let first = parsed(&lines[0]);
    assert_eq!((first.seq, first.prev.as_str()), (1, GENESIS_PREV));
    let second = parsed(&lines[1]);
    assert_eq!(second.prev, recover::line_hash(lines[0].as_bytes()));
    assert_eq!(
        report.last_hash.unwrap(),
        recover::line_hash(lines[39].as_bytes())
    );
    assert_eq!(
        first.record,
        AuditRecord {
            ..first.record.clone()
        }
    );
    let AuditEvent::Request(ev) = first.record.event else {
        panic!("not a request")
    };
    assert_eq!((ev.request_id, ev.status, ev.outcome.as_str()), (1, 200, "OK"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn lines_have_the_chain_fields_first_and_omit_absent_fields() {
    let (_dir, _path, lines) = trail_of_40();
    assert!(lines[0].starts_with(&format!("{{\"seq\":1,\"prev\":\"{GENESIS_PREV}\",\"time\":\"")));
    assert!(lines[0].contains(r#""event":"request","request_id":1,"#));
    for absent in ["via_service", "source_vpc", "authz_rule", "null"] {
        assert!(!lines[0].contains(absent), "{absent} in {}", lines[0]);
    }
    let time = &parsed(&lines[0]).record.time;
    assert_eq!(time.len(), "2024-05-01T12:00:00.123456789Z".len(), "{time}");
    assert!(time.ends_with('Z'));
}

#[test]
fn admin_events_share_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path, FsyncPolicy::EveryRecord).unwrap();
    assert!(log.record(AuditRecord::now(AuditEvent::KillSwitch(AdminEvent {
        action: "engage".into(),
        scope: "keystore:/tenant-a".into(),
        reason: Some("incident 42".into()),
        uid: Some(1000),
        via: Some("admin-socket".into()),
    }))));
    assert!(log.record(request(1)));
    assert!(log.record(AuditRecord::now(AuditEvent::KeyLifecycle(AdminEvent {
        action: "disable".into(),
        scope: "key:k1".into(),
        ..AdminEvent::default()
    }))));
    log.flush().unwrap();
    let lines = read_lines(&path);
    assert!(lines[0].contains(r#""event":"kill_switch","action":"engage","scope":"keystore:/tenant-a""#));
    assert!(lines[2].contains(r#""event":"key_lifecycle","action":"disable","scope":"key:k1"}"#));
    for line in &lines {
        let back = parsed(line);
        assert_eq!(serde_json::to_string(&back).unwrap(), *line, "round trip");
    }
    assert!(verify(&[path]).is_intact());
}

#[test]
fn editing_one_byte_in_the_middle_is_reported_at_that_line() {
    let (_dir, path, mut lines) = trail_of_40();
    lines[19] = lines[19].replacen("/tenant-a", "/tenant-b", 1);
    write_lines(&path, &lines);
    let report = verify(std::slice::from_ref(&path));
    assert_eq!(broken_at(&report), (20, BreakReason::Altered), "{report}");
    assert_eq!((report.records, report.last_seq), (19, Some(19)));
    assert_eq!(
        report.last_hash.unwrap(),
        recover::line_hash(lines[18].as_bytes())
    );
}

#[test]
fn other_edits_are_reported_at_the_edited_line() {
    let (_dir, path, lines) = trail_of_40();
    let with = |i: usize, line: String| {
        let mut copy = lines.clone();
        copy[i] = line;
        write_lines(&path, &copy);
        verify(std::slice::from_ref(&path))
    };
    // Broken JSON.
    let r = with(9, lines[9].replacen('{', "[", 1));
    assert!(matches!(broken_at(&r), (10, BreakReason::BadJson(_))), "{r}");
    // A forged seq.
    let r = with(9, lines[9].replacen("\"seq\":10,", "\"seq\":11,", 1));
    assert_eq!(
        broken_at(&r),
        (
            10,
            BreakReason::SeqGap {
                expected: 10,
                found: 11
            }
        )
    );
    // A forged prev: this line no longer links to line 9, and line 11 no longer links to it.
    let prev = parsed(&lines[9]).prev;
    let r = with(9, lines[9].replacen(&prev, &"a".repeat(64), 1));
    assert_eq!(broken_at(&r), (10, BreakReason::PrevMismatch));
    // An edited last line is undetectable by the chain alone: the anchor (last hash) changes.
    let r = with(39, lines[39].replacen("\"status\":200", "\"status\":403", 1));
    assert!(r.is_intact());
    assert_ne!(r.last_hash.unwrap(), recover::line_hash(lines[39].as_bytes()));
}

#[test]
fn deleting_a_middle_line_is_reported() {
    let (_dir, path, mut lines) = trail_of_40();
    lines.remove(19);
    write_lines(&path, &lines);
    let report = verify(&[path]);
    assert_eq!(
        broken_at(&report),
        (
            20,
            BreakReason::SeqGap {
                expected: 20,
                found: 21
            }
        )
    );
    assert_eq!(report.records, 19);
}

#[test]
fn reordering_lines_is_reported() {
    let (_dir, path, mut lines) = trail_of_40();
    lines.swap(24, 25);
    write_lines(&path, &lines);
    let report = verify(&[path]);
    assert_eq!(
        broken_at(&report),
        (
            25,
            BreakReason::SeqGap {
                expected: 25,
                found: 26
            }
        )
    );
}

#[test]
fn a_restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_trail(&path, AuditOptions::default(), 5);
    write_trail(&path, AuditOptions::default(), 5);
    let lines = read_lines(&path);
    assert_eq!(parsed(&lines[5]).seq, 6);
    assert_eq!(parsed(&lines[5]).prev, recover::line_hash(lines[4].as_bytes()));
    let report = verify(&[path]);
    assert!(report.is_intact() && report.anchored, "{report}");
    assert_eq!(report.records, 10);
}

#[test]
fn a_torn_tail_is_reported_then_cut_on_reopen_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_trail(&path, AuditOptions::default(), 5);
    let torn = br#"{"seq":6,"prev":"ab12"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(torn)
        .unwrap();
    let report = verify(std::slice::from_ref(&path));
    assert!(report.is_intact(), "a crash is not tampering: {report}");
    assert_eq!(report.incomplete_tail.as_ref().map(|t| t.line), Some(6));
    assert_eq!(report.records, 5);

    write_trail(&path, AuditOptions::default(), 2);
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 8);
    let recovered = parsed(&lines[5]);
    assert_eq!(recovered.seq, 6);
    assert_eq!(
        recovered.record.event,
        AuditEvent::Recovered {
            truncated_bytes: torn.len() as u64
        }
    );
    let report = verify(&[path]);
    assert!(report.is_intact() && report.incomplete_tail.is_none(), "{report}");
    assert_eq!(report.records, 8);
}

#[test]
fn a_file_with_only_a_torn_line_starts_over_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, b"{\"seq\":1,\"pr").unwrap();
    write_trail(&path, AuditOptions::default(), 1);
    let report = verify(&[path]);
    assert!(report.is_intact() && report.anchored, "{report}");
    assert_eq!(report.records, 2);
}

#[test]
fn a_complete_last_line_that_is_not_a_record_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_trail(&path, AuditOptions::default(), 2);
    let mut lines = read_lines(&path);
    lines.push("garbage".into());
    write_lines(&path, &lines);
    let err = AuditLog::open(&path, FsyncPolicy::Never).err().unwrap();
    assert!(
        matches!(&err, AuditError::LastLineNotChained { path: p, .. } if *p == path),
        "{err:?}"
    );
    let msg = err.to_string();
    let prefix = format!(
        "audit trail {}: the last line is not a chain record (",
        path.display()
    );
    assert!(
        msg.starts_with(&prefix)
            && msg.ends_with(
                "); refusing to guess where the chain continues: run verify and move the file aside"
            ),
        "{msg}"
    );
}

fn rotating(bytes: u64) -> AuditOptions {
    AuditOptions {
        rotate_at_bytes: Some(bytes),
        ..AuditOptions::default()
    }
}

#[test]
fn rotation_links_files_and_verifies_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_trail(&path, rotating(4000), 30);
    let files = trail_files(&path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(files.last(), Some(&path));
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    let (first, last) = name.strip_prefix("audit.log.").unwrap().split_once('-').unwrap();
    assert_eq!((first.len(), last.len()), (20, 20), "{name}");
    let last_line = read_lines(&files[0]).pop().unwrap();
    assert_eq!(
        (first.parse(), last.parse()),
        (Ok(1), Ok(parsed(&last_line).seq)),
        "{name}"
    );
    for f in &files {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let report = verify(&files);
    assert!(report.is_intact() && report.anchored, "{report}");
    assert_eq!((report.records, report.last_seq), (30, Some(30)));

    // The second file's first prev is the hash of the first file's last line.
    let first = read_lines(&files[0]);
    let second = read_lines(&files[1]);
    assert_eq!(
        parsed(&second[0]).prev,
        recover::line_hash(first.last().unwrap().as_bytes())
    );

    // The second file alone: internally intact, but its first link cannot be checked.
    let alone = verify(&files[1..2]);
    assert!(alone.is_intact() && !alone.anchored, "{alone}");
    assert_eq!(alone.first_seq, Some(parsed(&second[0]).seq));
    assert!(alone.to_string().contains("not linked"));

    // A missing middle file is a gap at the first line of the next one.
    let without: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, f)| f.clone())
        .collect();
    let r = verify(&without);
    let b = r.broken.unwrap();
    assert_eq!((b.at.file.clone(), b.at.line), (files[2].clone(), 1));
    assert!(matches!(b.reason, BreakReason::SeqGap { .. }));
}

#[test]
fn a_restart_after_rotation_continues_from_the_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    // Every record fills the file: the active file is empty when the log closes.
    write_trail(&path, rotating(1), 3);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    write_trail(&path, rotating(1), 2);
    // A crash between rotation's rename and the new file: the active file is missing.
    std::fs::remove_file(&path).unwrap();
    write_trail(&path, AuditOptions::default(), 2);
    let files = trail_files(&path).unwrap();
    assert_eq!(files.len(), 6, "{files:?}");
    let report = verify(&files);
    assert!(report.is_intact() && report.anchored, "{report}");
    assert_eq!(report.records, 7);
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            queue_capacity: 4,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let release = log.hold_writer();
    let start = Instant::now();
    let accepted = (1..=100).filter(|i| log.record(request(*i))).count();
    assert!(start.elapsed() < Duration::from_secs(1), "record() blocked");
    assert_eq!(log.dropped(), 96);
    assert_eq!(accepted, 4, "record() reports each drop to its caller");
    drop(release);
    log.flush().unwrap();
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 5);
    assert_eq!(
        parsed(&lines[0]).record.event,
        AuditEvent::Lost {
            dropped: 96,
            write_errors: 0
        }
    );
    assert!(verify(&[path]).is_intact());
}

#[test]
fn records_after_close_are_dropped_and_close_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path, FsyncPolicy::Interval(Duration::from_millis(5))).unwrap();
    assert!(log.record(request(1)));
    std::thread::sleep(Duration::from_millis(20));
    log.flush_and_close().unwrap();
    log.flush_and_close().unwrap();
    assert!(!log.record(request(2)));
    let err = log.record_waiting(request(3)).unwrap_err();
    assert!(matches!(err, AuditError::Closed), "{err:?}");
    assert_eq!(err.to_string(), "the audit trail is closed");
    assert_eq!(log.dropped(), 2);
    assert!(matches!(log.flush(), Err(AuditError::Closed)));
    assert_eq!(read_lines(&path).len(), 1);
}

#[test]
fn dropping_the_log_writes_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path, FsyncPolicy::Never).unwrap();
    for i in 1..=20 {
        assert!(log.record(request(i)));
    }
    drop(log);
    assert_eq!(verify(&[path]).records, 20);
}

#[test]
fn write_failures_are_counted_not_fatal() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        return;
    }
    let log = AuditLog::open(full, FsyncPolicy::Never).unwrap();
    for i in 1..=3 {
        assert!(log.record(request(i)));
    }
    let _ = log.flush();
    assert!(log.write_errors() >= 3, "{}", log.write_errors());
    assert_eq!(log.dropped(), 0);
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    for (options, message) in [
        (
            AuditOptions {
                queue_capacity: 0,
                ..AuditOptions::default()
            },
            "audit queue capacity must be at least 1",
        ),
        (rotating(0), "audit rotate_at_bytes must be positive"),
        (
            AuditOptions {
                fsync: FsyncPolicy::Interval(Duration::ZERO),
                ..AuditOptions::default()
            },
            "audit fsync interval must be positive (or use EveryRecord)",
        ),
    ] {
        let err = AuditLog::open_with(&path, options.clone()).err();
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some(message),
            "{options:?}"
        );
    }
    let missing = dir.path().join("missing/audit.log");
    let err = AuditLog::open(&missing, FsyncPolicy::Never).err().unwrap();
    assert!(
        matches!(&err, AuditError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "audit trail {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn verifying_unreadable_or_empty_input() {
    let dir = tempfile::tempdir().unwrap();
    let r = verify(&[dir.path().join("nope")]);
    assert!(matches!(broken_at(&r), (0, BreakReason::Unreadable(_))));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let r = verify(&[empty]);
    assert!(r.is_intact() && r.records == 0 && !r.anchored);
    assert!(verify(&[]).is_intact());
}

#[test]
fn a_torn_line_inside_the_trail_is_a_break() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_trail(&path, rotating(1500), 12);
    let files = trail_files(&path).unwrap();
    assert!(files.len() >= 2);
    let text = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &text[..text.len() - 10]).unwrap();
    let r = verify(&files);
    let b = r.broken.unwrap();
    assert_eq!(b.at.file, files[0]);
    assert_eq!(b.reason, BreakReason::TornLine);
}

#[test]
fn the_log_can_be_shared_by_request_tasks() {
    fn shared<T: Send + Sync>() {}
    shared::<AuditLog>();
    shared::<crate::authz::CompiledPolicy>();
}

/// Records that wait while the writer is busy go out as batches (one write each, up to the
/// batch size), in order, with an intact chain across batches and rotations, and a flush
/// queued among them answers only once the records before it are on disk.
#[test]
fn queued_records_are_written_in_batches_in_order_with_an_intact_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = std::sync::Arc::new(
        AuditLog::open_with(
            &path,
            AuditOptions {
                fsync: FsyncPolicy::EveryRecord,
                rotate_at_bytes: Some(64 * 1024),
                queue_capacity: 2048,
                ..AuditOptions::default()
            },
        )
        .unwrap(),
    );
    let release = log.hold_writer();
    // More than one batch before the flush, and more after it.
    for i in 1..=600 {
        assert!(log.record(request(i)));
    }
    let flusher = {
        let log = log.clone();
        std::thread::spawn(move || log.flush())
    };
    // The flush is queued behind the 600 records before more arrive.
    std::thread::sleep(Duration::from_millis(100));
    for i in 601..=1000 {
        assert!(log.record(request(i)));
    }
    drop(release);
    flusher.join().unwrap().unwrap();
    log.flush().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &path)
        .collect();
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.rsplit('.')
            .next()
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    });
    assert!(!files.is_empty(), "the trail rotated at least once");
    files.push(path.clone());
    let report = verify(&files);
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.records, 1000);
    let seqs: Vec<u64> = files
        .iter()
        .flat_map(|f| read_lines(f))
        .map(|l| parsed(&l).seq)
        .collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    assert_eq!(log.dropped(), 0);
    assert_eq!(log.write_errors(), 0);
}
