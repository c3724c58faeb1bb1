//! The processes of the benchmark: the server under test (started on free ports, waited for,
//! and what it reports: RSS, `/metrics`, `serverStatus`) and the worker processes that hold
//! idle streams open.

use std::io::{BufRead, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Starts the server binary on free ports; returns it, its HTTP and its database address.
pub(crate) fn start_server(max_clients: usize) -> (ServerProcess, SocketAddr, SocketAddr) {
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
        // The load comes from a few loopback addresses: no per-address shares (the rest of the
        // file budget goes to the other HTTP connections).
        .env("SSE_MAX_CLIENTS_PER_IP", max_clients.to_string())
        .env("HTTP_MAX_CONNECTIONS_PER_IP", "1000000")
        .env("RUST_LOG", "warn")
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

/// Worker processes holding streams open.
pub(crate) struct Workers {
    children: Vec<(Child, ChildStdin, std::io::BufReader<ChildStdout>)>,
    pub(crate) open: usize,
    pub(crate) failed: usize,
}

impl Workers {
    /// Starts workers for `streams` streams (source addresses 127.0.0.`first_source`...) and
    /// waits until each reports its streams open.
    pub(crate) fn open(site: SocketAddr, streams: usize, first_source: usize) -> Self {
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
    pub(crate) fn close(self) -> usize {
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

/// Opens `LOAD_WORKER_STREAMS` streams from `source` to `LOAD_WORKER_SITE` (every other one on
/// a connection that first loaded the page), prints `open <ok> <failed>`, keeps reading them
/// until a line arrives on stdin, then prints `closed <streams that ended early>` and exits
/// (which closes every socket at once).
pub(crate) fn worker(source: &str) {
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
