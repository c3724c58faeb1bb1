//! `GET /api/sse` over real HTTP: headers, negotiation, heartbeats, events,
//! resuming, resync, limits and clean-up.

mod common;

use std::time::Duration;

use common::{json, SseReader};
use mongodb::bson::{doc, oid::ObjectId, Document};

const SECOND: Duration = Duration::from_secs(1);

/// The stream has the contract's headers, starts with a `retry:` in the jitter range and sends
/// `: heartbeat` comments while idle.
#[tokio::test]
async fn headers_retry_and_heartbeat() {
    let app = common::start().await;
    let client = reqwest::Client::new();
    let mut reader = SseReader::open(&app.url("/api/sse"), &[("accept-encoding", "gzip")]).await;
    let headers = reader.response.headers().clone();
    assert_eq!(reader.response.status().as_u16(), 200);
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-cache, no-transform")
    );
    assert_eq!(
        headers
            .get("x-accel-buffering")
            .and_then(|v| v.to_str().ok()),
        Some("no")
    );
    assert!(
        headers.get("content-encoding").is_none(),
        "never compressed"
    );
    let first = reader.next_within(SECOND).await.expect("first block");
    let retry = first.retry.expect("retry first");
    assert!((1000..3000).contains(&retry), "{retry}");
    let mut heartbeats = 0;
    while let Some(block) = reader.next_within(SECOND).await {
        assert_eq!(block.comment.as_deref(), Some(" heartbeat"));
        heartbeats += 1;
        if heartbeats == 3 {
            break;
        }
    }
    assert_eq!(heartbeats, 3, "heartbeats every 300 ms while idle");
    // Pages are compressed, the feed is not.
    let page = client
        .get(app.url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("page");
    assert_eq!(
        page.headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
}

/// A request whose Accept does not admit text/event-stream gets 406.
#[tokio::test]
async fn not_acceptable() {
    let app = common::start().await;
    let response = reqwest::Client::new()
        .get(app.url("/api/sse"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 406);
}

/// One message per change with the token as id and only operationType, collection and id.
#[tokio::test]
async fn changes_become_messages() {
    let app = common::start().await;
    let mut reader = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reader).await;
    let id = ObjectId::new();
    app.users()
        .insert_one(doc! { "_id": id, "fname": "New", "lname": "User", "username": "new", "secret": "s3cret" })
        .await
        .expect("insert");
    app.users()
        .update_one(doc! { "_id": id }, doc! { "$set": { "fname": "Newer" } })
        .await
        .expect("update");
    app.users()
        .replace_one(
            doc! { "_id": id },
            doc! { "fname": "R", "lname": "R", "username": "r" },
        )
        .await
        .expect("replace");
    let device = app
        .devices()
        .find_one(doc! { "type": "camera" })
        .await
        .expect("find")
        .expect("camera");
    app.devices()
        .delete_one(doc! { "_id": device.get_object_id("_id").expect("oid") })
        .await
        .expect("delete");
    app.client
        .database("realtime")
        .collection::<Document>("other")
        .insert_one(doc! { "x": 1 })
        .await
        .expect("other");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let message = reader.next_message().await;
        assert!(
            message.id.as_deref().is_some_and(|t| !t.is_empty()),
            "id is the resume token"
        );
        assert!(message.event.is_none());
        seen.push(json(&message));
    }
    assert_eq!(
        seen[0],
        serde_json::json!({ "operationType": "insert", "collection": "users", "id": id.to_hex() })
    );
    assert_eq!(seen[1]["operationType"], "update");
    assert_eq!(seen[2]["operationType"], "replace");
    assert_eq!(seen[3]["operationType"], "delete");
    assert_eq!(seen[3]["collection"], "devices");
    assert!(
        seen.iter()
            .all(|m| m.as_object().map(|o| o.len()) == Some(3)),
        "no document fields"
    );
    // The change to another collection is not broadcast.
    assert!(reader
        .next_within(Duration::from_millis(500))
        .await
        .is_none_or(|b| b.data.is_none()));
}

