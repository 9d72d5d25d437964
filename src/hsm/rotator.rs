//! Creating key versions: `keys rotate` and the rotator thread that serves automatic rotation
//! requests (a version near its budget or past its age), both through the tie-break
//! [`budget::settle`] over the candidates on the token, so that instances sharing the token
//! agree on one version n+1.

use super::budget::{self, Candidate, CandidateStore, Round, Settled};
use super::key_objects::{create_version_key, find_key, VersionUsages};
use super::rotation::{now_ms, SETTLE};
use super::token::Token;
use super::version_table;
use super::versions::{self, Record};
use super::{classify, HsmError};
use cryptoki::session::Session;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Token {
    /// Creates version n+1 of `id` (n = the current version as the token says now) with the
    /// tie-break, waits until it is committed, and installs it here. Returns its number.
    /// Blocking (about [`SETTLE`]); takes no lock the kill switch needs.
    pub fn rotate_key(&self, id: &str) -> Result<u32, HsmError> {
        self.rotate(id, None)
    }

    /// Rotation proper; with `from`, only if `from` is still the current version on the token
    /// (an automatic rotation another instance has already done is not done twice).
    fn rotate(&self, id: &str, from: Option<u32>) -> Result<u32, HsmError> {
        let instance = self.instance_id().unwrap_or("operator").to_owned();
        let out = self.with_rw_session(|s| {
            let v1 = find_key(s, id)?;
            let usages = VersionUsages::of(s, v1)?;
            if !usages.encrypt && !usages.decrypt {
                return Err(HsmError::Refused(format!(
                    "key {id:?} neither encrypts nor decrypts: it has no versions to rotate"
                )));
            }
            let store = TokenCandidates {
                s,
                id,
                instance: &instance,
                usages,
            };
            // Transient token failures (SoftHSM2 answers CKR_GENERAL_ERROR to some concurrent
            // object creations) are retried; each round re-reads the token, and once the round
            // that started from version n has run, a retry only finishes that same step.
            let mut from = from;
            let mut last = None;
            for _ in 0..5 {
                match self.rotation_round(s, &store, id, &mut from) {
                    Ok(Some(n)) => return Ok(n),
                    Ok(None) => continue,
                    Err(e @ (HsmError::Refused(_) | HsmError::KeyNotFound | HsmError::Disconnected)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(token = %self.name, key_id = id, error = %e, "key rotation round failed; retrying");
                        last = Some(e);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            Err(last.unwrap_or_else(|| HsmError::Internal("no candidate survived five settle rounds".into())))
        });
        if let Ok(n) = &out {
            tracing::warn!(token = %self.name, key_id = id, version = n, "key rotated: new version is current");
        }
        out
    }

    /// One settle round towards `from + 1` (`from` = the current version on the token, fixed at
    /// the first round). `Some(n)`: version n is current; `None`: no candidate survived.
    fn rotation_round(
        &self,
        s: &Session,
        store: &TokenCandidates<'_>,
        id: &str,
        from: &mut Option<u32>,
    ) -> Result<Option<u32>, HsmError> {
        let all = versions::read_all(s)?;
        let cur = version_table::current(all.get(id));
        if from.is_some_and(|f| f != cur) {
            self.versions.install(None, all);
            return Ok(Some(cur));
        }
        *from = Some(cur);
        let next = cur + 1;
        match budget::settle(store, next, SETTLE, std::thread::sleep)? {
            Settled::Committed(_) => {
                let all = versions::read_all(s)?;
                if version_table::current(all.get(id)) < next {
                    return Err(HsmError::Refused(format!(
                        "version {next} of {id:?} is committed but retired; unretire it or rotate again"
                    )));
                }
                self.versions.install(None, all);
                Ok(Some(next))
            }
            Settled::NoCandidate => Ok(None),
        }
    }

    /// The rotator: serves automatic rotation requests one at a time, off the workers.
    pub(super) fn rotator(self: &Arc<Self>) {
        let rx = self.rotations.queue.1.clone();
        while let Ok((id, from)) = rx.recv() {
            if self.killed() {
                self.rotations.finished(&id, false);
                continue;
            }
            match self.rotate(&id, Some(from)) {
                Ok(_) => self.rotations.finished(&id, true),
                Err(e) => {
                    self.rotations.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(token = %self.name, key_id = %id, error = %e, "AUTOMATIC KEY ROTATION FAILED: the current version keeps its budget and Encrypt is refused once it is used up; retrying");
                    self.rotations.finished(&id, false);
                }
            }
        }
    }
}

/// The tie-break's store on the token, for one key.
struct TokenCandidates<'a> {
    s: &'a Session,
    id: &'a str,
    instance: &'a str,
    usages: VersionUsages,
}

impl CandidateStore for TokenCandidates<'_> {
    type Error = HsmError;

    fn round(&self, n: u32) -> Result<Round, HsmError> {
        Ok(Round {
            committed: versions::commits(self.s, self.id, n)?,
            candidates: versions::records(self.s, self.id, n)?
                .into_iter()
                .filter_map(|(_, r)| r.candidate())
                .collect(),
        })
    }

    fn create(&self, n: u32) -> Result<Candidate, HsmError> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| HsmError::Internal(format!("no randomness: {e}")))?;
        let label = versions::label(self.id, n);
        // The key object first, then its record: a crash in between leaves an object no record
        // names, which is never used; a record always names an existing object.
        let key = match create_version_key(self.s, &label, &nonce, self.usages) {
            Ok(k) => k,
            Err(e) => {
                // SoftHSM2 can report CKR_GENERAL_ERROR for a concurrent creation that left the
                // object behind: remove whatever carries this attempt's nonce.
                for (h, ckaid) in versions::key_objects(self.s, self.id, n).unwrap_or_default() {
                    if ckaid == nonce {
                        let _ = self.s.destroy_object(h);
                    }
                }
                return Err(e);
            }
        };
        let created_ms = now_ms();
        let rec = Record {
            created: crate::clock::now_rfc3339(),
            created_ms,
            nonce: hex::encode(nonce),
            instance: self.instance.to_owned(),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| HsmError::Internal(e.to_string()))?;
        if let Err(e) = super::marks::put_data(
            self.s,
            versions::RECORD_APP,
            &versions::record_label(self.id, n),
            &bytes,
        ) {
            let _ = self.s.destroy_object(key);
            return Err(e);
        }
        Ok(Candidate {
            created_ms,
            nonce: nonce.to_vec(),
        })
    }

    fn destroy(&self, n: u32, c: &Candidate) -> Result<(), HsmError> {
        for (h, ckaid) in versions::key_objects(self.s, self.id, n)? {
            if ckaid == c.nonce {
                self.s.destroy_object(h).map_err(classify)?;
            }
        }
        for (h, r) in versions::records(self.s, self.id, n)? {
            if r.candidate().is_some_and(|x| x.nonce == c.nonce) {
                self.s.destroy_object(h).map_err(classify)?;
            }
        }
        Ok(())
    }

    fn commit(&self, n: u32, w: &Candidate) -> Result<(), HsmError> {
        let out = versions::put_commit(self.s, self.id, n, &w.nonce);
        // Other instances make the new version current at their next poll.
        super::beacon::bump(self.s);
        out
    }
}
