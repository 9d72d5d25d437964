//! Cost of handing a blocking call from a tokio task to a thread and getting the answer back
//! (docs/perf/handoff.md).
//!
//! `--concurrency` tasks on a 2-worker multi-thread runtime each loop: hand a job to the
//! executor, await its reply, repeat. The job busy-waits `--jobs-us` microseconds, standing in
//! for one PKCS#11 call. Executors:
//!
//! - `current`: what `Hsm::submit` does: 2 dedicated threads on a crossbeam bounded queue
//!   (`try_send`, `recv_timeout` with the worker's 20 ms idle check), tokio oneshot reply;
//! - `blocking`: `tokio::task::spawn_blocking` per job, default pool (up to 512 threads);
//! - `blocking2`: the same with the blocking pool capped at 2 threads (the daemon's 2 sessions);
//! - `pinned`: `current` with worker thread i pinned to CPU i (sched_setaffinity);
//! - `condvar`: 2 dedicated threads on a `Mutex<VecDeque>` + `Condvar`, tokio oneshot reply.
//!
//! For each executor and concurrency it prints hand-offs per second, round-trip latency
//! p50/p99 (job included), process CPU µs and context switches per hand-off, as
//! median (min-max) over `--runs` runs. Runs are interleaved (run 1 of every configuration,
//! then run 2, ...) so that a change in background load spreads over all executors.
//!
//! `cargo run --release --example handoff -- [--jobs-us N] [--concurrency 1,8,64] [--seconds S]`

use clap::Parser;
use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use std::collections::VecDeque;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Parser)]
struct Cli {
    /// Busy-wait per job, in microseconds (SoftHSM2 spends about 30 per AES-GCM encrypt).
    #[arg(long, default_value_t = 30)]
    jobs_us: u64,
    /// Concurrent tasks (requests in flight), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// Measured seconds per run (after a 0.3 s warm-up).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs per configuration.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Executors to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "current,blocking,blocking2,pinned,condvar"
    )]
    executors: Vec<String>,
}

/// As in the daemon: 2 HSM worker threads, 1024 queued jobs, 20 ms idle check.
const WORKERS: usize = 2;
const QUEUE_DEPTH: usize = 1024;
const IDLE_CHECK: Duration = Duration::from_millis(20);
const WARM_UP: Duration = Duration::from_millis(300);

type Reply = oneshot::Sender<()>;

/// Stands in for a PKCS#11 call: a fixed amount of CPU work (iterations of an LCG), so that a
/// job costs the same CPU time however often its thread is preempted on a shared machine.
/// A wall-clock spin would cost less CPU whenever another process takes the core.
#[derive(Clone, Copy)]
struct Work(u64);

