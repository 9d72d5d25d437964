//! `--raw-token`: the ceiling a proxy is measured against. Loads the PKCS#11 module named by an
//! xks-bridge config, logs in, finds the key by label and runs AES-256-GCM on `--threads` OS
//! threads, each with its own session, with no HTTP, TLS, SigV4 or queue in the way. An
//! Encrypt here is what the proxy does for one (C_GenerateRandom for the IV, then C_Encrypt);
//! a Decrypt replays a ciphertext made during setup and checks the plaintext.

use super::mix::Op;
use super::plan::{Plan, TokenTarget};
use super::progress::{Live, Progress};
use super::schedule::{Phase, Schedule};
use super::stats::Tally;
use super::workload::{random, POOL_SIZE};
use super::{Outcome, EXIT_BAD_ARGS, EXIT_FAILED};
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
pub fn run(plan: &Plan, t: &TokenTarget) -> Result<Outcome, (i32, String)> {
    // Login belongs to the application, not to a session: `login` keeps it alive while the
    // workers open their own sessions.
    let (token, description) = open(t, &plan.key_id)?;
    let aad = random(plan.aad_bytes).map_err(|e| (EXIT_FAILED, e))?;
    let setup = token
        .session()
        .map_err(|e| (EXIT_FAILED, format!("C_OpenSession: {e}")))?;
    let pool = seal_pool(&setup, plan.payload_bytes, &aad).map_err(|e| (EXIT_FAILED, e))?;
    drop(setup);
    let cycle = plan.mix.cycle();
    let schedule = Schedule::start(plan.warmup, plan.stop);
    let live = std::sync::Arc::new(Live::default());
    let progress = Progress::start(live.clone(), schedule.measure_start(), "ops");
    let results: Vec<Result<Tally, String>> = std::thread::scope(|s| {
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
            .map(|h| h.join().unwrap_or_else(|_| Err("a token thread panicked".into())))
            .collect()
    });
    progress.finish();
    let mut tally = Tally::default();
    for r in results {
        tally.merge(&r.map_err(|e| (EXIT_FAILED, e))?);
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

fn open(t: &TokenTarget, key_label: &str) -> Result<(RawToken, String), (i32, String)> {
    let cfg = Config::load(&t.config).map_err(|e| (EXIT_BAD_ARGS, e.to_string()))?;
    let tc: &TokenConfig = cfg
        .keystores
        .first()
        .and_then(|k| cfg.token(&k.token))
        .or(cfg.tokens.first())
        .ok_or((
            EXIT_BAD_ARGS,
            format!("{}: no token configured", t.config.display()),
        ))?;
    // Modules read these when loaded (SOFTHSM2_CONF, ...); nothing has been printed yet, so a
    // restart to apply them is invisible.
    crate::module_env::ensure(&tc.module_env).map_err(|e| (EXIT_BAD_ARGS, e.to_string()))?;
    let pin = tc
        .pin
        .load()
        .map_err(|e| (EXIT_BAD_ARGS, format!("token {:?} pin: {e}", tc.name)))?;
    let token = raw::open(&tc.module, &tc.token_label, &pin, key_label).map_err(|e| {
        (
            EXIT_FAILED,
            format!("token {:?}, key {key_label:?}: {e}", tc.token_label),
        )
    })?;
    Ok((
        token,
        format!("token {:?} via {}", tc.token_label, tc.module.display()),
    ))
}

fn seal_pool(session: &RawSession<'_>, payload_bytes: usize, aad: &[u8]) -> Result<Vec<Sealed>, String> {
    (0..POOL_SIZE)
        .map(|_| {
            let plaintext = random(payload_bytes)?;
            let (iv, ciphertext_and_tag) = session
                .encrypt(aad, &plaintext)
                .map_err(|e| format!("setup encrypt (to make ciphertexts for decrypt) failed: {e}"))?;
            Ok(Sealed {
                plaintext,
                iv,
                ciphertext_and_tag,
            })
        })
        .collect()
}

fn decrypt(s: &RawSession<'_>, aad: &[u8], sealed: &Sealed) -> Result<(), String> {
    let pt = s
        .decrypt(&sealed.iv, aad, &sealed.ciphertext_and_tag)
        .map_err(|e| e.to_string())?;
    if pt == sealed.plaintext {
        Ok(())
    } else {
        Err("WrongPlaintext".into())
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
    fn run(&self, index: usize) -> Result<Tally, String> {
        let session = self.token.session().map_err(|e| format!("C_OpenSession: {e}"))?;
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
                    .map_err(|e| e.to_string()),
                Op::Decrypt => decrypt(&session, self.aad, sealed),
                Op::Metadata | Op::Health => Err("UnsupportedInRawMode".into()),
            };
            let latency = start.elapsed();
            if phase == Phase::Warmup {
                tally.warmup(result.is_err());
            } else {
                self.live.count(result.is_err());
                tally.measured(op.name(), Some(latency), result.err().as_deref());
            }
        }
    }
}
