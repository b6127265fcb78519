//! The layer rule, enforced: `hookgate-core` does no I/O, which its dependency list shows.

/// Crates that do I/O (or run actors) and so belong to the layers above. (`tracing` is a facade: the subscriber
/// that writes is installed by the server.)
const FORBIDDEN: &[&str] = &[
    "tokio-postgres",
    "deadpool-postgres",
    "postgres",
    "redis",
    "actix",
    "actix-rt",
    "actix-web",
    "actix-tls",
    "actix-service",
    "awc",
    "hickory-resolver",
    "reqwest",
    "hyper",
];

/// The `[dependencies]` table of core's manifest: each line `name = …` up to the next table.
fn dependencies() -> Vec<(String, String)> {
    let manifest = include_str!("../Cargo.toml");
    let mut deps = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, spec)) = line.split_once('=') {
                // `serde.workspace = true` names `serde`.
                let name = name.trim().trim_end_matches(".workspace");
                deps.push((name.to_owned(), spec.trim().to_owned()));
            }
        }
    }
    deps
}

#[test]
fn core_depends_on_no_io_crate() {
    let deps = dependencies();
    assert!(deps.iter().any(|(n, _)| n == "serde"), "the manifest was read: {deps:?}");
    for (name, _) in &deps {
        assert!(!FORBIDDEN.contains(&name.as_str()), "hookgate-core must not depend on `{name}` (it does I/O)");
    }
}

#[test]
fn core_uses_tokio_only_for_timers_and_channels() {
    let deps = dependencies();
    let (_, tokio) = deps.iter().find(|(n, _)| n == "tokio").expect("tokio is listed (jq's time budget)");
    assert!(tokio.contains("default-features = false"), "tokio without its default features: {tokio}");
    let features = tokio.split("features").nth(1).unwrap_or_default();
    for feature in ["net", "fs", "process", "io-util", "io-std", "rt", "full", "signal"] {
        assert!(!features.contains(&format!("\"{feature}\"")), "tokio feature `{feature}` does I/O: {tokio}");
    }
}
