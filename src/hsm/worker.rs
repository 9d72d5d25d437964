//! A worker thread: owns one session of its token, serves jobs from the shared bounded queue,
//! re-opens its session when the token reconnects, and retries once on a lost session.

use super::token::Token;
use super::{HsmError, Job, Op, Reply};
use crossbeam_channel::Receiver;
use cryptoki::session::Session;
use std::sync::Arc;
use std::time::Instant;

pub(super) fn spawn(name: String, token: Arc<Token>, jobs: Receiver<Job>) {
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || run(&token, &jobs));
    if let Err(e) = spawned {
        tracing::error!(worker = %name, error = %e, "cannot start HSM worker thread");
    }
}

fn run(token: &Token, jobs: &Receiver<Job>) {
    let mut session: Option<(u64, Session)> = None;
    while let Ok(job) = jobs.recv() {
        // A job whose caller gave up (deadline passed) never reaches the token.
        if job.reply.is_closed() || Instant::now() >= job.deadline {
            let _ = job.reply.send(Err(HsmError::Timeout));
            continue;
        }
        let result = serve(token, &mut session, &job.op);
        let _ = job.reply.send(result);
    }
}

fn serve(token: &Token, slot: &mut Option<(u64, Session)>, op: &Op) -> Result<Reply, HsmError> {
    for attempt in 0..2 {
        if slot.as_ref().is_some_and(|(gen, _)| *gen != token.generation()) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(token.open_session()?);
        }
        let Some((_, session)) = slot.as_ref() else {
            continue;
        };
        match execute(token, session, op) {
            // Re-running is safe for every op: Encrypt simply draws a fresh IV.
            Err(e) if e.session_lost() && attempt == 0 => *slot = None,
            Err(e) if e.device_lost() => {
                *slot = None;
                token.mark_failed(&e);
                return Err(e);
            }
            other => return other,
        }
    }
    Err(HsmError::Unavailable("session lost twice in a row".into()))
}

fn execute(token: &Token, s: &Session, op: &Op) -> Result<Reply, HsmError> {
    match op {
        Op::Encrypt {
            label,
            aad,
            plaintext,
        } => token.encrypt(s, label, aad, plaintext).map(Reply::Sealed),
        Op::Decrypt {
            label,
            iv,
            aad,
            ciphertext_and_tag,
        } => token
            .decrypt(s, label, iv, aad, ciphertext_and_tag)
            .map(Reply::Plain),
        Op::KeyInfo { label } => token.key_info(s, label).map(Reply::KeyInfo),
        Op::Health => token.probe(s).map(Reply::Health),
    }
}
