//! The edge suite (`LOAD_SUITE=edge`, `make bench-edge`): what one client can do to the site
//! with cheap abuse, measured against the server binary with its default settings (the file
//! budget and per-address shares as a deployment gets them):
//!
//! 1. **Connections held hostage.** 20,000 connections from 8 source addresses (worker
//!    processes), half sending nothing, half a request head cut in the middle. Each address
//!    gets its `HTTP_MAX_CONNECTIONS_PER_IP`, the rest are closed at once; the ones held are
//!    closed at `HTTP_HEADER_TIMEOUT_MS`. Meanwhile `/healthz` from another address (a fresh
//!    connection each time) and a driver `ping` on the database's port every 200 ms: their
//!    slowest answers. The server's RSS before, at its peak, and 10 s after.
//! 2. **One address holding streams.** 10,000 event streams from one address; then a browser
//!    on another address: the time to its `retry:` and to the event of an insert.
//! 3. **A reader that stopped.** A stream that never reads (kernel defaults) while 1.5 times
//!    what its buffers hold is committed (as in `server/tests/sse.rs`): the time from the last
//!    commit to `cut_off_total{reason="write_timeout"}` rising.
//! 4. **SIGTERM under 1,000 streams** and a half-sent request: the time to exit, and its code.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

use crate::client::next_chunk;
use crate::process::{
    metric, metrics_text, open_stream, open_streams, rss_kib, start_server, wait_ready, Kind, Plan,
    ServerProcess, Workers,
};
use crate::row;

/// The server's defaults this suite is measured against.
const HEADER_TIMEOUT: Duration = Duration::from_millis(20_000);
const WRITE_TIMEOUT: Duration = Duration::from_millis(30_000);
const HEARTBEAT: Duration = Duration::from_millis(5_000);
const GRACE: Duration = Duration::from_millis(10_000);
/// The bytes of one insert event on the wire, chunk framing included (measured in
/// `server/tests/sse.rs`).
const EVENT_BYTES: usize = 116;
const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_TARGET_MS: f64 = 100.0;
const RSS_BACK_TARGET_KIB: i64 = 20 * 1024;
const LIVE_TARGET_MS: f64 = 3000.0;
/// Connections each abusing worker makes at once.
const CONNECTING_ABUSE: usize = 4;

/// Runs the four phases and returns their summary rows.
pub(crate) async fn run() -> Vec<String> {
    let (mut server, site, db_addr) = start_server(&[]);
    let pid = server.child.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client can be built");
    wait_ready(&http, site, &server).await;
    let db = mongodb::Client::with_uri_str(format!(
        "mongodb://{db_addr}/?directConnection=true&maxPoolSize=4"
    ))
    .await
    .expect("the driver accepts the database URI");
    let _ = http.get(format!("http://{site}/")).send().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rows = hostage_connections(site, &db, pid).await;
    rows.push(one_address_streams(&http, site, &db).await);
    rows.push(stalled_reader(&http, site, &db).await);
    db.shutdown().await;
    rows.push(sigterm(&mut server, site).await);
    rows
}

