//! The durability promise under `kill -9`: every event that got a 2xx is in PostgreSQL, stored once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use crate::helpers::{
    clear_redis_prefix, connect, eventually, http_client, post_signed_to, test_config_toml, Node, RedisPrefix,
    TempConfig, TestDb,
};

const CYCLES: usize = 5;
const POSTERS: usize = 16;
/// Acknowledged events per cycle before the kill.
const ACKS_PER_CYCLE: usize = 150;

#[derive(Default)]
struct Ledger {
    /// Key → id for every 202.
    acked: HashMap<String, Uuid>,
    /// Keys sent whose answer never came (the kill cut them off): they may or may not be stored.
    in_flight: HashSet<String>,
}

fn body_of(key: &str) -> Vec<u8> {
    format!(r#"{{"key":"{key}"}}"#).into_bytes()
}

#[actix_rt::test]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let db = TestDb::create().await;
    let prefix = format!("hgtest-{}", Uuid::new_v4().simple());
    let _redis = RedisPrefix(prefix.clone());
    let config = TempConfig::new(&test_config_toml());

    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    for cycle in 0..CYCLES {
        let mut node = Node::start(&config.0, &db.url(), &prefix, &[]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let target = ledger.lock().unwrap().acked.len() + ACKS_PER_CYCLE;
        let posters: Vec<_> = (0..POSTERS)
            .map(|p| {
                let (base, stop, ledger) = (node.base.clone(), stop.clone(), ledger.clone());
                actix_rt::spawn(async move {
                    let http = http_client();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let key = format!("c{cycle}-p{p}-{seq}");
                        ledger.lock().unwrap().in_flight.insert(key.clone());
                        match post_signed_to(&http, &base, &body_of(&key), &key).await {
                            Ok(a) if a.status == 202 => {
                                let mut l = ledger.lock().unwrap();
                                l.in_flight.remove(&key);
                                l.acked.insert(key, a.id());
                            }
                            Ok(a) => panic!("unexpected answer before the kill: {a:?}"),
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        let l = ledger.clone();
        eventually("enough acknowledged events", Duration::from_secs(120), || {
            let n = l.lock().unwrap().acked.len();
            async move { (n >= target).then_some(()) }
        })
        .await;
        node.child.kill().expect("SIGKILL");
        node.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for p in posters {
            p.await.expect("poster task");
        }
    }

    let Ledger { acked, in_flight } = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(acked.len() >= CYCLES * ACKS_PER_CYCLE);
    let client = connect(&db.url()).await;
    // A COMMIT the killed node had already sent still completes in PostgreSQL after the kill: wait until its
    // server processes have ended (each ends once it sees its client gone), so the snapshot below is final.
    eventually("the killed node's connections to end", Duration::from_secs(60), || {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        }
    })
    .await;
    let stored = || async {
        client
            .query("SELECT idempotency_key, id FROM events", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Uuid>(1)))
            .collect::<HashMap<_, _>>()
    };
    let before_retry = stored().await;
    for (key, id) in &acked {
        assert_eq!(before_retry.get(key), Some(id), "acknowledged event {key} is missing or has another id");
    }

    // A fresh node, with the Redis fast path emptied so PostgreSQL must answer: retrying every acknowledged and
    // every cut-off request gives one consistent answer per key and never a second row.
    clear_redis_prefix(&prefix).await;
    let node = Node::start(&config.0, &db.url(), &prefix, &[]).await;
    let http = http_client();
    let retried: Vec<String> = acked.keys().take(50).cloned().chain(in_flight.iter().cloned()).collect();
    for key in &retried {
        let a = node.post_signed(&http, &body_of(key), key).await.expect("retry");
        assert_eq!(a.status, 202, "{a:?}");
        match before_retry.get(key) {
            Some(id) => assert_eq!((a.id(), a.duplicate()), (*id, true), "retry of stored {key}"),
            None => assert!(!a.duplicate(), "{key} was not stored before, so the retry stores it: {a:?}"),
        }
    }
    let after_retry = stored().await;
    let rows: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(rows as usize, after_retry.len(), "no idempotency key is stored twice");
    for key in &retried {
        assert!(after_retry.contains_key(key));
    }
}
