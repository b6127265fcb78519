use uuid::Uuid;

use crate::helpers::{answer, sign, spawn_app};

#[actix_rt::test]
async fn an_accepted_event_is_stored_with_its_bytes_intact() {
    let app = spawn_app().await;
    // Odd but valid JSON: unicode, escapes, and whitespace that a re-serialization would lose.
    let body = "{ \"emoji\" : \"\u{1F680}\",\n\t\"esc\":\"\\u0041\\n\" , \"n\": 1.50 }".as_bytes();
    let resp = app
        .http
        .post(app.url("/ingest/hmac"))
        .insert_header(("Content-Type", "application/json; charset=utf-8"))
        .insert_header(("X-Signature", sign(body)))
        .insert_header(("X-Request-Id", "evt-1"))
        .insert_header(("User-Agent", "GitHub-Hookshot/abc"))
        .insert_header(("Authorization", "Bearer must-not-be-stored"))
        .send_body(body.to_vec())
        .await
        .unwrap();
    let a = answer(resp).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert!(!a.duplicate());
    let id = a.id();
    assert_eq!(id.get_version_num(), 7, "event ids are UUIDv7");

    let row = app
        .db
        .query_one(
            "SELECT e.body, e.content_type, e.headers, e.idempotency_key, s.slug, e.received_at > now() - interval '1 minute'
             FROM events e JOIN sources s ON s.id = e.source_id WHERE e.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<u8>>(0), body);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("application/json; charset=utf-8"));
    let headers: serde_json::Value = row.get(2);
    assert_eq!(headers["user-agent"], "GitHub-Hookshot/abc");
    assert_eq!(headers["x-request-id"], "evt-1");
    assert!(headers.get("authorization").is_none(), "credentials are never stored: {headers}");
    assert_eq!(row.get::<_, String>(3), "evt-1");
    assert_eq!(row.get::<_, String>(4), "hmac");
    assert!(row.get::<_, bool>(5));
}

#[actix_rt::test]
async fn a_binary_body_is_stored_byte_for_byte_and_keyed_by_its_hash() {
    let app = spawn_app().await;
    let body: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let post = || async {
        let resp = app
            .http
            .post(app.url("/ingest/open"))
            .insert_header(("Content-Type", "application/octet-stream"))
            .send_body(body.clone())
            .await
            .unwrap();
        answer(resp).await
    };
    let first = post().await;
    assert_eq!(first.status, 202, "{first:?}");
    let second = post().await;
    assert_eq!((second.id(), second.duplicate()), (first.id(), true));
    let row = app.db.query_one("SELECT body, idempotency_key FROM events", &[]).await.unwrap();
    assert_eq!(row.get::<_, Vec<u8>>(0), body);
    assert_eq!(row.get::<_, String>(1), hookgate_sha256_hex(&body));
}

fn hookgate_sha256_hex(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body))
}

