//! Throughput, change-stream latency and memory figures for `embedded-db`, measured end to end
//! through the official Rust driver against an in-process server on `127.0.0.1`.
//!
//! Figures, each printed on its own line and again in a summary table at the end:
//!
//! 1. durable `insert_one`/s from 1 client (sequential; every reply waits for its fsync);
//! 2. the same from 16 concurrent tasks sharing one `Client`, and the 16/1 ratio
//!    (writes share fsyncs through group commit, target ≥ 5×);
//! 3. `insert_many` throughput with 1,000 documents per batch (target ≥ 50,000 docs/s);
//! 4. `find_one` by `_id`/s from 1 and from 16 clients;
//! 5. commit → watcher latency p50/p99 with 1 and with 100 concurrent change streams:
//!    200 inserts 5 ms apart, each carrying its send time taken just before `insert_one`, so
//!    a figure spans the durable commit, the event's delivery and its decoding by the driver
//!    (target p99 < 5 ms with 100 streams);
//! 6. process RSS before opening the 100 streams, after opening them and after 5 s idle;
//! 7. `insert_one` latency p50/p99 on one collection while a `deleteMany` of 100,000
//!    documents runs on another (the delete must not hold up other writes: target p99 < 50 ms),
//!    and how long the delete took;
//! 8. RSS of the server with 1,000 more idle connections (each has done a `hello`), per
//!    connection.
//!
//! Run: `cargo bench -p embedded-db --bench throughput`.
//! Env: `BENCH_SECONDS` (default 3) sets the length of each timed phase, so
//! `BENCH_SECONDS=1` is a quick run; `BENCH_DIR` sets where the data directory is
//! created (default: the system temp dir) — fsync cost depends on that file system;
//! `BENCH_NO_RETRY=1` turns the driver's retryable writes off, which shows what recording each
//! write's reply for a retry (one more B-tree page per commit) costs.
//! Server, driver and benchmark share one process and its cores, so every figure includes the
//! client's own costs, and the RSS figures cover all three.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};

