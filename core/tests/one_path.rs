//! The one-path rule: each item has one path, in the crate that owns it; no crate re-exports another's items. A
//! crate that needs another crate's item imports it privately (`use hookgate_core::jq;`), and its callers import it
//! from the owner too. A `pub use hookgate_…` in any of the four crates fails this test.

use std::path::{Path, PathBuf};

/// The workspace's crates, each of which owns its items.
const CRATES: &[&str] = &["core/src", "store/src", "actors/src", "src"];

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
fn no_crate_reexports_another_crates_items() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let mut files = Vec::new();
    for krate in CRATES {
        rust_files(&root.join(krate), &mut files);
    }
    assert!(files.len() > 20, "the workspace was found: {} files", files.len());
    let mut private_imports = 0;
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("use hookgate_") {
                private_imports += 1;
            }
            if is_reexport(line) {
                offenders.push(format!("{rel}:{}: `{}`", n + 1, line.trim()));
            }
        }
    }
    assert!(private_imports > 10, "the scan read the code: {private_imports} private imports of a hookgate crate");
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