#[actix_rt::test]
async fn a_duplicate_returns_the_first_id_and_leaves_one_row() {
    let app = spawn_app().await;
    let first = app.post_signed(br#"{"a":1}"#, "dup-1").await;
    let again = app.post_signed(br#"{"a":1}"#, "dup-1").await;
    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202);
    assert!(!first.duplicate());
    assert!(again.duplicate());
    assert_eq!(again.id(), first.id());
    assert_eq!(app.event_count().await, 1);
}

#[actix_rt::test]
async fn a_duplicate_is_caught_by_postgresql_when_the_cache_has_forgotten_it() {
    let app = spawn_app().await;
    let first = app.post_signed(br#"{"a":1}"#, "dup-2").await;
    // Forget the key in Redis: the second request must reach the writer and hit the unique constraint.
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}:*", app.settings.redis.key_prefix);
    let keys: Vec<String> =
        crate::helpers::eventually("the cache entry to be written", std::time::Duration::from_secs(10), || {
            let (pattern, mut conn) = (pattern.clone(), conn.clone());
            async move {
                let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap();
                (!keys.is_empty()).then_some(keys)
            }
        })
        .await;
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();

    let again = app.post_signed(br#"{"a":1}"#, "dup-2").await;
    assert_eq!((again.status, again.id(), again.duplicate()), (202, first.id(), true));
    assert_eq!(app.event_count().await, 1);
}

/// The writer asks Redis before it opens a flush's transaction: a repeat whose key Redis holds is answered while
/// PostgreSQL could not have answered it (the keys' table is locked), and a new key waits for the lock meanwhile.
#[actix_rt::test]
async fn a_repeat_the_cache_knows_is_answered_without_postgresql() {
    let app = crate::helpers::spawn_app_with(|s| {
        // The flush that waits for the lock keeps waiting until the test lets it go.
        s.database.statement_timeout_ms = 0;
        s.writer.flush_timeout_ms = 300_000;
        s.server.ingest_timeout_ms = 300_000;
    })
    .await;
    let first = app.post_signed(br#"{"a":1}"#, "dup-3").await;
    assert_eq!((first.status, first.duplicate()), (202, false));
    // The writer remembers the key after COMMIT, without waiting: wait for it to land.
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}:idem:*:dup-3", app.settings.redis.key_prefix);
    crate::helpers::eventually("the cache entry to be written", std::time::Duration::from_secs(10), || {
        let (pattern, mut conn) = (pattern.clone(), conn.clone());
        async move {
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap();
            (!keys.is_empty()).then_some(())
        }
    })
    .await;

    let blocker = crate::helpers::connect(&app._db.url()).await;
    blocker.batch_execute("BEGIN; LOCK TABLE event_keys IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let fresh = {
        let req = app
            .http
            .post(app.url("/ingest/hmac"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("X-Signature", sign(br#"{"b":2}"#)))
            .insert_header(("X-Request-Id", "new-while-locked"));
        actix_rt::spawn(async move { req.send_body(r#"{"b":2}"#).await.map(|r| r.status().as_u16()) })
    };
    crate::helpers::until_stuck(&app, "hookgate", 1).await;

    // Through PostgreSQL, the repeat would wait for the lock as long as the new key does.
    let again = tokio::time::timeout(std::time::Duration::from_secs(30), app.post_signed(br#"{"a":1}"#, "dup-3"))
        .await
        .expect("the repeat is answered while the keys' table is locked");
    assert_eq!((again.status, again.id(), again.duplicate()), (202, first.id(), true));
    assert!(!fresh.is_finished(), "the new key's request waits for PostgreSQL");

    blocker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(fresh.await.unwrap().expect("answered"), 202);
    assert_eq!(app.event_count().await, 2);
}

#[actix_rt::test]
async fn concurrent_copies_of_one_event_are_stored_once_and_all_get_its_id() {
    let app = spawn_app().await;
    let answers = futures::future::join_all((0..50).map(|_| app.post_signed(br#"{"same":true}"#, "same-key"))).await;
    let ids: std::collections::HashSet<Uuid> = answers.iter().map(|a| a.id()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| !a.duplicate()).count(), 1, "exactly one is the original");
    assert_eq!(app.event_count().await, 1);
}

/// One bad request per error answer, with its expected status and problem type.
#[actix_rt::test]
async fn every_refusal_is_a_problem_body_and_stores_nothing() {
    let app = spawn_app().await;
    let good = br#"{"ok":true}"#.to_vec();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)).into_bytes();

    struct Case {
        name: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, Vec<u8>)>,
        body: Vec<u8>,
        status: u16,
        problem: &'static str,
    }
    let signed = |body: &[u8], key: &'static str| {
        vec![
            ("Content-Type", b"application/json".to_vec()),
            ("X-Signature", sign(body).into_bytes()),
            ("X-Request-Id", key.as_bytes().to_vec()),
        ]
    };
    let with = |mut h: Vec<(&'static str, Vec<u8>)>, name: &'static str, value: &[u8]| {
        h.retain(|(n, _)| *n != name);
        h.push((name, value.to_vec()));
        h
    };
    let without = |mut h: Vec<(&'static str, Vec<u8>)>, name: &'static str| {
        h.retain(|(n, _)| *n != name);
        h
    };
    let cases = vec![
        Case {
            name: "unknown source",
            path: "/ingest/nope",
            headers: signed(&good, "k"),
            body: good.clone(),
            status: 404,
            problem: "unknown-source",
        },
        Case {
            name: "missing signature",
            path: "/ingest/hmac",
            headers: without(signed(&good, "k"), "X-Signature"),
            body: good.clone(),
            status: 401,
            problem: "invalid-signature",
        },
        Case {
            name: "wrong signature",
            path: "/ingest/hmac",
            headers: signed(br#"{"ok":false}"#, "k"),
            body: good.clone(),
            status: 401,
            problem: "invalid-signature",
        },
        Case {
            name: "signature without its prefix",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "X-Signature", sign(&good).trim_start_matches("sha256=").as_bytes()),
            body: good.clone(),
            status: 401,
            problem: "invalid-signature",
        },
        Case {
            name: "signature that is not hex",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "X-Signature", b"sha256=not-hex!"),
            body: good.clone(),
            status: 401,
            problem: "invalid-signature",
        },
        Case {
            name: "signature with non-ASCII bytes",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "X-Signature", b"sha256=\xe9\xe9"),
            body: good.clone(),
            status: 401,
            problem: "invalid-signature",
        },
        Case {
            name: "body over the source limit",
            path: "/ingest/hmac",
            headers: signed(&big, "k"),
            body: big.clone(),
            status: 413,
            problem: "payload-too-large",
        },
        Case {
            name: "text/plain where JSON is required",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "Content-Type", b"text/plain"),
            body: good.clone(),
            status: 415,
            problem: "unsupported-media-type",
        },
        Case {
            name: "no content type where JSON is required",
            path: "/ingest/hmac",
            headers: without(signed(&good, "k"), "Content-Type"),
            body: good.clone(),
            status: 415,
            problem: "unsupported-media-type",
        },
        Case {
            name: "JSON in latin-1",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "Content-Type", b"application/json; charset=iso-8859-1"),
            body: good.clone(),
            status: 415,
            problem: "unsupported-media-type",
        },
        Case {
            name: "gzip content encoding",
            path: "/ingest/open",
            headers: vec![("Content-Encoding", b"gzip".to_vec())],
            body: good.clone(),
            status: 415,
            problem: "unsupported-media-type",
        },
        Case {
            name: "truncated JSON",
            path: "/ingest/hmac",
            headers: signed(br#"{"ok":"#, "k"),
            body: br#"{"ok":"#.to_vec(),
            status: 400,
            problem: "invalid-json",
        },
        Case {
            name: "empty body where JSON is required",
            path: "/ingest/hmac",
            headers: signed(b"", "k"),
            body: vec![],
            status: 400,
            problem: "invalid-json",
        },
        Case {
            name: "invalid UTF-8 in JSON",
            path: "/ingest/hmac",
            headers: signed(b"{\"a\":\"\xff\"}", "k"),
            body: b"{\"a\":\"\xff\"}".to_vec(),
            status: 400,
            problem: "invalid-json",
        },
        Case {
            name: "missing idempotency header",
            path: "/ingest/hmac",
            headers: without(signed(&good, "k"), "X-Request-Id"),
            body: good.clone(),
            status: 400,
            problem: "bad-request",
        },
        Case {
            name: "idempotency key too long",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "X-Request-Id", "k".repeat(300).as_bytes()),
            body: good.clone(),
            status: 400,
            problem: "bad-request",
        },
        Case {
            name: "idempotency key with non-ASCII bytes",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "X-Request-Id", b"caf\xe9"),
            body: good.clone(),
            status: 400,
            problem: "bad-request",
        },
        Case {
            name: "blank idempotency key",
            path: "/ingest/hmac",
            headers: with(signed(&good, "k"), "X-Request-Id", b"   "),
            body: good.clone(),
            status: 400,
            problem: "bad-request",
        },
    ];
    for case in cases {
        let mut req = app.http.post(app.url(case.path));
        for (name, value) in &case.headers {
            req = req.insert_header((*name, awc::http::header::HeaderValue::from_bytes(value).unwrap()));
        }
        let a = answer(req.send_body(case.body.clone()).await.unwrap()).await;
        assert_eq!(a.status, case.status, "{}: {a:?}", case.name);
        a.assert_problem(case.status, case.problem);
        assert!(!a.json["detail"].as_str().unwrap().contains("test-secret"), "{}: detail leaks the secret", case.name);
        assert_eq!(app.event_count().await, 0, "{}: something was stored", case.name);
    }
    // The process is alive and still accepts good events.
    assert_eq!(app.post_signed(&good, "after-the-errors").await.status, 202);
}

#[actix_rt::test]
async fn a_chunked_body_over_the_limit_is_refused_while_streaming() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    // Six 1 KiB chunks and no Content-Length: the 4 KiB limit can only be found while reading the stream.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut request = b"POST /ingest/open HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..6 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b'a'; 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n{") || !response.ends_with(b"}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the server answers within 30 s")
            .unwrap();
        assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("urn:hookgate:problem:payload-too-large"), "{text}");
    assert_eq!(app.event_count().await, 0);
}

#[actix_rt::test]
async fn a_source_declared_disabled_answers_404_and_stores_nothing() {
    let app = crate::helpers::spawn_app_with(|s| {
        s.sources.iter_mut().filter(|src| src.slug == "open").for_each(|src| src.enabled = false)
    })
    .await;
    let resp = app.http.post(app.url("/ingest/open")).send_body("x").await.expect("ingest");
    assert_eq!(resp.status().as_u16(), 404);
    let stored: i64 = app.db.query_one("SELECT count(*) FROM events", &[]).await.unwrap().get(0);
    assert_eq!(stored, 0);
    let enabled: bool = app.db.query_one("SELECT enabled FROM sources WHERE slug = 'open'", &[]).await.unwrap().get(0);
    assert!(!enabled, "the configuration's `enabled = false` is stored");
}
