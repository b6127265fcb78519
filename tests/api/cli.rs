//! The `hookgate` binary's commands.

use std::process::Command;
use std::time::Duration;

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

// The operator commands, against a running node's admin API.

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an operator command against `app` with `token` in HOOKGATE_TOKEN (off the runtime's thread).
async fn operator(app: &crate::helpers::TestApp, token: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = hookgate();
    cmd.args(args).env("HOOKGATE_URL", &app.address).env("HOOKGATE_TOKEN", token);
    tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[actix_rt::test]
async fn tail_prints_the_events_stored_after_it_started() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let app = crate::helpers::spawn_app_with(crate::tail::quick_tail).await;
    let mut cmd = hookgate();
    cmd.args(["tail", "--url", &app.address])
        .env("HOOKGATE_TOKEN", crate::admin::READ)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = Child(cmd.spawn().unwrap());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = child.0.stdout.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    // Until the tail is seen by the publishing side, events are not published: post until one is printed.
    let mut n = 0;
    crate::helpers::eventually("the tail to print an event", Duration::from_secs(30), || {
        n += 1;
        let (body, lines) = (format!(r#"{{"marker": "warm-{n}"}}"#), lines.clone());
        let app = &app;
        async move {
            app.post_signed(body.as_bytes(), &format!("warm-{n}")).await;
            lines.lock().unwrap().iter().any(|l| l.contains("warm-")).then_some(())
        }
    })
    .await;
    let id = app.post_signed(br#"{"marker": "from-the-cli"}"#, "cli-key").await.id();
    let line = crate::helpers::eventually("the event's line", Duration::from_secs(30), || {
        let found = lines.lock().unwrap().iter().find(|l| l.contains(&id.to_string())).cloned();
        async move { found }
    })
    .await;
    assert!(line.contains(" hmac - "), "{line}");
    assert!(line.ends_with(r#"{"marker":"from-the-cli"}"#), "{line}");
    assert!(child.0.try_wait().unwrap().is_none(), "the tail keeps running");
}

#[actix_rt::test]
async fn events_list_and_get_replay_and_deliveries_retry_speak_to_the_admin_api() {
    use crate::receiver::{Receiver, Reply};
    let receiver = Receiver::start(vec![], Some(Reply::Status(500)));
    let url = receiver.url.clone();
    let app = crate::helpers::spawn_app_with(move |s| {
        crate::admin::with_tokens(s);
        let mut d = crate::helpers::destination("sink", &url);
        d.retry.max_attempts = 1;
        s.destinations.push(d);
        s.routes.push(crate::helpers::route("hmac-to-sink", "hmac", "sink"));
    })
    .await;
    let id = app.post_signed(br#"{"marker": "listed"}"#, "listed-key").await.id();
    app.wait_count("a dead delivery", "SELECT count(*) FROM deliveries WHERE state = 'dead'", 1).await;
    let (read, write) = (crate::admin::READ, crate::admin::WRITE);

    let list = stdout(&operator(&app, read, &["events", "list", "--source", "hmac", "--limit", "5"]).await);
    assert!(list.lines().next().is_some_and(|l| l.starts_with(&id.to_string())), "{list}");
    let page: serde_json::Value =
        serde_json::from_str(&stdout(&operator(&app, read, &["events", "list", "--json"]).await)).unwrap();
    assert_eq!(page["items"][0]["id"], id.to_string());

    let detail: serde_json::Value =
        serde_json::from_str(&stdout(&operator(&app, read, &["events", "get", &id.to_string()]).await)).unwrap();
    assert_eq!(detail["id"], id.to_string());
    assert_eq!(detail["deliveries"][0]["state"], "dead");
    let delivery = detail["deliveries"][0]["id"].as_str().unwrap().to_owned();

    let retried = stdout(&operator(&app, write, &["deliveries", "retry", &delivery]).await);
    assert!(retried.starts_with(&format!("{delivery} pending attempts=1")), "{retried}");

    let replayed = stdout(&operator(&app, write, &["replay", &id.to_string(), "--destination", "sink"]).await);
    assert!(replayed.lines().count() == 1 && replayed.contains(" pending attempts=0 "), "{replayed}");
    let n: i64 = app.db.query_one("SELECT count(*) FROM deliveries", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);

    // A problem of the API, printed with its title and detail.
    let unknown = operator(&app, write, &["replay", &id.to_string(), "--destination", "nowhere"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).starts_with("hookgate: "), "{unknown:?}");
    let forbidden = operator(&app, read, &["deliveries", "retry", &delivery]).await;
    assert_eq!(forbidden.status.code(), Some(1), "{forbidden:?}");
    assert_eq!(String::from_utf8_lossy(&forbidden.stderr), "hookgate: Forbidden: this token may only read\n");
}

#[actix_rt::test]
async fn a_wrong_token_or_no_node_ends_the_commands_with_the_reason_and_exit_code_1() {
    let app = crate::helpers::spawn_app_with(crate::admin::with_tokens).await;
    for args in [&["events", "list"][..], &["tail"], &["events", "get", &uuid::Uuid::now_v7().to_string()]] {
        let out = operator(&app, "not-a-configured-token-at-all", args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "hookgate: Unauthorized: a valid bearer token is required\n",
            "{args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", taken.local_addr().unwrap());
    drop(taken);
    let mut cmd = hookgate();
    cmd.args(["events", "list", "--url", &closed]).env("HOOKGATE_TOKEN", crate::admin::READ);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(&format!("hookgate: cannot reach hookgate at {closed}: ")),
        "{out:?}"
    );
}
