//! Catch-ups from the database over real sockets: a reconnect waiting for its replay gets
//! heartbeats, one address cannot hold up another's, and a position older than the database's
//! history gets `resync` at once.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{json, SseReader};
use mongodb::bson::{doc, Document};
use mongodb::Client;
use tokio::time::Instant;

/// An embedded database keeping `history` changes, with fail points, and a client of it.
async fn database(dir: &std::path::Path, history: u64) -> (embedded_db::Server, Client) {
    let server = embedded_db::Server::start(embedded_db::Config {
        history,
        enable_test_commands: true,
        ..embedded_db::Config::new("127.0.0.1:0".parse().expect("address"), dir)
    })
    .await
    .expect("database");
    let client = Client::with_uri_str(format!(
        "mongodb://{}/?directConnection=true",
        server.local_addr()
    ))
    .await
    .expect("client");
    (server, client)
}

/// Inserts one user and returns its id.
async fn insert_user(client: &Client) -> String {
    let id = mongodb::bson::oid::ObjectId::new();
    client
        .database("realtime")
        .collection::<Document>("users")
        .insert_one(doc! { "_id": id, "fname": "f", "lname": "l", "username": id.to_hex() })
        .await
        .expect("insert");
    id.to_hex()
}

/// Runs an app against `db_addr` while `positions` users are inserted, then `missed` more, and
/// stops it: returns each of the first users' positions (their events' ids) and the missed
/// users' ids. A new app then has none of them in memory.
async fn positions_then_missed(
    db_addr: SocketAddr,
    client: &Client,
    positions: usize,
    missed: usize,
) -> (Vec<String>, Vec<String>) {
    let (running, base) = common::start_against(db_addr).await;
    assert!(running.state.hub.wait_open(Duration::from_secs(10)).await);
    let mut reader = SseReader::open(&format!("{base}/api/sse"), &[]).await;
    common::settle(&mut reader).await;
    let mut tokens = Vec::new();
    for _ in 0..positions {
        insert_user(client).await;
        tokens.push(reader.next_message().await.id.expect("id"));
    }
    let mut ids = Vec::new();
    for _ in 0..missed {
        ids.push(insert_user(client).await);
    }
    drop(reader);
    running.shutdown().await;
    (tokens, ids)
}

/// `failCommand` holds the next `times` `aggregate`s (the replays' change streams) for `ms`.
async fn hold_replays(client: &Client, times: i32, ms: i32) {
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": times },
            "data": { "failCommands": ["aggregate"], "blockConnection": true, "blockTimeMS": ms },
        })
        .await
        .expect("configureFailPoint");
}

/// Polls `sample` of `/metrics` (up to 10 s) until it reaches `wanted`.
async fn wait_metric(base: &str, sample: &str, wanted: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::metric(base, sample).await < wanted {
        assert!(Instant::now() < deadline, "{sample} never reached {wanted}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `n` messages and returns their document ids.
async fn read_ids(reader: &mut SseReader, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let message = reader.next_message().await;
        ids.push(json(&message)["id"].as_str().expect("id").to_owned());
    }
    ids
}

const DATABASE_REPLAYS: &str = "realtime_catch_ups_total{source=\"database\"}";

/// A reconnect whose replay the database holds for 1.5 s gets heartbeats (every 300 ms, as an
/// idle stream does) while it waits, then exactly what it missed.
#[tokio::test]
async fn a_reconnect_waiting_for_its_replay_gets_heartbeats() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, client) = database(dir.path(), 1000).await;
    let (tokens, missed) = positions_then_missed(db.local_addr(), &client, 1, 3).await;
    let (running, base) = common::start_against(db.local_addr()).await;
    assert!(running.state.hub.wait_open(Duration::from_secs(10)).await);
    hold_replays(&client, 1, 1500).await;

    let mut reader =
        SseReader::open(&format!("{base}/api/sse"), &[("last-event-id", &tokens[0])]).await;
    let first = reader.next_within(Duration::from_secs(1)).await;
    assert!(first.is_some_and(|b| b.retry.is_some()), "retry first");
    let mut heartbeats = 0;
    let first_message = loop {
        let block = reader
            .next_within(Duration::from_secs(1))
            .await
            .expect("a heartbeat or a message every second");
        if block.data.is_some() {
            break block;
        }
        assert_eq!(block.comment.as_deref(), Some(" heartbeat"));
        heartbeats += 1;
    };
    assert!(
        heartbeats >= 2,
        "{heartbeats} heartbeats while the replay was held"
    );
    let mut ids = vec![json(&first_message)["id"].as_str().expect("id").to_owned()];
    ids.extend(read_ids(&mut reader, 2).await);
    assert_eq!(ids, missed);
    running.shutdown().await;
    db.shutdown().await;
}

