//! The two fleet protocols of key versions, as pure logic over a store: reserving blocks of
//! encryptions in per-instance counters so that the sum never passes the budget, and settling
//! which candidate becomes version n+1 when several instances rotate at once. The token
//! implements the store in `rotation/reservations.rs` and `rotator.rs`; the unit tests race
//! threads over an in-memory store.
//!
//! Counting: every instance owns one counter per version (only it writes it) holding how many
//! encryptions it has *reserved*. It writes the larger value first and uses the block after,
//! so a crash loses at most the unused rest of a block and the sum over instances is always an
//! upper bound of the encryptions made. Two instances refilling at once could together pass the
//! budget; each therefore reads the counters again after its write and, if the sum is over,
//! gives back the overflow from the block it has not used yet (never below what it had before
//! the block). With a store where a write is visible to every later read (one token, or an HSM
//! cluster that replicates synchronously), the later of two racing writers always sees the
//! earlier one, so the sum of what is *used* never passes the budget.
//!
//! Tie-break: an instance that finds no candidate for version n+1 creates one (a key object and
//! a record holding its creation time and a random nonce), waits a settle time, and lists the
//! candidates again. If a commit exists, it is final. Otherwise the winner is the least
//! (creation time, nonce); every instance that settles computes the same winner from the same
//! list, losers destroy their own candidate (never used: nothing encrypts under a version before
//! it is committed) and the winner is committed. See docs/key-versions.md for the residual risk.

use std::collections::HashMap;
use std::time::Duration;

pub use crate::config::budget::{KeyBudgets, VersionBudget, DEFAULT_MAX_ENCRYPTIONS, NIST_BOUND};

/// Smallest block an instance reserves. A crash loses at most the unused rest of a block (an
/// over-count, never an under-count), 1,024 of 2^31 here. Smaller first blocks ran dry before
/// a background grant could finish on a slow token (SoftHSM2 with 1,000 keys: about 130 ms per
/// grant), so the first requests of a key waited for grants past their deadline.
pub const MIN_BLOCK: u64 = 1024;

/// How much a block may grow from one grant to the next.
pub const MAX_GROWTH: u64 = 16;

/// Seconds of traffic a block covers: a busy instance writes its counter this often. Each
/// grant costs the token a search of every object (about 130 ms of CPU on SoftHSM2 with 1,000
/// keys), so one a second cost a busy Encrypt path about a tenth of a core; a crash over-counts
/// at most this much traffic (4 s at KMS's 1,800 requests/s is 7,200 of 2^31).
pub const BLOCK_SECONDS: f64 = 4.0;

/// Counter values read from the store: instance id → encryptions it reserved.
pub type Counts = HashMap<String, u64>;

/// The outcome of one reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `block` more encryptions are this instance's; its counter now holds `own`; `total` is
    /// the fleet's sum as last read.
    Granted {
        /// The counter's new value.
        own: u64,
        /// Encryptions this instance may now make.
        block: u64,
        /// Sum over instances after the write.
        total: u64,
    },
    /// The budget is used up (by reservations, which bound the encryptions made).
    Exhausted {
        /// Sum over instances.
        total: u64,
        /// This instance's counter.
        own: u64,
    },
}

fn sum(counts: &Counts, me: &str, mine: u64) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| k.as_str() != me)
        .fold(mine, |acc, (_, v)| acc.saturating_add(*v))
}

/// Reserves up to `want` encryptions for `me` under a budget of `max`. `own` is what this
/// instance last wrote (0 at start); a larger value on the store wins (a restart continues
/// from it). `read` lists every instance's counter, `write` stores this instance's.
pub fn reserve<E>(
    me: &str,
    own: u64,
    want: u64,
    max: u64,
    mut read: impl FnMut() -> Result<Counts, E>,
    mut write: impl FnMut(u64) -> Result<(), E>,
) -> Result<Grant, E> {
    let before = read()?;
    let own = own.max(before.get(me).copied().unwrap_or(0));
    let total = sum(&before, me, own);
    if total >= max {
        return Ok(Grant::Exhausted { total, own });
    }
    let block = want.max(1).min(max - total);
    let new_own = own + block;
    write(new_own)?;
    let after = read()?;
    let total = sum(&after, me, new_own);
    if total <= max {
        return Ok(Grant::Granted {
            own: new_own,
            block,
            total,
        });
    }
    // Another instance reserved at the same time: give back the overflow from the unused block.
    let shrunk = new_own.saturating_sub(total - max).max(own);
    write(shrunk)?;
    let total = total - (new_own - shrunk);
    if shrunk == own {
        return Ok(Grant::Exhausted { total, own });
    }
    Ok(Grant::Granted {
        own: shrunk,
        block: shrunk - own,
        total,
    })
}

