//! Load figures for the live feed, measured from outside against the real `server` binary.
//!
//! The benchmark starts `target/<profile>/server` as a child process on free ports with the
//! embedded database in a temporary directory, then:
//!
//! 1. reads the server's RSS (`VmRSS`), opens N event streams (`GET /api/sse`, raw TCP and a
//!    small line-based SSE parser, so the client side stays light), waits until every stream
//!    has received its `retry:` line, idles 2 s and reads RSS again: server memory per
//!    connected idle client (target ≤ 16 KiB);
//! 2. reads `serverStatus` through the official driver: cursors open on the database while the
//!    N streams are connected (target 1, the hub's single change stream), and the `getMore`
//!    commands served during the idle 2 s (one awaitData stream polls about once a second);
//! 3. warms the refetch pool (one `GET /api/users` per client, as a browser that has loaded
//!    the page holds a keep-alive connection), then inserts M users ~20 ms apart, noting the
//!    instant just before each `insert_one` is sent.
//!    Every client notes when each document's event arrives and, like a browser, refetches
//!    `GET /api/users` after every event (one shared `reqwest` pool, at most one refetch in
//!    flight per client, none skipped). Printed: commit → client delivery latency p50/p99/max
//!    over the N×M deliveries (target p99 < 50 ms), missing deliveries (target 0), duplicates
//!    (target 0), database reads per event = Δ`opcounters.query` / M (target ≤ 1), the other
//!    commands (`ping`, ...) per refetch, and the refetches served (target N×M);
//! 4. a summary table: figure, value, target, met/missed.
//!
//! Run: `cargo bench -p server --bench load`.
//! Env: `LOAD_CLIENTS` (N, default 1000) and `LOAD_CHANGES` (M, default 100), e.g.
//! `LOAD_CLIENTS=50 LOAD_CHANGES=10 cargo bench -p server --bench load` for a quick run;
//! `LOAD_REFETCH=0` turns the refetches off (to tell their cost apart from the feed's).
//! Server and benchmark share the machine's cores, so latency includes the clients' own work.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const IDLE: Duration = Duration::from_secs(2);
const CHANGE_GAP: Duration = Duration::from_millis(20);
const RSS_TARGET_KIB: f64 = 16.0;
const P99_TARGET_MS: f64 = 50.0;
/// Give up waiting for events or refetches after this long without progress.
const STALL: Duration = Duration::from_secs(15);

/// The server child process; killed when dropped, so a panicking benchmark leaves nothing behind.
struct ServerProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// State every client shares with the driver of the benchmark.
struct Shared {
    http: reqwest::Client,
    sse_addr: SocketAddr,
    users_url: String,
    refetch: bool,
    connected: AtomicUsize,
    ended_early: AtomicUsize,
    deliveries: AtomicU64,
    refetches_wanted: AtomicU64,
    refetches_ok: AtomicU64,
    refetches_failed: AtomicU64,
}

/// When each document id's event reached one client (more than one instant: duplicates).
type Seen = HashMap<String, Vec<Instant>>;