/// A user whose `_id` is a 2 KiB string (as another tool may write) becomes an event without
/// `id` (the page refetches the list); a normal insert after it still carries its id, and
/// `/metrics` has the `realtime_ring_bytes` gauge counting both events.
#[tokio::test]
async fn long_ids_are_left_out_of_events() {
    let app = common::start().await;
    let mut reader = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reader).await;
    app.users()
        .insert_one(
            doc! { "_id": "i".repeat(2048), "fname": "Long", "lname": "Id", "username": "long-id" },
        )
        .await
        .expect("insert a 2 KiB _id");
    let id = ObjectId::new();
    app.users()
        .insert_one(doc! { "_id": id, "fname": "Short", "lname": "Id", "username": "short-id" })
        .await
        .expect("insert");
    let long = reader.next_message().await;
    assert!(long.id.as_deref().is_some_and(|t| !t.is_empty()));
    assert_eq!(
        json(&long),
        serde_json::json!({ "operationType": "insert", "collection": "users" })
    );
    assert_eq!(
        json(&reader.next_message().await),
        serde_json::json!({ "operationType": "insert", "collection": "users", "id": id.to_hex() })
    );
    let text = reqwest::get(app.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(text.contains("# TYPE realtime_ring_bytes gauge"), "{text}");
    let bytes: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("realtime_ring_bytes ")?.parse().ok())
        .expect("realtime_ring_bytes sample");
    assert!(bytes > 0, "the ring holds the two events");
}

/// Inserts `n` users and returns their ids.
async fn insert_users(app: &common::App, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = ObjectId::new();
        app.users()
            .insert_one(doc! { "_id": id, "fname": format!("u{i}"), "lname": "x", "username": format!("u{}", id.to_hex()) })
            .await
            .expect("insert");
        ids.push(id.to_hex());
    }
    ids
}

/// A stream position (the id of one change a client saw), then `n` users inserted after it
/// while no client was connected: returns the position and their ids.
async fn position_then_missed(app: &common::App, n: usize) -> (String, Vec<String>) {
    let mut reader = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reader).await;
    insert_users(app, 1).await;
    let last = reader.next_message().await.id.expect("id");
    drop(reader);
    (last, insert_users(app, n).await)
}