/// One address holding its 2 replays (held by the database for 3 s) gets `resync` at once for
/// a third, and does not hold up a reconnect from another address, which is served while those
/// are held; they are then served too.
#[tokio::test]
async fn one_address_does_not_hold_up_another() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, client) = database(dir.path(), 1000).await;
    let (tokens, missed) = positions_then_missed(db.local_addr(), &client, 3, 2).await;
    let (running, base) = common::start_against(db.local_addr()).await;
    assert!(running.state.hub.wait_open(Duration::from_secs(10)).await);
    hold_replays(&client, 2, 3000).await;
    let url = format!("{base}/api/sse");
    let a = IpAddr::from([127, 0, 0, 1]);
    let b = IpAddr::from([127, 0, 0, 2]);

    // Newest position first: an older one is not covered by a replay in flight.
    let mut held = Vec::new();
    for (i, token) in [&tokens[2], &tokens[1]].into_iter().enumerate() {
        held.push(SseReader::open_from(a, &url, &[("last-event-id", token)]).await);
        wait_metric(&base, DATABASE_REPLAYS, i as u64 + 1).await;
    }
    let started = Instant::now();
    let mut third = SseReader::open_from(a, &url, &[("last-event-id", &tokens[0])]).await;
    assert_eq!(third.next_message().await.event.as_deref(), Some("resync"));
    let mut other = SseReader::open_from(b, &url, &[("last-event-id", &tokens[0])]).await;
    let first = other.next_message().await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "served in {:?}, while the other address's replays are held",
        started.elapsed()
    );
    assert_eq!(first.event, None);
    let mut ids = vec![json(&first)["id"].as_str().expect("id").to_owned()];
    ids.extend(read_ids(&mut other, 3).await);
    assert_eq!(
        ids[2..],
        missed,
        "every change after its position, in order"
    );
    assert_eq!(read_ids(&mut held[0], 2).await, missed);
    assert_eq!(read_ids(&mut held[1], 3).await[1..], missed);
    running.shutdown().await;
    db.shutdown().await;
}

/// A position older than the database's history (3 changes kept) gets `resync` at once; the
/// next reconnect from it gets `resync` without asking the database again.
#[tokio::test]
async fn a_position_older_than_the_history_resyncs_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (db, client) = database(dir.path(), 3).await;
    let (tokens, _) = positions_then_missed(db.local_addr(), &client, 1, 10).await;
    let (running, base) = common::start_against(db.local_addr()).await;
    assert!(running.state.hub.wait_open(Duration::from_secs(10)).await);
    for asked in [1, 1] {
        let started = Instant::now();
        let mut reader =
            SseReader::open(&format!("{base}/api/sse"), &[("last-event-id", &tokens[0])]).await;
        let resync = reader.next_message().await;
        assert_eq!(resync.event.as_deref(), Some("resync"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            common::metric(&base, DATABASE_REPLAYS).await,
            asked,
            "the database is asked once"
        );
    }
    running.shutdown().await;
    db.shutdown().await;
}