#[tokio::main]
async fn main() {
    let clients = env_number("LOAD_CLIENTS", 1000);
    let changes = env_number("LOAD_CHANGES", 100);
    let refetch = env_number("LOAD_REFETCH", 1) != 0;
    println!("load: {clients} clients, {changes} changes, refetch on every event: {refetch}");

    let (server, site, db_addr) = start_server();
    let pid = server.child.id();
    let db = mongodb::Client::with_uri_str(format!("mongodb://{db_addr}/?directConnection=true"))
        .await
        .expect("the driver accepts the database URI");
    let shared = Arc::new(Shared {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client can be built"),
        sse_addr: site,
        users_url: format!("http://{site}/api/users"),
        refetch,
        connected: AtomicUsize::new(0),
        ended_early: AtomicUsize::new(0),
        deliveries: AtomicU64::new(0),
        refetches_wanted: AtomicU64::new(0),
        refetches_ok: AtomicU64::new(0),
        refetches_failed: AtomicU64::new(0),
    });
    wait_ready(&shared.http, site, &server).await;

    // 1. Memory per idle client.
    let rss_before = rss_kib(pid);
    let stop = CancellationToken::new();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(run_client(Arc::clone(&shared), stop.clone())))
        .collect();
    let opened = Instant::now();
    while shared.connected.load(Ordering::Relaxed) + shared.ended_early.load(Ordering::Relaxed)
        < clients
        && opened.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    println!(
        "streams connected: {connected} of {clients} in {:.2} s",
        opened.elapsed().as_secs_f64()
    );
    let getmores_before = number(&server_status(&db).await, &["opcounters", "getmore"]);
    tokio::time::sleep(IDLE).await;
    let rss_idle = rss_kib(pid);
    let per_client = (rss_idle as f64 - rss_before as f64) / connected.max(1) as f64;
    println!(
        "server RSS: {rss_before} KiB before, {rss_idle} KiB with {connected} idle streams \
         → {per_client:.1} KiB per client"
    );

    // 2. Cursors on the database while the streams are connected.
    let status = server_status(&db).await;
    let cursors = number(&status, &["metrics", "cursor", "open", "total"]);
    let getmores = number(&status, &["opcounters", "getmore"]) - getmores_before;
    println!(
        "database cursors open with {connected} streams: {cursors} \
         ({getmores} getMore commands during the {} s idle)",
        IDLE.as_secs()
    );

    // 3. Commit → client latency, completeness, and database reads while everyone refetches.
    // First warm the refetch pool: a browser that has loaded the page holds a keep-alive
    // connection, so the first event should not also measure 1000 TCP handshakes.
    if refetch {
        let warm: Vec<_> = (0..connected)
            .map(|_| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let response = shared.http.get(&shared.users_url).send().await?;
                    response.bytes().await
                })
            })
            .collect();
        for task in warm {
            let _ = task.await.expect("warm-up task does not panic");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = server_status(&db).await;
    let queries_before = number(&before, &["opcounters", "query"]);
    let commands_before = number(&before, &["opcounters", "command"]);
    let users = db.database("realtime").collection::<Document>("users");
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(changes);
    let mut pace = tokio::time::interval(CHANGE_GAP);
    for i in 0..changes {
        pace.tick().await;
        let id = ObjectId::new();
        let user = doc! {
            "_id": id, "fname": format!("Load{i}"), "lname": "Bench", "username": format!("load{i}"),
        };
        let at = Instant::now();
        users.insert_one(user).await.expect("insert_one succeeds");
        sent.insert(id.to_hex(), at);
    }
    let expected = (clients * changes) as u64;
    let drained = drain(&shared, expected).await;
    println!("all events and refetches settled {drained:.2} s after the last insert");
    let after = server_status(&db).await;
    let queries_after = number(&after, &["opcounters", "query"]);
    // Every other command (ping, hello, serverStatus...): round trips that read no documents.
    let commands = number(&after, &["opcounters", "command"]) - commands_before;
    let reads_per_event = (queries_after - queries_before) as f64 / changes.max(1) as f64;

    stop.cancel();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut refetch_us = latency.clone();
    let (mut delivered, mut duplicates, mut strays) = (0u64, 0u64, 0u64);
    for task in tasks {
        let (seen, refetches) = task.await.expect("client task does not panic");
        for (id, instants) in seen {
            let Some(at) = sent.get(&id) else {
                strays += instants.len() as u64;
                continue;
            };
            delivered += 1;
            duplicates += instants.len() as u64 - 1;
            let us = instants[0].saturating_duration_since(*at).as_micros();
            latency.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
        }
        for us in refetches {
            refetch_us.saturating_record(us);
        }
    }
    let missing = expected - delivered;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "delivery latency over {delivered} deliveries: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&latency, 0.5),
        ms(&latency, 0.99),
        latency.max() as f64 / 1000.0
    );
    println!(
        "missing deliveries: {missing}, duplicates: {duplicates}, other events: {strays}, \
         streams ended early: {}",
        shared.ended_early.load(Ordering::Relaxed)
    );
    let served = shared.refetches_ok.load(Ordering::Relaxed);
    let per_refetch = commands as f64 / served.max(1) as f64;
    println!(
        "database reads: {} find commands for {changes} events → {reads_per_event:.2} per event; \
         {commands} other commands such as ping ({per_refetch:.2} per refetch served)",
        queries_after - queries_before
    );
    println!(
        "refetches: {served} served, {} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        shared.refetches_failed.load(Ordering::Relaxed),
        ms(&refetch_us, 0.5),
        ms(&refetch_us, 0.99),
        refetch_us.max() as f64 / 1000.0
    );
    db.shutdown().await;
    drop(server);

    // 4. Summary.
    let p99 = ms(&latency, 0.99);
    let due = if refetch { expected } else { 0 };
    println!("\n{:<30} {:>12}  {:<9} result", "figure", "value", "target");
    let rss = format!("{per_client:.1} KiB");
    row(
        "server RSS per idle client",
        rss,
        "≤ 16 KiB",
        per_client <= RSS_TARGET_KIB,
    );
    row("DB cursors open, streams idle", cursors, "1", cursors == 1);
    let p99_met = delivered > 0 && p99 < P99_TARGET_MS;
    row(
        "delivery latency p99",
        format!("{p99:.2} ms"),
        "< 50 ms",
        p99_met,
    );
    row("missing deliveries", missing, "0", missing == 0);
    row("duplicate deliveries", duplicates, "0", duplicates == 0);
    let reads = format!("{reads_per_event:.2}");
    row("DB reads per event", reads, "≤ 1", reads_per_event <= 1.0);
    row("refetches served", served, &due.to_string(), served == due);
}

