//! TLS to hookgate's own datastores, against servers the tests start themselves with certificates made here: a
//! PostgreSQL cluster with `ssl = on` that refuses plain TCP, and a `redis-server` that speaks TLS only. libpq's
//! `sslmode`s for the pool and the LISTEN connections, a wrong CA failing start with its reason, the dedupe cache
//! reached through `rediss://` with `redis.tls_ca_file`, and `check-config` refusing bad TLS settings.

use std::time::Duration;

use hookgate::config::{DatabaseSettings, Settings};
use hookgate::startup::{connect_pool, Application};
use secrecy::SecretString;
use uuid::Uuid;

use crate::certs::Ca;
use crate::helpers::{eventually, http_client, post_signed_to, spawn_app_with, test_config_toml, RedisPrefix};
use crate::servers::{TempDir, TlsPostgres, TlsRedis};

/// The test cluster's password for `postgres`; no error message may show it.
const PASSWORD: &str = "pg-secret-4711";

/// The test configuration against the test's own cluster at `url` (no declared destination: nothing to deliver).
fn settings_for(url: &str) -> (Settings, RedisPrefix) {
    let prefix = format!("hgtest-{}", Uuid::new_v4().simple());
    let mut settings = Settings::from_toml(&test_config_toml()).expect("test config");
    settings.database.url = SecretString::from(url.to_owned());
    // Generous on a loaded machine: a handshake is part of every new connection.
    settings.database.connect_timeout_ms = 10_000;
    settings.redis.url = SecretString::from(crate::helpers::redis_url());
    settings.redis.key_prefix = prefix.clone();
    (settings, RedisPrefix(prefix))
}

#[actix_rt::test]
async fn verify_full_carries_the_pool_and_the_listen_connections_to_a_postgresql_that_takes_tls_only() {
    let ca = Ca::new("PostgreSQL CA");
    let pg = TlsPostgres::start(&ca.server(), PASSWORD).await;
    let files = TempDir::new("pg-roots");
    let root = files.write("root.crt", &ca.pem());
    // SCRAM with channel binding required: the connector's `tls-server-end-point` must be right too.
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/hookgate?sslmode=verify-full&sslrootcert={}&channel_binding=require",
        pg.port,
        root.display()
    );
    let (settings, _prefix) = settings_for(&url);
    let app = Application::build(settings).await.expect("start over verify-full");
    let base = format!("http://127.0.0.1:{}", app.port());
    actix_rt::spawn(app.run_until_stopped());

    let answer = post_signed_to(&http_client(), &base, br#"{"over":"tls"}"#, "tls-1").await.unwrap();
    assert_eq!(answer.status, 202, "{answer:?}");
    let db = pg.admin("hookgate").await;
    let events: i64 = db.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(events, 1);

    // The Router's and the Scheduler's LISTEN connections are up (over TCP, hence TLS), and every connection of
    // hookgate's is encrypted (the pool's, the LISTEN connections', the readiness probe's own).
    let admin = pg.admin("postgres").await;
    eventually("both LISTEN connections and the probe's", Duration::from_secs(60), || async {
        let row = admin
            .query_one(
                "SELECT count(*) FILTER (WHERE application_name = 'hookgate' AND query LIKE 'LISTEN %'),
                        count(*) FILTER (WHERE application_name = 'hookgate-health')
                 FROM pg_stat_activity",
                &[],
            )
            .await
            .unwrap();
        let (listening, probe): (i64, i64) = (row.get(0), row.get(1));
        (listening >= 2 && probe == 1).then_some(())
    })
    .await;
    let row = admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name IN ('hookgate', 'hookgate-health')",
            &[],
        )
        .await
        .unwrap();
    let (all, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 4, "the pool's, the LISTEN and the probe's connections: {all}");
    assert_eq!(encrypted, all, "every connection is TLS");
}

/// Connects as start does (`connect_pool`: the pool and its first connection) with `url`.
async fn try_connect(url: &str) -> Result<(), String> {
    let db =
        DatabaseSettings { url: SecretString::from(url.to_owned()), connect_timeout_ms: 10_000, ..Default::default() };
    connect_pool(&db).await.map(drop).map_err(|e| format!("{e:#}"))
}

