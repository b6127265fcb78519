//! The dedupe windows nest (Redis's ≤ PostgreSQL's ≤ the retention), checked where they are set: at configuration
//! load (`check-config` and start) and when the admin API saves a source.

use serde_json::json;

use crate::admin::{with_tokens, WRITE};
use crate::helpers::{hookgate_check_config, spawn_app_with, test_config_toml};

#[test]
fn check_config_refuses_windows_that_do_not_nest_naming_the_settings_and_shows_those_that_do() {
    let good = hookgate_check_config(&test_config_toml(), &[]);
    assert!(good.status.success(), "{good:?}");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        stdout.contains(
            "dedupe windows: Redis 86400 s ≤ PostgreSQL 604800 s (retention.dedupe_window_secs) ≤ retention 30 days"
        ),
        "{stdout}"
    );

    let cases = [
        (
            format!("{}\n[retention]\ndedupe_window_secs = 3600\n", test_config_toml()),
            vec![],
            "redis.dedupe_ttl_secs (86400) must be at most retention.dedupe_window_secs (3600)",
        ),
        (
            test_config_toml(),
            vec![("HOOKGATE_RETENTION__DAYS", "3")],
            "retention.dedupe_window_secs (604800) must be at most retention.days (3 days = 259200 s)",
        ),
        (
            test_config_toml().replace("slug = \"open\"", "slug = \"open\"\n        dedupe_window_secs = 700000"),
            vec![],
            "source \"open\": dedupe_window_secs (700000) must be at most retention.dedupe_window_secs (604800)",
        ),
    ];
    for (toml, env, reason) in cases {
        let out = hookgate_check_config(&toml, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{reason}: {out:?}");
        assert!(stderr.contains(reason), "expected {reason:?} in {stderr}");
        assert!(!stderr.contains("test-secret"), "{stderr}");
    }
}

#[actix_rt::test]
async fn the_admin_api_refuses_a_source_whose_redis_window_outlasts_postgresql_s() {
    let app = spawn_app_with(|s| {
        with_tokens(s);
        s.redis.dedupe_ttl_secs = 600;
        s.retention.dedupe_window_secs = 3600;
    })
    .await;
    let refused =
        app.admin("post", "/sources", Some(WRITE), Some(json!({"slug": "long", "dedupe_window_secs": 3601}))).await;
    refused.assert_problem(422, "validation-failed");
    let detail = refused.json["detail"].as_str().unwrap();
    assert!(
        detail.contains("dedupe_window_secs (3601) must be at most retention.dedupe_window_secs (3600)"),
        "{detail}"
    );

    let created = app.admin_ok("post", "/sources", Some(json!({"slug": "long", "dedupe_window_secs": 3600}))).await;
    assert_eq!(created["source"]["dedupe_window_secs"], 3600);
    let id = created["source"]["id"].as_str().unwrap();
    let update = json!({"slug": "long", "dedupe_window_secs": 7200});
    let refused = app.admin("put", &format!("/sources/{id}"), Some(WRITE), Some(update)).await;
    refused.assert_problem(422, "validation-failed");
    assert!(refused.json["detail"].as_str().unwrap().contains("retention.dedupe_window_secs"), "{refused:?}");
}
