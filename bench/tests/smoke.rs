//! Smoke test of the harness: a tiny closed-loop and open-loop workload against the built-in receiver, in process,
//! for about a second. Checks that requests flow and are counted, and that arrivals are stamped in order; no
//! timing assertions.

use std::sync::Arc;
use std::time::Duration;

use hookgate_bench::load::{closed_loop, open_loop};
use hookgate_bench::receiver::Receiver;
use hookgate_bench::report::{ingest_row, stats_json, table, INGEST_HEADER};
use hookgate_bench::workload::{Signing, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_workloads_reach_the_receiver() {
    let rx = Receiver::start(0, 1).expect("receiver starts");
    assert!(rx.state.last_arrival().is_none(), "no arrival stamped before the first request");
    let before = std::time::Instant::now();
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let signing = Signing::Hmac { header: "X-Signature".into(), prefix: "sha256=".into(), secret: b"s".to_vec() };
    let w = Arc::new(Workload::new(&url, signing, Some("X-Request-Id".into()), 1024).unwrap());

    let closed = closed_loop(w.clone(), 4, Duration::from_millis(500)).await;
    assert!(closed.ok_count() > 0, "closed loop got answers: {closed:?}");
    assert_eq!(closed.count(204), closed.ok_count());

    let open = open_loop(w.clone(), 200.0, 8, Duration::from_millis(500)).await;
    assert_eq!(open.total(), 100, "every due request was sent");
    assert_eq!(open.ok_count(), 100);

    // Every accepted request reached the receiver, which read its send time from the body.
    let sent = closed.ok_count() + open.ok_count();
    for _ in 0..200 {
        if rx.state.received() >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rx.state.received(), sent);
    assert_eq!(rx.state.take_latency().len(), sent);
    // Drains are timed to the last arrival: it falls between the first send and now.
    let last = rx.state.last_arrival().expect("arrivals are stamped");
    assert!(last > before && last <= std::time::Instant::now(), "{last:?} outside {before:?}..now");

    let json = stats_json(&open, None);
    assert_eq!(json["ok"], 100);
    assert!(table(&INGEST_HEADER, &[ingest_row("open", "200/s", &open, None)]).contains("| open "));
    rx.stop().await;
}

#[tokio::test]
async fn a_refused_connection_counts_as_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let w = Arc::new(Workload::new(&format!("http://127.0.0.1:{port}/x"), Signing::None, None, 64).unwrap());
    let s = open_loop(w, 50.0, 2, Duration::from_millis(100)).await;
    assert_eq!(s.errors, 5);
    assert_eq!(s.ok_count(), 0);
}

#[tokio::test]
async fn the_runs_redis_keys_are_removed_and_no_others() {
    // Unique to this run (a pid can recur, or be another run's prefix with a digit more), and outside the bench's
    // own `hookgate-bench-` prefixes.
    let prefix = format!("hookgate-smoke-{}", uuid::Uuid::new_v4().simple());
    let url = std::env::var("HGTEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut con = client.get_multiplexed_async_connection().await.expect("redis is up");
    let ours: Vec<String> = (0..25).map(|i| format!("{prefix}:idem:{i}")).collect();
    // The same prefix with more after it is another run's.
    let others = [format!("{prefix}0:idem:x"), format!("{prefix}-other:idem:x")];
    for key in ours.iter().chain(&others) {
        let _: () = redis::cmd("SET").arg(key).arg("1").arg("EX").arg(60).query_async(&mut con).await.unwrap();
    }
    let removed = hookgate_bench::standard::remove_keys(&url, &prefix).await.unwrap();
    assert_eq!(removed, 25);
    let left: u64 = redis::cmd("EXISTS").arg(&ours).query_async(&mut con).await.unwrap();
    assert_eq!(left, 0, "every key of the run is gone");
    let kept: u64 = redis::cmd("UNLINK").arg(&others).query_async(&mut con).await.unwrap();
    assert_eq!(kept, 2, "the keys of other prefixes were left alone");
}