/// Clients in the concurrent phases.
const CLIENTS: usize = 16;
/// Documents per `insert_many` batch.
const BATCH: usize = 1_000;
/// Documents preloaded for the `find_one` phases.
const LOOKUP_DOCS: usize = 10_000;
/// Inserts observed by the change streams, and the gap between them.
const LATENCY_INSERTS: usize = 200;
const LATENCY_GAP: Duration = Duration::from_millis(5);
/// Change streams in the many-watchers phase, and how long they idle before the RSS reading.
const STREAMS: usize = 100;
const IDLE: Duration = Duration::from_secs(5);
/// Documents the `deleteMany` phase deletes.
const DELETE_DOCS: usize = 100_000;
/// Idle connections in the memory phase.
const IDLE_CONNECTIONS: usize = 1_000;
/// 100 bytes of filler per document.
const PAYLOAD: &str = concat!(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN",
    "OPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzAB",
);

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS").map_or(3, |s| {
        s.parse()
            .expect("BENCH_SECONDS must be a whole number of seconds")
    });
    let phase = Duration::from_secs(seconds.max(1));
    let parent = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(&parent).expect("create the data directory");
    let addr = "127.0.0.1:0".parse().expect("literal address");
    let config = embedded_db::Config {
        // The driver pools and the idle-connection phase need more than the default 1,000.
        max_connections: 4 * IDLE_CONNECTIONS,
        ..embedded_db::Config::new(addr, dir.path())
    };
    let server = embedded_db::Server::start(config)
        .await
        .expect("start embedded-db");
    println!(
        "embedded-db throughput bench: {}s per phase, data in {} ({}), server {}",
        phase.as_secs(),
        dir.path().display(),
        filesystem_of(dir.path()).unwrap_or_else(|| "unknown file system".to_owned()),
        server.local_addr(),
    );
    let client = connect(&server, 2 * CLIENTS).await;
    // Every waiting change stream holds a connection for its awaitData getMore.
    let watch_client = connect(&server, STREAMS + CLIENTS).await;
    let db = client.database("bench");
    let mut summary = Summary::default();

    // (1) and (2): durable single-document inserts.
    let inserts = db.collection::<Document>("inserts");
    measure(CLIENTS, Duration::from_millis(300), insert_op(&inserts)).await; // warm the pool
    let single = measure(1, phase, insert_op(&inserts)).await;
    summary.add("insert_one, 1 client", format!("{single:.0} docs/s"), None);
    let many = measure(CLIENTS, phase, insert_op(&inserts)).await;
    summary.add("insert_one, 16 clients", format!("{many:.0} docs/s"), None);
    let ratio = many / single;
    summary.add(
        "  16 clients / 1 client",
        format!("{ratio:.1}x"),
        Some((ratio >= 5.0, "≥ 5x")),
    );

    // (3): batched inserts.
    let batches = db.collection::<Document>("batches");
    let batch_op = move |_: usize, i: i64| {
        let batches = batches.clone();
        async move {
            let docs = (0..BATCH as i64).map(|k| user_doc(i * BATCH as i64 + k));
            batches.insert_many(docs).await.expect("insert_many");
        }
    };
    let docs = measure(1, phase, batch_op).await * BATCH as f64;
    let goal = Some((docs >= 50_000.0, "≥ 50,000 docs/s"));
    summary.add(
        "insert_many of 1,000, 1 client",
        format!("{docs:.0} docs/s"),
        goal,
    );

    // (4): point reads by _id.
    let lookup = db.collection::<Document>("lookup");
    let ids: Vec<ObjectId> = (0..LOOKUP_DOCS).map(|_| ObjectId::new()).collect();
    for chunk in ids.chunks(BATCH) {
        let docs = chunk.iter().map(|id| {
            let mut doc = user_doc(0);
            doc.insert("_id", *id);
            doc
        });
        lookup
            .insert_many(docs)
            .await
            .expect("preload the lookup collection");
    }
    let ids = Arc::new(ids);
    for clients in [1, CLIENTS] {
        let rate = measure(clients, phase, find_op(&lookup, &ids)).await;
        summary.add(
            &format!("find_one by _id, {}", count(clients, "client")),
            format!("{rate:.0}/s"),
            None,
        );
    }

    // (5) and (6): commit → watcher latency, and memory with many streams.
    for streams in [1, STREAMS] {
        let name = format!("watched_{streams}");
        let watched = watch_client.database("bench").collection::<Document>(&name);
        let rss_before = rss_kib();
        let t0 = Instant::now();
        let mut watchers = Vec::with_capacity(streams);
        for _ in 0..streams {
            let stream = watched.watch().await.expect("open a change stream");
            watchers.push(tokio::spawn(watch_latencies(stream, t0)));
        }
        if streams == STREAMS {
            let rss_opened = rss_kib();
            tokio::time::sleep(IDLE).await;
            let rss = [rss_before, rss_opened, rss_kib()].map(mib).join(" → ");
            summary.add("RSS: before 100 streams → open → idle 5 s", rss, None);
        }
        let writer = db.collection::<Document>(&name);
        let mut ticker = tokio::time::interval(LATENCY_GAP);
        for n in 0..LATENCY_INSERTS as i64 {
            ticker.tick().await;
            let sent_ns = t0.elapsed().as_nanos() as i64;
            let doc = doc! { "_id": n, "sent_ns": sent_ns, "payload": PAYLOAD };
            writer
                .insert_one(doc)
                .await
                .expect("insert a watched document");
        }
        let mut all = new_histogram();
        for watcher in watchers {
            let hist = tokio::time::timeout(Duration::from_secs(30), watcher)
                .await
                .expect("every watcher sees every insert within 30 s")
                .expect("watcher task");
            all.add(&hist).expect("merge histograms");
        }
        let p99 = all.value_at_quantile(0.99);
        let latency = format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
            ms(all.value_at_quantile(0.5)),
            ms(p99),
            ms(all.max()),
            all.len()
        );
        let goal = (streams == STREAMS).then_some((p99 < 5_000, "p99 < 5 ms"));
        summary.add(
            &format!("commit → watcher, {}", count(streams, "stream")),
            latency,
            goal,
        );
    }

    // (7): writes while a large deleteMany runs.
    let doomed = db.collection::<Document>("doomed");
    for chunk in 0..(DELETE_DOCS / BATCH) as i64 {
        let docs = (0..BATCH as i64).map(|k| user_doc(chunk * BATCH as i64 + k));
        doomed
            .insert_many(docs)
            .await
            .expect("preload the doomed collection");
    }
    let deleter = {
        let doomed = doomed.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let deleted = doomed.delete_many(doc! {}).await.expect("deleteMany");
            (deleted.deleted_count, t.elapsed())
        })
    };
    let beside = db.collection::<Document>("beside");
    let mut latencies = new_histogram();
    let mut n = 0i64;
    while !deleter.is_finished() {
        let t = Instant::now();
        beside
            .insert_one(user_doc(n))
            .await
            .expect("insert beside the delete");
        latencies
            .record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))
            .expect("record");
        n += 1;
    }
    let (deleted, took) = deleter.await.expect("delete task");
    assert_eq!(deleted, DELETE_DOCS as u64, "every document deleted");
    let p99 = latencies.value_at_quantile(0.99);
    summary.add(
        "insert_one while deleteMany of 100,000 runs",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms ({} inserts; delete took {:.2} s)",
            ms(latencies.value_at_quantile(0.5)),
            ms(p99),
            latencies.len(),
            took.as_secs_f64()
        ),
        Some((p99 < 50_000, "p99 < 50 ms")),
    );

    // (8): memory per idle connection.
    let rss_before = rss_kib();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(hello_connection(server.local_addr()).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib();
    let per = match (rss_before, rss_after) {
        (Some(a), Some(b)) => format!(
            "{:.1} KiB each",
            b.saturating_sub(a) as f64 / IDLE_CONNECTIONS as f64
        ),
        _ => "unknown".to_owned(),
    };
    summary.add(
        "RSS: before → with 1,000 idle connections",
        format!("{} → {} ({per})", mib(rss_before), mib(rss_after)),
        None,
    );
    drop(idle);

    summary.print_table();
    drop((client, watch_client));
    server.shutdown().await;
}

