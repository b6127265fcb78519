//! deploy/'s alerts and Grafana dashboard, offline: every PromQL expression parses, and every metric it reads is
//! one hookgate exposes (the README's list) or one Prometheus itself provides. (scripts/validate-manifests.sh checks
//! the same files against the PrometheusRule schema and the dashboard's structure.)

use std::collections::BTreeSet;
use std::path::Path;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};

const COMPONENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/components/monitoring");
/// Series Prometheus (and its Kubernetes service discovery) provides, not hookgate.
const EXTERNAL: &[&str] = &["up"];

/// The metric names `expr` reads.
fn metrics_of(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            let vs = match e {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            let name = vs.name.clone().ok_or_else(|| format!("a selector without a metric name: {vs}"))?;
            self.0.insert(name);
            Ok(true)
        }
    }
    let ast = parser::parse(expr)?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &ast)?;
    Ok(names.0)
}

/// The family a series name belongs to (`…_bucket`, `…_sum` and `…_count` of a histogram).
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// Checks `expr` (from `what`) and answers the metric families it reads.
fn check(expr: &str, what: &str, readme: &str) -> BTreeSet<String> {
    let names = metrics_of(expr).unwrap_or_else(|e| panic!("{what}: {expr}: {e}"));
    assert!(!names.is_empty(), "{what}: {expr} reads no metric");
    for name in &names {
        let family = family(name);
        assert!(
            EXTERNAL.contains(&family) || readme.contains(&format!("`{family}")),
            "{what}: {family} is not a metric the README lists"
        );
    }
    names.iter().map(|n| family(n).to_owned()).collect()
}

#[test]
fn every_alert_parses_and_reads_metrics_hookgate_exposes() {
    let rules = std::fs::read_to_string(Path::new(COMPONENT).join("prometheusrule.yaml")).unwrap();
    let readme = readme();
    let mut alerts = Vec::new();
    let mut current = None;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            current = Some(name.to_owned());
            alerts.push(name.to_owned());
        }
        if let Some(expr) = line.strip_prefix("expr: ") {
            // One line each: folded YAML scalars render differently in kustomize and in other YAML readers.
            assert!(!expr.starts_with('>') && !expr.starts_with('|'), "{current:?}: write the expr on one line");
            check(expr, current.as_deref().unwrap_or("a rule"), &readme);
        }
    }
    for wanted in [
        "HookgateBacklogAgeHigh",
        "HookgateDeliveriesDead",
        "HookgateCircuitOpen",
        "HookgateIngestRefusing",
        "HookgateNotReady",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "no {wanted} alert in {alerts:?}");
    }
}

#[test]
fn every_dashboard_query_parses_and_reads_metrics_hookgate_exposes() {
    let text = std::fs::read_to_string(Path::new(COMPONENT).join("hookgate-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let readme = readme();
    // Grafana's variables, as Grafana substitutes them.
    let expand = |e: &str| e.replace("$__rate_interval", "1m").replace("$destination", ".*").replace("$job", ".*");
    let mut read = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("a target without expr: {target}"));
            read.extend(check(&expand(expr), panel["title"].as_str().unwrap_or("a panel"), &readme));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            let metric = query.trim_start_matches("label_values(").split(',').next().unwrap();
            assert!(readme.contains(&format!("`{metric}")), "variable {}: {metric} is not listed", variable["name"]);
        }
    }
    // What the issue asks a dashboard to show.
    for wanted in [
        "hookgate_ingest_requests_total",
        "hookgate_ingest_duration_seconds",
        "hookgate_delivery_attempts_total",
        "hookgate_delivery_attempt_seconds",
        "hookgate_destination_backlog",
        "hookgate_destination_oldest_pending_seconds",
        "hookgate_deliveries_dead_total",
        "hookgate_circuit_state",
        "hookgate_ready",
        "process_resident_memory_bytes",
    ] {
        assert!(read.contains(wanted), "the dashboard shows no {wanted}: {read:?}");
    }
}

#[test]
fn the_checks_catch_bad_queries() {
    assert!(metrics_of("sum(rate(hookgate_x_total[5m]").is_err(), "unbalanced parentheses");
    assert_eq!(
        metrics_of("histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket[5m]))) > b").unwrap(),
        BTreeSet::from(["a_seconds_bucket".to_owned(), "b".to_owned()])
    );
    assert_eq!(family("a_seconds_bucket"), "a_seconds");
    let result = std::panic::catch_unwind(|| check("hookgate_not_a_metric > 0", "test", "`hookgate_other`"));
    assert!(result.is_err(), "an unknown metric is refused");
}