fn job(w: Work) -> u64 {
    let mut x = 1u64;
    for _ in 0..w.0 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

/// Iterations of `job` that take `us` microseconds on this machine: the fastest of 20 timed
/// batches of 1 ms each, as the fastest is the least disturbed by other processes.
fn calibrate(us: u64) -> Work {
    if us == 0 {
        return Work(0);
    }
    let batch = Work(1_000_000);
    let fastest = (0..20)
        .map(|_| {
            let t = Instant::now();
            job(batch);
            t.elapsed()
        })
        .min()
        .expect("20 batches");
    let per_us = batch.0 as f64 / (fastest.as_nanos() as f64 / 1000.0);
    Work((per_us * us as f64) as u64)
}

/// Where a task's job goes.
enum Executor {
    /// Crossbeam bounded queue served by dedicated threads (`current` and `pinned`).
    Crossbeam {
        jobs: crossbeam_channel::Sender<Reply>,
        threads: Vec<JoinHandle<()>>,
    },
    SpawnBlocking,
    Condvar {
        queue: Arc<CondvarQueue>,
        threads: Vec<JoinHandle<()>>,
    },
}

#[derive(Default)]
struct CondvarQueue {
    jobs: Mutex<(VecDeque<Reply>, bool)>, // (jobs, closed)
    ready: Condvar,
}

impl Executor {
    fn crossbeam(work: Work, pin: bool) -> Executor {
        let (jobs, rx) = crossbeam_channel::bounded::<Reply>(QUEUE_DEPTH);
        let (started_tx, started) = std::sync::mpsc::channel();
        let threads = (0..WORKERS)
            .map(|i| {
                let rx: Receiver<Reply> = rx.clone();
                let started_tx = started_tx.clone();
                std::thread::spawn(move || {
                    if pin {
                        pin_this_thread(i % available_cpus());
                    }
                    let _ = started_tx.send(());
                    // The loop of src/hsm/worker.rs without the token.
                    loop {
                        match rx.recv_timeout(IDLE_CHECK) {
                            Ok(reply) => {
                                job(work);
                                let _ = reply.send(());
                            }
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                })
            })
            .collect();
        // Measure only once every thread runs (and is pinned).
        for _ in 0..WORKERS {
            started.recv().expect("worker thread started");
        }
        Executor::Crossbeam { jobs, threads }
    }

    fn condvar(work: Work) -> Executor {
        let queue = Arc::new(CondvarQueue::default());
        let threads = (0..WORKERS)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || loop {
                    let reply = {
                        let mut guard = queue.jobs.lock().expect("queue lock");
                        loop {
                            if let Some(r) = guard.0.pop_front() {
                                break r;
                            }
                            if guard.1 {
                                return;
                            }
                            guard = queue.ready.wait(guard).expect("queue lock");
                        }
                    };
                    job(work);
                    let _ = reply.send(());
                })
            })
            .collect();
        Executor::Condvar { queue, threads }
    }

    /// One hand-off: submit, await the reply.
    async fn hand_off(&self, work: Work) {
        match self {
            Executor::Crossbeam { jobs, .. } => {
                let (reply, rx) = oneshot::channel();
                match jobs.try_send(reply) {
                    Ok(()) => {}
                    // The queue holds 1024 and at most --concurrency jobs are in flight.
                    Err(TrySendError::Full(_)) => panic!("queue full"),
                    Err(TrySendError::Disconnected(_)) => panic!("workers gone"),
                }
                rx.await.expect("worker replied");
            }
            Executor::SpawnBlocking => {
                tokio::task::spawn_blocking(move || job(work))
                    .await
                    .expect("blocking job ran");
            }
            Executor::Condvar { queue, .. } => {
                let (reply, rx) = oneshot::channel();
                queue.jobs.lock().expect("queue lock").0.push_back(reply);
                queue.ready.notify_one();
                rx.await.expect("worker replied");
            }
        }
    }

    fn shut_down(self) {
        let threads = match self {
            Executor::Crossbeam { jobs, threads } => {
                drop(jobs);
                threads
            }
            Executor::SpawnBlocking => return,
            Executor::Condvar { queue, threads } => {
                queue.jobs.lock().expect("queue lock").1 = true;
                queue.ready.notify_all();
                threads
            }
        };
        for t in threads {
            t.join().expect("worker thread exited cleanly");
        }
    }
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `cpu` with sched_setaffinity(2), done by taskset(1): the
/// library forbids unsafe code, `libc` is not a direct dependency and `nix` is built without
/// its `sched` feature, so the example borrows the system call from util-linux instead.
fn pin_this_thread(cpu: usize) {
    // /proc/thread-self -> "<pid>/task/<tid>"
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .expect("thread id")
        .to_owned();
    let out = Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .output()
        .expect("taskset (util-linux) runs");
    assert!(
        out.status.success(),
        "taskset failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Check that the kernel applied it to this very thread.
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("thread status");
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim);
    assert_eq!(allowed, Some(cpu.to_string().as_str()), "thread not pinned");
}

/// Process-wide CPU time and context switches, read from /proc (no getrusage without unsafe
/// code or a new dependency).
#[derive(Clone, Copy)]
struct Usage {
    cpu_us: f64,
    switches: u64,
}

fn usage() -> Usage {
    // utime + stime (fields 14, 15) of the whole process, dead threads included, in USER_HZ
    // (100 on Linux) ticks. The kernel scales them to the precise scheduler run time, so only
    // the 10 ms granularity is lost: under 1 % of a 2 s run that keeps a core busy.
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // Context switches are only per thread in /proc: sum every live thread. No thread ends
    // during a measurement (the blocking pool keeps idle threads for 10 min, see `run`).
    let mut switches = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().expect("switch count");
            }
        }
    }
    Usage {
        cpu_us: ticks as f64 * 10_000.0,
        switches,
    }
}

