//! The proxy run: connect every connection before the clock starts, make the ciphertexts decrypt
//! traffic will replay, then one task per connection sends requests back to back (one in
//! flight each) until the schedule says stop, and the tallies are merged.

use super::client::{Conn, Connector, Signer};
use super::error::BenchError;
use super::mix::Op;
use super::plan::{Plan, ProxyTarget};
use super::progress::{Live, Progress};
use super::schedule::{Phase, Schedule};
use super::stats::Tally;
use super::workload::Workload;
use super::Outcome;
use std::sync::Arc;
use std::time::Duration;

/// Pause after a failed reconnect, so a dead proxy is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Shared, read-only state of a run.
struct Run {
    connector: Arc<Connector>,
    signer: Signer,
    workload: Workload,
    cycle: Vec<Op>,
    schedule: Schedule,
    live: Arc<Live>,
    timeout: Duration,
}

/// Runs the benchmark against a proxy.
pub fn run(plan: &Plan, t: &ProxyTarget) -> Result<Outcome, BenchError> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = t.client_threads {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().map_err(BenchError::Runtime)?;
    rt.block_on(run_async(plan, t))
}

async fn run_async(plan: &Plan, t: &ProxyTarget) -> Result<Outcome, BenchError> {
    let connector = Connector::new(t.endpoint.clone(), t.ca_file.as_deref(), t.resumption).map(Arc::new)?;
    let signer = Signer {
        access_key_id: t.access_key_id.clone(),
        secret: t.secret.clone(),
        region: t.region.clone(),
        host: t.endpoint.authority.clone(),
    };
    let mut workload = Workload::new(
        &t.uri_path,
        &plan.key_id,
        &t.region,
        plan.payload_bytes,
        plan.aad_bytes,
    )?;
    let mut conns = connect_all(&connector, t.connections).await?;
    if plan.mix.weight(Op::Decrypt) > 0 {
        let first = conns.first_mut().ok_or(BenchError::NoConnection)?;
        seal_pool(first, &signer, &mut workload, t).await?;
    }
    let schedule = Schedule::start(plan.warmup, plan.stop);
    let live = Arc::new(Live::default());
    let progress = Progress::start(live.clone(), schedule.measure_start(), "requests");
    let run = Arc::new(Run {
        connector,
        signer,
        workload,
        cycle: plan.mix.cycle(),
        schedule,
        live,
        timeout: t.timeout,
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(drive(i, c, run.clone())))
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        match task.await {
            Ok(t) => tally.merge(&t),
            Err(e) => return Err(BenchError::Task(e)),
        }
    }
    progress.finish();
    let elapsed = tally
        .last_end
        .map(|end| end.saturating_duration_since(run.schedule.measure_start()))
        .unwrap_or_default();
    Ok(Outcome {
        tally,
        elapsed,
        mode: "proxy",
        target: format!(
            "{}://{}{}",
            if t.endpoint.tls { "https" } else { "http" },
            t.endpoint.authority,
            t.uri_path
        ),
        concurrency: ("connections", t.connections),
    })
}

/// Opens every connection up front, concurrently: handshakes are not what the run measures.
async fn connect_all(connector: &Arc<Connector>, n: usize) -> Result<Vec<Conn>, BenchError> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let connector = connector.clone();
        set.spawn(async move { connector.connect().await });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(f)) => {
                return Err(BenchError::Connect {
                    kind: f.kind,
                    detail: f.detail,
                })
            }
            Err(e) => return Err(BenchError::ConnectTask(e)),
        }
    }
    Ok(conns)
}

/// Tries of each setup Encrypt answered with a retryable status.
const SETUP_ATTEMPTS: u32 = 5;

/// Encrypts the pool's plaintexts once; decrypt traffic replays these ciphertexts.
async fn seal_pool(
    conn: &mut Conn,
    signer: &Signer,
    workload: &mut Workload,
    t: &ProxyTarget,
) -> Result<(), BenchError> {
    let bodies: Vec<Vec<u8>> = workload.setup_requests().collect();
    let path = workload.path(Op::Encrypt).to_owned();
    for (i, body) in bodies.into_iter().enumerate() {
        // 429 and 503 are the answers KMS retries (a first reservation on a slow token, a key
        // version settling): so does the setup, a few times, before it gives up.
        let mut attempt = 1;
        let answer = loop {
            let answer = conn
                .post(signer, &path, body.clone().into(), t.timeout)
                .await
                .map_err(|f| BenchError::SetupRequest {
                    kind: f.kind,
                    detail: f.detail,
                })?;
            if matches!(answer.status, 429 | 503) && attempt < SETUP_ATTEMPTS {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            break answer;
        };
        workload
            .check(Op::Encrypt, i, answer.status, &answer.body)
            .and_then(|()| workload.add_sealed(i, &answer.body))
            .map_err(BenchError::SetupAnswer)?;
    }
    Ok(())
}

/// One connection's loop. Connections start at different points of the mix so that, at any
/// moment, the operations in flight follow the mix.
async fn drive(index: usize, conn: Conn, run: Arc<Run>) -> Tally {
    let mut conn = Some(conn);
    let mut tally = Tally::default();
    let mut seq = index;
    loop {
        let phase = run.schedule.next();
        if phase == Phase::Done {
            return tally;
        }
        let op = run.cycle[seq % run.cycle.len()];
        let (latency, error) = one_request(&mut conn, &run, op, index, seq).await;
        seq += 1;
        if phase == Phase::Warmup {
            tally.warmup(error.is_some());
        } else {
            run.live.count(error.is_some());
            tally.measured(op.name(), latency, error.as_deref());
        }
    }
}

/// Sends one request, reconnecting first if the connection is gone; returns the latency (when
/// an answer came) and the failure name (when it failed).
async fn one_request(
    conn: &mut Option<Conn>,
    run: &Run,
    op: Op,
    index: usize,
    seq: usize,
) -> (Option<Duration>, Option<String>) {
    if conn.as_ref().is_none_or(Conn::is_closed) {
        match run.connector.connect().await {
            Ok(c) => *conn = Some(c),
            Err(f) => {
                tokio::time::sleep(RECONNECT_PAUSE).await;
                return (None, Some(f.kind.to_owned()));
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return (None, Some("ConnectFailed".to_owned()));
    };
    let body = run.workload.body(op, seq, &format!("bench-{index}-{seq}"));
    match c
        .post(&run.signer, run.workload.path(op), body.into(), run.timeout)
        .await
    {
        Ok(a) => (
            Some(a.latency),
            run.workload
                .check(op, seq, a.status, &a.body)
                .err()
                .map(|r| r.to_string()),
        ),
        Err(f) => {
            *conn = None;
            (None, Some(f.kind.to_owned()))
        }
    }
}