/// Reads `n` messages and returns their document ids.
async fn read_ids(reader: &mut SseReader, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            json(&reader.next_message().await)["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    ids
}

/// Reconnecting with `Last-Event-ID` (or `?lastEventId=`) delivers every change after that
/// event, in order, once, then live ones.
#[tokio::test]
async fn resume_delivers_missed_changes_once() {
    let app = common::start().await;
    let (last, missed) = position_then_missed(&app, 3).await;

    let mut by_header = SseReader::open(&app.url("/api/sse"), &[("last-event-id", &last)]).await;
    assert_eq!(read_ids(&mut by_header, 3).await, missed);
    let mut by_query =
        SseReader::open(&app.url(&format!("/api/sse?lastEventId={last}")), &[]).await;
    assert_eq!(read_ids(&mut by_query, 3).await, missed);
    // The header wins over the query parameter.
    let newest = {
        let mut r = SseReader::open(&app.url("/api/sse"), &[("last-event-id", &last)]).await;
        let mut id = None;
        for _ in 0..3 {
            id = r.next_message().await.id;
        }
        id.expect("id")
    };
    let mut both = SseReader::open(
        &app.url(&format!("/api/sse?lastEventId={last}")),
        &[("last-event-id", &newest)],
    )
    .await;
    let live = insert_users(&app, 1).await;
    assert_eq!(
        read_ids(&mut both, 1).await,
        live,
        "nothing replayed before the header's position"
    );
    // Nothing twice: after the live change, silence.
    assert_eq!(read_ids(&mut by_header, 1).await, live);
    assert!(by_header
        .next_within(Duration::from_millis(400))
        .await
        .is_none_or(|b| b.data.is_none()));
}

/// A position from before a restart (no longer in memory) is replayed from the database.
#[tokio::test]
async fn resume_across_restart_uses_the_database() {
    let app = common::start().await;
    let (last, missed) = position_then_missed(&app, 2).await;
    let dir = app.stop().await;
    let config = common::config(&dir);
    let app = common::start_with(dir, config).await;
    let mut reader = SseReader::open(&app.url("/api/sse"), &[("last-event-id", &last)]).await;
    assert_eq!(read_ids(&mut reader, 2).await, missed);
    let live = insert_users(&app, 1).await;
    assert_eq!(read_ids(&mut reader, 1).await, live);
}

/// A token the server cannot resume from gets exactly one `resync` (with a current position as
/// id), then live events.
#[tokio::test]
async fn unknown_token_gets_one_resync() {
    let app = common::start().await;
    for bogus in ["garbage", "0000000000000000000000", "7FFFFFFF0000000101"] {
        let mut reader = SseReader::open(&app.url("/api/sse"), &[("last-event-id", bogus)]).await;
        let resync = reader.next_message().await;
        assert_eq!(resync.event.as_deref(), Some("resync"), "{bogus}");
        assert!(resync
            .id
            .as_deref()
            .is_some_and(|id| !id.is_empty() && id != bogus));
        let live = insert_users(&app, 1).await;
        let next = reader.next_message().await;
        assert_eq!(next.event, None);
        assert_eq!(json(&next)["id"], live[0].as_str());
    }
}

/// Beyond SSE_MAX_CLIENTS a new stream gets 200, a retry line, and is closed; a client that
/// disconnects frees its slot and leaves nothing behind.
#[tokio::test]
async fn client_limit_and_cleanup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::config(&dir);
    config.max_clients = Some(1);
    let app = common::start_with(dir, config).await;
    let clients = app.running.state.stream_slots.clone();
    let mut first = SseReader::open(&app.url("/api/sse"), &[]).await;
    assert!(first.next_within(SECOND).await.is_some());
    assert_eq!(clients.open(), 1);
    let mut second = SseReader::open(&app.url("/api/sse"), &[]).await;
    assert_eq!(second.response.status().as_u16(), 200);
    let block = second.next_within(SECOND).await.expect("retry");
    assert!(block.retry.is_some());
    assert!(
        second.ends_within(2 * SECOND).await,
        "over the limit: closed"
    );
    drop(first);
    let mut freed = false;
    for _ in 0..50 {
        if clients.open() == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the disconnected client's slot is released");
    let mut third = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut third).await;
    insert_users(&app, 1).await;
    assert!(
        third.next_message().await.id.is_some(),
        "a new client is admitted again"
    );
}

/// Shutting the server down ends open streams promptly.
#[tokio::test]
async fn shutdown_ends_streams() {
    let app = common::start().await;
    let mut reader = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reader).await;
    let stop = tokio::spawn(app.stop());
    assert!(
        reader.ends_within(5 * SECOND).await,
        "stream ended by shutdown"
    );
    tokio::time::timeout(10 * SECOND, stop)
        .await
        .expect("shutdown completes")
        .expect("task");
}

