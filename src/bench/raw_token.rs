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
use crate::tokensetup;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::ExposeSecret;
use std::time::Instant;

const TAG_BITS: u64 = 128;

/// The logged-in token and the key under test.
struct Token {
    pkcs11: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    description: String,
}

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
    let (token, login) = open(t, &plan.key_id)?;
    let aad = random(plan.aad_bytes).map_err(|e| (EXIT_FAILED, e))?;
    let pool = seal_pool(&login, token.key, plan.payload_bytes, &aad).map_err(|e| (EXIT_FAILED, e))?;
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
    let _ = login.logout();
    let elapsed = tally
        .last_end
        .map(|end| end.saturating_duration_since(schedule.measure_start()))
        .unwrap_or_default();
    Ok(Outcome {
        tally,
        elapsed,
        mode: "raw-token",
        target: token.description,
        concurrency: ("threads", t.threads),
    })
}

fn open(t: &TokenTarget, key_label: &str) -> Result<(Token, Session), (i32, String)> {
    let cfg = Config::load(&t.config).map_err(|e| (EXIT_BAD_ARGS, e))?;
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
    crate::module_env::ensure(&tc.module_env).map_err(|e| (EXIT_BAD_ARGS, e))?;
    let pin = tc
        .pin
        .load()
        .map_err(|e| (EXIT_BAD_ARGS, format!("token {:?} pin: {e}", tc.name)))?;
    let failed = |e: String| (EXIT_FAILED, e);
    let pkcs11 = tokensetup::load(&tc.module).map_err(failed)?;
    let login =
        tokensetup::open_user_session(&pkcs11, &tc.token_label, pin.expose_secret()).map_err(failed)?;
    let slot = login
        .get_session_info()
        .map_err(|e| failed(format!("C_GetSessionInfo: {e}")))?
        .slot_id();
    let found = login
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ])
        .map_err(|e| failed(format!("C_FindObjects: {e}")))?;
    let key = match found.as_slice() {
        [k] => *k,
        [] => {
            return Err(failed(format!(
                "no secret key labelled {key_label:?} on token {:?}",
                tc.token_label
            )))
        }
        many => {
            return Err(failed(format!(
                "{} secret keys are labelled {key_label:?}",
                many.len()
            )))
        }
    };
    let token = Token {
        pkcs11,
        slot,
        key,
        description: format!("token {:?} via {}", tc.token_label, tc.module.display()),
    };
    Ok((token, login))
}

fn seal_pool(
    session: &Session,
    key: ObjectHandle,
    payload_bytes: usize,
    aad: &[u8],
) -> Result<Vec<Sealed>, String> {
    (0..POOL_SIZE)
        .map(|_| {
            let plaintext = random(payload_bytes)?;
            let (iv, ciphertext_and_tag) = encrypt(session, key, aad, &plaintext)
                .map_err(|e| format!("setup encrypt (to make ciphertexts for decrypt) failed: {e}"))?;
            Ok(Sealed {
                plaintext,
                iv,
                ciphertext_and_tag,
            })
        })
        .collect()
}

fn ck_name(e: cryptoki::error::Error) -> String {
    match e {
        cryptoki::error::Error::Pkcs11(rv, f) => format!("C_{f:?}:{rv:?}"),
        other => format!("Pkcs11:{other}"),
    }
}

fn encrypt(s: &Session, key: ObjectHandle, aad: &[u8], pt: &[u8]) -> Result<([u8; 12], Vec<u8>), String> {
    let mut iv = [0u8; 12];
    s.generate_random_slice(&mut iv).map_err(ck_name)?;
    let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(ck_name)?;
    let out = s.encrypt(&Mechanism::AesGcm(params), key, pt).map_err(ck_name)?;
    if out.len() != pt.len() + 16 {
        return Err("WrongCiphertextLength".into());
    }
    Ok((iv, out))
}

fn decrypt(s: &Session, key: ObjectHandle, aad: &[u8], sealed: &Sealed) -> Result<(), String> {
    let mut iv = sealed.iv;
    let params = GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(ck_name)?;
    let pt = s
        .decrypt(&Mechanism::AesGcm(params), key, &sealed.ciphertext_and_tag)
        .map_err(ck_name)?;
    if pt == sealed.plaintext {
        Ok(())
    } else {
        Err("WrongPlaintext".into())
    }
}

/// What one token thread shares with the others.
struct Worker<'a> {
    token: &'a Token,
    pool: &'a [Sealed],
    aad: &'a [u8],
    cycle: &'a [Op],
    schedule: &'a Schedule,
    live: &'a Live,
}

impl Worker<'_> {
    fn run(&self, index: usize) -> Result<Tally, String> {
        let session = self
            .token
            .pkcs11
            .open_ro_session(self.token.slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
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
                Op::Encrypt => encrypt(&session, self.token.key, self.aad, &sealed.plaintext).map(|_| ()),
                Op::Decrypt => decrypt(&session, self.token.key, self.aad, sealed),
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