/// Phase 1 (see the module docs).
async fn hostage_connections(site: SocketAddr, db: &mongodb::Client, pid: u32) -> Vec<String> {
    let baseline = rss_kib(pid);
    let plans: Vec<Plan> = (0..8)
        .map(|i| Plan {
            source: format!("127.0.0.{}", i + 2),
            count: 2500,
            kind: if i % 2 == 0 {
                Kind::Idle
            } else {
                Kind::HalfHead
            },
            // Few handshakes at once: a burst past the kernel's accept queue completes only on
            // the client's side (a SYN cookie whose ACK is dropped), a connection the server
            // never has and so can neither refuse nor close.
            connecting: Some(CONNECTING_ABUSE),
        })
        .collect();
    let total: usize = plans.iter().map(|p| p.count).sum();
    let stop = CancellationToken::new();
    let probe = tokio::spawn(probe(site, db.clone(), stop.clone()));
    let started = Instant::now();
    let workers = tokio::task::spawn_blocking(move || Workers::start(site, &plans))
        .await
        .expect("the workers start");
    println!(
        "{} of {total} idle or half-sent connections made in {:.1} s ({} failed)",
        workers.open,
        started.elapsed().as_secs_f64(),
        workers.failed
    );
    let mut peak = rss_kib(pid);
    let all_open = Instant::now();
    while all_open.elapsed() < HEADER_TIMEOUT + Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(pid));
    }
    let opened = workers.open;
    let closed = tokio::task::spawn_blocking(move || workers.close_counting())
        .await
        .expect("the workers close");
    stop.cancel();
    let mut probes = probe.await.expect("the probe ends");
    let rounds = probes.healthz.len();
    let healthz = spread(&mut probes.healthz);
    let ping = spread(&mut probes.ping);
    let (healthz_ms, ping_ms) = (healthz.2, ping.2);
    let text = metrics_text(&reqwest::Client::new(), site).await;
    println!(
        "server: {} HTTP connections open now, {} refused at accept, {} closed for a late head",
        metric(&text, "realtime_http_connections_open"),
        metric(&text, "realtime_http_connections_refused_total"),
        metric(&text, "realtime_http_timeouts_total{part=\"head\"}")
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = rss_kib(pid);
    let still_open = opened.saturating_sub(closed.ended);
    println!(
        "refused at once: {}; closed at the head deadline: {}; still open {} s after the last was made: \
         {still_open}; the latest closed {:.1} s after it was opened",
        closed.fast,
        closed.ended - closed.fast,
        (HEADER_TIMEOUT + Duration::from_secs(3)).as_secs(),
        closed.latest_ms as f64 / 1000.0
    );
    println!(
        "meanwhile ({rounds} probes, median / p99 / slowest): /healthz {:.1} / {:.1} / \
         {:.1} ms, driver ping {:.1} / {:.1} / {:.1} ms",
        healthz.0, healthz.1, healthz.2, ping.0, ping.1, ping.2
    );
    println!("server RSS {baseline} KiB before, {peak} KiB at most, {after} KiB 10 s after");
    let deadline_ms = (HEADER_TIMEOUT + Duration::from_secs(1)).as_millis() as u64;
    let back = after as i64 - baseline as i64;
    vec![
        row(
            &format!("{total} conns: latest closed"),
            format!("{:.1} s", closed.latest_ms as f64 / 1000.0),
            "≤ 21 s",
            still_open == 0 && closed.latest_ms <= deadline_ms,
        ),
        row(
            "/healthz meanwhile, slowest",
            format!("{healthz_ms:.1} ms"),
            "< 100 ms",
            healthz_ms < PROBE_TARGET_MS,
        ),
        row(
            "driver ping meanwhile, slowest",
            format!("{ping_ms:.1} ms"),
            "< 100 ms",
            ping_ms < PROBE_TARGET_MS,
        ),
        row(
            "RSS 10 s after vs before",
            format!("{:+.1} MiB", back as f64 / 1024.0),
            "≤ 20 MiB",
            back <= RSS_BACK_TARGET_KIB,
        ),
    ]
}

/// Every [`PROBE_EVERY`] until `stop`: `/healthz` on a fresh connection from 127.0.0.1 and a
/// driver `ping`; returns the latencies of each (ms; an error counts as infinitely slow).
async fn probe(site: SocketAddr, db: mongodb::Client, stop: CancellationToken) -> Probes {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client can be built");
    let mut probes = Probes::default();
    while !stop.is_cancelled() {
        let asked = Instant::now();
        let answered = http
            .get(format!("http://{site}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        probes
            .healthz
            .push(if answered { ms(asked) } else { f64::INFINITY });
        let asked = Instant::now();
        let answered = db
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .is_ok();
        probes
            .ping
            .push(if answered { ms(asked) } else { f64::INFINITY });
        tokio::time::sleep(PROBE_EVERY).await;
    }
    probes
}

/// The latencies of the probes, in milliseconds.
#[derive(Debug, Default)]
struct Probes {
    healthz: Vec<f64>,
    ping: Vec<f64>,
}

/// `(median, 99th percentile, slowest)` of `samples`.
fn spread(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).copied().unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99), at(1.0))
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Inserts one user through the driver; its `_id` as hex.
async fn insert_user(db: &mongodb::Client, username: String) -> String {
    let inserted = db
        .database("realtime")
        .collection::<Document>("users")
        .insert_one(doc! { "fname": "Edge", "lname": "Bench", "username": username })
        .await
        .expect("insert");
    inserted
        .inserted_id
        .as_object_id()
        .expect("an ObjectId")
        .to_hex()
}