/// One line of the summary table.
fn row(figure: &str, value: impl std::fmt::Display, target: &str, met: bool) {
    let result = if met { "met" } else { "MISSED" };
    println!(
        "{figure:<30} {:>12}  {target:<9} {result}",
        value.to_string()
    );
}

/// Starts the server binary on free ports; returns it, its HTTP and its database address.
fn start_server() -> (ServerProcess, SocketAddr, SocketAddr) {
    // Hold both listeners until both ports are known, so they differ.
    let site = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let db = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let site = site.local_addr().expect("bound address");
    let db = db.local_addr().expect("bound address");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate lives in the workspace");
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .current_dir(workspace)
        .env_remove("MONGO_URI")
        .env("LEPTOS_OUTPUT_NAME", "realtime")
        .env("LEPTOS_SITE_ADDR", site.to_string())
        .env("EMBEDDED_DB_ADDR", db.to_string())
        .env("EMBEDDED_DB_PATH", dir.path())
        .env("SSE_MAX_CLIENTS", "20000")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("the server binary starts");
    (ServerProcess { child, _dir: dir }, site, db)
}

/// Waits for `GET /readyz` to answer 200 (database up, change stream open).
async fn wait_ready(http: &reqwest::Client, site: SocketAddr, server: &ServerProcess) {
    let url = format!("http://{site}/readyz");
    let started = Instant::now();
    loop {
        let ready = http.get(&url).send().await;
        if ready.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
            println!("server ready in {:.2} s", started.elapsed().as_secs_f64());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server did not become ready within 60 s"
        );
        let pid = server.child.id();
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "the server exited during start-up (see its log above)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One browser: an event stream read off raw TCP, and a refetch of the users after each event.
/// Returns when `stop` is cancelled (or the stream ends): what it saw and its refetch times (µs).
async fn run_client(shared: Arc<Shared>, stop: CancellationToken) -> (Seen, Vec<u64>) {
    let (refetch_tx, mut refetch_rx) = mpsc::unbounded_channel::<()>();
    let refetcher = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            let mut times = Vec::new();
            while refetch_rx.recv().await.is_some() {
                let started = Instant::now();
                let ok = match shared.http.get(&shared.users_url).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await.is_ok_and(|b| b.starts_with(b"["))
                    }
                    _ => false,
                };
                let counter = if ok {
                    &shared.refetches_ok
                } else {
                    &shared.refetches_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            times
        }
    });
    let mut seen = Seen::new();
    tokio::select! {
        result = read_events(&shared, &mut seen, &refetch_tx) => {
            if let Err(e) = result {
                eprintln!("client stream failed: {e}");
            }
            shared.ended_early.fetch_add(1, Ordering::Relaxed);
        }
        () = stop.cancelled() => {}
    }
    drop(refetch_tx);
    let times = refetcher.await.expect("refetch task does not panic");
    (seen, times)
}