#[actix_rt::test]
async fn sslmodes_follow_libpq_and_a_wrong_ca_fails_start_with_its_reason() {
    let ca = Ca::new("PostgreSQL CA");
    let pg = TlsPostgres::start(&ca.server(), PASSWORD).await;
    let files = TempDir::new("pg-roots");
    let (right, wrong) = (files.write("right.crt", &ca.pem()), files.write("wrong.crt", &Ca::new("Other CA").pem()));
    let (right, wrong) = (right.display().to_string(), wrong.display().to_string());
    let url = |params: &str| format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/hookgate?{params}", pg.port);
    // The certificate names 127.0.0.1 only; `host` is the name checked, `hostaddr` the address used.
    let keywords = |params: &str| {
        format!(
            "host=pg.test hostaddr=127.0.0.1 port={} user=postgres password={PASSWORD} dbname=hookgate {params}",
            pg.port
        )
    };

    let works = [
        ("no sslmode (prefer)", url("application_name=x")),
        ("prefer, any certificate", url("sslmode=prefer")),
        ("require, any certificate", url("sslmode=require")),
        ("verify-ca", url(&format!("sslmode=verify-ca&sslrootcert={right}"))),
        ("verify-ca, another host name", keywords(&format!("sslmode=verify-ca sslrootcert={right}"))),
        ("require with sslrootcert, another host name", keywords(&format!("sslmode=require sslrootcert={right}"))),
        ("verify-full", url(&format!("sslmode=verify-full&sslrootcert={right}"))),
    ];
    for (case, url) in works {
        try_connect(&url).await.unwrap_or_else(|e| panic!("{case}: {e}"));
    }

    let fails = [
        ("disable: plain text, refused by the server", url("sslmode=disable"), "no encryption".to_owned()),
        (
            "require with sslrootcert verifies the chain",
            url(&format!("sslmode=require&sslrootcert={wrong}")),
            format!(
                "unknown issuer (sslmode=require, trusting the CA certificates in sslrootcert {wrong}, any host name)"
            ),
        ),
        (
            "verify-ca with the wrong CA",
            keywords(&format!("sslmode=verify-ca sslrootcert={wrong}")),
            "TLS handshake with PostgreSQL at pg.test failed: unknown issuer".to_owned(),
        ),
        (
            "verify-full checks the host name",
            keywords(&format!("sslmode=verify-full sslrootcert={right}")),
            "TLS handshake with PostgreSQL at pg.test failed: name mismatch".to_owned(),
        ),
    ];
    for (case, url, needle) in fails {
        let err = try_connect(&url).await.map(|_| "connected").expect_err(case);
        assert!(err.starts_with("Cannot connect to PostgreSQL: "), "{case}: {err}");
        assert!(err.contains(&needle), "{case}: {err}\nexpected it to contain: {needle}");
        assert!(!err.contains(PASSWORD), "{case} shows the password: {err}");
    }

    // The binary itself: start fails at once, exit status 1, the reason on stderr.
    let config = files.write("hookgate.toml", &test_config_toml());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["--config"])
        .arg(&config)
        .arg("serve")
        .env("HOOKGATE_DATABASE__URL", url(&format!("sslmode=verify-full&sslrootcert={wrong}")))
        .env("HOOKGATE_DATABASE__CONNECT_TIMEOUT_MS", "10000")
        .env("HOOKGATE_REDIS__URL", crate::helpers::redis_url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually("hookgate to exit", Duration::from_secs(60), || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let expected = format!(
        "hookgate: Cannot connect to PostgreSQL: TLS handshake with PostgreSQL at 127.0.0.1 failed: unknown issuer \
         (sslmode=verify-full, trusting the CA certificates in sslrootcert {wrong}, for host 127.0.0.1)"
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains(PASSWORD) && !stderr.contains("panicked"), "{stderr}");
}

#[actix_rt::test]
async fn the_dedupe_cache_reaches_redis_over_tls_trusting_its_ca_file() {
    let ca = Ca::new("Redis CA");
    let files = TempDir::new("redis-roots");
    let (right, wrong) = (files.write("right.crt", &ca.pem()), files.write("wrong.crt", &Ca::new("Other CA").pem()));
    let redis = TlsRedis::start(&ca.server(), &right).await;

    let app = spawn_app_with(|s| {
        s.redis.url = SecretString::from(redis.url());
        s.redis.tls_ca_file = Some(right.clone());
    })
    .await;
    app.wait_for_readiness("Redis up over TLS", |a| a.json["redis"] == "up").await;
    assert_eq!(app.post_signed(br#"{"cached":"over tls"}"#, "tls-key").await.status, 202);
    // The key the cache remembers after COMMIT lands in the TLS Redis.
    let conn = redis.client(&right).get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}:idem:*:tls-key", app.settings.redis.key_prefix);
    let keys = eventually("the dedupe key in the TLS Redis", Duration::from_secs(30), || {
        let (mut conn, pattern) = (conn.clone(), pattern.clone());
        async move {
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.ok()?;
            (!keys.is_empty()).then_some(keys)
        }
    })
    .await;
    assert_eq!(keys.len(), 1, "{keys:?}");

    // The same constructor, trusting another CA, reaches nothing: the server's certificate is refused.
    let mut other = app.settings.redis.clone();
    other.tls_ca_file = Some(wrong);
    let err = other.client().unwrap().get_multiplexed_async_connection().await.map(drop).unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn check_config_refuses_an_unreadable_ca_file_and_a_bad_sslmode_naming_them() {
    let files = TempDir::new("check-config");
    let cases = [
        (
            "[database]\nurl = \"postgres://hg:pg-secret-4711@db/hg?sslmode=verify-full&sslrootcert=/nonexistent/root.crt\"",
            "database.url: sslrootcert: cannot read /nonexistent/root.crt",
        ),
        ("[database]\nurl = \"postgres://hg:pg-secret-4711@db/hg?sslmode=verify-everything\"", "sslmode must be"),
        (
            "[redis]\nurl = \"rediss://cache:6380\"\ntls_ca_file = \"/nonexistent/redis.crt\"",
            "redis.tls_ca_file: cannot read /nonexistent/redis.crt",
        ),
    ];
    for (toml, needle) in cases {
        let file = files.write(&format!("{}.toml", Uuid::new_v4().simple()), toml);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")) {
            cmd.env_remove(k);
        }
        let out = cmd.arg("check-config").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(needle), "{toml}: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{toml}: {stderr}");
    }
}
