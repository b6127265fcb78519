//! Records the commit hookgate is built from (`hookgate_build_info{commit}`): `HOOKGATE_COMMIT` when set (a build
//! without its git history, e.g. in a container), else `git rev-parse`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=HOOKGATE_COMMIT");
    let commit = std::env::var("HOOKGATE_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // Rebuilt when HEAD moves: the file HEAD names (a branch) changes at each commit.
        for path in ["HEAD", "packed-refs"] {
            if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(p) = git(&["rev-parse", "--git-path", &head_ref]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    println!("cargo:rustc-env=HOOKGATE_COMMIT={}", commit.as_deref().unwrap_or("unknown"));
}