/// The next block size: [`BLOCK_SECONDS`] of the rate since the previous grant (`consumed`
/// over the time it took), at least [`MIN_BLOCK`], so a busy instance writes its counter every
/// few seconds and an idle one reserves little it might lose in a crash. It grows at
/// most [`MAX_GROWTH`]-fold from one block to the next: a rate measured over a very short
/// interval (a refill right after another) must not reserve a huge block, while a busy key must
/// reach its one-second block in two or three grants. With a slow token (SoftHSM2 with 1,000
/// keys takes about 130 ms per grant) every grant of a ramp that the background refill cannot
/// keep ahead of is made by a worker, under a request's deadline; doubling from 16 took eight.
pub fn next_block(previous: u64, consumed: u64, lasted: Option<Duration>) -> u64 {
    let Some(d) = lasted else { return MIN_BLOCK };
    let per_second = consumed as f64 / d.as_secs_f64().max(1e-3);
    let ceiling = previous.max(MIN_BLOCK).saturating_mul(MAX_GROWTH);
    ((per_second * BLOCK_SECONDS).min(u64::MAX as f64 / 2.0) as u64).clamp(MIN_BLOCK, ceiling)
}

/// The largest block under a budget of `max`: a sixteenth of it (at least 1). Without the cap,
/// a budget below a few thousand (a cautious operator's per-key budget, or a test) goes to one
/// instance's first block of [`MIN_BLOCK`], which reaches the rotation point before a single
/// encryption: every version would be rotated away unused. At the default 2^31 the cap
/// (134 million) is far above any block a rate can ask for.
pub fn block_cap(max: u64) -> u64 {
    (max / BLOCK_CAP_SHARE).max(1)
}

/// See [`block_cap`].
const BLOCK_CAP_SHARE: u64 = 16;

/// One candidate for a version number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Creation time on its creator's clock, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Random tie-break nonce; also the `CKA_ID` of the candidate's key object.
    pub nonce: Vec<u8>,
}

/// What the store says about one version number.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Nonces of committed candidates (one, unless the residual risk struck).
    pub committed: Vec<Vec<u8>>,
    /// Every candidate.
    pub candidates: Vec<Candidate>,
}

/// The candidate every settled instance picks: least (creation time, nonce).
pub fn winner(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .min_by(|a, b| (a.created_ms, &a.nonce).cmp(&(b.created_ms, &b.nonce)))
}

/// The store of the tie-break: the token in production, memory in the unit tests.
pub trait CandidateStore {
    /// Error of the store.
    type Error;
    /// Commits and candidates of `version`.
    fn round(&self, version: u32) -> Result<Round, Self::Error>;
    /// Creates this instance's candidate for `version`.
    fn create(&self, version: u32) -> Result<Candidate, Self::Error>;
    /// Destroys this instance's own, never used candidate.
    fn destroy(&self, version: u32, c: &Candidate) -> Result<(), Self::Error>;
    /// Commits `winner` as `version`.
    fn commit(&self, version: u32, winner: &Candidate) -> Result<(), Self::Error>;
}

/// How a settle ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// `version` is committed (by this instance or another); the nonce of its key object.
    Committed(Vec<u8>),
    /// Every candidate vanished during the settle (each creator lost its own race); try again.
    NoCandidate,
}

