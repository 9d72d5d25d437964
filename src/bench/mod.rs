//! `xks-bridge bench`: a load generator for any XKS proxy, and (`--raw-token`) for the PKCS#11
//! token itself, the ceiling a proxy is compared with.
//!
//! - [`args`]: the command line; [`plan`]: checks it (bad values exit 64).
//! - [`client`]: one keep-alive HTTP/1.1 connection over rustls, every request freshly signed;
//!   [`endpoint`]: the `--endpoint` URL; [`instances`]: per-instance shares behind a balancer.
//! - [`workload`]: request bodies and response checks (decrypts are compared with the plaintext).
//! - [`mix`]: operation weights; [`schedule`]: warmup, then a deadline or a request budget.
//! - [`runner`]: the proxy run; [`raw_token`]: the token run.
//! - [`stats`]: latency histogram and tallies; [`report`]: text or JSON; [`progress`]: the
//!   live line on a terminal.
//!
//! Exit status: 0 when every measured and warmup request succeeded, 1 when any failed (or the
//! run could not start), 64 for bad arguments.

pub mod args;
pub mod client;
pub mod endpoint;
pub mod error;
pub mod instances;
pub mod mix;
pub mod plan;
pub mod progress;
pub mod raw_token;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
pub mod workload;

pub use args::BenchArgs;
pub use error::BenchError;

use plan::Target;
use std::time::Duration;

/// Exit status for bad arguments (sysexits EX_USAGE).
pub const EXIT_BAD_ARGS: i32 = 64;
/// Exit status when a request failed or the run could not start.
pub const EXIT_FAILED: i32 = 1;

/// What a finished run measured.
pub struct Outcome {
    /// Merged tallies of every worker.
    pub tally: stats::Tally,
    /// From the end of warmup to the last measured answer.
    pub elapsed: Duration,
    /// `proxy` or `raw-token`.
    pub mode: &'static str,
    /// What was measured, for the report.
    pub target: String,
    /// (`connections` or `threads`, how many).
    pub concurrency: (&'static str, usize),
}

/// Runs `xks-bridge bench`; the error is the message for stderr and knows its exit status.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let plan = plan::resolve(args)?;
    let before = instances::read_all(&plan.instance_metrics);
    let outcome = match &plan.target {
        Target::Proxy(t) => runner::run(&plan, t)?,
        Target::Token(t) => raw_token::run(&plan, t)?,
    };
    let after = instances::read_all(&plan.instance_metrics);
    let shares = instances::shares(&plan.instance_metrics, &before, &after);
    if plan.json {
        let mut v = report::json(&plan, &outcome);
        if !shares.is_empty() {
            v["instances"] = serde_json::json!(shares);
        }
        println!("{v}");
    } else {
        print!("{}", report::text(&plan, &outcome));
        if !shares.is_empty() {
            print!("{}", instances::text(&shares));
        }
    }
    let t = &outcome.tally;
    let failed = t.error_count() + t.warmup_errors;
    if failed > 0 {
        return Err(BenchError::RequestsFailed {
            failed,
            total: t.total() + t.warmup,
        });
    }
    Ok(())
}
