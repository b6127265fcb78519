//! Retention by daily partitions, the dedupe window, key pruning that keeps up, partition changes that never hold
//! ingest up for long, and singleton jobs under an advisory lock.

use std::time::Duration;

use hookgate_actors::janitor::RunNow;
use hookgate_store::claims::DUE;
use hookgate_store::locks::{JANITOR_LOCK, STATISTICS_LOCK};
use hookgate_store::maintenance::{refresh_statistics, vacuum_deliveries, RoundReport, VacuumPolicy};
use hookgate_store::GENERIC_PLANS;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{clear_redis_prefix, connect, destination, route, spawn_app_with, TestApp, TestDb};

async fn janitor_round(app: &TestApp) -> RoundReport {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.janitor.send(RunNow(tx)).await.expect("janitor mailbox");
    rx.await.expect("janitor answered").expect("janitor round")
}

#[actix_rt::test]
async fn partitions_past_the_retention_age_are_dropped_whole_and_recent_data_stays() {
    let app = spawn_app_with(|s| s.retention.days = 30).await;
    // Day partitions back to 40 days ago, and an old event with a delivery and an attempt in them.
    app.ensure_partitions(40, 3).await;
    let old = Uuid::now_v7();
    app.db
        .batch_execute(&format!(
            "INSERT INTO events (id, source_id, idempotency_key, received_at, headers, body)
             SELECT '{old}', id, 'old-key', now() - interval '35 days', '{{}}', '\\x7b7d' FROM sources WHERE slug = 'open';
             INSERT INTO attempts (id, delivery_id, attempt, node_id, started_at, latency_ms)
             VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'n', now() - interval '35 days', 5);"
        ))
        .await
        .unwrap();
    let fresh = app.post_signed(br#"{"fresh":true}"#, "fresh").await;
    assert_eq!(fresh.status, 202);

    let report = janitor_round(&app).await;
    assert!(report.ran);
    assert!(report.partitions_dropped >= 3 * 9, "the days 31 to 40 ago of three tables: {report:?}");
    let count = |sql: &'static str| async { app.db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) };
    assert_eq!(count("SELECT count(*) FROM events WHERE received_at < now() - interval '30 days'").await, 0);
    assert_eq!(count("SELECT count(*) FROM attempts").await, 0);
    let ids: Vec<Uuid> = app.db.query("SELECT id FROM events", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![fresh.id()], "recent events stay");
    let partitions: i64 = count(
        "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE c.relname ~ '^events_p[0-9]{8}$'",
    )
    .await;
    assert!((30..=35).contains(&partitions), "30 days kept plus the days ahead: {partitions}");
    // Idempotent: a second round has nothing to drop.
    assert_eq!(janitor_round(&app).await.partitions_dropped, 0);
}

