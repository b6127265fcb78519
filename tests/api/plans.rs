//! The claim path's statements with a large backlog: each reads a bounded number of rows, whatever the number of
//! pending deliveries, and runs on a generic plan (planned once per connection, not at every claim round).

use hookgate_store::claims::{CLAIM, DUE};
use hookgate_store::GENERIC_PLANS;
use serde_json::Value;

use crate::admin::{with_tokens, READ};
use crate::helpers::{connect, destination, route, spawn_app_with};

/// Rows each plan node produced or filtered away, over all its loops: what the statement read.
fn rows_read(node: &Value, out: &mut Vec<(String, f64)>) {
    let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
    let produced = node["Actual Rows"].as_f64().unwrap_or(0.0) * loops;
    let removed = node["Rows Removed by Filter"].as_f64().unwrap_or(0.0) * loops
        + node["Rows Removed by Index Recheck"].as_f64().unwrap_or(0.0) * loops;
    let name =
        format!("{} {}", node["Node Type"].as_str().unwrap_or("?"), node["Relation Name"].as_str().unwrap_or(""));
    out.push((name, produced + removed));
    for child in node["Plans"].as_array().into_iter().flatten() {
        rows_read(child, out);
    }
}

#[actix_rt::test]
async fn the_claim_statements_read_a_bounded_number_of_rows_with_100k_pending_on_a_generic_plan() {
    claim_statements_read_bounded_rows(false).await;
}

/// A drain: the whole backlog is due. The claim must still touch only the rows it leases (an estimate of thousands
/// of picked rows once made the planner hash the whole pending partition to update 256 of them).
#[actix_rt::test]
async fn the_claim_statements_read_a_bounded_number_of_rows_with_100k_due_on_a_generic_plan() {
    claim_statements_read_bounded_rows(true).await;
}

/// 100,000 pending deliveries over three daily partitions: all of them due now (`all_due`), or 40 due and the rest
/// in an hour. Each statement of the claim path, planned generically, reads at most a few hundred rows.
async fn claim_statements_read_bounded_rows(all_due: bool) {
    let app = spawn_app_with(|s| {
        // Nothing attempts or claims here: only the statements are looked at.
        s.delivery.enabled = false;
        s.destinations.push(destination("busy", "http://192.0.2.1/"));
        s.routes.push(route("to-busy", "hmac", "busy"));
    })
    .await;
    let due_rule = if all_due {
        "now() - interval '1 second'"
    } else {
        "CASE WHEN e.idempotency_key::text < 'bulk-1000' AND length(e.idempotency_key) <= 8
              THEN now() - interval '1 second' ELSE now() + interval '1 hour' END"
    };
    app.db
        .batch_execute(&format!(
            "SELECT hookgate_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 3, 5);
             INSERT INTO events (id, source_id, idempotency_key, received_at, headers, body)
             SELECT gen_random_uuid(), s.id, 'bulk-' || g, now() - (g % 3) * interval '1 day', '{{}}', '\\x7b7d'
             FROM generate_series(1, 100040) g, sources s WHERE s.slug = 'hmac';
             INSERT INTO deliveries (id, event_id, route_id, destination_id, state, created_at, next_attempt_at)
             SELECT gen_random_uuid(), e.id, r.id, r.destination_id, 'pending', e.received_at, {due_rule}
             FROM events e JOIN routes r ON r.source_id = e.source_id WHERE r.slug = 'to-busy';
             ANALYZE;"
        ))
        .await
        .expect("seed the backlog");
    let due_now: i64 =
        app.db.query_one("SELECT count(*) FROM deliveries WHERE next_attempt_at <= now()", &[]).await.unwrap().get(0);
    if all_due {
        assert_eq!(due_now, 100_040);
    } else {
        assert!((1..=2_000).contains(&due_now), "{due_now} due");
    }
    let dest: uuid::Uuid = app.db.query_one("SELECT id FROM destinations", &[]).await.unwrap().get(0);

    let db = connect(&app._db.url()).await;
    db.batch_execute(&format!(
        "PREPARE due(uuid[], uuid[], int[]) AS {DUE};
         PREPARE claim(uuid[], int[], int[], uuid[], text, int) AS {CLAIM};"
    ))
    .await
    .unwrap();
    let cases = [
        ("DUE", format!("EXECUTE due(ARRAY['{dest}']::uuid[], ARRAY[]::uuid[], ARRAY[16])")),
        ("CLAIM", format!("EXECUTE claim(ARRAY['{dest}']::uuid[], ARRAY[16], ARRAY[16], ARRAY[]::uuid[], 'n', 1000)")),
        ("FIFO DUE", format!("EXECUTE due(ARRAY[]::uuid[], ARRAY['{dest}']::uuid[], ARRAY[]::int[])")),
    ];
    for (name, execute) in cases {
        // Twice: the first execution plans; the second must reuse that plan.
        for _ in 0..2 {
            db.batch_execute(&format!("BEGIN; {GENERIC_PLANS}")).await.unwrap();
            let plan: Value = db
                .query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {execute}"), &[])
                .await
                .unwrap()
                .get::<_, Value>(0);
            db.batch_execute("ROLLBACK").await.unwrap();
            let mut read = Vec::new();
            rows_read(&plan[0]["Plan"], &mut read);
            let worst = read.iter().cloned().fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
            assert!(worst.1 <= 500.0, "{name} reads {} rows in {}: {plan}", worst.1, worst.0);
        }
    }
    let plans: Vec<(String, i64, i64)> = db
        .query(
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements
             WHERE name IN ('due', 'claim') ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(plans.len(), 2);
    assert!(plans.iter().all(|(_, generic, custom)| *generic >= 2 && *custom == 0), "{plans:?}");
}

/// `read_hot` sends `BEGIN`, the statement and `COMMIT` together: when the statement fails, its error is returned and
/// the connection is still left outside any transaction (it goes back to the pool as it came).
#[actix_rt::test]
async fn a_hot_read_that_fails_leaves_its_connection_outside_any_transaction() {
    let app = spawn_app_with(|_| {}).await;
    let db = connect(&app._db.url()).await;
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let divide = db.prepare("SELECT 1 / $1::int").await.unwrap();
    let one = hookgate_store::read_hot(&db, &divide, &[&1i32]).await.unwrap();
    assert_eq!(one[0].get::<_, i32>(0), 1);
    let error = hookgate_store::read_hot(&db, &divide, &[&0i32]).await.unwrap_err();
    assert!(format!("{error:#}").contains("division by zero"), "{error:#}");
    // Seen from another connection (a backend reports its state before it says it is ready for the next query).
    let state: String =
        app.db.query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid]).await.unwrap().get(0);
    assert_eq!(state, "idle", "the connection was left inside a transaction");
    // And the settings were the transaction's own.
    let mode: String = db.query_one("SHOW plan_cache_mode", &[]).await.unwrap().get(0);
    assert_eq!(mode, "auto");
}

