//! The durability promise under `kill -9`: every event that got a 2xx is in PostgreSQL, stored once.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use crate::helpers::{connect, eventually, http_client, redis_url, sign, test_config_toml, RedisPrefix, TestDb};

const CYCLES: usize = 5;
const POSTERS: usize = 16;
/// Acknowledged events per cycle before the kill.
const ACKS_PER_CYCLE: usize = 150;

struct Node {
    child: Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_node(config: &std::path::Path, db_url: &str, prefix: &str) -> Node {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookgate"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HOOKGATE_")) {
        cmd.env_remove(k);
    }
    let verbose = std::env::var("TEST_LOG").is_ok();
    let child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .env("HOOKGATE_DATABASE__URL", db_url)
        .env("HOOKGATE_REDIS__URL", redis_url())
        .env("HOOKGATE_REDIS__KEY_PREFIX", prefix)
        .env("HOOKGATE_SERVER__PORT", port.to_string())
        .env("RUST_LOG", if verbose { "info" } else { "error" })
        .stdout(if verbose { Stdio::inherit() } else { Stdio::null() })
        .stderr(if verbose { Stdio::inherit() } else { Stdio::null() })
        .spawn()
        .expect("spawn hookgate");
    let node = Node { child, base: format!("http://127.0.0.1:{port}") };
    let http = http_client();
    eventually("the node to answer /healthz", Duration::from_secs(60), || {
        let req = http.get(format!("{}/healthz", node.base)).send();
        async move { req.await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
    })
    .await;
    node
}

#[actix_rt::test]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let db = TestDb::create().await;
    let prefix = format!("hgtest-{}", Uuid::new_v4().simple());
    let _redis = RedisPrefix(prefix.clone());
    let config = std::env::temp_dir().join(format!("hookgate-crash-{}.toml", Uuid::new_v4().simple()));
    std::fs::write(&config, test_config_toml().replace("[server]", "[server]\nlog_format = \"json\"")).unwrap();

    let acked: Arc<Mutex<HashMap<String, Uuid>>> = Arc::default();
    for cycle in 0..CYCLES {
        let mut node = start_node(&config, &db.url(), &prefix).await;
        let stop = Arc::new(AtomicBool::new(false));
        let target = acked.lock().unwrap().len() + ACKS_PER_CYCLE;
        let posters: Vec<_> = (0..POSTERS)
            .map(|p| {
                let (base, stop, acked) = (node.base.clone(), stop.clone(), acked.clone());
                actix_rt::spawn(async move {
                    let http = http_client();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let key = format!("c{cycle}-p{p}-{seq}");
                        let body = format!(r#"{{"key":"{key}"}}"#);
                        let sent = http
                            .post(format!("{base}/ingest/hmac"))
                            .insert_header(("Content-Type", "application/json"))
                            .insert_header(("X-Signature", sign(body.as_bytes())))
                            .insert_header(("X-Request-Id", key.as_str()))
                            .send_body(body)
                            .await;
                        let Ok(mut resp) = sent else { break };
                        if resp.status().as_u16() == 202 {
                            let json: serde_json::Value = resp.json().await.unwrap_or_default();
                            if let Some(id) = json["id"].as_str().and_then(|s| s.parse().ok()) {
                                acked.lock().unwrap().insert(key, id);
                            }
                        }
                    }
                })
            })
            .collect();
        let acked_ref = acked.clone();
        eventually("enough acknowledged events", Duration::from_secs(120), || {
            let n = acked_ref.lock().unwrap().len();
            async move { (n >= target).then_some(()) }
        })
        .await;
        node.child.kill().expect("SIGKILL");
        node.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for p in posters {
            let _ = p.await;
        }
    }

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= CYCLES * ACKS_PER_CYCLE);
    let client = connect(&db.url()).await;
    let stored: HashMap<String, Uuid> = client
        .query("SELECT idempotency_key, id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (key, id) in &acked {
        assert_eq!(stored.get(key), Some(id), "acknowledged event {key} is missing or has another id");
    }
    let dupes: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM events GROUP BY source_id, idempotency_key HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dupes, 0, "no idempotency key is stored twice");

    // After the last kill a fresh node still knows every acknowledged event: a retry gets the same id.
    let mut node = start_node(&config, &db.url(), &prefix).await;
    let http = http_client();
    for (key, id) in acked.iter().take(20) {
        let body = format!(r#"{{"key":"{key}"}}"#);
        let mut resp = http
            .post(format!("{}/ingest/hmac", node.base))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("X-Signature", sign(body.as_bytes())))
            .insert_header(("X-Request-Id", key.as_str()))
            .send_body(body)
            .await
            .unwrap();
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["id"].as_str(), Some(id.to_string().as_str()));
        assert_eq!(json["duplicate"], true);
    }
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let _ = std::fs::remove_file(&config);
}
