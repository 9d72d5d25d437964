//! `--raw-token`: the ceiling a proxy is measured against. Loads the PKCS#11 module named by an
//! xks-bridge config, logs in, finds the key by label and runs AES-256-GCM on `--threads` OS
//! threads, each with its own session, with no HTTP, TLS, SigV4 or queue in the way. An
//! Encrypt here is what the proxy does for one (C_GenerateRandom for the IV, then C_Encrypt);
//! a Decrypt replays a ciphertext made during setup and checks the plaintext.

use super::error::{BenchError, Rejection};
use super::mix::Op;
use super::plan::{Plan, TokenTarget};
use super::progress::{Live, Progress};
use super::schedule::{Phase, Schedule};
use super::stats::Tally;
use super::workload::{random, POOL_SIZE};
use super::Outcome;
use crate::config::{Config, TokenConfig};
use crate::hsm::raw::{self, RawSession, RawToken};
use std::time::Instant;

/// A ciphertext made during setup.
struct Sealed {
    plaintext: Vec<u8>,
    iv: [u8; 12],
    ciphertext_and_tag: Vec<u8>,
}

/// Runs the benchmark against the token. Must run before any other thread exists: it sets the
/// module's environment variables.
pub fn run(plan: &Plan, t: &TokenTarget) -> Result<Outcome, BenchError> {
    // Login belongs to the application, not to a session: `login` keeps it alive while the
    // workers open their own sessions.
    let (token, description) = open(t, &plan.key_id)?;
    let aad = random(plan.aad_bytes)?;
    let setup = token.session().map_err(BenchError::OpenSession)?;
    let pool = seal_pool(&setup, plan.payload_bytes, &aad)?;
    drop(setup);
    let cycle = plan.mix.cycle();
    let schedule = Schedule::start(plan.warmup, plan.stop);
    let live = std::sync::Arc::new(Live::default());
    let progress = Progress::start(live.clone(), schedule.measure_start(), "ops");
    let results: Vec<Result<Tally, BenchError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..t.threads)
            .map(|i| {
                let w = Worker {
                    token: &token,
                    pool: &pool,
                    aad: &aad,
                    cycle: &cycle,
                    schedule: &schedule,
                    live: &live,
                };
                s.spawn(move || w.run(i))
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(BenchError::ThreadPanicked)))
            .collect()
    });
    progress.finish();
    let mut tally = Tally::default();
    for r in results {
        tally.merge(&r?);
    }
    token.close();
    let elapsed = tally
        .last_end
        .map(|end| end.saturating_duration_since(schedule.measure_start()))
        .unwrap_or_default();
    Ok(Outcome {
        tally,
        elapsed,
        mode: "raw-token",
        target: description,
        concurrency: ("threads", t.threads),
    })
}

fn open(t: &TokenTarget, key_label: &str) -> Result<(RawToken, String), BenchError> {
    let cfg = Config::load(&t.config)?;
    let tc: &TokenConfig = cfg
        .keystores
        .first()
        .and_then(|k| cfg.token(&k.token))
        .or(cfg.tokens.first())
        .ok_or_else(|| BenchError::NoToken {
            config: t.config.clone(),
        })?;
    // Modules read these when loaded (SOFTHSM2_CONF, ...); nothing has been printed yet, so a
    // restart to apply them is invisible.
    crate::module_env::ensure(&tc.module_env)?;
    let pin = tc.pin.load().map_err(|source| BenchError::Pin {
        token: tc.name.clone(),
        source,
    })?;
    let token =
        raw::open(&tc.module, &tc.token_label, &pin, key_label).map_err(|source| BenchError::TokenOpen {
            token_label: tc.token_label.clone(),
            key: key_label.to_owned(),
            source,
        })?;
    Ok((
        token,
        format!("token {:?} via {}", tc.token_label, tc.module.display()),
    ))
}

fn seal_pool(session: &RawSession<'_>, payload_bytes: usize, aad: &[u8]) -> Result<Vec<Sealed>, BenchError> {
    (0..POOL_SIZE)
        .map(|_| {
            let plaintext = random(payload_bytes)?;
            let (iv, ciphertext_and_tag) = session.encrypt(aad, &plaintext).map_err(BenchError::SealToken)?;
            Ok(Sealed {
                plaintext,
                iv,
                ciphertext_and_tag,
            })
        })
        .collect()
}

fn decrypt(s: &RawSession<'_>, aad: &[u8], sealed: &Sealed) -> Result<(), Rejection> {
    let pt = s.decrypt(&sealed.iv, aad, &sealed.ciphertext_and_tag)?;
    if pt == sealed.plaintext {
        Ok(())
    } else {
        Err(Rejection::WrongPlaintext)
    }
}

/// What one token thread shares with the others.
struct Worker<'a> {
    token: &'a RawToken,
    pool: &'a [Sealed],
    aad: &'a [u8],
    cycle: &'a [Op],
    schedule: &'a Schedule,
    live: &'a Live,
}

impl Worker<'_> {
    fn run(&self, index: usize) -> Result<Tally, BenchError> {
        let session = self.token.session().map_err(BenchError::OpenSession)?;
        let mut tally = Tally::default();
        let mut seq = index;
        loop {
            let phase = self.schedule.next();
            if phase == Phase::Done {
                return Ok(tally);
            }
            let op = self.cycle[seq % self.cycle.len()];
            let sealed = &self.pool[seq % self.pool.len()];
            seq += 1;
            let start = Instant::now();
            let result = match op {
                Op::Encrypt => session
                    .encrypt(self.aad, &sealed.plaintext)
                    .map(|_| ())
                    .map_err(Rejection::Token),
                Op::Decrypt => decrypt(&session, self.aad, sealed),
                Op::Metadata | Op::Health => Err(Rejection::UnsupportedInRawMode),
            };
            let latency = start.elapsed();
            if phase == Phase::Warmup {
                tally.warmup(result.is_err());
            } else {
                self.live.count(result.is_err());
                tally.measured(
                    op.name(),
                    Some(latency),
                    result.err().map(|r| r.to_string()).as_deref(),
                );
            }
        }
    }
}