/// Every session hookgate opens (its pools', the probe's, the LISTEN connections') runs without JIT and commits
/// synchronously, whatever the server's or the role's defaults: JIT compiled the backlog sample over 100,000 pending
/// rows for 0.56 s of CPU (ADR-0019).
#[actix_rt::test]
async fn hookgate_sessions_run_without_jit_and_commit_synchronously() {
    let app = spawn_app_with(|_| {}).await;
    let pg = app.settings.database.pg_connect().unwrap();
    let (client, connection) = pg.config.connect(pg.tls.clone()).await.unwrap();
    actix_rt::spawn(connection);
    let row = client.query_one("SELECT current_setting('jit'), current_setting('synchronous_commit')", &[]).await;
    let row = row.unwrap();
    let (jit, commit): (String, String) = (row.get(0), row.get(1));
    assert_eq!((jit.as_str(), commit.as_str()), ("off", "on"));
}

/// A result batch commits without waiting for its WAL flush (ADR-0021), and only that transaction does: the
/// connection goes back to the pool committing synchronously, so an ingest flush that gets it next still answers
/// `2xx` only once its events are on disk.
#[actix_rt::test]
async fn a_result_batch_commits_asynchronously_and_leaves_its_connection_committing_synchronously() {
    let app = spawn_app_with(|_| {}).await;
    let mut settings = app.settings.database.clone();
    settings.pool_size = 1;
    let pool = hookgate::startup::build_pool(&settings).expect("pool");

    // The settings themselves: asynchronous inside the transaction, synchronous again after it.
    {
        let mut client = pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(hookgate_store::RESULT_SETTINGS).await.unwrap();
        let inside: String = tx.query_one("SHOW synchronous_commit", &[]).await.unwrap().get(0);
        let plans: String = tx.query_one("SHOW plan_cache_mode", &[]).await.unwrap().get(0);
        assert_eq!((inside.as_str(), plans.as_str()), ("off", "force_generic_plan"));
        tx.commit().await.unwrap();
    }
    // A batch recorded through the one pooled connection (it updates nothing: no such delivery), then that same
    // connection is asked.
    let headers = serde_json::json!({});
    let outcome = hookgate_store::results::Outcome {
        delivery_id: uuid::Uuid::now_v7(),
        destination_id: uuid::Uuid::new_v4(),
        created_at: chrono::Utc::now(),
        lease_id: uuid::Uuid::new_v4(),
        counted: false,
        attempt: 1,
        started_at: chrono::Utc::now(),
        status: Some(200),
        latency_ms: 1,
        response_headers: &headers,
        excerpt: None,
        error_kind: None,
        error: None,
        state: "delivered",
        next_attempt_at: chrono::Utc::now(),
        last_error: None,
        attempts: 1,
        routed: false,
        payload: None,
    };
    let recorded = hookgate_store::results::record(&pool, "node-a", &[outcome], &Default::default()).await.unwrap();
    assert!(recorded.dead.is_empty() && recorded.disabled.is_empty());
    let client = pool.get().await.unwrap();
    let after: String = client.query_one("SHOW synchronous_commit", &[]).await.unwrap().get(0);
    assert_eq!(after, "on", "the result batch's setting outlived its transaction");
}

