//! The once-a-second progress line on stderr, shown only when stderr is a terminal so that logs
//! and pipelines never receive carriage-return noise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Counters workers bump as they go; read only by the progress line.
#[derive(Default)]
pub struct Live {
    /// Measured requests finished.
    pub done: AtomicU64,
    /// Measured requests that failed.
    pub failed: AtomicU64,
}

impl Live {
    /// Counts one finished measured request.
    pub fn count(&self, failed: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running progress printer; dropping it (or [`Progress::finish`]) stops it and clears its
/// line, so an early return never leaves it printing.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts printing if stderr is a terminal; otherwise does nothing.
    pub fn start(live: Arc<Live>, measure_start: Instant, unit: &'static str) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || print_loop(&live, measure_start, unit, &stop))
        });
        Progress { stop, thread }
    }

    /// Stops the printer and erases its line.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            eprint!("\r\x1b[2K");
        }
    }
}

fn print_loop(live: &Live, measure_start: Instant, unit: &str, stop: &AtomicBool) {
    let (mut last_done, mut last_at) = (0u64, Instant::now());
    while !stop.load(Ordering::Relaxed) {
        // Short naps keep `finish` prompt; the line itself changes once a second.
        std::thread::sleep(Duration::from_millis(50));
        if last_at.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let now = Instant::now();
        let line = match now.checked_duration_since(measure_start) {
            None => format!(
                "warming up, measurement starts in {:.1} s",
                (measure_start - now).as_secs_f64()
            ),
            Some(elapsed) => {
                let done = live.done.load(Ordering::Relaxed);
                // The first measured tick covers only the time since warmup ended.
                let window = now.duration_since(last_at.max(measure_start)).as_secs_f64();
                let rate = (done - last_done) as f64 / window.max(1e-3);
                last_done = done;
                format!(
                    "{:7.1} s  {done:>10} {unit}  {rate:>10.0} {unit}/s  {} failed",
                    elapsed.as_secs_f64(),
                    live.failed.load(Ordering::Relaxed)
                )
            }
        };
        last_at = now;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
}
