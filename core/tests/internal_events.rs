//! The internal-events rule: every metric is recorded in `core/src/internal_events.rs`, by the event that also logs
//! it, and the README lists every metric those events record.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &["core/src", "store/src", "actors/src", "src"];
const EVENTS: &str = "core/src/internal_events.rs";

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

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root")
}

#[test]
fn metrics_are_recorded_only_by_internal_events() {
    let mut files = Vec::new();
    for krate in CRATES {
        rust_files(&root().join(krate), &mut files);
    }
    assert!(files.len() > 20, "the workspace was found: {} files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| !f.ends_with(EVENTS))
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let rel = f.strip_prefix(root()).unwrap().display().to_string();
            text.lines()
                .enumerate()
                .filter(|(_, l)| records_metric(l))
                .map(|(n, l)| format!("{rel}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
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