/// The admin API's recent windows (events per source, attempts per destination, a destination's health) on 100,000
/// events, deliveries and attempts spread over three days: each counts exactly what the timestamps say, also while
/// some attempts lack their destination (written before migration 0013), and, once none does, reads about its
/// window's rows through the UUIDv7 ids (no index on the timestamps: ADR-0024) and no delivery (ADR-0030). Half an
/// hour, and a window that always reaches half an hour back past midnight UTC (a join to the deliveries once turned
/// into a hash of every delivery there).
#[actix_rt::test]
async fn the_admin_windows_read_their_rows_through_the_ids_and_count_what_the_timestamps_say() {
    let app = spawn_app_with(|s| {
        with_tokens(s);
        s.delivery.enabled = false;
        s.destinations.push(destination("busy", "http://192.0.2.1/"));
        s.routes.push(route("to-busy", "hmac", "busy"));
    })
    .await;
    // UUIDv7-shaped ids whose time is the row's own timestamp: an event's is its `received_at`, an attempt's is taken
    // up to 30 s after its `started_at` (its outcome is recorded when the attempt ends). Every tenth attempt lacks its
    // destination, as those written before migration 0013 do.
    app.db
        .batch_execute(
            "SELECT hookgate_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 4, 6);
             CREATE FUNCTION pg_temp.v7(t timestamptz, g int) RETURNS uuid LANGUAGE sql AS
               $$ SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0')
                          || '7' || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid $$;
             INSERT INTO events (id, source_id, idempotency_key, received_at, headers, body)
             SELECT pg_temp.v7(t, g), s.id, 'bulk-' || g, t, '{}', '\\x7b7d'
             FROM generate_series(1, 100000) g, sources s,
                  LATERAL (SELECT now() - make_interval(secs => g * 2.592) AS t) x
             WHERE s.slug = 'hmac';
             INSERT INTO deliveries (id, event_id, route_id, destination_id, state, created_at, next_attempt_at)
             SELECT pg_temp.v7(e.received_at, 0), e.id, r.id, r.destination_id, 'delivered', e.received_at,
                    e.received_at
             FROM events e JOIN routes r ON r.source_id = e.source_id WHERE r.slug = 'to-busy';
             INSERT INTO attempts (id, delivery_id, attempt, node_id, started_at, status, latency_ms, destination_id)
             SELECT pg_temp.v7(d.created_at + make_interval(secs => (d.seq % 30)), d.seq::int), d.id, 1, 'n',
                    d.created_at, 200, (d.seq % 100)::int, CASE WHEN d.seq % 10 <> 0 THEN d.destination_id END
             FROM deliveries d;
             ANALYZE;",
        )
        .await
        .expect("seed three days");
    let seeded = std::time::Instant::now();
    // Rows only leave a window as time passes: what the API counts lies between the counts by timestamp taken just
    // before and just after it asked.
    let counted = |table: &'static str, column: &'static str, secs: f64| {
        let db = &app.db;
        async move {
            let sql = format!("SELECT count(*) FROM {table} WHERE {column} > now() - make_interval(secs => $1)");
            db.query_one(&sql, &[&secs]).await.unwrap().get::<_, i64>(0)
        }
    };
    // Half an hour past midnight UTC, whatever the time now (whole seconds: the API takes those).
    let since_midnight: f64 = app
        .db
        .query_one(
            "SELECT ceil(extract(epoch FROM (now() AT TIME ZONE 'UTC') - date_trunc('day', now() AT TIME ZONE 'UTC')))
                    ::float8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // First with every tenth attempt lacking its destination (counted through its delivery), then with every attempt
    // holding it, as once those written before migration 0013 have left the windows: then no delivery is read.
    for filled in [false, true] {
        if filled {
            app.db
                .batch_execute(
                    "UPDATE attempts a SET destination_id = d.destination_id FROM deliveries d
                     WHERE d.id = a.delivery_id AND a.destination_id IS NULL;
                     ANALYZE attempts;",
                )
                .await
                .expect("fill the destinations");
        }
        let mut dest = None;
        for window in [1_800.0_f64, since_midnight + 1_800.0] {
            // A row every 2.592 s; the minute of slack before the window, and some.
            let expected = window / 2.592;
            let bound = expected + 1_300.0;
            let (events_before, attempts_before) =
                (counted("events", "received_at", window).await, counted("attempts", "started_at", window).await);
            // Rows seeded at the window's far edge have left it since (one every 2.592 s).
            let gone = seeded.elapsed().as_secs_f64() / 2.592;
            let about = expected - 100.0 - gone..=expected + 100.0;
            assert!(about.contains(&(events_before as f64)), "{events_before} events, {expected} expected");
            assert!(about.contains(&(attempts_before as f64)), "{attempts_before} attempts, {expected} expected");
            let stats = app.admin("get", &format!("/stats?window_secs={window}"), Some(READ), None).await;
            let (events_after, attempts_after) =
                (counted("events", "received_at", window).await, counted("attempts", "started_at", window).await);
            assert_eq!(stats.status, 200, "{stats:?}");
            let hmac = stats.json["sources"].as_array().unwrap().iter().find(|s| s["slug"] == "hmac").unwrap().clone();
            let events = hmac["events"].as_i64().unwrap();
            // Events are counted by their ids' time, their receipt to the millisecond: one at the window's edge may
            // differ.
            assert!((events_after - 1..=events_before + 1).contains(&events), "{events} in {window} s: {stats:?}");
            let busy =
                stats.json["destinations"].as_array().unwrap().iter().find(|d| d["slug"] == "busy").unwrap().clone();
            let attempts = busy["attempts"].as_i64().unwrap();
            assert!(
                (attempts_after..=attempts_before).contains(&attempts),
                "{attempts} attempts in {window} s (filled: {filled}): {stats:?}"
            );
            let id: uuid::Uuid = busy["id"].as_str().unwrap().parse().unwrap();
            dest = Some(id);
            if !filled {
                continue;
            }

            let cases = [
                ("events per source", hookgate_store::stats::SOURCES_SQL.replace("$1", &format!("{window}"))),
                (
                    "attempts per destination",
                    hookgate_store::stats::DESTINATIONS_SQL.replace("$1", &format!("{window}")),
                ),
                (
                    "a destination's health",
                    hookgate_store::destinations::ATTEMPT_WINDOW_SQL
                        .replace("$1", &format!("'{id}'::uuid"))
                        .replace("$2", &format!("{window}")),
                ),
            ];
            for (name, sql) in cases {
                let plan: Value = app
                    .db
                    .query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), &[])
                    .await
                    .unwrap()
                    .get::<_, Value>(0);
                let mut read = Vec::new();
                rows_read(&plan[0]["Plan"], &mut read);
                // Whatever the hour, no delivery row is read: the planner expects no attempt without its destination
                // and puts those it finds on the outer side of the join to the deliveries.
                let deliveries: Vec<_> =
                    read.iter().filter(|(node, rows)| node.contains(" deliveries") && *rows > 0.0).collect();
                assert!(deliveries.is_empty(), "{name} reads deliveries in {window} s: {deliveries:?}\n{plan}");
                // A partition may be scanned whole when it holds little more than its part of the window: the days
                // ahead (empty), today's just after midnight, all of it in the window reaching back past midnight.
                // A day's partition holds 33,333 rows.
                let scans: Vec<_> =
                    read.iter().filter(|(node, rows)| node.starts_with("Seq Scan") && *rows > bound).collect();
                assert!(scans.is_empty(), "{name} scans whole partitions in {window} s: {scans:?}\n{plan}");
                let worst = read.iter().cloned().fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
                assert!(worst.1 <= bound, "{name} reads {} rows in {} for {window} s: {plan}", worst.1, worst.0);
            }
        }

        let dest = dest.unwrap();
        let windows = [300.0, 3_600.0, 86_400.0];
        let mut before = Vec::new();
        for secs in windows {
            before.push(counted("attempts", "started_at", secs).await);
        }
        let health = app.admin("get", &format!("/destinations/{dest}/health"), Some(READ), None).await;
        assert_eq!(health.status, 200, "{health:?}");
        let got = health.json["windows"].as_array().unwrap();
        assert_eq!(got.len(), windows.len(), "{health:?}");
        for ((w, secs), before) in got.iter().zip(windows).zip(before) {
            assert_eq!(w["window_secs"].as_f64(), Some(secs), "{w}");
            let after = counted("attempts", "started_at", secs).await;
            let attempts = w["attempts"].as_i64().unwrap();
            assert!(
                (after..=before).contains(&attempts),
                "{attempts} attempts in {secs} s (filled: {filled}), {after}..={before}"
            );
            // Every seeded attempt answered 200 in 0–99 ms, whichever branch found it.
            assert_eq!(w["success_ratio"].as_f64(), Some(1.0), "{w}");
            let (p50, p99) = (w["latency_p50_ms"].as_f64().unwrap(), w["latency_p99_ms"].as_f64().unwrap());
            assert!((0.0..=99.0).contains(&p50) && (p50..=99.0).contains(&p99), "{w}");
        }
    }
}