#[actix_rt::test]
async fn dedupe_holds_within_its_window_even_without_redis_and_ends_after_it() {
    let app = spawn_app_with(|s| s.retention.dedupe_window_secs = 7 * 24 * 3600).await;
    let first = app.post_signed(br#"{"n":1}"#, "k").await;
    clear_redis_prefix(&app.settings.redis.key_prefix).await;
    let again = app.post_signed(br#"{"n":1}"#, "k").await;
    assert_eq!((again.id(), again.duplicate()), (first.id(), true), "within the window PostgreSQL dedupes");

    // The key ages past the window; the janitor forgets it; the same key is a new event now.
    app.db.execute("UPDATE event_keys SET received_at = now() - interval '8 days'", &[]).await.unwrap();
    assert!(janitor_round(&app).await.keys_pruned >= 1);
    clear_redis_prefix(&app.settings.redis.key_prefix).await;
    let later = app.post_signed(br#"{"n":1}"#, "k").await;
    assert_eq!(later.status, 202);
    assert!(!later.duplicate());
    assert_ne!(later.id(), first.id());
}

#[actix_rt::test]
async fn a_janitor_round_runs_on_one_node_at_a_time() {
    let app = spawn_app_with(|_| {}).await;
    let holder = connect(&app._db.url()).await;
    holder.execute("SELECT pg_advisory_lock($1)", &[&JANITOR_LOCK]).await.unwrap();
    assert!(!janitor_round(&app).await.ran, "another node holds the lock: this one skips");
    holder.execute("SELECT pg_advisory_unlock($1)", &[&JANITOR_LOCK]).await.unwrap();
    assert!(janitor_round(&app).await.ran);
}

#[actix_rt::test]
async fn replicas_starting_together_migrate_once() {
    let db = TestDb::create().await;
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_hookgate"))
                .arg("migrate")
                .env("HOOKGATE_DATABASE__URL", db.url())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with("applied ")).unwrap_or_default();
        let n: usize = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(99);
        applied.push(n);
    }
    applied.sort();
    let total = hookgate_store::migrations::MIGRATION_COUNT;
    assert_eq!(applied, vec![0, 0, total], "one replica migrated, the others waited and found nothing to do");
}

#[actix_rt::test]
async fn partitions_that_doubled_get_fresh_planner_statistics_on_one_node() {
    let app = spawn_app_with(|s| s.retention.statistics_interval_secs = 0).await;
    let settings = hookgate::config::DatabaseSettings { url: app._db.url().into(), ..Default::default() };
    let pool = hookgate::startup::build_pool(&settings).unwrap();
    let today: String = app
        .db
        .query_one("SELECT 'events_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')", &[])
        .await
        .unwrap()
        .get(0);
    let analyzed_rows = |name: String| {
        let db = &app.db;
        async move {
            db.query_one("SELECT reltuples::bigint FROM pg_class WHERE relname = $1", &[&name])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert!(analyzed_rows(today.clone()).await <= 0, "a new partition has no statistics yet");
    // Autovacuum must not analyze it first: this test is about hookgate's own refresh.
    app.db.batch_execute(&format!("ALTER TABLE {today} SET (autovacuum_enabled = false)")).await.unwrap();
    {
        // A connection of its own: its table statistics reach the server at the latest when it closes.
        let writer = connect(&app._db.url()).await;
        writer
            .batch_execute(
                "INSERT INTO events (id, source_id, idempotency_key, received_at, headers, body)
                 SELECT gen_random_uuid(), s.id, 'stats-' || g, now(), '{}', '\x7b7d'
                 FROM sources s, generate_series(1, 2000) g WHERE s.slug = 'open'",
            )
            .await
            .unwrap();
    }

    // Another node holds the lock: this one skips.
    let holder = connect(&app._db.url()).await;
    holder.execute("SELECT pg_advisory_lock($1)", &[&STATISTICS_LOCK]).await.unwrap();
    assert!(refresh_statistics(pool.clone()).await.unwrap().is_empty());
    holder.execute("SELECT pg_advisory_unlock($1)", &[&STATISTICS_LOCK]).await.unwrap();

    // The server publishes a closed connection's counters asynchronously: wait for them, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let analyzed = refresh_statistics(pool.clone()).await.unwrap();
        if analyzed.iter().any(|p| p.ends_with(&today)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{today} was never analyzed (last round: {analyzed:?})");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(analyzed_rows(today.clone()).await, 2000, "the planner now knows the partition's size");
    let again = refresh_statistics(pool).await.unwrap();
    assert!(!again.iter().any(|p| p.ends_with(&today)), "unchanged since: not analyzed again ({again:?})");
}

/// Today's partition of `deliveries`, its name.
async fn todays_deliveries(app: &TestApp) -> String {
    app.db
        .query_one("SELECT 'deliveries_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')", &[])
        .await
        .unwrap()
        .get(0)
}

/// `delivered` deliveries of today's partition, due a minute ago each a millisecond apart (as a drain leaves them),
/// and `live` still pending and due after them; on a connection of its own, closed before this answers: its table
/// statistics reach the server at the latest when it closes. Autovacuum is kept off the partition: what is looked at
/// here is hookgate's own vacuum.
async fn delivered_and_live(app: &TestApp, delivered: i32, live: i32) {
    let partition = todays_deliveries(app).await;
    let writer = connect(&app._db.url()).await;
    writer
        .batch_execute(&format!(
            "ALTER TABLE {partition} SET (autovacuum_enabled = false);
             INSERT INTO events (id, source_id, idempotency_key, received_at, headers, body)
             SELECT gen_random_uuid(), s.id, 'vac-' || g, now(), '{{}}', '\\x7b7d'
             FROM generate_series(1, {delivered} + {live}) g, sources s WHERE s.slug = 'hmac';
             INSERT INTO deliveries (id, event_id, route_id, destination_id, state, created_at, next_attempt_at)
             SELECT gen_random_uuid(), e.id, r.id, r.destination_id, 'pending', e.received_at,
                    now() - interval '1 minute' + substr(e.idempotency_key, 5)::int * interval '1 millisecond'
             FROM events e JOIN routes r ON r.source_id = e.source_id WHERE r.slug = 'to-busy';
             UPDATE deliveries d SET state = 'delivered' FROM events e
             WHERE e.id = d.event_id AND substr(e.idempotency_key, 5)::int <= {delivered};"
        ))
        .await
        .unwrap();
}

/// An app with a destination to seed deliveries for and these vacuum settings. Nothing claims, and the janitor does
/// not analyze on its own: an `ANALYZE` holds the partition's lock, which would make a vacuum pass it over.
async fn app_with_deliveries_to_vacuum(interval_secs: u64, dead_rows: u64, dead_fraction: f64) -> TestApp {
    spawn_app_with(|s| {
        s.delivery.enabled = false;
        s.retention.statistics_interval_secs = 0;
        s.retention.vacuum_interval_secs = interval_secs;
        s.retention.vacuum_dead_rows = dead_rows;
        s.retention.vacuum_dead_fraction = dead_fraction;
        s.destinations.push(destination("busy", "http://192.0.2.1/"));
        s.routes.push(route("to-busy", "hmac", "busy"));
    })
    .await
}

/// A counter of `table` in `pg_stat_all_tables` (`column` is this file's literal, never input).
async fn table_stat(app: &TestApp, column: &str, table: &str) -> i64 {
    let sql = format!("SELECT {column} FROM pg_stat_all_tables WHERE relid = $1::text::regclass");
    app.db.query_one(&sql, &[&table]).await.unwrap().get(0)
}

/// What the claim's due probe for `destination` reads, planned generically as hookgate runs it: the destinations it
/// answers and the buffers it touched.
async fn due_probe(db: &tokio_postgres::Client, destination: Uuid) -> (f64, i64) {
    db.batch_execute(&format!("BEGIN; {GENERIC_PLANS}")).await.unwrap();
    let plan: Value = db
        .query_one(
            &format!(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
                 EXECUTE due(ARRAY['{destination}']::uuid[], ARRAY[]::uuid[], ARRAY[16])"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.batch_execute("ROLLBACK").await.unwrap();
    let top = &plan[0]["Plan"];
    let blocks = top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
    (top["Actual Rows"].as_f64().unwrap(), blocks)
}

/// 20,000 deliveries delivered and one still due behind them: the due probe of every claim round walks the pages of
/// the delivered rows' old index entries, whatever it marked dead before, until a vacuum removes them. hookgate's own
/// vacuum takes a partition once its dead versions reach both the row count and the fraction of its live rows, and
/// the probe then reads a handful of pages and still finds the due delivery (ADR-0025).
#[actix_rt::test]
async fn delivered_rows_stop_costing_the_claim_once_hookgate_vacuums_their_partition() {
    // The janitor does not vacuum on its own here: only the statements are looked at.
    let app = app_with_deliveries_to_vacuum(0, 50_000, 0.1).await;
    let partition = todays_deliveries(&app).await;
    delivered_and_live(&app, 20_000, 1).await;
    let dest: Uuid = app.db.query_one("SELECT id FROM destinations", &[]).await.unwrap().get(0);
    let db = connect(&app._db.url()).await;
    db.batch_execute(&format!("PREPARE due(uuid[], uuid[], int[]) AS {DUE}")).await.unwrap();
    // Twice: the first walk marks the entries of dead rows; the second still reads their pages.
    due_probe(&db, dest).await;
    let (found, before) = due_probe(&db, dest).await;
    assert_eq!(found, 1.0, "the due delivery is found");
    assert!(before >= 60, "20,000 dead entries take about a hundred leaf pages; the probe read {before} buffers");

    // The server publishes a closed connection's counters asynchronously: wait for them, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while table_stat(&app, "n_dead_tup", &partition).await < 20_000 {
        assert!(std::time::Instant::now() < deadline, "the dead versions of {partition} were never counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settings = hookgate::config::DatabaseSettings { url: app._db.url().into(), ..Default::default() };
    let pool = hookgate::startup::build_pool(&settings).unwrap();
    let policy = |min_dead_rows, dead_fraction| VacuumPolicy { min_dead_rows, dead_fraction };
    // Below either bound, nothing is vacuumed: 20,000 dead against 20,001 live.
    assert_eq!(vacuum_deliveries(pool.clone(), policy(20_001, 0.0)).await.unwrap(), vec![]);
    assert_eq!(vacuum_deliveries(pool.clone(), policy(1, 1.0)).await.unwrap(), vec![]);
    // A partition another session holds (another node's vacuum, autovacuum, an ANALYZE) is passed over, not waited
    // for, and not answered as vacuumed.
    let holder = connect(&app._db.url()).await;
    holder.batch_execute(&format!("BEGIN; LOCK TABLE {partition} IN SHARE UPDATE EXCLUSIVE MODE")).await.unwrap();
    assert_eq!(vacuum_deliveries(pool.clone(), policy(10_000, 0.5)).await.unwrap(), vec![]);
    holder.batch_execute("COMMIT").await.unwrap();
    let vacuumed = vacuum_deliveries(pool.clone(), policy(10_000, 0.5)).await.unwrap();
    let names: Vec<&str> = vacuumed.iter().map(|v| v.partition.as_str()).collect();
    assert_eq!(names, vec![format!("public.{partition}")], "{vacuumed:?}");
    assert_eq!(vacuumed[0].dead_rows, 20_000);
    assert_eq!(table_stat(&app, "n_dead_tup", &partition).await, 0, "the vacuum counted what it left");

    let (found, after) = due_probe(&db, dest).await;
    assert_eq!(found, 1.0, "the due delivery is still found");
    assert!(after <= 40 && after * 2 <= before, "{before} buffers before the vacuum, {after} after");
    // The connection the vacuums ran on went back to the pool with its statement time-out.
    let timeout: String = pool.get().await.unwrap().query_one("SHOW statement_timeout", &[]).await.unwrap().get(0);
    assert_eq!(timeout, "5s");
}

/// The janitor looks every `vacuum_interval_secs` and vacuums a partition of `deliveries` past its policy by itself,
/// and counts it.
#[actix_rt::test]
async fn the_janitor_vacuums_a_delivery_partition_past_its_policy_on_its_own() {
    let app = app_with_deliveries_to_vacuum(1, 500, 0.5).await;
    let vacuums_counted = || async {
        let text = app.http.get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|l| l.strip_prefix("hookgate_janitor_vacuums_total "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let counted_before = vacuums_counted().await;
    let partition = todays_deliveries(&app).await;
    delivered_and_live(&app, 1_000, 10).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if table_stat(&app, "vacuum_count", &partition).await > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{partition} was never vacuumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Counted once the look has finished: wait for the counter too.
    loop {
        if vacuums_counted().await > counted_before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the vacuum was never counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_rt::test]
async fn one_round_prunes_every_expired_key_in_bounded_batches_and_keeps_the_rest() {
    let app = spawn_app_with(|s| s.retention.key_prune_batch = 100).await;
    app.db
        .batch_execute(
            "INSERT INTO event_keys (source_id, idempotency_key, event_id, received_at)
             SELECT s.id, 'old-' || g, gen_random_uuid(), now() - interval '8 days' - g * interval '1 second'
             FROM sources s, generate_series(1, 1050) g WHERE s.slug = 'open';
             INSERT INTO event_keys (source_id, idempotency_key, event_id, received_at)
             SELECT s.id, 'recent-' || g, gen_random_uuid(), now() - interval '6 days'
             FROM sources s, generate_series(1, 20) g WHERE s.slug = 'open';",
        )
        .await
        .unwrap();
    let report = janitor_round(&app).await;
    assert_eq!(report.keys_pruned, 1050, "{report:?}");
    assert_eq!(report.key_batches, 11, "ten full batches of 100, then the 50 left: {report:?}");
    let db = &app.db;
    let count = |prefix: &'static str| async move {
        db.query_one("SELECT count(*) FROM event_keys WHERE idempotency_key LIKE $1", &[&format!("{prefix}%")])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(count("old-").await, 0, "every key past the window is gone after one round");
    assert_eq!(count("recent-").await, 20, "keys within the window stay");
    assert_eq!(janitor_round(&app).await.keys_pruned, 0);
}

/// The name of the events partition of the day `days_ago` (UTC).
async fn events_partition(app: &TestApp, days_ago: i32) -> String {
    app.db
        .query_one("SELECT 'events_p' || to_char((now() AT TIME ZONE 'UTC')::date - $1::int, 'YYYYMMDD')", &[&days_ago])
        .await
        .unwrap()
        .get(0)
}

async fn partition_exists(app: &TestApp, name: &str) -> bool {
    app.db.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name]).await.unwrap().get(0)
}

/// Old partitions from 40 days ago, and a reader (a long report, an export) holding the events partition of 35 days
/// ago in its transaction: returned, with that partition's name.
async fn old_partitions_with_a_reader(app: &TestApp) -> (tokio_postgres::Client, String) {
    app.ensure_partitions(40, 3).await;
    let held = events_partition(app, 35).await;
    let reader = connect(&app._db.url()).await;
    reader.batch_execute(&format!("BEGIN; SELECT count(*) FROM {held}")).await.unwrap();
    (reader, held)
}

#[actix_rt::test]
async fn a_partition_drop_that_cannot_have_its_lock_in_time_is_left_for_the_next_round() {
    let app = spawn_app_with(|s| {
        s.retention.days = 30;
        s.retention.ddl_lock_timeout_ms = 200;
    })
    .await;
    let (reader, held) = old_partitions_with_a_reader(&app).await;

    let report = janitor_round(&app).await;
    assert!(report.ran);
    assert_eq!(report.ddl_deferred.len(), 1, "{report:?}");
    let deferred = &report.ddl_deferred[0];
    assert_eq!((deferred.action, deferred.partition.as_str()), ("drop", held.as_str()), "{report:?}");
    assert!(deferred.reason.contains("timeout"), "PostgreSQL's reason: {report:?}");
    // Days 31 to 40 ago of three tables, less the one held: the round went on without it.
    assert_eq!(report.partitions_dropped, 3 * 10 - 1, "{report:?}");
    assert!(partition_exists(&app, &held).await);
    assert!(!partition_exists(&app, &held.replace("events_", "deliveries_")).await);
    assert!(!partition_exists(&app, &events_partition(&app, 36).await).await);
    // Ingest (into today's partition) commits while the reader still holds the old one.
    let a = app.post_signed(br#"{"during":"a held drop"}"#, "held-drop").await;
    assert_eq!(a.status, 202, "{a:?}");
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().body().await.unwrap();
    assert!(
        String::from_utf8_lossy(&text)
            .lines()
            .any(|l| l.starts_with("hookgate_janitor_ddl_deferred_total{action=\"drop\"")),
        "the deferral is counted"
    );

    reader.batch_execute("COMMIT").await.unwrap();
    let later = janitor_round(&app).await;
    assert_eq!((later.partitions_dropped, later.ddl_deferred.len()), (1, 0), "{later:?}");
    assert!(!partition_exists(&app, &held).await);
}

#[actix_rt::test]
async fn ingest_commits_while_the_janitor_waits_for_an_old_partition() {
    let app = spawn_app_with(|s| {
        s.retention.days = 30;
        // Long enough that only the reader's COMMIT ends the wait.
        s.retention.ddl_lock_timeout_ms = 600_000;
    })
    .await;
    let (reader, held) = old_partitions_with_a_reader(&app).await;

    let (tx, mut rx) = tokio::sync::oneshot::channel();
    app.janitor.send(RunNow(tx)).await.expect("janitor mailbox");
    let statement = format!("LOCK TABLE {held} IN ACCESS EXCLUSIVE MODE");
    let waiting = || async { app.waiting_for_a_lock(&statement).await == 1 };
    crate::helpers::eventually("the janitor to wait for the held partition", Duration::from_secs(60), || async {
        waiting().await.then_some(())
    })
    .await;

    let a = app.post_signed(br#"{"while":"the janitor waits"}"#, "janitor-waits").await;
    assert_eq!((a.status, a.duplicate()), (202, false), "{a:?}");
    assert!(rx.try_recv().is_err(), "the round is still waiting");
    assert!(waiting().await, "…for the partition the reader holds, holding nothing ingest needs");

    reader.batch_execute("COMMIT").await.unwrap();
    let report = rx.await.expect("janitor answered").expect("janitor round");
    assert_eq!((report.partitions_dropped, report.ddl_deferred.len()), (3 * 10, 0), "{report:?}");
    assert!(!partition_exists(&app, &held).await);
    assert_eq!(app.event_count().await, 1);
}
