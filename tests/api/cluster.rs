//! Several hookgate processes on one database and one Redis: leases, crash recovery, cluster-wide rate limits.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::helpers::{
    connect, eventually, http_client, post_signed_to, test_config_toml, Node, RedisPrefix, TempConfig, TestDb,
};
use crate::receiver::{Receiver, Reply};

/// The test configuration plus one destination `sink` at `url` routed from `hmac`.
fn config_with_sink(url: &str, extra: &str) -> TempConfig {
    TempConfig::new(&config_text_with_sink(url, extra))
}

fn config_text_with_sink(url: &str, extra: &str) -> String {
    format!(
        r#"{}
        [[destinations]]
        slug = "sink"
        url = "{url}"
        timeout_ms = 2000
        retry = {{ delays_ms = [100], max_attempts = 10, jitter = 0.0 }}
        {extra}
        [[routes]]
        slug = "hmac-to-sink"
        source = "hmac"
        destination = "sink"
        "#,
        test_config_toml()
    )
}

struct Cluster {
    db: TestDb,
    prefix: String,
    _redis: RedisPrefix,
    config: TempConfig,
}

impl Cluster {
    async fn new(config: TempConfig) -> Self {
        let prefix = format!("hgtest-{}", Uuid::new_v4().simple());
        Self { db: TestDb::create().await, _redis: RedisPrefix(prefix.clone()), prefix, config }
    }

    async fn node(&self, id: &str) -> Node {
        Node::start(&self.config.0, &self.db.url(), &self.prefix, &[("HOOKGATE_SERVER__NODE_ID", id)]).await
    }

    async fn count(&self, sql: &str) -> i64 {
        connect(&self.db.url()).await.query_one(sql, &[]).await.unwrap().get(0)
    }

    async fn wait_count(&self, what: &str, sql: &str, n: i64) {
        let client = connect(&self.db.url()).await;
        eventually(what, Duration::from_secs(90), || async {
            let c: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
            (c >= n).then_some(())
        })
        .await;
    }
}

