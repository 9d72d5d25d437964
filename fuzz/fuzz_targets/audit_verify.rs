//! `audit_verify`: offline verification of audit trail files (`audit::verify`), on files
//! written to a temporary directory.
//!
//! Two input shapes:
//! - raw bytes (anything not starting with `#chain`): one trail file with exactly these bytes;
//! - `#chain <start> <files> <tamper> <a> <b>` on the first line, then one line per record
//!   payload: the target builds a correctly hash-chained trail of those records (seq from
//!   `start`, split over `files` files in chain order), applies tamper `tamper % 6`
//!   (0 none, 1 edit a byte, 2 delete a line, 3 swap two lines, 4 duplicate a line, 5 cut the
//!   last file short) at positions picked by `a` and `b`, and verifies.
//!
//! Invariants:
//! - nothing panics;
//! - raw files: never more records verified than complete lines; an intact report vouches for
//!   every line of the file (its last hash is that of the last line);
//! - built chains: untampered, the trail is intact, anchored exactly when it starts at seq 1,
//!   with every record counted and the last line's hash; an edited, deleted, swapped or
//!   duplicated line (anywhere but the final line, which a hash chain cannot protect) is
//!   reported broken and never counted past the tamper point; deleting the first record of an
//!   anchored trail at least un-anchors it; a cut in the last file is an incomplete tail (or a
//!   shorter intact trail when the cut falls on a line boundary), never a break.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::OnceLock;
use xks_bridge::audit::{verify, VerifyReport, GENESIS_PREV};

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
}

fn write_files(contents: &[Vec<u8>]) -> Vec<PathBuf> {
    contents
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = dir().path().join(format!("trail.{i}"));
            std::fs::write(&p, c).expect("write trail file");
            p
        })
        .collect()
}

fn hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

fuzz_target!(|data: &[u8]| {
    match data.strip_prefix(b"#chain") {
        Some(rest) => chain(rest),
        None => raw(data),
    }
});

fn raw(data: &[u8]) {
    let files = write_files(&[data.to_vec()]);
    let r = verify(&files);
    let complete = data.iter().filter(|b| **b == b'\n').count() as u64;
    assert!(
        r.records <= complete,
        "{} records from {complete} lines",
        r.records
    );
    assert_eq!(r.files, 1);
    if r.is_intact() && r.incomplete_tail.is_none() && complete > 0 {
        assert_eq!(r.records, complete, "intact but not every line verified: {r}");
        let body = &data[..data.len() - 1];
        let last = body.rsplit(|b| *b == b'\n').next().unwrap();
        assert_eq!(r.last_hash.as_deref(), Some(hash(last).as_str()));
    }
    let _ = r.to_string();
}

fn chain(rest: &[u8]) {
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let mut params = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|w| w.parse::<u64>().unwrap_or(0));
    let mut p = || params.next().unwrap_or(0);
    let start = p() % 1_000_000 + 1;
    let nfiles = (p() % 4 + 1) as usize;
    let tamper = p() % 6;
    let (a, b) = (p() as usize, p() as usize);
    let payloads: Vec<&str> = lines.take(64).collect();
    if payloads.is_empty() {
        return;
    }

    // A correct chain: seq continuous, prev = hash of the previous line's bytes.
    let mut prev = if start == 1 {
        GENESIS_PREV.to_owned()
    } else {
        hash(b"an earlier file that was not given")
    };
    let mut recs: Vec<Vec<u8>> = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let line = format!(
            r#"{{"seq":{},"prev":"{prev}","time":"2024-05-01T12:00:00.000000000Z","event":"fuzz","note":{}}}"#,
            start + i as u64,
            serde_json::to_string(payload).unwrap()
        );
        prev = hash(line.as_bytes());
        recs.push(line.into_bytes());
    }
    let n = recs.len();
    let last_hash = prev;

    // Lines are spread over the files in chain order, `per_file` to a file.
    let per_file = n.div_ceil(nfiles);
    let layout = |recs: &[Vec<u8>]| -> Vec<Vec<u8>> {
        let mut files: Vec<Vec<u8>> = recs
            .chunks(per_file.max(1))
            .map(|c| c.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect())
            .collect();
        if files.is_empty() {
            files.push(Vec::new());
        }
        files
    };
    let verify_recs = |recs: &[Vec<u8>]| -> VerifyReport { verify(&write_files(&layout(recs))) };

    let i = a % n;
    match tamper {
        0 => {
            let r = verify_recs(&recs);
            assert!(r.is_intact(), "untampered chain broken: {r}");
            assert_eq!(r.records, n as u64);
            assert_eq!(r.anchored, start == 1);
            assert_eq!(r.first_seq, Some(start));
            assert_eq!(r.last_seq, Some(start + n as u64 - 1));
            assert_eq!(r.last_hash.as_deref(), Some(last_hash.as_str()));
            assert!(r.incomplete_tail.is_none());
        }
        1 => {
            let mut t = recs.clone();
            let line = &mut t[i];
            let j = b % line.len();
            let new = (b / line.len()) as u8;
            if line[j] == new || i == n - 1 {
                return;
            }
            line[j] = new;
            let r = verify_recs(&t);
            assert!(!r.is_intact(), "edited line {} not detected: {r}", i + 1);
            assert!(r.records <= i as u64 + 1, "edited line counted as verified: {r}");
        }
        2 => {
            let mut t = recs.clone();
            t.remove(i);
            let r = verify_recs(&t);
            if i == n - 1 {
                // A hash chain cannot reveal its newest lines were removed (documented).
                assert!(r.is_intact() && r.records == n as u64 - 1, "{r}");
            } else if i == 0 {
                assert!(
                    !r.is_intact() || (start != 1 || !r.anchored),
                    "first record deletion hidden: {r}"
                );
            } else {
                assert!(!r.is_intact(), "deleted line {} not detected: {r}", i + 1);
                assert!(r.records <= i as u64, "{r}");
            }
        }
        3 => {
            let k = b % n;
            if i == k || recs[i] == recs[k] {
                return;
            }
            let mut t = recs.clone();
            t.swap(i, k);
            let r = verify_recs(&t);
            assert!(
                !r.is_intact(),
                "swapped lines {} and {} not detected: {r}",
                i + 1,
                k + 1
            );
            assert!(r.records <= i.min(k) as u64 + 1, "{r}");
        }
        4 => {
            let mut t = recs.clone();
            t.insert(i + 1, recs[i].clone());
            let r = verify_recs(&t);
            assert!(!r.is_intact(), "replayed line {} not detected: {r}", i + 1);
        }
        _ => {
            let mut files = layout(&recs);
            let last = files.last_mut().unwrap();
            let cut = b % (last.len() + 1);
            last.truncate(cut);
            let on_boundary = cut == 0 || last[cut - 1] == b'\n';
            let kept_in_last = last.iter().filter(|c| **c == b'\n').count();
            let before_last = n - recs.chunks(per_file).last().map_or(0, |c| c.len());
            let r = verify(&write_files(&files));
            assert!(r.is_intact(), "a cut in the last file reported as tampering: {r}");
            assert_eq!(r.incomplete_tail.is_some(), !on_boundary, "{r}");
            assert_eq!(r.records, (before_last + kept_in_last) as u64, "{r}");
        }
    }
}
