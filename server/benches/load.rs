//! Load figures for the live feed, measured from outside against the real `server` binary, the
//! way browsers drive it.
//!
//! The benchmark starts `target/<profile>/server` as a child process on free ports with the
//! embedded database in a temporary directory, then:
//!
//! 1. **Memory per idle stream.** Reads the server's RSS (`VmRSS`), opens `LOAD_STREAMS`
//!    (default 15,000) event streams from worker processes (this same binary, at most 4,000
//!    streams each, each on its own 127.0.0.x source address), half of them on a kept-alive
//!    connection that first loaded the page (`GET /`, read to its end), as a browser does; once
//!    every stream has its `retry:` line and 10 s have passed idle, RSS again: per stream =
//!    (RSS with N streams − RSS before) / N. Kernel socket buffers are not in RSS; the kernel's
//!    `tcp_rmem`/`tcp_wmem` are printed beside the figure.
//! 2. **Memory given back.** Every stream closes; 30 s later, RSS against the idle baseline
//!    (target: within 20 MB). Then `LOAD_CYCLES` (10) cycles of `LOAD_CYCLE_STREAMS` (8,000)
//!    streams connecting and leaving, RSS read 12 s after each (the allocator's purge decay is
//!    ~10 s): RSS after the last cycle against the first (at most 5% higher).
//! 3. **Events and refetches, as the page does them.** `LOAD_CLIENTS` (1,000) streams read off
//!    raw TCP, and `LOAD_CHANGES` (100) inserts ~20 ms apart through the official driver, every
//!    tenth one a device, the rest users, noting the instant just before each `insert_one`. Each
//!    client refetches, like the page, only the list an event names, through the server
//!    function the page calls (`POST /_server/users` or `/_server/lock_devices`, naming the
//!    event it refetches for) on a kept-alive pool, at most one refetch of a list in flight and
//!    one queued. Printed: commit →
//!    client latency p50/p99/max, missing and duplicate deliveries, refetches served and their
//!    latency, and every database command the phase caused (`find`, `getMore`, other commands
//!    such as `ping`, from `serverStatus.opcounters`), with the app's snapshot reads and hits.
//! 4. A summary table: figure, value, target, met/missed.
//!
//! Run: `cargo bench -p server --bench load` (or `make bench-app`).
//! Env: `LOAD_STREAMS`, `LOAD_CYCLES`, `LOAD_CYCLE_STREAMS`, `LOAD_CLIENTS`, `LOAD_CHANGES`
//! (smaller values for a quick run), `LOAD_REFETCH=0` (no refetches, to tell their cost apart).
//! Server and benchmark share the machine's two cores, so latency includes the clients' work.