#[actix_rt::test]
async fn a_delivery_cut_off_by_a_killed_node_is_made_after_its_lease_expires() {
    // The first request hangs (its node is killed meanwhile); later ones succeed.
    let rx = Receiver::start(vec![Reply::Sleep(Duration::from_secs(20), 200)], None);
    let cluster = Cluster::new(config_with_sink(&rx.url, "")).await;
    let mut a = cluster.node("node-a").await;
    let http = http_client();
    let ack = post_signed_to(&http, &a.base, br#"{"n":1}"#, "k1").await.unwrap();
    assert_eq!(ack.status, 202);
    rx.wait_for(1).await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    let _b = cluster.node("node-b").await;
    cluster
        .wait_count("delivered by the survivor", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 1)
        .await;
    let got = rx.requests();
    assert_eq!(got.len(), 2, "at least once: the cut-off attempt, then the retry");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let client = connect(&cluster.db.url()).await;
    let nodes: Vec<String> =
        client.query("SELECT node_id FROM attempts", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(nodes, ["node-b"], "the killed node never recorded its attempt");
}

#[actix_rt::test]
async fn two_nodes_never_attempt_the_same_delivery_at_once() {
    let rx = Receiver::start(vec![], Some(Reply::Sleep(Duration::from_millis(20), 200)));
    let cluster = Cluster::new(config_with_sink(&rx.url, "max_in_flight = 32")).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    let http = http_client();
    for i in 0..200 {
        let node = if i % 2 == 0 { &a } else { &b };
        let ack = post_signed_to(&http, &node.base, format!(r#"{{"i":{i}}}"#).as_bytes(), &format!("k{i}")).await;
        assert_eq!(ack.unwrap().status, 202);
    }
    cluster.wait_count("all delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 200).await;
    assert_eq!(rx.state.overlaps.load(std::sync::atomic::Ordering::SeqCst), 0, "no delivery was in flight twice");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in rx.requests() {
        *per_id.entry(r.header("webhook-id").unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 200, "every delivery reached the receiver");
    // At least once; a second attempt is allowed only after a lease expired, never concurrently (checked above).
    assert!(cluster.count("SELECT count(*) FROM attempts").await >= 200);
}

#[actix_rt::test]
async fn a_rate_limit_holds_across_two_nodes() {
    const N: usize = 30;
    const RATE: f64 = 5.0;
    let rx = Receiver::start(vec![], None);
    // Paused while the events are posted, so that all of them are due at once when it resumes.
    let cluster = Cluster::new(config_with_sink(&rx.url, "rate_limit = 5.0\n        state = \"paused\"")).await;
    let (a, b) = (cluster.node("node-a").await, cluster.node("node-b").await);
    let http = http_client();
    for i in 0..N {
        let node = if i % 2 == 0 { &a } else { &b };
        post_signed_to(&http, &node.base, format!(r#"{{"i":{i}}}"#).as_bytes(), &format!("k{i}")).await.unwrap();
    }
    assert_eq!(rx.count(), 0);
    connect(&cluster.db.url())
        .await
        .batch_execute("UPDATE destinations SET state = 'active'; NOTIFY hookgate_catalog")
        .await
        .unwrap();
    rx.wait_for(N).await;
    cluster.wait_count("all delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", N as i64).await;
    // A lower bound only (a busy machine can only make it slower), measured where the limiter acts: when the nodes
    // started their attempts. After one burst, the two nodes together cannot exceed RATE per second; without a
    // shared bucket they would finish in about half the time.
    let span_secs: f64 = connect(&cluster.db.url())
        .await
        .query_one("SELECT extract(epoch FROM max(started_at) - min(started_at))::float8 FROM attempts", &[])
        .await
        .unwrap()
        .get(0);
    let span = Duration::from_secs_f64(span_secs);
    let floor = Duration::from_secs_f64((N as f64 - 2.0 * RATE) / RATE) - Duration::from_secs(1);
    assert!(span >= floor, "{N} deliveries took {span:?}, faster than {RATE}/s allows (floor {floor:?})");
}

/// Posts `key` until some node acknowledges it, trying the nodes in turn (what a producer's retries do).
async fn post_until_acked(http: &awc::Client, bases: &[String], start: usize, key: &str) -> Uuid {
    let body = format!(r#"{{"key":"{key}"}}"#);
    let mut i = start;
    eventually(&format!("{key} to be acknowledged"), Duration::from_secs(120), || {
        let base = bases[i % bases.len()].clone();
        i += 1;
        let body = body.clone();
        async move {
            match post_signed_to(http, &base, body.as_bytes(), key).await {
                Ok(a) if a.status == 202 => Some(a.id()),
                _ => None,
            }
        }
    })
    .await
}

#[actix_rt::test]
async fn sigterm_under_load_stores_every_acknowledged_event_and_leaves_no_lease_held() {
    // The first three deliveries hang past the shutdown grace; the rest are quick.
    let hang = Reply::Sleep(Duration::from_secs(30), 200);
    let rx =
        Receiver::start(vec![hang.clone(), hang.clone(), hang], Some(Reply::Sleep(Duration::from_millis(50), 200)));
    let text = config_text_with_sink(&rx.url, "").replace("timeout_ms = 2000\n", "timeout_ms = 60000\n");
    let cluster = Cluster::new(TempConfig::new(&text)).await;
    let mut node = Node::start(
        &cluster.config.0,
        &cluster.db.url(),
        &cluster.prefix,
        &[("HOOKGATE_SERVER__NODE_ID", "node-a"), ("HOOKGATE_SERVER__DRAIN_DELAY_MS", "1500")],
    )
    .await;
    let http = http_client();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, Uuid>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posters: Vec<_> = (0..8)
        .map(|p| {
            let (base, acked, stop) = (node.base.clone(), acked.clone(), stop.clone());
            actix_rt::spawn(async move {
                let http = http_client();
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("p{p}-{seq}");
                    match post_signed_to(&http, &base, format!(r#"{{"k":"{key}"}}"#).as_bytes(), &key).await {
                        Ok(a) if a.status == 202 => {
                            acked.lock().unwrap().insert(key, a.id());
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    let a = acked.clone();
    eventually("some acknowledged events", Duration::from_secs(60), || {
        let n = a.lock().unwrap().len();
        async move { (n >= 100).then_some(()) }
    })
    .await;
    rx.wait_for(3).await;

    node.terminate();
    let ready = eventually("readiness to turn false", Duration::from_secs(30), || {
        let req = http.get(format!("{}/readyz", node.base)).send();
        async move { req.await.ok().map(|r| r.status().as_u16()).filter(|s| *s == 503) }
    })
    .await;
    assert_eq!(ready, 503);
    let status = node.wait_exit(Duration::from_secs(30)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in posters {
        let _ = p.await;
    }
    assert!(status.success(), "exit 0 after a graceful shutdown: {status:?}");

    let client = connect(&cluster.db.url()).await;
    let stored: HashMap<String, Uuid> = client
        .query("SELECT idempotency_key, id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (key, id) in acked.lock().unwrap().iter() {
        assert_eq!(stored.get(key), Some(id), "acknowledged {key} is stored");
    }
    let held: i64 =
        client.query_one("SELECT count(*) FROM deliveries WHERE lease_id IS NOT NULL", &[]).await.unwrap().get(0);
    assert_eq!(held, 0, "no lease is left held");
}

#[actix_rt::test]
async fn three_nodes_share_deliveries_and_a_rolling_restart_loses_nothing() {
    let rx = Receiver::start(vec![], Some(Reply::Sleep(Duration::from_millis(20), 200)));
    let cluster = Cluster::new(config_with_sink(&rx.url, "max_in_flight = 32")).await;
    let mut nodes = [cluster.node("n1").await, cluster.node("n2").await, cluster.node("n3").await];
    let http = http_client();

    // Steady load while each node in turn is stopped with SIGTERM and started again.
    let bases = std::sync::Arc::new(std::sync::Mutex::new(nodes.iter().map(|n| n.base.clone()).collect::<Vec<_>>()));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, Uuid>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posters: Vec<_> = (0..6)
        .map(|p| {
            let (bases, acked, stop) = (bases.clone(), acked.clone(), stop.clone());
            actix_rt::spawn(async move {
                let http = http_client();
                let mut seq = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let key = format!("p{p}-{seq}");
                    let current = bases.lock().unwrap().clone();
                    let id = post_until_acked(&http, &current, p + seq, &key).await;
                    acked.lock().unwrap().insert(key, id);
                }
            })
        })
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let before = acked.lock().unwrap().len();
        let a = acked.clone();
        eventually("progress before the restart", Duration::from_secs(60), || {
            let n = a.lock().unwrap().len();
            async move { (n >= before + 50).then_some(()) }
        })
        .await;
        node.terminate();
        let status = node.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "{status:?}");
        *node = cluster.node(&format!("n{}", i + 1)).await;
        bases.lock().unwrap()[i] = node.base.clone();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in posters {
        p.await.expect("poster");
    }

    let acked = acked.lock().unwrap().clone();
    let n = acked.len() as i64;
    cluster
        .wait_count(
            "every acknowledged event delivered",
            "SELECT count(*) FROM deliveries WHERE state = 'delivered'",
            n,
        )
        .await;
    let client = connect(&cluster.db.url()).await;
    let stored: HashMap<String, Uuid> = client
        .query("SELECT idempotency_key, id FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (key, id) in &acked {
        assert_eq!(stored.get(key), Some(id), "acknowledged {key} is stored");
    }
    let undelivered: i64 =
        client.query_one("SELECT count(*) FROM deliveries WHERE state <> 'delivered'", &[]).await.unwrap().get(0);
    assert_eq!(undelivered, 0, "every stored event is delivered");
    assert_eq!(rx.state.overlaps.load(std::sync::atomic::Ordering::SeqCst), 0, "never attempted by two at once");
    let nodes_used: i64 = client.query_one("SELECT count(DISTINCT node_id) FROM attempts", &[]).await.unwrap().get(0);
    assert!(nodes_used >= 2, "deliveries were shared among the nodes");
    let _ = http;
}
