//! The Grafana dashboard (`deploy/grafana/xks-bridge.json`) and the Prometheus alert rules
//! (`docs/prometheus-alerts.yml`) against the metrics the real daemon exports: every
//! `xks_bridge_*` name they query must appear in a scrape of `/metrics`, and every metric
//! family the daemon exports must have a panel on the dashboard.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;

/// Every `xks_bridge_[a-z0-9_]+` word in `text` (not the bare prefix, as prose names it).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("xks_bridge_") {
        let word: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[i + word.len()..];
        if word != "xks_bridge_" {
            names.insert(word);
        }
    }
    names
}

/// Sample names in a text exposition (histograms as `_bucket`, `_sum`, `_count`).
fn exported_samples(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| l.starts_with("xks_bridge_"))
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// Metric family names in a text exposition (`# TYPE name kind`).
fn exported_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn dashboard_and_alert_rules_query_only_metrics_the_daemon_exports() {
    let fx = Fixture::new();
    let proxy = TestProxy::start(&fx);
    // One request, so the per-operation families have samples (and the HSM was called), and
    // one Encrypt, so the per-key version and budget families have samples too.
    assert_eq!(proxy.xks(&fx).health().status, 200);
    proxy.xks(&fx).encrypt_ok(KEY_AES, b"sample", None);
    let exposition = scrape_metrics(&proxy);
    let samples = exported_samples(&exposition);
    let families = exported_families(&exposition);
    assert!(
        samples.contains("xks_bridge_requests_total")
            && samples.contains("xks_bridge_request_duration_seconds_bucket"),
        "the scrape lacks the request metrics:\n{exposition}"
    );

    let dashboard = read("deploy/grafana/xks-bridge.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let alerts = read("docs/prometheus-alerts.yml");
    for (file, text) in [
        ("deploy/grafana/xks-bridge.json", &dashboard),
        ("docs/prometheus-alerts.yml", &alerts),
    ] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} names no xks_bridge_ metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !samples.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics the daemon does not export: {unknown:?}\nexported: {samples:#?}"
        );
    }

    // The other way round: a metric the daemon gains gets a panel.
    let on_dashboard = metric_names(&dashboard);
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| !on_dashboard.iter().any(|n| n.starts_with(f.as_str())))
        .collect();
    assert!(
        missing.is_empty(),
        "exported but on no panel of deploy/grafana/xks-bridge.json: {missing:?}"
    );
}

#[test]
fn metric_names_are_extracted_whole() {
    let names =
        metric_names(r#"prefix xks_bridge_. rate(xks_bridge_requests_total{a="b"}[5m]) / xks_bridge_x_2"#);
    let want: BTreeSet<String> = ["xks_bridge_requests_total", "xks_bridge_x_2"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}