/// A client that stops reading is cut off (after a resync) once its buffer is full, while a
/// reading client keeps getting every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_off() {
    use tokio::io::AsyncReadExt;

    // Long enough that the lag, not the write deadline, is what cuts it off.
    let app = start_with_write_timeout(Duration::from_secs(600)).await;
    // The slow client: it reads nothing until the end.
    let mut slow = silent_stream(&app).await;
    let mut fast = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut fast).await;
    // Lockstep: the next batch is written only once the fast client has read the last one, so
    // it never falls behind, while the slow one falls further behind with every batch.
    let total = 40_000;
    for batch in 0..total / 500 {
        let docs: Vec<Document> = (0..500)
            .map(|i| doc! { "fname": format!("b{batch}"), "lname": format!("{i}"), "username": format!("bulk{batch}_{i}") })
            .collect();
        app.users().insert_many(docs).await.expect("insert batch");
        for _ in 0..500 {
            let message = fast.next_message().await;
            assert_eq!(
                message.event, None,
                "the reading client never needs a resync"
            );
        }
    }
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(10 * SECOND, slow.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the slow client's connection was closed");
    let text = String::from_utf8_lossy(&bytes);
    let events = text.matches("data: {\"operationType\"").count();
    assert!(events < total, "it did not get everything ({events})");
    assert!(
        text.contains("event: resync"),
        "it was told to resync before being cut off"
    );
    // The reading client is still served.
    insert_users(&app, 1).await;
    assert!(fast.next_message().await.id.is_some());
}

/// Dropping a watched collection (which has no per-document events) makes every client resync,
/// and the feed keeps going afterwards.
#[tokio::test]
async fn dropped_collection_resyncs_clients() {
    let app = common::start().await;
    let mut reader = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reader).await;
    app.users().drop().await.expect("drop");
    let resync = reader.next_message().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    let live = insert_users(&app, 1).await;
    assert_eq!(read_ids(&mut reader, 1).await, live);
    let (status, body) = {
        let response = reqwest::get(app.url("/api/users")).await.expect("request");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    };
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .expect("JSON")
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// When the database restarts, the hub reopens its change stream from its last token (`/readyz`
/// says 503 meanwhile), and an open client stream carries on without losing a change.
#[tokio::test]
async fn database_restart_is_survived() {
    let db_dir = tempfile::tempdir().expect("temp dir");
    let settings = embedded_db::Config::new("127.0.0.1:0".parse().expect("address"), db_dir.path());
    let database = embedded_db::Server::start(settings.clone())
        .await
        .expect("database");
    let db_addr = database.local_addr();
    let (running, base) = common::start_against(db_addr).await;
    let mut reader = SseReader::open(&format!("{base}/api/sse"), &[]).await;
    common::settle(&mut reader).await;

    database.shutdown().await;
    assert_eq!(
        common::wait_ready(&base, 503).await,
        503,
        "readyz reports the outage"
    );

    let database = embedded_db::Server::start(embedded_db::Config {
        addr: db_addr,
        ..settings
    })
    .await
    .expect("database restarts on the same address and data");
    let client =
        mongodb::Client::with_uri_str(format!("mongodb://{db_addr}/?directConnection=true"))
            .await
            .expect("client");
    let id = ObjectId::new();
    client
        .database("realtime")
        .collection::<Document>("users")
        .insert_one(doc! { "_id": id, "fname": "After", "lname": "Restart", "username": "ar" })
        .await
        .expect("insert");
    let message = reader.next_message().await;
    assert_eq!(
        json(&message)["id"],
        id.to_hex(),
        "the change after the restart arrives"
    );
    assert_eq!(common::wait_ready(&base, 200).await, 200, "ready again");
    assert!(
        running.state.hub.streams_opened() >= 2,
        "the stream was reopened"
    );
    running.shutdown().await;
    client.shutdown().await;
    database.shutdown().await;
}