/// A raw connection that has done a `hello` (as a pooled driver connection has), then idles.
async fn hello_connection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let frame = embedded_db::wire::encode_request(1, &doc! { "hello": 1, "$db": "admin" })
        .expect("encode hello");
    stream.write_all(&frame).await.expect("send hello");
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.expect("reply length");
    let len = usize::try_from(i32::from_le_bytes(header)).expect("length") - 4;
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).await.expect("reply");
    stream
}

/// A client of `server` whose pool holds up to `pool` connections.
async fn connect(server: &embedded_db::Server, pool: usize) -> Client {
    let mut options = ClientOptions::parse(server.uri())
        .await
        .expect("parse server.uri()");
    options.max_pool_size = Some(pool as u32);
    if std::env::var_os("BENCH_NO_RETRY").is_some() {
        options.retry_writes = Some(false);
    }
    let client = Client::with_options(options).expect("client options");
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .expect("ping");
    client
}

/// A `{ _id, n, name, payload }` document with a fresh `ObjectId`.
fn user_doc(n: i64) -> Document {
    doc! { "_id": ObjectId::new(), "n": n, "name": format!("user-{n}"), "payload": PAYLOAD }
}

/// One `insert_one` per call; `n` is unique across tasks.
fn insert_op(coll: &Collection<Document>) -> impl Fn(usize, i64) -> OpFuture + Clone {
    let coll = coll.clone();
    move |task, i| {
        let coll = coll.clone();
        Box::pin(async move {
            let n = task as i64 * 1_000_000_000 + i;
            coll.insert_one(user_doc(n)).await.expect("insert_one");
        })
    }
}

/// One `find_one({ _id })` per call over the preloaded ids, each task on its own stride.
fn find_op(
    coll: &Collection<Document>,
    ids: &Arc<Vec<ObjectId>>,
) -> impl Fn(usize, i64) -> OpFuture + Clone {
    let (coll, ids) = (coll.clone(), Arc::clone(ids));
    move |task, i| {
        let (coll, ids) = (coll.clone(), Arc::clone(&ids));
        Box::pin(async move {
            let id = ids[(i as usize * 7_919 + task * 104_729) % ids.len()];
            let found = coll.find_one(doc! { "_id": id }).await.expect("find_one");
            assert!(found.is_some(), "preloaded document {id} not found");
        })
    }
}

/// What the boxed benchmark operations return.
type OpFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `op(task, i)` back to back from `clients` tasks for `phase`; returns operations per second.
async fn measure<F, Fut>(clients: usize, phase: Duration, op: F) -> f64
where
    F: Fn(usize, i64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut done = 0_i64;
                while start.elapsed() < phase {
                    op(task, done).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("benchmark task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Receives `LATENCY_INSERTS` insert events and records, in µs, how long after its
/// `sent_ns` (nanoseconds since `t0`) each one arrived.
async fn watch_latencies(
    mut stream: mongodb::change_stream::ChangeStream<
        mongodb::change_stream::event::ChangeStreamEvent<Document>,
    >,
    t0: Instant,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    while (hist.len() as usize) < LATENCY_INSERTS {
        let event = stream
            .next()
            .await
            .expect("change stream ended")
            .expect("change event");
        let now_ns = t0.elapsed().as_nanos() as i64;
        let sent_ns = event
            .full_document
            .as_ref()
            .and_then(|d| d.get_i64("sent_ns").ok())
            .expect("insert event with fullDocument.sent_ns");
        let micros = ((now_ns - sent_ns) / 1_000).max(1) as u64;
        hist.saturating_record(micros);
    }
    hist
}

/// A histogram of microseconds, 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// `n` and `noun`, plural unless `n` is 1.
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

/// The figures, printed as they are measured and again as a table at the end.
#[derive(Debug, Default)]
struct Summary(Vec<[String; 3]>);

impl Summary {
    /// Prints a figure and keeps it; `goal` is the target and whether it was met.
    fn add(&mut self, figure: &str, value: String, goal: Option<(bool, &str)>) {
        let goal = goal.map_or_else(String::new, |(met, goal)| {
            format!("{goal}: {}", if met { "met" } else { "MISSED" })
        });
        println!("{figure}: {value}  {goal}");
        self.0.push([figure.to_owned(), value, goal]);
    }

    fn print_table(&self) {
        println!("\n{:<42} {:<52} target", "figure", "value");
        for [figure, value, goal] in &self.0 {
            println!("{figure:<42} {value:<52} {goal}");
        }
    }
}

/// Resident set size of this process in KiB (`VmRSS`), where `/proc` exists.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// The file-system type holding `path` (longest matching mount point in `/proc/self/mounts`).
fn filesystem_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), fs.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}