use std::collections::HashMap;
use std::io::{BufRead, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

const IDLE: Duration = Duration::from_secs(10);
const GIVE_BACK: Duration = Duration::from_secs(30);
const CYCLE_SETTLE: Duration = Duration::from_secs(12);
const CHANGE_GAP: Duration = Duration::from_millis(20);
/// Streams one worker process opens (well inside the 20,000 open files a process may have).
const STREAMS_PER_WORKER: usize = 4000;
/// Connections a worker has in progress at once (the listen backlog is finite).
const CONNECTING: usize = 256;
const RSS_TARGET_KIB: f64 = 4.0;
const GIVE_BACK_TARGET_KIB: i64 = 20 * 1024;
const P99_TARGET_MS: f64 = 50.0;
/// Give up waiting for events or refetches after this long without progress.
const STALL: Duration = Duration::from_secs(15);

fn main() {
    match std::env::var("LOAD_WORKER_SOURCE") {
        Ok(source) => worker(&source),
        Err(_) => tokio::runtime::Runtime::new()
            .expect("a tokio runtime")
            .block_on(coordinate()),
    }
}

// ---- the coordinator -----------------------------------------------------------------------

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

async fn coordinate() {
    let streams = env_number("LOAD_STREAMS", 15_000);
    let cycles = env_number("LOAD_CYCLES", 10);
    let cycle_streams = env_number("LOAD_CYCLE_STREAMS", 8000);
    let clients = env_number("LOAD_CLIENTS", 1000);
    let changes = env_number("LOAD_CHANGES", 100);
    let refetch = env_number("LOAD_REFETCH", 1) != 0;
    let max_clients = streams.max(cycle_streams).max(clients) + 100;
    println!(
        "load: {streams} idle streams; {cycles} cycles of {cycle_streams}; {clients} clients × \
         {changes} changes, per-list refetch: {refetch}"
    );
    let kernel = ["tcp_rmem", "tcp_wmem"].map(|name| {
        let value =
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap_or_default();
        format!(
            "{name} = {}",
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    });
    println!("kernel socket buffers (not in RSS): {}", kernel.join(", "));

    let (server, site, db_addr) = start_server(max_clients);
    let pid = server.child.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .expect("an HTTP client can be built");
    wait_ready(&http, site, &server).await;
    let db = mongodb::Client::with_uri_str(format!("mongodb://{db_addr}/?directConnection=true"))
        .await
        .expect("the driver accepts the database URI");
    // One page load first, so the baseline includes what serving pages allocates once.
    let _ = http.get(format!("http://{site}/")).send().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut summary = Vec::new();

    // 1. Memory per idle stream.
    let baseline = rss_kib(pid);
    let started = Instant::now();
    let workers = Workers::open(site, streams, 11);
    println!(
        "{} of {streams} streams open in {:.1} s ({} failed)",
        workers.open,
        started.elapsed().as_secs_f64(),
        workers.failed
    );
    let gauge = open_streams(&http, site).await;
    tokio::time::sleep(IDLE).await;
    let with_streams = rss_kib(pid);
    let per_stream = (with_streams as f64 - baseline as f64) / workers.open.max(1) as f64;
    println!(
        "server RSS: {baseline} KiB before, {with_streams} KiB with {} idle streams \
         (gauge {gauge}) after {} s → {per_stream:.2} KiB per stream",
        workers.open,
        IDLE.as_secs()
    );
    let dropped = workers.close();
    summary.push(row(
        &format!("RSS per idle stream, {streams}"),
        format!("{per_stream:.2} KiB"),
        "≤ 4 KiB",
        per_stream <= RSS_TARGET_KIB && dropped == 0,
    ));

    // 2. Memory given back.
    wait_streams(&http, site, 0).await;
    tokio::time::sleep(GIVE_BACK).await;
    let after = rss_kib(pid);
    let kept = i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(baseline).unwrap_or(0);
    println!(
        "{} s after every stream left: {after} KiB ({kept:+} KiB against the idle baseline)",
        GIVE_BACK.as_secs()
    );
    summary.push(row(
        "RSS 30 s after all left",
        format!("{kept:+} KiB"),
        "≤ +20 MB",
        kept <= GIVE_BACK_TARGET_KIB,
    ));
    let mut after_cycle = Vec::with_capacity(cycles);
    for cycle in 0..cycles {
        // Fresh source addresses every cycle: closed connections linger in TIME_WAIT.
        let source = 40 + cycle * cycle_streams.div_ceil(STREAMS_PER_WORKER);
        let workers = Workers::open(site, cycle_streams, source);
        let opened = workers.open;
        workers.close();
        wait_streams(&http, site, 0).await;
        // The allocator returns freed memory on a ~10 s decay: measure each cycle settled.
        tokio::time::sleep(CYCLE_SETTLE).await;
        let rss = rss_kib(pid);
        println!(
            "cycle {}: {opened} streams came and went; RSS {rss} KiB",
            cycle + 1
        );
        after_cycle.push(rss);
    }
    if let (Some(first), Some(last)) = (after_cycle.first(), after_cycle.last()) {
        let drift = (*last as f64 - *first as f64) / *first as f64 * 100.0;
        // Ending lower than the first cycle is memory given back, not a miss.
        summary.push(row(
            &format!("RSS after {cycles} cycles vs 1"),
            format!("{drift:+.1}%"),
            "≤ +5%",
            drift <= 5.0,
        ));
    }

    // 3. Events and refetches.
    let phase = events_and_refetches(&http, site, &db, clients, changes, refetch).await;
    summary.extend(phase);
    db.shutdown().await;
    drop(server);

    println!(
        "\n{:<34} {:>14}  {:<10} result",
        "figure", "value", "target"
    );
    for line in summary {
        println!("{line}");
    }
}

/// One line of the summary table.
fn row(figure: &str, value: impl std::fmt::Display, target: &str, met: bool) -> String {
    let result = if met { "met" } else { "MISSED" };
    format!(
        "{figure:<34} {:>14}  {target:<10} {result}",
        value.to_string()
    )
}

/// Worker processes holding streams open.
struct Workers {
    children: Vec<(Child, ChildStdin, std::io::BufReader<ChildStdout>)>,
    open: usize,
    failed: usize,
}

impl Workers {
    /// Starts workers for `streams` streams (source addresses 127.0.0.`first_source`...) and
    /// waits until each reports its streams open.
    fn open(site: SocketAddr, streams: usize, first_source: usize) -> Self {
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut children = Vec::new();
        let mut left = streams;
        let mut source = first_source;
        while left > 0 {
            let n = left.min(STREAMS_PER_WORKER);
            left -= n;
            let ip = format!("127.0.0.{}", source % 250 + 2);
            source += 1;
            let mut child = Command::new(&exe)
                .env("LOAD_WORKER_SOURCE", &ip)
                .env("LOAD_WORKER_SITE", site.to_string())
                .env("LOAD_WORKER_STREAMS", n.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("a worker process starts");
            let stdin = child.stdin.take().expect("piped stdin");
            let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
            children.push((child, stdin, stdout));
        }
        let (mut open, mut failed) = (0, 0);
        for (_, _, stdout) in &mut children {
            let line = read_line(stdout);
            let mut words = line.split_whitespace().skip(1);
            let mut next = || {
                words
                    .next()
                    .and_then(|w| w.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            open += next();
            failed += next();
        }
        Self {
            children,
            open,
            failed,
        }
    }

    /// Tells every worker to close its streams and exit; returns how many streams had ended
    /// early (the server closed them while they were meant to be idle).
    fn close(self) -> usize {
        let mut dropped = 0;
        for (mut child, mut stdin, mut stdout) in self.children {
            let _ = writeln!(stdin, "close");
            let line = read_line(&mut stdout);
            dropped += line
                .split_whitespace()
                .nth(1)
                .and_then(|w| w.parse::<usize>().ok())
                .unwrap_or(0);
            let _ = child.wait();
        }
        if dropped > 0 {
            println!("{dropped} streams were closed by the server while idle");
        }
        dropped
    }
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a worker answers");
    line
}

/// `GET /metrics` (empty when it fails).
async fn metrics_text(http: &reqwest::Client, site: SocketAddr) -> String {
    match http.get(format!("http://{site}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `realtime_sse_streams_open` from `/metrics`.
async fn open_streams(http: &reqwest::Client, site: SocketAddr) -> u64 {
    metric(&metrics_text(http, site).await, "realtime_sse_streams_open")
}

/// One sample's value in a Prometheus text exposition (0 when absent).
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Waits (up to 60 s) until the server reports `wanted` open streams.
async fn wait_streams(http: &reqwest::Client, site: SocketAddr, wanted: u64) {
    let started = Instant::now();
    while open_streams(http, site).await != wanted && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- phase 3: events and refetches -------------------------------------------------------

/// Which list an event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Users = 0,
    Devices = 1,
}

/// State every client of phase 3 shares.
struct Shared {
    http: reqwest::Client,
    site: SocketAddr,
    refetch: bool,
    connected: AtomicUsize,
    ended_early: AtomicUsize,
    deliveries: AtomicU64,
    refetches_ok: AtomicU64,
    refetches_failed: AtomicU64,
    /// Refetches asked for and not yet answered.
    refetches_pending: AtomicU64,
}

/// When each document id's event reached one client (more than one instant: duplicates).
type Seen = HashMap<String, Vec<Instant>>;

async fn events_and_refetches(
    http: &reqwest::Client,
    site: SocketAddr,
    db: &mongodb::Client,
    clients: usize,
    changes: usize,
    refetch: bool,
) -> Vec<String> {
    let shared = Arc::new(Shared {
        http: http.clone(),
        site,
        refetch,
        connected: AtomicUsize::new(0),
        ended_early: AtomicUsize::new(0),
        deliveries: AtomicU64::new(0),
        refetches_ok: AtomicU64::new(0),
        refetches_failed: AtomicU64::new(0),
        refetches_pending: AtomicU64::new(0),
    });
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
    // A browser that loaded the page holds a kept-alive connection: warm the pool so the first
    // event does not also measure a thousand TCP handshakes.
    if refetch {
        let warm: Vec<_> = (0..connected)
            .map(|_| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { fetch_list(&shared, List::Users, None).await })
            })
            .collect();
        for task in warm {
            let _ = task.await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = server_status(db).await;
    let app_before = metrics_text(http, site).await;
    let realtime = db.database("realtime");
    let users = realtime.collection::<Document>("users");
    let devices = realtime.collection::<Document>("devices");
    let mut sent: HashMap<String, Instant> = HashMap::with_capacity(changes);
    let mut pace = tokio::time::interval(CHANGE_GAP);
    for i in 0..changes {
        pace.tick().await;
        let id = ObjectId::new();
        let (collection, doc) = if i % 10 == 9 {
            let doc = doc! { "_id": id, "name": format!("Load lock {i}"), "type": "lock", "locked": true };
            (&devices, doc)
        } else {
            let doc = doc! {
                "_id": id, "fname": format!("Load{i}"), "lname": "Bench", "username": format!("load{i}"),
            };
            (&users, doc)
        };
        let at = Instant::now();
        collection
            .insert_one(doc)
            .await
            .expect("insert_one succeeds");
        sent.insert(id.to_hex(), at);
    }
    let expected = (connected * changes) as u64;
    let drained = drain(&shared, expected).await;
    println!("all events and refetches settled {drained:.2} s after the last insert");
    let after = server_status(db).await;
    let app_after = metrics_text(http, site).await;
    let delta = |path: &[&str]| number(&after, path) - number(&before, path);
    let (finds, getmores, commands) = (
        delta(&["opcounters", "query"]),
        delta(&["opcounters", "getmore"]),
        delta(&["opcounters", "command"]),
    );
    let app_delta = |sample: &str| metric(&app_after, sample) - metric(&app_before, sample);

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
    let missing = expected.saturating_sub(delivered);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{connected} clients; delivery latency over {delivered} deliveries: p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms",
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
    println!(
        "refetches: {served} served ({} failed); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        shared.refetches_failed.load(Ordering::Relaxed),
        ms(&refetch_us, 0.5),
        ms(&refetch_us, 0.99),
        refetch_us.max() as f64 / 1000.0
    );
    println!(
        "database commands during the phase: {finds} find, {getmores} getMore, {commands} other \
         (ping, ...) for {changes} changes; the app's snapshots: users {} reads / {} hits, \
         devices {} reads / {} hits",
        app_delta("realtime_snapshot_reads_total{list=\"users\"}"),
        app_delta("realtime_snapshot_hits_total{list=\"users\"}"),
        app_delta("realtime_snapshot_reads_total{list=\"devices\"}"),
        app_delta("realtime_snapshot_hits_total{list=\"devices\"}"),
    );
    let per_change = (finds + getmores + commands) as f64 / changes.max(1) as f64;
    let p99 = ms(&latency, 0.99);
    vec![
        row(
            &format!("delivery p99, {connected} clients"),
            format!("{p99:.2} ms"),
            "< 50 ms",
            delivered > 0 && p99 < P99_TARGET_MS,
        ),
        row("missing deliveries", missing, "0", missing == 0),
        row("duplicate deliveries", duplicates, "0", duplicates == 0),
        row(
            "DB commands per change",
            format!("{per_change:.2}"),
            "—",
            true,
        ),
        row(
            "refetch p99",
            format!("{:.2} ms", ms(&refetch_us, 0.99)),
            "—",
            true,
        ),
    ]
}

/// One list's refetches in one client, coalesced like the page's: at most one in flight and
/// one queued.
#[derive(Default)]
struct ListRefetch {
    /// (a fetch is in flight, another is queued)
    state: std::sync::Mutex<(bool, bool)>,
    /// The newest event id that named the list, sent with the refetch as the page does.
    after: std::sync::Mutex<Option<String>>,
    wake: tokio::sync::Notify,
}

impl ListRefetch {
    /// The list changed at event `id`: fetch now, or once more after the fetch in flight.
    fn stale(&self, shared: &Shared, id: Option<&str>) {
        if let Some(id) = id {
            *self
                .after
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_owned());
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *state {
            (false, _) => {
                *state = (true, false);
                shared.refetches_pending.fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
            }
            (true, false) => {
                state.1 = true;
                shared.refetches_pending.fetch_add(1, Ordering::Relaxed);
            }
            (true, true) => {}
        }
    }

    /// Fetches whenever the list is stale, until `stop`; returns each fetch's time (µs).
    async fn run(&self, shared: &Shared, list: List, stop: &CancellationToken) -> Vec<u64> {
        let mut times = Vec::new();
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = stop.cancelled() => return times,
            }
            loop {
                let started = Instant::now();
                let after = self
                    .after
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let ok = fetch_list(shared, list, after.as_deref()).await;
                let counter = if ok {
                    &shared.refetches_ok
                } else {
                    &shared.refetches_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                shared.refetches_pending.fetch_sub(1, Ordering::Relaxed);
                times.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if state.1 {
                    state.1 = false;
                } else {
                    state.0 = false;
                    break;
                }
            }
        }
    }
}

/// One browser: an event stream read off raw TCP; each event makes the list it names stale,
/// and that list is refetched through its server function, at most one in flight and one
/// queued per list. Returns when `stop` is cancelled (or the stream ends): what it saw and its
/// refetch times (µs).
async fn run_client(shared: Arc<Shared>, stop: CancellationToken) -> (Seen, Vec<u64>) {
    let lists = Arc::new([ListRefetch::default(), ListRefetch::default()]);
    let refetchers = [List::Users, List::Devices].map(|list| {
        let (shared, lists, stop) = (Arc::clone(&shared), Arc::clone(&lists), stop.clone());
        tokio::spawn(async move { lists[list as usize].run(&shared, list, &stop).await })
    });
    let stale = |list: List, id: Option<&str>| {
        if shared.refetch {
            lists[list as usize].stale(&shared, id);
        }
    };
    let mut seen = Seen::new();
    tokio::select! {
        result = read_events(&shared, &mut seen, &stale) => {
            if let Err(e) = result {
                eprintln!("client stream failed: {e}");
            }
            shared.ended_early.fetch_add(1, Ordering::Relaxed);
        }
        () = stop.cancelled() => {}
    }
    let mut times = Vec::new();
    for refetcher in refetchers {
        times.extend(refetcher.await.expect("refetch task does not panic"));
    }
    (seen, times)
}

/// `POST /_server/<list>` as the page's server-function call sends it (naming the event it
/// refetches for, if any); whether it answered a snapshot.
async fn fetch_list(shared: &Shared, list: List, after: Option<&str>) -> bool {
    let endpoint = match list {
        List::Users => "users",
        List::Devices => "lock_devices",
    };
    let response = shared
        .http
        .post(format!("http://{}/_server/{endpoint}", shared.site))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(after.map(|id| format!("after={id}")).unwrap_or_default())
        .send()
        .await;
    match response {
        Ok(response) if response.status().is_success() => response
            .bytes()
            .await
            .is_ok_and(|body| body.starts_with(b"{\"items\":")),
        _ => false,
    }
}

/// Opens `GET /api/sse` and records events until the stream ends.
async fn read_events(
    shared: &Shared,
    seen: &mut Seen,
    stale: &impl Fn(List, Option<&str>),
) -> std::io::Result<()> {
    let mut socket = TcpStream::connect(shared.site).await?;
    let request = format!(
        "GET /api/sse HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        shared.site
    );
    socket.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::new(socket);
    read_head(&mut reader).await?;
    let (mut pending, mut data, mut body) = (Vec::new(), String::new(), Vec::new());
    let mut id = String::new();
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
                    dispatch(shared, seen, stale, &data, &id, arrived);
                    data.clear();
                }
            } else if text.starts_with("retry:") {
                shared.connected.fetch_add(1, Ordering::Relaxed);
            } else if let Some(value) = text.strip_prefix("data:") {
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            } else if let Some(value) = text.strip_prefix("id:") {
                // Kept like EventSource's last event id.
                value.strip_prefix(' ').unwrap_or(value).clone_into(&mut id);
            }
            // `event:` and `: heartbeat` lines carry nothing measured here.
        }
    }
    Ok(())
}

/// Reads a response head; fails unless it is a `200` with a chunked body.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<()> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        chunked |= line.eq_ignore_ascii_case("transfer-encoding: chunked\r\n");
    }
    if chunked {
        Ok(())
    } else {
        Err(std::io::Error::other("the body is not chunked"))
    }
}

/// Reads the next chunk of a chunked body into `out`; `false` at its end.
async fn next_chunk<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    out: &mut Vec<u8>,
) -> std::io::Result<bool> {
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

/// A complete message (with the stream's last event id): note which document it was about,
/// then mark its list stale.
fn dispatch(
    shared: &Shared,
    seen: &mut Seen,
    stale: &impl Fn(List, Option<&str>),
    data: &str,
    id: &str,
    arrived: Instant,
) {
    let message: serde_json::Value = serde_json::from_str(data).expect("event data is JSON");
    let id = Some(id).filter(|id| !id.is_empty());
    if let Some(id) = message.get("id").and_then(serde_json::Value::as_str) {
        seen.entry(id.to_owned()).or_default().push(arrived);
        shared.deliveries.fetch_add(1, Ordering::Relaxed);
    }
    match message
        .get("collection")
        .and_then(serde_json::Value::as_str)
    {
        Some("users") => stale(List::Users, id),
        Some("devices") => stale(List::Devices, id),
        _ => {
            stale(List::Users, id);
            stale(List::Devices, id);
        }
    }
}

/// Waits until `expected` events have arrived and no refetch is pending, or nothing moves for
/// `STALL`; returns the seconds it took.
async fn drain(shared: &Shared, expected: u64) -> f64 {
    let started = Instant::now();
    let progress = || {
        (
            shared.deliveries.load(Ordering::Relaxed),
            shared.refetches_ok.load(Ordering::Relaxed)
                + shared.refetches_failed.load(Ordering::Relaxed),
        )
    };
    let (mut last, mut moved) = (progress(), Instant::now());
    loop {
        let now = progress();
        if now.0 >= expected && shared.refetches_pending.load(Ordering::Relaxed) == 0 {
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

// ---- a worker process --------------------------------------------------------------------

/// Opens `LOAD_WORKER_STREAMS` streams from `source` to `LOAD_WORKER_SITE` (every other one on
/// a connection that first loaded the page), prints `open <ok> <failed>`, keeps reading them
/// until a line arrives on stdin, then prints `closed <streams that ended early>` and exits
/// (which closes every socket at once).
fn worker(source: &str) {
    let site: SocketAddr = std::env::var("LOAD_WORKER_SITE")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("LOAD_WORKER_SITE is an address");
    let streams = env_number("LOAD_WORKER_STREAMS", 1);
    let ip: Ipv4Addr = source
        .parse()
        .expect("LOAD_WORKER_SOURCE is an IPv4 address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let ended = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
        let opening: Vec<_> = (0..streams)
            .map(|i| {
                let (gate, ended) = (Arc::clone(&gate), Arc::clone(&ended));
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.expect("the gate stays open");
                    let stream = open_stream(ip, site, i % 2 == 0).await;
                    drop(permit);
                    let mut stream = stream?;
                    Some(tokio::spawn(async move {
                        let mut scratch = vec![0u8; 512];
                        while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
                        ended.fetch_add(1, Ordering::Relaxed);
                    }))
                })
            })
            .collect();
        let mut readers = Vec::with_capacity(streams);
        for task in opening {
            if let Ok(Some(reader)) = task.await {
                readers.push(reader);
            }
        }
        println!("open {} {}", readers.len(), streams - readers.len());
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        println!("closed {}", ended.load(Ordering::Relaxed));
        let _ = std::io::stdout().flush();
    });
}

/// One stream from `source`: optionally `GET /` read to its end first on the same kept-alive
/// connection, then `GET /api/sse` read up to its `retry:` chunk.
async fn open_stream(
    source: Ipv4Addr,
    site: SocketAddr,
    after_page: bool,
) -> Option<BufReader<TcpStream>> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).ok()?;
    let stream = socket.connect(site).await.ok()?;
    let mut reader = BufReader::new(stream);
    if after_page {
        let request = format!("GET / HTTP/1.1\r\nHost: {site}\r\n\r\n");
        reader.get_mut().write_all(request.as_bytes()).await.ok()?;
        read_head(&mut reader).await.ok()?;
        let mut body = Vec::new();
        while next_chunk(&mut reader, &mut body).await.ok()? {}
    }
    let request =
        format!("GET /api/sse HTTP/1.1\r\nHost: {site}\r\nAccept: text/event-stream\r\n\r\n");
    reader.get_mut().write_all(request.as_bytes()).await.ok()?;
    read_head(&mut reader).await.ok()?;
    let mut retry = Vec::new();
    next_chunk(&mut reader, &mut retry).await.ok()?;
    retry.starts_with(b"retry:").then_some(reader)
}

// ---- helpers -----------------------------------------------------------------------------

/// Starts the server binary on free ports; returns it, its HTTP and its database address.
fn start_server(max_clients: usize) -> (ServerProcess, SocketAddr, SocketAddr) {
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
        .env("SSE_MAX_CLIENTS", max_clients.to_string())
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
