//! The `hookgate` binary's commands.

use std::process::Command;

use crate::helpers::{connect, test_config_toml, TestDb};

fn hookgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookgate"));
    // Keep the caller's environment from leaking into the configuration under test.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")) {
        cmd.env_remove(k);
    }
    cmd
}

fn write_temp(contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("hookgate-test-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn check_config_accepts_a_good_file_and_names_its_sources() {
    let path = write_temp(&test_config_toml());
    let out = hookgate().arg("check-config").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("configuration OK (2 source(s): hmac, open)"), "{stdout}");
    assert!(!stdout.contains("test-secret"), "{stdout}");
}

#[test]
fn check_config_refuses_a_bad_file_with_the_reason_and_no_secret() {
    let bad = test_config_toml().replace("slug = \"open\"", "slug = \"Open Source\"");
    let path = write_temp(&bad);
    let out = hookgate().arg("check-config").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr.contains("Open Source") && stderr.contains("slug"), "{stderr}");
    assert!(!stderr.contains("test-secret"), "{stderr}");

    let missing = hookgate().arg("check-config").arg("/nonexistent/hookgate.toml").output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}

#[actix_rt::test]
async fn migrate_applies_the_schema_once() {
    let db = TestDb::create().await;
    let run = || hookgate().args(["migrate"]).env("HOOKGATE_DATABASE__URL", db.url()).output().unwrap();
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let expected = format!("applied {} migration(s)", hookgate_store::migrations::MIGRATION_COUNT);
    assert!(String::from_utf8_lossy(&first.stdout).contains(&expected), "{first:?}");
    let second = run();
    assert!(second.status.success(), "{second:?}");
    assert!(String::from_utf8_lossy(&second.stdout).contains("applied 0 migration(s)"), "{second:?}");
    let client = connect(&db.url()).await;
    let tables: i64 = client
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('sources', 'events', 'destinations', 'routes', 'deliveries', 'attempts')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 6);
}

#[test]
fn generate_signing_key_prints_a_key_pair_whose_halves_belong_together() {
    let out = hookgate().arg("generate-signing-key").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let word = |prefix: &str| {
        stdout.split_whitespace().find(|w| w.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {stdout}"))
    };
    let (secret, public) = (word("whsk_"), word("whpk_"));
    let key = hookgate_core::signing::SigningKey::parse(secret).expect("a usable signing key");
    assert_eq!(key.public_key(), public);
}

#[test]
fn serve_on_a_port_already_taken_ends_with_the_reason_and_no_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = write_temp(&test_config_toml().replace("port = 0", &format!("port = {port}")));
    let out = hookgate().arg("--config").arg(&path).arg("serve").output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains(&format!("Failed to bind 127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
