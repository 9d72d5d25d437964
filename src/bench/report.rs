//! The result of a run, as text for people or as one JSON object for scripts. Both carry the
//! same figures: throughput, latency percentiles and maximum, counts by operation, failures
//! by name, and what was measured.

use super::plan::Plan;
use super::Outcome;
use serde_json::{json, Value};

/// Percentiles reported, as (label, JSON key, quantile).
const PERCENTILES: [(&str, &str, f64); 4] = [
    ("p50", "p50", 0.50),
    ("p90", "p90", 0.90),
    ("p99", "p99", 0.99),
    ("p99.9", "p99_9", 0.999),
];

fn throughput(o: &Outcome) -> f64 {
    let secs = o.elapsed.as_secs_f64();
    if secs > 0.0 {
        o.tally.total() as f64 / secs
    } else {
        0.0
    }
}

fn micros(ns: u64) -> f64 {
    // Two decimals: sub-microsecond precision is below the histogram's resolution anyway.
    (ns as f64 / 10.0).round() / 100.0
}

/// The JSON report.
pub fn json(plan: &Plan, o: &Outcome) -> Value {
    let t = &o.tally;
    let mut latency = serde_json::Map::new();
    for (_, key, q) in PERCENTILES {
        latency.insert(key.into(), json!(micros(t.latency.quantile(q))));
    }
    latency.insert("max".into(), json!(micros(t.latency.max())));
    latency.insert("mean".into(), json!((t.latency.mean() / 10.0).round() / 100.0));
    let mut v = json!({
        "mode": o.mode,
        "target": o.target,
        "key_id": plan.key_id,
        "mix": plan.mix.to_string(),
        "payload_bytes": plan.payload_bytes,
        "aad_bytes": plan.aad_bytes,
        "elapsed_s": (o.elapsed.as_secs_f64() * 1e4).round() / 1e4,
        "total": t.total(),
        "ok": t.total() - t.error_count(),
        "errors_total": t.error_count(),
        "throughput_per_s": (throughput(o) * 10.0).round() / 10.0,
        "latency_us": latency,
        "operations": t.ops,
        "errors": t.errors,
        "warmup": {
            "seconds": plan.warmup.as_secs_f64(),
            "requests": t.warmup,
            "errors": t.warmup_errors,
        },
    });
    v[o.concurrency.0] = json!(o.concurrency.1);
    v
}

/// The text report.
pub fn text(plan: &Plan, o: &Outcome) -> String {
    let t = &o.tally;
    let (count, unit) = if o.mode == "proxy" {
        ("requests", "req")
    } else {
        ("operations", "ops")
    };
    let ms = |ns: u64| format!("{:.3} ms", ns as f64 / 1e6);
    let latency: Vec<String> = PERCENTILES
        .iter()
        .map(|(label, _, q)| format!("{label} {}", ms(t.latency.quantile(*q))))
        .chain([format!("max {}", ms(t.latency.max()))])
        .collect();
    let join = |m: Vec<String>| {
        if m.is_empty() {
            "none".to_owned()
        } else {
            m.join(", ")
        }
    };
    let ops = join(t.ops.iter().map(|(k, v)| format!("{k} {v}")).collect());
    let errors = join(t.errors.iter().map(|(k, v)| format!("{k} {v}")).collect());
    format!(
        "xks-bridge bench: {mode} {target}, key {key}\n\
         \x20 mix {mix}, {payload}-byte payload, {aad}-byte AAD, {n} {kind}\n\
         \x20 measured {secs:.2} s after {warm:.1} s warmup ({wreq} warmup {count}, {werr} failed)\n\n\
         \x20 {count:<10} {total} ({failed} failed)\n\
         \x20 throughput {rate:.1} {unit}/s\n\
         \x20 latency    {latency}  (mean {mean:.3} ms)\n\
         \x20 by op      {ops}\n\
         \x20 errors     {errors}\n",
        mode = o.mode,
        target = o.target,
        key = plan.key_id,
        mix = plan.mix,
        payload = plan.payload_bytes,
        aad = plan.aad_bytes,
        n = o.concurrency.1,
        kind = o.concurrency.0,
        secs = o.elapsed.as_secs_f64(),
        warm = plan.warmup.as_secs_f64(),
        wreq = t.warmup,
        werr = t.warmup_errors,
        total = t.total(),
        failed = t.error_count(),
        rate = throughput(o),
        latency = latency.join("  "),
        mean = t.latency.mean() / 1e6,
    )
}
