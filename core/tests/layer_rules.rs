//! The layer rules, read off the source: each fails naming the offending file and line, and each detector has a
//! test of its own, so that a rule cannot pass by seeing nothing.
//!
//! - SQL, and the meaning of its failures (`StoreError`), live in `hookgate-store`: a statement or a match on the
//!   driver's error types in a crate above the store fails.
//! - No crate re-exports another crate's items (each has one home, the crate that owns it): a `pub use hookgate_…` in
//!   any of the four crates fails.
//! - Every metric is recorded by an internal event (`core/src/internal_events.rs`), and the README lists them all.
//!
//! (`layering.rs` holds the fourth rule, core's dependency list.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The four crates.
const CRATES: &[&str] = &["core/src", "store/src", "actors/src", "src"];
/// The crates above the store.
const LAYERS_ABOVE: &[&str] = &["core/src", "actors/src", "src"];
/// Where every metric is recorded.
const EVENTS: &str = "core/src/internal_events.rs";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every Rust file of `crates`, with its path relative to the workspace root and its text.
fn sources(crates: &[&str]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for krate in crates {
        rust_files(&root().join(krate), &mut files);
    }
    assert!(files.len() > 20, "the workspace was found: {} files", files.len());
    files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
            (rel, std::fs::read_to_string(f).unwrap())
        })
        .collect()
}

