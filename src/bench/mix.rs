//! The operation mix: parsing `--mix encrypt=3,decrypt=1` and turning the weights into a
//! repeating schedule each connection walks through.

use super::error::BenchError;

/// The four XKS operations a run can issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// Encrypt a payload.
    Encrypt,
    /// Decrypt a ciphertext made during setup.
    Decrypt,
    /// GetKeyMetadata.
    Metadata,
    /// GetHealthStatus.
    Health,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 4] = [Op::Encrypt, Op::Decrypt, Op::Metadata, Op::Health];

    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Metadata => "metadata",
            Op::Health => "health",
        }
    }
}

/// Cap per weight: the schedule holds one slot per unit of weight.
const MAX_WEIGHT: u32 = 1000;

/// Relative weights of the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    /// Parses `name=weight` pairs separated by commas; operations not named get weight 0.
    pub fn parse(text: &str) -> Result<Mix, BenchError> {
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').ok_or_else(|| BenchError::MixPair {
                part: part.to_owned(),
            })?;
            let i = Op::ALL
                .iter()
                .position(|op| op.name() == name.trim())
                .ok_or_else(|| BenchError::MixUnknown {
                    name: name.to_owned(),
                })?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(BenchError::MixTwice {
                    name: name.to_owned(),
                });
            }
            weights[i] = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= MAX_WEIGHT)
                .ok_or_else(|| BenchError::MixWeight {
                    name: name.to_owned(),
                    max: MAX_WEIGHT,
                })?;
        }
        if weights.iter().all(|w| *w == 0) {
            return Err(BenchError::MixEmpty);
        }
        Ok(Mix { weights })
    }

    /// Weight of one operation.
    pub fn weight(&self, op: Op) -> u32 {
        self.weights[op as usize]
    }

    /// One cycle of the schedule: each operation appears `weight` times, spread out (smooth
    /// weighted round robin) so that a short run still sees every operation early.
    pub fn cycle(&self) -> Vec<Op> {
        let total: i64 = self.weights.iter().map(|w| i64::from(*w)).sum();
        let mut current = [0i64; 4];
        let mut out = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(self.weights) {
                *c += i64::from(w);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                .unwrap_or((0, &0));
            current[best] -= total;
            out.push(Op::ALL[best]);
        }
        out
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = Op::ALL
            .iter()
            .filter(|op| self.weight(**op) > 0)
            .map(|op| format!("{}={}", op.name(), self.weight(*op)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_holds_each_operation_weight_times_interleaved() {
        let mix = Mix::parse("encrypt=3,decrypt=1").unwrap();
        let cycle = mix.cycle();
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.iter().filter(|o| **o == Op::Encrypt).count(), 3);
        let even = Mix::parse("encrypt=1,decrypt=1,metadata=1,health=1")
            .unwrap()
            .cycle();
        assert_eq!(even, Op::ALL.to_vec());
        assert_eq!(mix.to_string(), "encrypt=3,decrypt=1");
    }

    #[test]
    fn bad_mixes_are_refused_with_a_reason() {
        for bad in [
            "",
            "encrypt=0",
            "sign=1",
            "encrypt",
            "encrypt=x",
            "encrypt=1,encrypt=2",
            "encrypt=5000",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad}");
        }
    }
}
