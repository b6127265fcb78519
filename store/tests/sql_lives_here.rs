//! The layer rule for SQL: every statement lives in `hookgate-store`, and so does the meaning of its failures
//! (`StoreError`). A file above the store that holds a statement, or that matches on the driver's error types,
//! fails this test.

use std::path::{Path, PathBuf};

/// The crates above the store.
const LAYERS_ABOVE: &[&str] = &["core/src", "actors/src", "src"];

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

#[test]
fn sql_lives_in_the_store_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let mut files = Vec::new();
    for layer in LAYERS_ABOVE {
        rust_files(&root.join(layer), &mut files);
    }
    assert!(files.len() > 20, "the workspace was found: {} files", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let rel = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            text.lines().find(|l| is_sql(l)).map(|line| format!("{rel}: `{}`", line.trim()))
        })
        .collect();
    assert!(offenders.is_empty(), "SQL outside hookgate-store (statements belong there): {offenders:#?}");
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

/// Whether a line of code (not a comment) names the driver's or the pool's error types.
fn names_driver_errors(line: &str) -> bool {
    let code = line.trim_start();
    !code.starts_with("//")
        && ["tokio_postgres::Error", "tokio_postgres::error", "PoolError", "SqlState"].iter().any(|t| code.contains(t))
}

#[test]
fn only_the_store_reads_driver_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let mut files = Vec::new();
    for layer in LAYERS_ABOVE {
        rust_files(&root.join(layer), &mut files);
    }
    let offenders: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let rel = file.strip_prefix(root).unwrap().display().to_string();
            text.lines().find(|l| names_driver_errors(l)).map(|l| format!("{rel}: `{}`", l.trim()))
        })
        .collect();
    assert!(offenders.is_empty(), "failures are classified once, as StoreError: {offenders:#?}");
    assert!(names_driver_errors("impl From<tokio_postgres::Error> for AdminError {"));
    assert!(!names_driver_errors("/// tokio_postgres::Error becomes a StoreError in the store"));
}