/// The lines of `crates` that `matches`, as `file:line: code`.
fn offending_lines(crates: &[&str], skip: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
    sources(crates)
        .iter()
        .filter(|(rel, _)| rel != skip)
        .flat_map(|(rel, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| matches(l))
                .map(|(n, l)| format!("{rel}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

// SQL lives in the store.

/// Whether a line of code (not a comment) holds a SQL statement's keywords.
fn is_sql(line: &str) -> bool {
    let code = line.trim_start();
    if code.starts_with("//") {
        return false;
    }
    let followed_by_name = |keyword: &str| {
        code.match_indices(keyword).any(|(i, _)| {
            code[i + keyword.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "(*{$".contains(c))
        })
    };
    ["INSERT INTO ", "DELETE FROM ", "pg_notify(", "LISTEN {"].iter().any(|k| code.contains(k))
        || followed_by_name("SELECT ")
        || followed_by_name("UPDATE ")
}

/// Whether a line of code (not a comment) names the driver's or the pool's error types.
fn names_driver_errors(line: &str) -> bool {
    let code = line.trim_start();
    !code.starts_with("//")
        && ["tokio_postgres::Error", "tokio_postgres::error", "PoolError", "SqlState"].iter().any(|t| code.contains(t))
}

#[test]
fn sql_lives_in_the_store_only() {
    let offenders = offending_lines(LAYERS_ABOVE, "", is_sql);
    assert!(offenders.is_empty(), "SQL outside hookgate-store (statements belong there): {offenders:#?}");
}

#[test]
fn only_the_store_reads_driver_errors() {
    let offenders = offending_lines(LAYERS_ABOVE, "", names_driver_errors);
    assert!(offenders.is_empty(), "failures are classified once, as StoreError: {offenders:#?}");
}

#[test]
fn the_sql_detector_sees_statements_and_not_prose() {
    assert!(is_sql(r#"    "SELECT id FROM deliveries WHERE state = 'pending'","#));
    assert!(is_sql("UPDATE deliveries d"));
    assert!(is_sql(r#"tx.execute("SELECT pg_notify($1, 'x')", &[])"#));
    assert!(is_sql("INSERT INTO events (id) VALUES ($1)"));
    assert!(is_sql(r#"client.simple_query("SELECT 1")"#));
    assert!(is_sql(r#"&format!("SELECT {COLUMNS} FROM replay_jobs")"#));
    assert!(!is_sql("//! LISTEN `hookgate_catalog` and SELECT nothing"));
    assert!(!is_sql("let update = UPDATE_INTERVAL;"));
    assert!(!is_sql("/// Answers the SELECT's rows."));
}

#[test]
fn the_driver_error_detector_sees_types_and_not_prose() {
    assert!(names_driver_errors("impl From<tokio_postgres::Error> for AdminError {"));
    assert!(!names_driver_errors("/// tokio_postgres::Error becomes a StoreError in the store"));
}

// No crate re-exports another crate's items.

/// Whether a line of code (not a comment) re-exports an item of a hookgate crate: `pub use hookgate_…`, with any
/// visibility (`pub(crate)` makes a second path too) and an optional leading `::` or `{`.
fn is_reexport(line: &str) -> bool {
    let code = line.trim_start();
    if code.starts_with("//") {
        return false;
    }
    let Some(rest) = code.strip_prefix("pub") else { return false };
    let rest = match rest.trim_start().strip_prefix('(') {
        Some(scoped) => match scoped.split_once(')') {
            Some((_, after)) => after,
            None => return false,
        },
        None => rest,
    };
    let Some(rest) = rest.trim_start().strip_prefix("use") else { return false };
    if !rest.starts_with(char::is_whitespace) {
        return false;
    }
    let path = rest.trim_start().trim_start_matches(['{', ':', ' ']);
    path.starts_with("hookgate_")
}

#[test]
fn no_crate_reexports_another_crates_items() {
    let imports: usize = sources(CRATES)
        .iter()
        .map(|(_, text)| text.lines().filter(|l| l.trim_start().starts_with("use hookgate_")).count())
        .sum();
    assert!(imports > 10, "the scan read the code: {imports} private imports of a hookgate crate");
    let offenders = offending_lines(CRATES, "", is_reexport);
    assert!(
        offenders.is_empty(),
        "re-exports of another crate's items (import them from the crate that owns them instead): {offenders:#?}"
    );
}

#[test]
fn the_reexport_detector_sees_reexports_and_not_imports_or_prose() {
    assert!(is_reexport("pub use hookgate_core::jq;"));
    assert!(is_reexport("    pub use hookgate_store::{listen, Pool};"));
    assert!(is_reexport("pub use hookgate_core::delivery::{Job, RoutingInput, ORPHAN_REASON};"));
    assert!(is_reexport("pub(crate) use hookgate_store::channels::CATALOG_CHANNEL;"));
    assert!(is_reexport("pub use ::hookgate_actors::janitor::RetentionSettings;"));
    assert!(is_reexport("pub use {hookgate_core::backoff::Backoff};"));
    assert!(is_reexport("pub use hookgate_store as store;"));
    assert!(!is_reexport("use hookgate_core::jq::{self, JqProgram};"));
    assert!(!is_reexport("pub use cache::{Cache, CacheConfig};"));
    assert!(!is_reexport("pub use crate::supervision::RestartPolicy;"));
    assert!(!is_reexport("// pub use hookgate_core::jq; (removed)"));
    assert!(!is_reexport("//! no crate writes `pub use hookgate_core::jq`"));
    assert!(!is_reexport("pub user: hookgate_core::User,"));
    assert!(!is_reexport("pub fn uses(x: hookgate_core::jq::JqProgram) {}"));
}

// Every metric is recorded by an internal event.

/// Whether a line of code (not a comment) records a metric.
fn records_metric(line: &str) -> bool {
    let code = line.trim_start();
    !code.starts_with("//") && ["counter!(", "gauge!(", "histogram!("].iter().any(|m| code.contains(m))
}

/// The metric names recorded in `text`: the first string literal of each `counter!`, `gauge!`, `histogram!`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for macro_call in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
        for (i, _) in text.match_indices(macro_call) {
            let rest = &text[i + macro_call.len()..];
            names.insert(rest[..rest.find('"').expect("a closed literal")].to_owned());
        }
    }
    names
}

#[test]
fn metrics_are_recorded_only_by_internal_events() {
    let offenders = offending_lines(CRATES, EVENTS, records_metric);
    assert!(offenders.is_empty(), "metrics belong to an internal event ({EVENTS}): {offenders:#?}");
}

#[test]
fn the_readme_lists_every_metric() {
    let events = std::fs::read_to_string(root().join(EVENTS)).unwrap();
    let names = metric_names(&events);
    assert!(names.len() > 20, "the events' metrics were found: {names:?}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let missing: Vec<&String> = names.iter().filter(|n| !readme.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "README.md does not list {missing:?}");
}

#[test]
fn the_detectors_see_metrics_and_not_prose() {
    assert!(records_metric(r#"    counter!("hookgate_x_total").increment(1);"#));
    assert!(records_metric(r#"metrics::histogram!("hookgate_y_seconds").record(1.0);"#));
    assert!(!records_metric("// counter!(\"hookgate_x_total\") is recorded by the event"));
    let names = metric_names(r#"gauge!("a_b", "l" => x).set(1.0); counter!("c_total").increment(1);"#);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a_b", "c_total"]);
}
