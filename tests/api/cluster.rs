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
    TempConfig::new(&format!(
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
    ))
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
    let got = rx.wait_for(N).await;
    cluster.wait_count("all delivered", "SELECT count(*) FROM deliveries WHERE state = 'delivered'", N as i64).await;
    // A lower bound only (a busy machine can only make it slower): after one burst per node at most, the two nodes
    // together cannot exceed RATE per second. Without a shared bucket they would finish in about half the time.
    let span = got.last().unwrap().at - got[0].at;
    let floor = Duration::from_secs_f64((N as f64 - 2.0 * RATE) / RATE) - Duration::from_secs(1);
    assert!(span >= floor, "{N} deliveries took {span:?}, faster than {RATE}/s allows (floor {floor:?})");
}
