//! A worker thread: owns one session of its token, serves jobs from the shared bounded queue,
//! re-opens its session when the token reconnects, retries once on a lost session, and drops
//! its session within [`IDLE_CHECK`] when the kill switch engages, even when idle.
//!
//! A device-class error (also from opening a session), or a lost session that a fresh session
//! does not fix (the token forgot the login), hands the token to the supervisor with
//! [`Token::mark_failed`]: the request fails, the supervisor reconnects and logs in again. A
//! worker never logs in itself, so a refused PIN can never turn into one attempt per request.
//!
//! A job runs inside the connection's call guard, so `C_Finalize` waits for it; the checks
//! that decide whether the token may still be used (kill switch, generation, the key's refusal,
//! the caller's gate) run immediately before each crypto call, not once per job.

use super::connection::CountedSession;
use super::crypto::On;
use super::token::Token;
use super::{HsmError, Job, Op, Reply};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often an idle worker checks whether its session must be dropped.
pub const IDLE_CHECK: Duration = Duration::from_millis(20);

pub(super) fn spawn(name: String, token: Arc<Token>, jobs: Receiver<Job>) {
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || run(&token, &jobs));
    if let Err(e) = spawned {
        tracing::error!(worker = %name, error = %e, "cannot start HSM worker thread");
    }
}

fn run(token: &Token, jobs: &Receiver<Job>) {
    let mut session: Option<CountedSession<'_>> = None;
    loop {
        let job = match jobs.recv_timeout(IDLE_CHECK) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                drop_if_stale(token, &mut session);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if matches!(job.op, Op::Ping) {
            let _ = job.reply.send(Ok(Reply::Pong));
            continue;
        }
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
            label,
            gate,
            aad,
            plaintext,
        } => token
            .encrypt(on, label, gate.as_ref(), aad, plaintext)
            .map(Reply::Sealed),
        Op::Decrypt {
            label,
            gate,
            iv,
            aad,
            ciphertext_and_tag,
        } => token
            .decrypt(on, label, gate.as_ref(), iv, aad, ciphertext_and_tag)
            .map(Reply::Plain),
        Op::KeyInfo { label } => token.key_info(on.session, label).map(Reply::KeyInfo),
        Op::Health => token.probe(on.session).map(Reply::Health),
        Op::Ping => Ok(Reply::Pong),
    }
}