/// Opens `GET /api/sse` and records events until the stream ends.
async fn read_events(
    shared: &Shared,
    seen: &mut Seen,
    refetch: &mpsc::UnboundedSender<()>,
) -> std::io::Result<()> {
    let mut socket = TcpStream::connect(shared.sse_addr).await?;
    let request = format!(
        "GET /api/sse HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        shared.sse_addr
    );
    socket.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(socket);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let mut chunked = false; // hyper streams a body of unknown length chunked
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
    }
    if !chunked {
        return Err(std::io::Error::other("the event stream is not chunked"));
    }
    let (mut pending, mut data, mut body) = (Vec::new(), String::new(), Vec::new());
    while next_chunk(&mut reader, &mut body).await? {
        let arrived = Instant::now();
        pending.extend_from_slice(&body);
        // Every complete line; a partial one waits for the next part.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&raw);
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                if !data.is_empty() {
                    dispatch(shared, seen, refetch, &data, arrived);
                    data.clear();
                }
            } else if text.starts_with("retry:") {
                shared.connected.fetch_add(1, Ordering::Relaxed);
            } else if let Some(value) = text.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
            // `id:`, `event:` and `: heartbeat` lines carry nothing measured here.
        }
    }
    Ok(())
}

/// Reads the next chunk of the (chunked) body into `out`; `false` at its end.
async fn next_chunk(reader: &mut BufReader<TcpStream>, out: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut size = String::new();
    if reader.read_line(&mut size).await? == 0 {
        return Ok(false);
    }
    let hex = size.trim().split(';').next().unwrap_or_default();
    let size = usize::from_str_radix(hex, 16)
        .map_err(|e| std::io::Error::other(format!("chunk size {hex:?}: {e}")))?;
    out.resize(size + 2, 0); // the chunk and its CRLF
    reader.read_exact(out).await?;
    out.truncate(size);
    Ok(size > 0)
}

/// A complete message: note which document it was about, then refetch like a browser.
fn dispatch(
    shared: &Shared,
    seen: &mut Seen,
    refetch: &mpsc::UnboundedSender<()>,
    data: &str,
    arrived: Instant,
) {
    let message: serde_json::Value = serde_json::from_str(data).expect("event data is JSON");
    if let Some(id) = message.get("id").and_then(serde_json::Value::as_str) {
        seen.entry(id.to_owned()).or_default().push(arrived);
        shared.deliveries.fetch_add(1, Ordering::Relaxed);
    }
    if shared.refetch {
        shared.refetches_wanted.fetch_add(1, Ordering::Relaxed);
        let _ = refetch.send(());
    }
}

/// Waits until `expected` events have arrived and every refetch has been answered, or nothing
/// moves for `STALL`; returns the seconds it took.
async fn drain(shared: &Shared, expected: u64) -> f64 {
    let started = Instant::now();
    let progress = || {
        let done = shared.refetches_ok.load(Ordering::Relaxed)
            + shared.refetches_failed.load(Ordering::Relaxed);
        (shared.deliveries.load(Ordering::Relaxed), done)
    };
    let (mut last, mut moved) = (progress(), Instant::now());
    loop {
        let now = progress();
        if now.0 >= expected && now.1 >= shared.refetches_wanted.load(Ordering::Relaxed) {
            break;
        }
        if now != last {
            (last, moved) = (now, Instant::now());
        } else if moved.elapsed() > STALL {
            println!(
                "gave up waiting: {} events, {} refetches answered",
                now.0, now.1
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed().as_secs_f64()
}

async fn server_status(db: &mongodb::Client) -> Document {
    db.database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .expect("serverStatus succeeds")
}

/// The integer at `path` in `doc` (any numeric BSON type).
fn number(doc: &Document, path: &[&str]) -> i64 {
    let mut value = doc.get(path[0]);
    for key in &path[1..] {
        value = value.and_then(Bson::as_document).and_then(|d| d.get(*key));
    }
    match value {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        other => panic!("serverStatus.{} is not a number: {other:?}", path.join(".")),
    }
}

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the server's /proc status is readable");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS is present")
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}"))
    })
}