/// When the database comes back without the hub's position in its history (trimmed while the
/// hub was cut off), the hub starts a fresh stream and every client gets `resync`.
#[tokio::test]
async fn lost_history_resyncs_every_client() {
    let db_dir = tempfile::tempdir().expect("temp dir");
    let settings = embedded_db::Config {
        history: 3,
        ..embedded_db::Config::new("127.0.0.1:0".parse().expect("address"), db_dir.path())
    };
    let database = embedded_db::Server::start(settings.clone())
        .await
        .expect("database");
    let db_addr = database.local_addr();
    let (running, base) = common::start_against(db_addr).await;
    let mut reader = SseReader::open(&format!("{base}/api/sse"), &[]).await;
    common::settle(&mut reader).await;
    let writer = |addr: std::net::SocketAddr| async move {
        mongodb::Client::with_uri_str(format!("mongodb://{addr}/?directConnection=true"))
            .await
            .expect("client")
    };
    let client = writer(db_addr).await;
    let users = client.database("realtime").collection::<Document>("users");
    users
        .insert_one(doc! { "fname": "a", "lname": "b", "username": "c" })
        .await
        .expect("insert");
    assert!(
        reader.next_message().await.id.is_some(),
        "the hub is at that change"
    );
    client.shutdown().await;
    database.shutdown().await;

    // While the hub cannot reach it, the same data is written through another address until
    // the hub's position falls out of the 3-entry history.
    let elsewhere = embedded_db::Server::start(embedded_db::Config {
        addr: "127.0.0.1:0".parse().expect("address"),
        ..settings.clone()
    })
    .await
    .expect("same data, other address");
    let client = writer(elsewhere.local_addr()).await;
    let users = client.database("realtime").collection::<Document>("users");
    for i in 0..10 {
        users
            .insert_one(doc! { "fname": "x", "lname": "y", "username": format!("z{i}") })
            .await
            .expect("insert");
    }
    client.shutdown().await;
    elsewhere.shutdown().await;

    let database = embedded_db::Server::start(embedded_db::Config {
        addr: db_addr,
        ..settings
    })
    .await
    .expect("database back on its address");
    let resync = reader.next_message().await;
    assert_eq!(
        resync.event.as_deref(),
        Some("resync"),
        "history lost: the client must refetch"
    );
    assert!(
        running.state.hub.wait_open(Duration::from_secs(10)).await,
        "a fresh stream is open"
    );
    running.shutdown().await;
    database.shutdown().await;
}

/// Polls `sample` of `/metrics` (up to 10 s) until it equals `wanted`; returns the last value.
async fn wait_metric(app: &common::App, sample: &str, wanted: u64) -> u64 {
    let mut value = common::metric(&app.base, sample).await;
    for _ in 0..200 {
        if value == wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        value = common::metric(&app.base, sample).await;
    }
    value
}

const OPEN: &str = "realtime_sse_streams_open";

/// A stream requested on a kept-alive connection that already served the page is taken over
/// from hyper: chunked, `Connection: close`, and it carries the feed.
#[tokio::test]
async fn stream_on_a_connection_that_served_the_page() {
    let app = common::start().await;
    let mut http = common::RawHttp::connect(app.running.addr).await;
    http.get("/", &[]).await;
    let (head, body) = http.response().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("Lovelace"),
        "the page"
    );
    http.get("/api/sse", &["Accept: text/event-stream"]).await;
    let head = http.head().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    for header in [
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
        "connection: close",
        "cache-control: no-cache, no-transform",
    ] {
        assert!(head.contains(header), "{header} in {head}");
    }
    let retry = http.chunk().await.expect("retry chunk");
    assert!(retry.starts_with(b"retry: "), "{retry:?}");
    assert_eq!(wait_metric(&app, OPEN, 1).await, 1);
    let ids = insert_users(&app, 1).await;
    let event = loop {
        let chunk = http.chunk().await.expect("an event");
        if !chunk.starts_with(b":") {
            break String::from_utf8_lossy(&chunk).to_string();
        }
    };
    assert!(event.starts_with("id: "), "{event}");
    assert!(event.contains(&ids[0]), "{event}");
    drop(http);
    assert_eq!(wait_metric(&app, OPEN, 0).await, 0, "the slot is freed");
}

/// After a stalled stream was cut: no stream was cut for lag, and `reading` still gets the
/// next change.
async fn assert_cut_for_time_not_lag(app: &common::App, reading: &mut SseReader) {
    assert_eq!(
        common::metric(
            &app.base,
            "realtime_sse_streams_cut_off_total{reason=\"lag\"}"
        )
        .await,
        0
    );
    let live = insert_users(app, 1).await;
    assert_eq!(read_ids(reading, 1).await, live);
}