/// `hookgate_v7_floor(t)` sorts at or before every UUIDv7 generated at `t` or later, and after every one generated in
/// an earlier millisecond.
#[actix_rt::test]
async fn the_uuid_v7_floor_of_a_time_sorts_at_or_before_the_ids_made_from_then_on_and_after_earlier_ones() {
    let app = spawn_app_with(|_| {}).await;
    for _ in 0..200 {
        let earlier = uuid::Uuid::now_v7();
        let at = chrono::Utc::now() + chrono::Duration::milliseconds(2);
        // An id made once the clock has reached `at`.
        let later = loop {
            if chrono::Utc::now() >= at {
                break uuid::Uuid::now_v7();
            }
            std::hint::spin_loop();
        };
        let row = app
            .db
            .query_one("SELECT hookgate_v7_floor($1) > $2, hookgate_v7_floor($1) <= $3", &[&at, &earlier, &later])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "{earlier} before {at}");
        assert!(row.get::<_, bool>(1), "{later} after {at}");
    }
}

/// The ingest flush's first statement runs on a generic plan from its first execution: its transaction's setting is
/// sent with it, ahead of it, and applies to it (`events::insert_new_after`).
#[actix_rt::test]
async fn the_ingest_flushs_insert_is_planned_generic_from_its_first_execution() {
    let app = spawn_app_with(|_| {}).await;
    let mut settings = app.settings.database.clone();
    settings.pool_size = 1;
    let pool = hookgate::startup::build_pool(&settings).expect("pool");
    let mut client = pool.get().await.unwrap();
    let source: uuid::Uuid = client.query_one("SELECT id FROM sources WHERE slug = 'hmac'", &[]).await.unwrap().get(0);
    let (id, headers) = (uuid::Uuid::now_v7(), serde_json::json!({}));
    let row = hookgate_store::events::EventRow {
        id,
        source_id: source,
        idempotency_key: "generic-plan-check",
        received_at: chrono::Utc::now(),
        content_type: None,
        headers: &headers,
        body: b"{}",
        event_type: None,
        traceparent: None,
    };
    let tx = hookgate_store::begin(&mut client).await.unwrap();
    let inserted = hookgate_store::events::insert_new_after(&tx, GENERIC_PLANS, &[row]).await.unwrap();
    assert!(inserted.contains(&id));
    let (generic, custom): (i64, i64) = {
        let r = tx
            .query_one(
                // The insert's text begins so (this statement's own text, listed too, begins with SELECT).
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements
                 WHERE statement LIKE 'WITH input AS%' AND statement LIKE '%INSERT INTO event_keys%'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    tx.rollback().await.unwrap();
    assert_eq!((generic, custom), (1, 0), "planned once, generic, on its first execution");
}