/// The figures of one run.
struct Sample {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    switches: f64,
}

fn run(executor: &str, concurrency: usize, work: Work, seconds: f64) -> Sample {
    // 2 workers: the daemon's default on this 2-core machine (one per core). Idle blocking
    // threads live 10 min so that their context switches stay countable until the end.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .thread_keep_alive(Duration::from_secs(600))
        .enable_all();
    if executor == "blocking2" {
        builder.max_blocking_threads(WORKERS);
    }
    let rt = builder.build().expect("runtime");
    let exec = Arc::new(match executor {
        "current" => Executor::crossbeam(work, false),
        "pinned" => Executor::crossbeam(work, true),
        "blocking" | "blocking2" => Executor::SpawnBlocking,
        "condvar" => Executor::condvar(work),
        other => panic!("unknown executor {other}"),
    });
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));

    let (latencies, before, after, elapsed) = rt.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (exec, recording, stop) = (exec.clone(), recording.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(1 << 16);
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        exec.hand_off(work).await;
                        // Counted when it completes inside the window.
                        if recording.load(Ordering::Relaxed) {
                            lat.push(t.elapsed().as_nanos() as u64);
                        }
                    }
                    lat
                })
            })
            .collect();
        tokio::time::sleep(WARM_UP).await;
        let before = usage();
        let t0 = Instant::now();
        recording.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        recording.store(false, Ordering::Relaxed);
        let elapsed = t0.elapsed();
        let after = usage();
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        (all, before, after, elapsed)
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    if let Ok(exec) = Arc::try_unwrap(exec) {
        exec.shut_down();
    }

    let mut latencies = latencies;
    assert!(!latencies.is_empty(), "no hand-off completed in {elapsed:?}");
    latencies.sort_unstable();
    let n = latencies.len() as f64;
    let pct = |p: f64| latencies[((n * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
    Sample {
        per_sec: n / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_us: (after.cpu_us - before.cpu_us) / n,
        switches: after.switches.saturating_sub(before.switches) as f64 / n,
    }
}

/// "median (min-max)" of one figure over the runs.
fn spread(values: impl Iterator<Item = f64>, decimals: usize) -> String {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let (min, med, max) = (v[0], v[v.len() / 2], v[v.len() - 1]);
    format!("{med:.decimals$} ({min:.decimals$}-{max:.decimals$})")
}

fn main() {
    let cli = Cli::parse();
    let work = calibrate(cli.jobs_us);
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "job {} us ({} iterations), {} s per run, {} runs, {} CPUs; loadavg before: {}",
        cli.jobs_us,
        work.0,
        cli.seconds,
        cli.runs,
        available_cpus(),
        loadavg().trim()
    );

    let configs: Vec<(usize, &str)> = cli
        .concurrency
        .iter()
        .flat_map(|&c| cli.executors.iter().map(move |e| (c, e.as_str())))
        .collect();
    let mut samples: Vec<Vec<Sample>> = configs.iter().map(|_| Vec::new()).collect();
    for r in 0..cli.runs {
        for (i, &(c, e)) in configs.iter().enumerate() {
            eprintln!("run {}/{}: {e} C={c}", r + 1, cli.runs);
            samples[i].push(run(e, c, work, cli.seconds));
        }
    }

    println!(
        "{:<10} {:>3}  {:<26} {:<22} {:<22} {:<22} {:<18}",
        "executor", "C", "hand-offs/s", "p50 us", "p99 us", "CPU us/hand-off", "ctx sw/hand-off"
    );
    for ((c, e), s) in configs.iter().zip(&samples) {
        println!(
            "{:<10} {:>3}  {:<26} {:<22} {:<22} {:<22} {:<18}",
            e,
            c,
            spread(s.iter().map(|x| x.per_sec), 0),
            spread(s.iter().map(|x| x.p50_us), 1),
            spread(s.iter().map(|x| x.p99_us), 1),
            spread(s.iter().map(|x| x.cpu_us), 1),
            spread(s.iter().map(|x| x.switches), 2),
        );
    }
    println!("loadavg after: {}", loadavg().trim());
}