/// A stream whose socket accepts none of its pending bytes for `SSE_WRITE_TIMEOUT_MS` is
/// closed and its slot freed, while a reading client keeps receiving every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_is_cut_after_the_write_timeout() {
    let app = start_with_write_timeout(Duration::from_millis(500)).await;
    let stalled = silent_stream(&app).await;
    let mut reading = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reading).await;
    assert_eq!(wait_metric(&app, OPEN, 2).await, 2);
    let cut = "realtime_sse_streams_cut_off_total{reason=\"write_timeout\"}";
    let mut batches = 0;
    while common::metric(&app.base, cut).await == 0 {
        batches += 1;
        assert!(batches <= 200, "the stalled stream was never cut off");
        let docs: Vec<Document> = (0..200)
            .map(|i| doc! { "fname": format!("s{batches}"), "lname": format!("{i}"), "username": format!("stall{batches}_{i}") })
            .collect();
        app.users().insert_many(docs).await.expect("insert batch");
        for _ in 0..200 {
            let message = reading.next_message().await;
            assert_eq!(message.event, None, "the reading client is never cut");
        }
    }
    assert_eq!(wait_metric(&app, OPEN, 1).await, 1, "its slot is freed");
    assert_cut_for_time_not_lag(&app, &mut reading).await;
    drop(stalled);
}

