//! Turning [`Stats`] into table rows and JSON.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::baseline::BaselineResult;
use crate::load::Stats;

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// p50, p90, p99, p99.9 and max in milliseconds, and the count.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p99_9_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

/// `p50 / p90 / p99 / p99.9 / max` in ms, for the table.
pub fn latency_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let q = |x| ms(h.value_at_quantile(x));
    format!("{} / {} / {} / {} / {}", q(0.5), q(0.9), q(0.99), q(0.999), ms(h.max()))
}

/// One run as JSON, with its rate as a share of the baseline when known.
pub fn stats_json(s: &Stats, baseline: Option<&BaselineResult>) -> Value {
    let rate = s.ok_rate();
    let total = s.total().max(1) as f64;
    json!({
        "seconds": s.elapsed.as_secs_f64(),
        "requests": s.total(),
        "ok": s.ok_count(),
        "ok_per_s": rate.round(),
        "status_503": s.count(503),
        "share_503": s.count(503) as f64 / total,
        "errors": s.errors,
        "statuses": s.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "latency_ok": latency_json(&s.ok),
        "latency_503": latency_json(&s.unavailable),
        "service_time": latency_json(&s.service),
        "service_time_503": latency_json(&s.service_503),
        "ratio_to_copy": baseline.map(|b| rate / b.copy_rows_per_s),
        "ratio_to_insert": baseline.map(|b| rate / b.insert_rows_per_s),
    })
}

/// A plain-text table with aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// A row for an ingest run: name, offered load, 2xx/s, 503 share, ok latency, and ratios to the baselines.
pub fn ingest_row(name: &str, offered: &str, s: &Stats, baseline: Option<&BaselineResult>) -> Vec<String> {
    let rate = s.ok_rate();
    let ratio = |b: Option<f64>| b.map_or("-".into(), |b| format!("{:.2}", rate / b));
    vec![
        name.into(),
        offered.into(),
        format!("{rate:.0}"),
        format!("{:.1} %", 100.0 * s.count(503) as f64 / s.total().max(1) as f64),
        latency_text(&s.ok),
        ratio(baseline.map(|b| b.copy_rows_per_s)),
        ratio(baseline.map(|b| b.insert_rows_per_s)),
    ]
}

pub const INGEST_HEADER: [&str; 7] =
    ["workload", "offered", "2xx/s", "503", "2xx latency ms p50/p90/p99/p99.9/max", "/COPY", "/INSERT"];