/// Phase 2 (see the module docs).
async fn one_address_streams(
    http: &reqwest::Client,
    site: SocketAddr,
    db: &mongodb::Client,
) -> String {
    let plan = Plan {
        source: "127.0.0.20".to_owned(),
        count: 10_000,
        kind: Kind::Streams,
        connecting: None,
    };
    let workers = tokio::task::spawn_blocking(move || Workers::start(site, &[plan]))
        .await
        .expect("the worker starts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = open_streams(http, site).await;
    let asked = Instant::now();
    let mut browser = open_stream(Ipv4Addr::new(127, 0, 0, 21), site, true)
        .await
        .expect("the browser's stream opens");
    let live_ms = ms(asked);
    let committed = Instant::now();
    let id = insert_user(db, "edge.browser".to_owned()).await;
    let mut chunk = Vec::new();
    let event_ms = loop {
        let more = tokio::time::timeout(
            Duration::from_secs(10),
            next_chunk(&mut browser, &mut chunk),
        )
        .await
        .expect("an event within 10 s")
        .expect("the stream reads");
        assert!(more, "the browser's stream ended");
        if String::from_utf8_lossy(&chunk).contains(&id) {
            break ms(committed);
        }
    };
    let closed = tokio::task::spawn_blocking(move || workers.close_counting())
        .await
        .expect("the worker closes");
    println!(
        "10,000 streams from one address: {held} held, {} refused (`retry:` and closed); a \
         browser elsewhere live in {live_ms:.1} ms, its event {event_ms:.1} ms after the commit",
        closed.ended
    );
    row(
        "browser beside 10,000 of one addr",
        format!("{live_ms:.0} ms"),
        "≤ 3 s",
        live_ms <= LIVE_TARGET_MS && event_ms <= LIVE_TARGET_MS,
    )
}

/// Phase 3 (see the module docs).
async fn stalled_reader(http: &reqwest::Client, site: SocketAddr, db: &mongodb::Client) -> String {
    let cut = "realtime_sse_streams_cut_off_total{reason=\"write_timeout\"}";
    let lag = "realtime_sse_streams_cut_off_total{reason=\"lag\"}";
    let before = metric(&metrics_text(http, site).await, cut);
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 22)), 0))
        .expect("bind");
    let mut silent = socket.connect(site).await.expect("connect");
    silent
        .write_all(
            format!("GET /api/sse HTTP/1.1\r\nHost: {site}\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
    let mut reading = open_stream(Ipv4Addr::new(127, 0, 0, 23), site, false)
        .await
        .expect("the reading stream opens");
    let drain = tokio::spawn(async move {
        let mut chunk = Vec::new();
        while matches!(next_chunk(&mut reading, &mut chunk).await, Ok(true)) {}
    });
    let rmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem").unwrap_or_default();
    let window: usize = rmem
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(128 * 1024);
    let bound = 2 * server::net::STREAM_SEND_BUFFER + window;
    let events = bound * 3 / 2 / EVENT_BYTES;
    let users = db.database("realtime").collection::<Document>("users");
    let mut committed = 0;
    while committed < events {
        let n = (events - committed).min(500);
        let docs: Vec<Document> = (0..n)
            .map(|i| doc! { "fname": "S", "lname": "R", "username": format!("stall{committed}_{i}") })
            .collect();
        users.insert_many(docs).await.expect("insert batch");
        committed += n;
        // Paced so the reading stream keeps up, as a browser does.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = Instant::now();
    let limit = WRITE_TIMEOUT + HEARTBEAT;
    let mut cut_after = None;
    while last.elapsed() < limit + Duration::from_secs(30) {
        let text = metrics_text(http, site).await;
        if metric(&text, cut) > before {
            cut_after = Some(last.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lag_cuts = metric(&metrics_text(http, site).await, lag);
    drain.abort();
    drop(silent);
    match cut_after {
        Some(after) => println!(
            "a reader that stopped ({events} events of ~{EVENT_BYTES} bytes, buffers ~{} KiB): \
             cut {:.1} s after the last commit; cut for lag: {lag_cuts}",
            bound / 1024,
            after.as_secs_f64()
        ),
        None => println!(
            "a reader that stopped was not cut within {} s",
            (limit + Duration::from_secs(30)).as_secs()
        ),
    }
    row(
        "stalled reader cut after last commit",
        cut_after.map_or("never".to_owned(), |a| format!("{:.1} s", a.as_secs_f64())),
        "≤ 35 s",
        cut_after.is_some_and(|a| a <= limit) && lag_cuts == 0,
    )
}

/// Phase 4 (see the module docs).
async fn sigterm(server: &mut ServerProcess, site: SocketAddr) -> String {
    let plan = Plan {
        source: "127.0.0.30".to_owned(),
        count: 1000,
        kind: Kind::Streams,
        connecting: None,
    };
    let workers = tokio::task::spawn_blocking(move || Workers::start(site, &[plan]))
        .await
        .expect("the worker starts");
    let opened = workers.open;
    let mut half = tokio::net::TcpStream::connect(site).await.expect("connect");
    half.write_all(format!("GET / HTTP/1.1\r\nHost: {site}\r\nX-Half: ").as_bytes())
        .await
        .expect("half a head");
    let pid = server.child.id().to_string();
    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "SIGTERM sent");
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("the server's status") {
            break Some(status);
        }
        if signalled.elapsed() > GRACE + Duration::from_secs(20) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    let closed = tokio::task::spawn_blocking(move || workers.close_counting())
        .await
        .expect("the worker closes");
    drop(half);
    let code = status.and_then(|s| s.code());
    println!(
        "SIGTERM under {} streams and a half-sent request: exit {code:?} after {:.2} s; {} \
         streams ended by the server",
        opened,
        took.as_secs_f64(),
        closed.ended
    );
    row(
        "SIGTERM under 1,000 streams: exit",
        format!("{:.2} s", took.as_secs_f64()),
        "≤ 11 s",
        code == Some(0) && took <= GRACE + Duration::from_secs(1),
    )
}