/// A client with the kernel's default buffers that never reads is found out: the stream's
/// kernel send buffer is bounded, so once it and the client's receive window are full the
/// stream's bytes are pending, and after `SSE_WRITE_TIMEOUT_MS` it is cut off (its socket
/// reset) and its slot freed, while a reading client keeps receiving every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_client_that_stops_reading_is_cut_off() {
    use tokio::io::AsyncReadExt;

    let timeout = Duration::from_millis(500);
    let app = start_with_write_timeout(timeout).await;
    // One event on the wire (chunk framing included), measured on a stream of its own.
    let event_bytes = {
        let mut http = common::RawHttp::connect(app.running.addr).await;
        http.get("/api/sse", &["Accept: text/event-stream"]).await;
        http.head().await;
        http.chunk().await.expect("retry chunk");
        assert_eq!(wait_metric(&app, OPEN, 1).await, 1);
        insert_users(&app, 1).await;
        let event = loop {
            let chunk = http.chunk().await.expect("an event");
            if !chunk.starts_with(b":") {
                break chunk;
            }
        };
        event.len() + format!("{:x}\r\n\r\n", event.len()).len()
    };
    assert_eq!(wait_metric(&app, OPEN, 0).await, 0);
    // What the stalled stream can hold before its bytes are pending: its send buffer (64 KiB
    // asked, doubled by Linux: 128 KiB) plus the client's receive window (at most its default
    // receive buffer, the middle value of tcp_rmem: 128 KiB here, as it never reads and so
    // never grows it). With 116-byte events that is 256 KiB / 116 ≈ 2,260 events; 1.5 times
    // as many (≈ 3,390) are committed. Before the bound, the kernel grew the send buffer
    // toward the tcp_wmem maximum (4 MiB) and accepted them all: the stream was never cut.
    let rmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem").expect("tcp_rmem");
    let receive_window: usize = rmem
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("tcp_rmem default");
    let bound = 2 * server::net::STREAM_SEND_BUFFER + receive_window;
    let events = bound * 3 / 2 / event_bytes;

    let mut stalled = raw_request(&app, "GET /api/sse HTTP/1.1").await;
    let mut reading = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reading).await;
    assert_eq!(wait_metric(&app, OPEN, 2).await, 2);
    let cut = "realtime_sse_streams_cut_off_total{reason=\"write_timeout\"}";
    assert_eq!(common::metric(&app.base, cut).await, 0);
    // In batches the reading client reads in lockstep, so it never falls behind.
    let mut committed = 0;
    while committed < events {
        let n = (events - committed).min(500);
        let docs: Vec<Document> = (0..n)
            .map(|i| doc! { "fname": format!("d{committed}"), "lname": format!("{i}"), "username": format!("default{committed}_{i}") })
            .collect();
        app.users().insert_many(docs).await.expect("insert batch");
        for _ in 0..n {
            let message = reading.next_message().await;
            assert_eq!(message.event, None, "the reading client is never cut");
        }
        committed += n;
    }
    // Every event is out: the stalled stream's buffers filled on the way, so it is cut within
    // the write timeout (plus a margin for a busy machine).
    let out = std::time::Instant::now();
    let margin = 2 * SECOND;
    while common::metric(&app.base, cut).await == 0 {
        assert!(
            out.elapsed() <= timeout + margin,
            "a client that left {events} events of {event_bytes} bytes unread was not cut off"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(wait_metric(&app, OPEN, 1).await, 1, "its slot is freed");
    // Its socket was reset (or closed): reading it ends within the deadline.
    let mut unread = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(10 * SECOND, stalled.read(&mut unread))
            .await
            .expect("the stalled socket ends")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert_cut_for_time_not_lag(&app, &mut reading).await;
}

/// A position that is not hex, or not 2–4,096 characters, gets `resync` without the database
/// being asked; of repeated `lastEventId` query parameters the first counts (never a 400).
#[tokio::test]
async fn malformed_positions_resync_without_the_database() {
    let app = common::start().await;
    let (last, missed) = position_then_missed(&app, 2).await;
    let streams = "realtime_change_streams_opened_total";
    let replays = "realtime_catch_ups_total{source=\"database\"}";
    let (streams_before, replays_before) = (
        common::metric(&app.base, streams).await,
        common::metric(&app.base, replays).await,
    );
    let too_long = "ab".repeat(2049);
    for bogus in ["not-hex!", "a", "12 34", too_long.as_str()] {
        let mut reader = SseReader::open(&app.url("/api/sse"), &[("last-event-id", bogus)]).await;
        let resync = reader.next_message().await;
        assert_eq!(resync.event.as_deref(), Some("resync"), "{bogus}");
    }
    let mut first_counts = SseReader::open(
        &app.url(&format!("/api/sse?lastEventId={last}&lastEventId=zz")),
        &[],
    )
    .await;
    assert_eq!(first_counts.response.status().as_u16(), 200);
    assert_eq!(read_ids(&mut first_counts, 2).await, missed);
    let mut first_is_bad = SseReader::open(
        &app.url(&format!("/api/sse?lastEventId=zz&lastEventId={last}")),
        &[],
    )
    .await;
    assert_eq!(first_is_bad.response.status().as_u16(), 200);
    assert_eq!(
        first_is_bad.next_message().await.event.as_deref(),
        Some("resync")
    );
    assert_eq!(common::metric(&app.base, streams).await, streams_before);
    assert_eq!(common::metric(&app.base, replays).await, replays_before);
}

/// After a restart, 1,000 browsers reconnecting from one position share one replay from the
/// database: each gets exactly what it missed, once, and at most 2 change streams are opened
/// (the feed's and the replay), as both the app and the database count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_storm_shares_one_replay() {
    const CLIENTS: usize = 1000;
    let app = common::start().await;
    let (last, missed) = position_then_missed(&app, 5).await;
    let dir = app.stop().await;
    let config = common::config(&dir);
    let app = common::start_with(dir, config).await;

    let url = app.url("/api/sse");
    let reconnects: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, last) = (url.clone(), last.clone());
            tokio::spawn(async move {
                let mut reader = SseReader::open(&url, &[("last-event-id", &last)]).await;
                let ids = read_ids(&mut reader, 5).await;
                (reader, ids)
            })
        })
        .collect();
    let mut readers = Vec::with_capacity(CLIENTS);
    for reconnect in reconnects {
        let (reader, ids) = reconnect.await.expect("client task");
        assert_eq!(ids, missed, "exactly what it missed, in order");
        readers.push(reader);
    }
    let live = insert_users(&app, 1).await;
    for reader in &mut readers {
        assert_eq!(read_ids(reader, 1).await, live, "then live, nothing twice");
    }
    assert_eq!(
        common::metric(&app.base, "realtime_catch_ups_total{source=\"database\"}").await,
        1,
        "one replay from the database"
    );
    assert_eq!(
        common::metric(&app.base, "realtime_catch_ups_total{source=\"memory\"}").await,
        CLIENTS as u64 - 1,
        "every other client served from memory"
    );
    let opened = common::metric(&app.base, "realtime_change_streams_opened_total").await;
    assert!(opened <= 2, "{opened} change streams opened by the app");
    let status = app
        .client
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .expect("serverStatus");
    let counted = status
        .get_document("metrics")
        .and_then(|m| m.get_document("aggStageCounters"))
        .and_then(|c| c.get_i64("$changeStream"))
        .expect("aggStageCounters.$changeStream");
    assert!(
        counted <= 2,
        "{counted} change streams opened on the database"
    );
}

