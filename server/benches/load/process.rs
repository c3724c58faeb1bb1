//! The processes of the benchmark: the server under test (started on free ports, waited for,
//! and what it reports: RSS, `/metrics`, `serverStatus`) and the worker processes that hold
//! idle streams open.

use std::io::{BufRead, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::{next_chunk, read_head};
use crate::env_number;

/// Streams one worker process opens (well inside the 20,000 open files a process may have).
pub(crate) const STREAMS_PER_WORKER: usize = 4000;
/// Connections a worker has in progress at once (the listen backlog is finite).
const CONNECTING: usize = 256;

/// The server child process; killed when dropped, so a panicking benchmark leaves nothing behind.
pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server binary on free ports with the settings `env` on top of the defaults;
/// returns it, its HTTP and its database address.
pub(crate) fn start_server(env: &[(&str, String)]) -> (ServerProcess, SocketAddr, SocketAddr) {
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
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .spawn()
        .expect("the server binary starts");
    (ServerProcess { child, _dir: dir }, site, db)
}

/// Waits for `GET /readyz` to answer 200 (database up, change stream open).
pub(crate) async fn wait_ready(http: &reqwest::Client, site: SocketAddr, server: &ServerProcess) {
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

pub(crate) async fn server_status(db: &mongodb::Client) -> Document {
    db.database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .expect("serverStatus succeeds")
}

/// The integer at `path` in `doc` (any numeric BSON type).
pub(crate) fn number(doc: &Document, path: &[&str]) -> i64 {
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
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the server's /proc status is readable");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS is present")
}

/// `GET /metrics` (empty when it fails).
pub(crate) async fn metrics_text(http: &reqwest::Client, site: SocketAddr) -> String {
    match http.get(format!("http://{site}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `realtime_sse_streams_open` from `/metrics`.
pub(crate) async fn open_streams(http: &reqwest::Client, site: SocketAddr) -> u64 {
    metric(&metrics_text(http, site).await, "realtime_sse_streams_open")
}

/// One sample's value in a Prometheus text exposition (0 when absent).
pub(crate) fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Waits (up to 60 s) until the server reports `wanted` open streams.
pub(crate) async fn wait_streams(http: &reqwest::Client, site: SocketAddr, wanted: u64) {
    let started = Instant::now();
    while open_streams(http, site).await != wanted && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a worker opens: event streams (read up to their `retry:`), connections that send
/// nothing, or connections that send half a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Streams,
    Idle,
    HalfHead,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Streams => "streams",
            Self::Idle => "idle",
            Self::HalfHead => "half",
        }
    }
}

/// One worker process: its source address, how many connections, of what kind, how many it
/// makes at once (`None`: [`CONNECTING`]).
pub(crate) struct Plan {
    pub(crate) source: String,
    pub(crate) count: usize,
    pub(crate) kind: Kind,
    pub(crate) connecting: Option<usize>,
}

/// What the workers saw of their connections when told to close.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Closed {
    /// Connections the server had closed.
    pub(crate) ended: usize,
    /// Of those, closed within a second of being opened (refused at once).
    pub(crate) fast: usize,
    /// The latest a connection was closed after it was opened, in milliseconds.
    pub(crate) latest_ms: u64,
}

/// Worker processes holding connections open.
pub(crate) struct Workers {
    children: Vec<(Child, ChildStdin, std::io::BufReader<ChildStdout>)>,
    pub(crate) open: usize,
    pub(crate) failed: usize,
}

impl Workers {
    /// Starts workers for `streams` streams (source addresses 127.0.0.`first_source`...) and
    /// waits until each reports its streams open.
    pub(crate) fn open(site: SocketAddr, streams: usize, first_source: usize) -> Self {
        let mut plans = Vec::new();
        let mut left = streams;
        let mut source = first_source;
        while left > 0 {
            let count = left.min(STREAMS_PER_WORKER);
            left -= count;
            plans.push(Plan {
                source: format!("127.0.0.{}", source % 250 + 2),
                count,
                kind: Kind::Streams,
                connecting: None,
            });
            source += 1;
        }
        Self::start(site, &plans)
    }

    /// Starts one worker per plan and waits until each reports its connections open.
    pub(crate) fn start(site: SocketAddr, plans: &[Plan]) -> Self {
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut children = Vec::new();
        for plan in plans {
            let mut child = Command::new(&exe)
                .env("LOAD_WORKER_SOURCE", &plan.source)
                .env("LOAD_WORKER_SITE", site.to_string())
                .env("LOAD_WORKER_STREAMS", plan.count.to_string())
                .env("LOAD_WORKER_KIND", plan.kind.name())
                .env(
                    "LOAD_WORKER_CONNECTING",
                    plan.connecting.unwrap_or(CONNECTING).to_string(),
                )
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

    /// Tells every worker to close its connections and exit; returns how many streams had
    /// ended early (the server closed them while they were meant to be idle).
    pub(crate) fn close(self) -> usize {
        let closed = self.close_counting();
        if closed.ended > 0 {
            println!(
                "{} streams were closed by the server while idle",
                closed.ended
            );
        }
        closed.ended
    }

    /// Tells every worker to close its connections and exit; returns what they saw of the
    /// server closing them first.
    pub(crate) fn close_counting(self) -> Closed {
        let mut closed = Closed::default();
        for (mut child, mut stdin, mut stdout) in self.children {
            let _ = writeln!(stdin, "close");
            let line = read_line(&mut stdout);
            let numbers: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|w| w.parse().unwrap_or(0))
                .collect();
            let get = |i: usize| numbers.get(i).copied().unwrap_or(0);
            closed.ended += get(0) as usize;
            closed.fast += get(1) as usize;
            closed.latest_ms = closed.latest_ms.max(get(2));
            let _ = child.wait();
        }
        closed
    }
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a worker answers");
    line
}

/// Opens `LOAD_WORKER_STREAMS` connections of `LOAD_WORKER_KIND` ([`Kind`]; streams by
/// default, every other one on a connection that first loaded the page) from `source` to
/// `LOAD_WORKER_SITE`, prints `open <ok> <failed>`, keeps reading them until a line arrives on
/// stdin, then prints `closed <ended early> <of those within 1 s> <latest end in ms>` and exits
/// (which closes every socket at once).
pub(crate) fn worker(source: &str) {
    let site: SocketAddr = std::env::var("LOAD_WORKER_SITE")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("LOAD_WORKER_SITE is an address");
    let streams = env_number("LOAD_WORKER_STREAMS", 1);
    let kind = match std::env::var("LOAD_WORKER_KIND").as_deref() {
        Ok("idle") => Kind::Idle,
        Ok("half") => Kind::HalfHead,
        _ => Kind::Streams,
    };
    let ip: Ipv4Addr = source
        .parse()
        .expect("LOAD_WORKER_SOURCE is an IPv4 address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let ended = Arc::new(AtomicUsize::new(0));
        let fast = Arc::new(AtomicUsize::new(0));
        let latest_ms = Arc::new(AtomicU64::new(0));
        let connecting = env_number("LOAD_WORKER_CONNECTING", CONNECTING);
        let gate = Arc::new(tokio::sync::Semaphore::new(connecting));
        let opening: Vec<_> = (0..streams)
            .map(|i| {
                let (gate, ended) = (Arc::clone(&gate), Arc::clone(&ended));
                let (fast, latest_ms) = (Arc::clone(&fast), Arc::clone(&latest_ms));
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.expect("the gate stays open");
                    let opened = Instant::now();
                    let stream = match kind {
                        Kind::Streams => open_stream(ip, site, i % 2 == 0).await,
                        Kind::Idle => connect(ip, site).await.map(BufReader::new),
                        Kind::HalfHead => half_head(ip, site).await,
                    };
                    drop(permit);
                    let mut stream = stream?;
                    Some(tokio::spawn(async move {
                        let mut scratch = vec![0u8; 512];
                        while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
                        let after = opened.elapsed();
                        ended.fetch_add(1, Ordering::Relaxed);
                        if after < Duration::from_secs(1) {
                            fast.fetch_add(1, Ordering::Relaxed);
                        }
                        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                        latest_ms.fetch_max(ms, Ordering::Relaxed);
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
        // Waited for off the runtime's thread, so the readers go on noticing closes meanwhile.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await;
        println!(
            "closed {} {} {}",
            ended.load(Ordering::Relaxed),
            fast.load(Ordering::Relaxed),
            latest_ms.load(Ordering::Relaxed)
        );
        let _ = std::io::stdout().flush();
    });
}

/// A TCP connection from `source` to `site`.
async fn connect(source: Ipv4Addr, site: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).ok()?;
    socket.connect(site).await.ok()
}

/// A connection from `source` that sends the first half of a request head and no more.
async fn half_head(source: Ipv4Addr, site: SocketAddr) -> Option<BufReader<TcpStream>> {
    let mut stream = connect(source, site).await?;
    let request = format!("GET / HTTP/1.1\r\nHost: {site}\r\nX-Half: ");
    stream.write_all(request.as_bytes()).await.ok()?;
    Some(BufReader::new(stream))
}

/// One stream from `source`: optionally `GET /` read to its end first on the same kept-alive
/// connection, then `GET /api/sse` read up to its `retry:` chunk.
pub(crate) async fn open_stream(
    source: Ipv4Addr,
    site: SocketAddr,
    after_page: bool,
) -> Option<BufReader<TcpStream>> {
    let mut reader = BufReader::new(connect(source, site).await?);
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
