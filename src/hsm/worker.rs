//! A worker thread: owns one session of its token, serves jobs from the shared bounded queue,
//! re-opens its session when the token reconnects, retries once on a lost session, and drops
//! its session within [`IDLE_CHECK`] when the kill switch engages, even when idle.
//!
//! A device-class error (also from opening a session), or a lost session that a fresh session
//! does not fix (the token forgot the login), hands the token to the supervisor with
//! [`Token::mark_failed`]: the request fails, the supervisor reconnects and logs in again. A
//! worker never logs in itself, so a refused PIN can never turn into one attempt per request.
//!
//! Each time a worker comes back to its queue (a job finished, or an idle check woke it) it
//! counts one step of the pool's progress counter: the systemd watchdog reads liveness from
//! that counter instead of queueing a job of its own, so a full queue is not mistaken for a
//! dead pool, while workers stuck inside PKCS#11 calls stop the counter.
//!
//! A job runs inside the connection's call guard, so `C_Finalize` waits for it; the checks
//! that decide whether the token may still be used (kill switch, generation, the key's refusal,
//! the caller's gate) run immediately before each crypto call, not once per job.

use super::connection::CountedSession;
use super::crypto::On;
use super::token::Token;
use super::{HsmError, Job, Op, Reply};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often an idle worker checks whether its session must be dropped.
pub const IDLE_CHECK: Duration = Duration::from_millis(20);

pub(super) fn spawn(name: String, token: Arc<Token>, jobs: Receiver<Job>, progress: Arc<AtomicU64>) {
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || run(&token, &jobs, &progress));
    if let Err(e) = spawned {
        tracing::error!(worker = %name, error = %e, "cannot start HSM worker thread");
    }
}

fn run(token: &Token, jobs: &Receiver<Job>, progress: &AtomicU64) {
    let mut session: Option<CountedSession<'_>> = None;
    loop {
        progress.fetch_add(1, Ordering::Relaxed);
        let job = match jobs.recv_timeout(IDLE_CHECK) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                drop_if_stale(token, &mut session);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // The kill switch is checked before every job: nothing admitted after it engaged
        // reaches the token. A job whose caller gave up (deadline passed) is skipped too.
        if token.killed() {
            session = None;
            let _ = job.reply.send(Err(HsmError::Disconnected));
            continue;
        }
        if job.reply.is_closed() || Instant::now() >= job.deadline {
            let _ = job.reply.send(Err(HsmError::Timeout));
            continue;
        }
        let result = serve(token, &mut session, &job.op);
        let _ = job.reply.send(result);
    }
}

fn drop_if_stale(token: &Token, session: &mut Option<CountedSession<'_>>) {
    if token.killed()
        || session
            .as_ref()
            .is_some_and(|s| s.generation != token.generation())
    {
        *session = None;
    }
}

fn serve<'t>(token: &'t Token, slot: &mut Option<CountedSession<'t>>, op: &Op) -> Result<Reply, HsmError> {
    let _call = token.conn.enter();
    for attempt in 0..2 {
        drop_if_stale(token, slot);
        if slot.is_none() {
            match token.open_session() {
                Ok(s) => *slot = Some(s),
                Err(e) => {
                    if e.device_lost() {
                        token.mark_failed(&e);
                    }
                    return Err(e);
                }
            }
        }
        let Some(s) = slot.as_ref() else { continue };
        let on = On {
            session: s.session(),
            generation: s.generation,
        };
        match execute(token, &on, op) {
            // Re-running is safe for every op: Encrypt simply draws a fresh IV.
            Err(e) if e.session_lost() && attempt == 0 => *slot = None,
            // A fresh session is lost too: the login is gone, only a reconnect brings it back.
            Err(e) if e.device_lost() || e.session_lost() => {
                *slot = None;
                token.mark_failed(&e);
                return Err(e);
            }
            other => return other,
        }
    }
    Err(HsmError::Unavailable("session lost twice in a row".into()))
}

fn execute(token: &Token, on: &On<'_>, op: &Op) -> Result<Reply, HsmError> {
    match op {
        Op::Encrypt {
            key_id,
            version,
            budget,
            gate,
            aad,
            plaintext,
        } => token
            .encrypt(on, (key_id, *version), budget, gate.as_ref(), aad, plaintext)
            .map(Reply::Sealed),
        Op::Decrypt {
            key_id,
            version,
            gate,
            iv,
            aad,
            ciphertext_and_tag,
        } => token
            .decrypt(on, (key_id, *version), gate.as_ref(), iv, aad, ciphertext_and_tag)
            .map(Reply::Plain),
        Op::KeyInfo { label } => token.key_info(on.session, label).map(Reply::KeyInfo),
        Op::Health => token.probe(on.session).map(Reply::Health),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Hsm;
    use super::*;
    use crate::config::TokenConfig;
    use secrecy::SecretString;
    use std::sync::atomic::AtomicBool;

    /// An idle pool keeps counting progress from its idle checks: the watchdog needs no job
    /// (and no queue slot) to see that its workers are alive.
    #[test]
    fn idle_workers_count_progress_without_any_job() {
        let cfg: TokenConfig = toml::from_str(
            r#"
            name = "t"
            module = "/nonexistent/module.so"
            token_label = "t"
            pin = { file = "/nonexistent/pin" }
            workers = 2
            "#,
        )
        .expect("token config");
        let token = Arc::new(Token::new(
            &cfg,
            SecretString::from("0000"),
            Arc::new(AtomicBool::new(false)),
        ));
        let latency = prometheus_client::metrics::histogram::Histogram::new([1.0]);
        let hsm = Hsm::start(token, &cfg, latency);
        let first = hsm.progress();
        let deadline = Instant::now() + Duration::from_secs(30);
        while hsm.progress() < first + 4 && Instant::now() < deadline {
            std::thread::sleep(IDLE_CHECK);
        }
        assert!(hsm.progress() >= first + 4, "idle workers counted no progress");
    }
}