/// Settles `version`: creates a candidate unless one exists, waits `settle`, then commits the
/// winner (or accepts an existing commit). A loser's own candidate is destroyed.
pub fn settle<S: CandidateStore>(
    store: &S,
    version: u32,
    settle: Duration,
    sleep: impl Fn(Duration),
) -> Result<Settled, S::Error> {
    let first = store.round(version)?;
    if let Some(c) = first.committed.first() {
        return Ok(Settled::Committed(c.clone()));
    }
    let mine = if first.candidates.is_empty() {
        Some(store.create(version)?)
    } else {
        None
    };
    sleep(settle);
    let round = store.round(version)?;
    let chosen = match round.committed.first() {
        Some(n) => round.candidates.iter().find(|c| &c.nonce == n).cloned(),
        None => winner(&round.candidates).cloned(),
    };
    if let Some(m) = &mine {
        let lost = chosen.as_ref().is_none_or(|w| w.nonce != m.nonce) && !round.committed.contains(&m.nonce);
        if lost {
            store.destroy(version, m)?;
        }
    }
    if let Some(n) = round.committed.first() {
        return Ok(Settled::Committed(n.clone()));
    }
    match chosen {
        Some(w) => {
            store.commit(version, &w)?;
            Ok(Settled::Committed(w.nonce))
        }
        None => Ok(Settled::NoCandidate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn a_lone_instance_gets_what_it_asks_until_the_budget_is_used() {
        let store = Mutex::new(Counts::new());
        let read = || Ok::<_, ()>(store.lock().unwrap().clone());
        let write = |v| {
            store.lock().unwrap().insert("a".into(), v);
            Ok(())
        };
        assert_eq!(
            reserve("a", 0, 16, 40, read, write),
            Ok(Grant::Granted {
                own: 16,
                block: 16,
                total: 16
            })
        );
        assert_eq!(
            reserve("a", 16, 30, 40, read, write),
            Ok(Grant::Granted {
                own: 40,
                block: 24,
                total: 40
            })
        );
        assert_eq!(
            reserve("a", 40, 16, 40, read, write),
            Ok(Grant::Exhausted { total: 40, own: 40 })
        );
    }

    #[test]
    fn a_restart_continues_from_the_counter_on_the_store() {
        let store = Mutex::new(Counts::from([("a".to_owned(), 100)]));
        let g = reserve(
            "a",
            0,
            16,
            1000,
            || Ok::<_, ()>(store.lock().unwrap().clone()),
            |v| {
                store.lock().unwrap().insert("a".into(), v);
                Ok(())
            },
        );
        assert_eq!(
            g,
            Ok(Grant::Granted {
                own: 116,
                block: 16,
                total: 116
            })
        );
    }

    /// Another instance's reservation shows up between the write and the check: the overflow
    /// is given back from the unused block, and when nothing is left the grant is refused.
    #[test]
    fn an_overflow_seen_after_the_write_is_given_back() {
        let reads = std::cell::Cell::new(0);
        let written = std::cell::RefCell::new(Vec::new());
        let read = || {
            reads.set(reads.get() + 1);
            let other = if reads.get() == 1 { 0 } else { 95 };
            Ok::<_, ()>(Counts::from([("b".to_owned(), other)]))
        };
        let write = |v| {
            written.borrow_mut().push(v);
            Ok(())
        };
        assert_eq!(
            reserve("a", 0, 16, 100, read, write),
            Ok(Grant::Granted {
                own: 5,
                block: 5,
                total: 100
            })
        );
        assert_eq!(*written.borrow(), [16, 5]);
        reads.set(0);
        written.borrow_mut().clear();
        let read = || {
            reads.set(reads.get() + 1);
            let other = if reads.get() == 1 { 50 } else { 100 };
            Ok::<_, ()>(Counts::from([("b".to_owned(), other)]))
        };
        let write = |v| {
            written.borrow_mut().push(v);
            Ok(())
        };
        assert_eq!(
            reserve("a", 0, 16, 100, read, write),
            Ok(Grant::Exhausted { total: 100, own: 0 })
        );
        assert_eq!(*written.borrow(), [16, 0], "the whole block is given back");
    }

    #[test]
    fn a_block_never_takes_more_than_a_sixteenth_of_the_budget() {
        assert_eq!(
            block_cap(1000),
            62,
            "a small budget is shared out, not reserved at once"
        );
        assert_eq!(block_cap(10), 1);
        assert_eq!(block_cap(1), 1);
        assert_eq!(block_cap(DEFAULT_MAX_ENCRYPTIONS), 1 << 27);
        // At the default budget, the cap never bites a block a real rate asks for (KMS's
        // 1,800 requests/s for four seconds).
        assert!(
            next_block(MIN_BLOCK, 1800, Some(Duration::from_secs(1))) < block_cap(DEFAULT_MAX_ENCRYPTIONS)
        );
    }

    #[test]
    fn block_size_follows_the_rate_and_grows_at_most_sixteenfold() {
        assert_eq!(next_block(0, 0, None), MIN_BLOCK);
        assert_eq!(next_block(8000, 1000, Some(Duration::from_millis(100))), 40_000);
        assert_eq!(next_block(1000, 1000, Some(Duration::from_millis(100))), 16_384);
        assert_eq!(next_block(1024, 64, Some(Duration::from_secs(60))), MIN_BLOCK);
        assert_eq!(
            next_block(6000, 6000, Some(Duration::from_micros(10))),
            96_000,
            "a refill right after another must not reserve millions"
        );
        // A key used at 4,000/s reaches its full block in one grant after the first.
        assert_eq!(
            next_block(MIN_BLOCK, MIN_BLOCK, Some(Duration::from_millis(256))),
            16_000
        );
    }

    /// Many instances reserve and "encrypt" concurrently with random pauses between every
    /// step, for many rounds: the encryptions made never pass the budget, no counter ever
    /// goes below what its instance used, and the budget is nearly used up.
    #[test]
    fn racing_instances_never_use_more_than_the_budget() {
        for round in 0..60u64 {
            let max = 100 + round * 7;
            let store = Arc::new(Mutex::new(Counts::new()));
            let used = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    let (store, used) = (store.clone(), used.clone());
                    std::thread::spawn(move || {
                        let me = format!("i{i}");
                        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (round << 8) ^ (i + 1);
                        let (mut own, mut mine) = (0u64, 0u64);
                        loop {
                            let pause = |seed: &mut u64| {
                                std::thread::sleep(Duration::from_micros(xorshift(seed) % 200))
                            };
                            let want = 1 + xorshift(&mut seed) % 20;
                            let g = reserve(
                                &me,
                                own,
                                want,
                                max,
                                || {
                                    let c = store.lock().unwrap().clone();
                                    Ok::<_, ()>(c)
                                },
                                |v| {
                                    let mut s = store.lock().unwrap();
                                    assert!(v >= mine, "counter below the encryptions it covers");
                                    s.insert(me.clone(), v);
                                    Ok(())
                                },
                            )
                            .unwrap();
                            pause(&mut seed);
                            match g {
                                Grant::Granted { own: o, block, .. } => {
                                    own = o;
                                    mine += block;
                                    used.fetch_add(block, Ordering::SeqCst);
                                }
                                Grant::Exhausted { .. } => return,
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let used = used.load(Ordering::SeqCst);
            assert!(used <= max, "round {round}: used {used} of {max}");
            let counted: u64 = store.lock().unwrap().values().sum();
            assert!(counted >= used, "the counters under-count: {counted} < {used}");
            assert!(used + 4 * 20 >= max, "round {round}: only {used} of {max} usable");
        }
    }

    /// An in-memory store with the token's visibility: each operation is atomic, and the
    /// creation time comes from a shared clock that only moves forward.
    #[derive(Default)]
    struct Memory {
        state: Mutex<(Vec<Candidate>, Vec<Vec<u8>>, u64)>,
        created: AtomicU64,
        destroyed: AtomicU64,
    }

    impl CandidateStore for Memory {
        type Error = ();
        fn round(&self, _: u32) -> Result<Round, ()> {
            let s = self.state.lock().unwrap();
            Ok(Round {
                committed: s.1.clone(),
                candidates: s.0.clone(),
            })
        }
        fn create(&self, _: u32) -> Result<Candidate, ()> {
            let mut s = self.state.lock().unwrap();
            s.2 += 1;
            let n = self.created.fetch_add(1, Ordering::SeqCst);
            let c = Candidate {
                created_ms: s.2 / 2,
                nonce: (n.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes().to_vec(),
            };
            s.0.push(c.clone());
            Ok(c)
        }
        fn destroy(&self, _: u32, c: &Candidate) -> Result<(), ()> {
            let mut s = self.state.lock().unwrap();
            assert!(!s.1.contains(&c.nonce), "a committed candidate was destroyed");
            s.0.retain(|x| x != c);
            self.destroyed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn commit(&self, _: u32, w: &Candidate) -> Result<(), ()> {
            let mut s = self.state.lock().unwrap();
            if !s.1.contains(&w.nonce) {
                s.1.push(w.nonce.clone());
            }
            Ok(())
        }
    }

    /// Instances start rotating at random moments within the settle time, for many rounds:
    /// exactly one candidate is committed, every instance reports it, and only it survives.
    #[test]
    fn concurrent_rotations_commit_exactly_one_candidate() {
        for round in 0..200u64 {
            let store = Arc::new(Memory::default());
            let settle_time = Duration::from_millis(4);
            let threads: Vec<_> = (0..5)
                .map(|i| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let mut seed = 0x2545_f491_4f6c_dd1du64 ^ (round << 4) ^ (i + 1);
                        std::thread::sleep(Duration::from_micros(xorshift(&mut seed) % 3000));
                        loop {
                            match settle(&*store, 2, settle_time, std::thread::sleep).unwrap() {
                                Settled::Committed(n) => return n,
                                Settled::NoCandidate => continue,
                            }
                        }
                    })
                })
                .collect();
            let chosen: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let (candidates, commits, _) = store.state.lock().unwrap().clone();
            assert_eq!(commits.len(), 1, "round {round}: {commits:?}");
            assert!(chosen.iter().all(|c| *c == commits[0]), "round {round}");
            assert_eq!(candidates.len(), 1, "round {round}: losers left candidates");
            assert_eq!(candidates[0].nonce, commits[0]);
            let made = store.created.load(Ordering::SeqCst);
            assert_eq!(store.destroyed.load(Ordering::SeqCst), made - 1);
        }
    }

    #[test]
    fn the_winner_is_the_oldest_then_the_least_nonce() {
        let c = |t, n: u8| Candidate {
            created_ms: t,
            nonce: vec![n],
        };
        assert_eq!(winner(&[c(5, 1), c(3, 9), c(3, 2)]), Some(&c(3, 2)));
        assert_eq!(winner(&[]), None);
    }
}