/// An HTTP/1.0 client (no chunked encoding, so the connection is not taken over) gets the same
/// stream as a body hyper writes: `retry:`, then events, ended by closing the connection.
#[tokio::test]
async fn http_1_0_gets_the_stream_from_hyper() {
    let app = common::start().await;
    let mut socket = raw_request(&app, "GET /api/sse HTTP/1.0").await;
    let mut received = String::new();
    read_until(&mut socket, &mut received, "retry: ").await;
    let ids = insert_users(&app, 1).await;
    read_until(&mut socket, &mut received, &ids[0]).await;
    let head = received
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

/// A raw socket that has sent `request_line` (e.g. `GET /api/sse HTTP/1.1`) with `Host` and an
/// `Accept: text/event-stream`, and read nothing yet.
async fn raw_request(app: &common::App, request_line: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;

    let mut socket = tokio::net::TcpStream::connect(app.running.addr)
        .await
        .expect("connect");
    let request = format!("{request_line}\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("request");
    socket
}

/// Reads from `socket` into `received` until it contains `needle` (10 s at most).
async fn read_until(socket: &mut tokio::net::TcpStream, received: &mut String, needle: &str) {
    use tokio::io::AsyncReadExt;

    let mut chunk = [0u8; 4096];
    while !received.contains(needle) {
        let n = tokio::time::timeout(10 * SECOND, socket.read(&mut chunk))
            .await
            .expect("bytes within 10 s")
            .expect("read");
        assert!(n > 0, "closed before {needle:?}: {received}");
        received.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

/// A server whose `SSE_WRITE_TIMEOUT_MS` is `timeout`.
async fn start_with_write_timeout(timeout: Duration) -> common::App {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::config(&dir);
    config.write_timeout = timeout;
    common::start_with(dir, config).await
}

/// An event stream requested over a socket with a 4 KiB receive buffer, which reads nothing
/// until the test reads it.
async fn silent_stream(app: &common::App) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let mut stream = socket.connect(app.running.addr).await.expect("connect");
    stream
        .write_all(b"GET /api/sse HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("request");
    stream
}

/// `HEAD /api/sse` over HTTP/1.1 gets the stream's status and headers and no body within the
/// deadline, takes no stream slot, and the connection serves the next request.
#[tokio::test]
async fn head_gets_the_stream_headers() {
    use tokio::io::AsyncWriteExt;

    let app = common::start().await;
    let mut socket = raw_request(&app, "HEAD /api/sse HTTP/1.1").await;
    let mut received = String::new();
    read_until(&mut socket, &mut received, "\r\n\r\n").await;
    let head = received.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(
        head.contains("cache-control: no-cache, no-transform"),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "no body: {head}");
    assert_eq!(app.running.state.stream_slots.open(), 0);
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut next = String::new();
    read_until(&mut socket, &mut next, "\r\n\r\n").await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
}
