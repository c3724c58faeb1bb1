//! Shared set-up: the whole server on `127.0.0.1:0` with `embedded-db` on a
//! temporary directory, an official-driver client, and a small SSE reader.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part of this module

use std::time::Duration;

use leptos::prelude::LeptosOptions;
use mongodb::bson::Document;
use mongodb::{Client, Collection};
use server::{Config, Running};
use tempfile::TempDir;

/// A running server with its data directory and a database client.
pub struct App {
    pub running: Running,
    pub dir: TempDir,
    pub client: Client,
    pub base: String,
}

impl App {
    /// The `users` collection, through the official driver.
    pub fn users(&self) -> Collection<Document> {
        self.client.database("realtime").collection("users")
    }

    /// The `devices` collection, through the official driver.
    pub fn devices(&self) -> Collection<Document> {
        self.client.database("realtime").collection("devices")
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server-rendered HTML of `/`.
    pub async fn page(&self) -> String {
        reqwest::get(self.url("/"))
            .await
            .expect("page")
            .text()
            .await
            .expect("html")
    }

    /// Stops the server and returns its data directory (to restart on it).
    pub async fn stop(self) -> TempDir {
        self.client.shutdown().await;
        self.running.shutdown().await;
        self.dir
    }
}

/// Settings for a test server over `dir`: free ports, a short heartbeat.
pub fn config(dir: &TempDir) -> Config {
    Config {
        embedded_addr: "127.0.0.1:0".parse().expect("address"),
        embedded_path: dir.path().to_owned(),
        site_addr: "127.0.0.1:0".parse().expect("address"),
        heartbeat: Duration::from_millis(300),
        ..Config::default()
    }
}

/// Leptos options as cargo-leptos would give them (the site itself is not needed here).
pub fn leptos_options() -> LeptosOptions {
    LeptosOptions::builder()
        .output_name("realtime")
        .site_root("target/site")
        .site_pkg_dir("pkg")
        .build()
}

/// Starts the server on a fresh directory.
pub async fn start() -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(&dir);
    start_with(dir, config).await
}

/// Starts the server over `dir` with `config`.
pub async fn start_with(dir: TempDir, config: Config) -> App {
    let running = server::start(config, leptos_options())
        .await
        .expect("server starts");
    let db_addr = running.embedded_addr.expect("embedded database");
    let client = Client::with_uri_str(format!("mongodb://{db_addr}/?directConnection=true"))
        .await
        .expect("client");
    let base = format!("http://{}", running.addr);
    App {
        running,
        dir,
        client,
        base,
    }
}

/// One server-sent event (or comment) as read off the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

/// Reads an event stream block by block.
pub struct SseReader {
    pub response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    /// Opens `url` with `Accept: text/event-stream` and extra headers.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        Self::open_with(&reqwest::Client::new(), url, headers).await
    }

    /// Opens `url` from the local address `from` (any of 127.0.0.0/8 reaches a loopback
    /// server), with `Accept: text/event-stream` and extra headers.
    pub async fn open_from(from: std::net::IpAddr, url: &str, headers: &[(&str, &str)]) -> Self {
        let client = reqwest::Client::builder()
            .local_address(from)
            .build()
            .expect("client");
        Self::open_with(&client, url, headers).await
    }

    async fn open_with(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Self {
        let mut request = client.get(url).header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next block, or `None` when the stream ended or nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse_block(&block));
            }
            let chunk = tokio::time::timeout(wait, self.response.chunk())
                .await
                .ok()?;
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next block that is a message (`data:`), skipping `retry:` and comments; fails the
    /// test when none comes within 10 s (heartbeats do not count).
    pub async fn next_message(&mut self) -> SseEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_within(left).await.expect("a message within 10 s");
            if event.data.is_some() {
                return event;
            }
        }
    }

    /// Whether the stream ends (EOF) within `wait`, ignoring what comes before.
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => {}
                Ok(_) => return true,
            }
        }
    }
}

fn parse_block(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "event" => event.event = Some(value),
            "id" => event.id = Some(value),
            "data" => event.data = Some(value),
            "retry" => event.retry = value.parse().ok(),
            _ => {}
        }
    }
    event
}

/// The JSON body of a message.
pub fn json(event: &SseEvent) -> serde_json::Value {
    serde_json::from_str(event.data.as_deref().expect("data")).expect("JSON data")
}

/// Drains whatever a stream has buffered right now (used to skip the `retry:` preamble).
pub async fn settle(reader: &mut SseReader) {
    while reader
        .next_within(Duration::from_millis(200))
        .await
        .is_some()
    {}
}

/// An embedded database on its own, on a free port over `dir` (for tests that stop it or seed
/// it before the server starts).
pub async fn start_database(dir: &std::path::Path) -> embedded_db::Server {
    embedded_db::Server::start(embedded_db::Config::new(
        "127.0.0.1:0".parse().expect("address"),
        dir,
    ))
    .await
    .expect("database")
}

/// Starts the app against a database it does not own (`MONGO_URI`), failing fast while that
/// database is down. Returns the running app and its base URL.
pub async fn start_against(db_addr: std::net::SocketAddr) -> (Running, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config(&dir);
    config.mongo_uri = Some(format!(
        "mongodb://{db_addr}/?directConnection=true&serverSelectionTimeoutMS=500"
    ));
    let running = server::start(config, leptos_options())
        .await
        .expect("server");
    let base = format!("http://{}", running.addr);
    (running, base)
}

/// Polls `GET {base}/readyz` (up to 5 s) until it answers `wanted`; returns the last status.
pub async fn wait_ready(base: &str, wanted: u16) -> u16 {
    let mut status = 0;
    for _ in 0..50 {
        status = reqwest::get(format!("{base}/readyz"))
            .await
            .map_or(0, |r| r.status().as_u16());
        if status == wanted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

/// The value of one sample of `GET {base}/metrics`, e.g.
/// `realtime_sse_streams_cut_off_total{reason="lag"}`; 0 when it is missing.
pub async fn metric(base: &str, sample: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A raw HTTP/1.1 connection, for what `reqwest` hides: keep-alive reuse, socket buffers.
pub struct RawHttp {
    pub stream: tokio::net::TcpStream,
    pub buffer: Vec<u8>,
}

impl RawHttp {
    /// Connects to `addr`.
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Sends `GET path` with `headers` (lines without CRLF).
    pub async fn get(&mut self, path: &str, headers: &[&str]) {
        use tokio::io::AsyncWriteExt;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("request");
    }

    async fn fill(&mut self) {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("bytes within 10 s")
            .expect("read");
        assert!(n > 0, "connection closed early");
        self.buffer.extend_from_slice(&chunk[..n]);
    }

    /// Reads a response head; returns it lower-cased.
    pub async fn head(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buffer.drain(..end + 4).collect();
                return String::from_utf8_lossy(&head).to_ascii_lowercase();
            }
            self.fill().await;
        }
    }

    /// Reads a whole response (Content-Length or chunked body); returns head and body.
    pub async fn response(&mut self) -> (String, Vec<u8>) {
        let head = self.head().await;
        let mut body = Vec::new();
        if let Some(length) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            while self.buffer.len() < length {
                self.fill().await;
            }
            body.extend(self.buffer.drain(..length));
        } else {
            while let Some(chunk) = self.chunk().await {
                body.extend(chunk);
            }
        }
        (head, body)
    }

    /// Reads one chunk of a chunked body; `None` at its end.
    pub async fn chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(line_end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let size_text = String::from_utf8_lossy(&self.buffer[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
                let total = line_end + 2 + size + 2;
                while self.buffer.len() < total {
                    self.fill().await;
                }
                let chunk: Vec<u8> = self.buffer.drain(..total).collect();
                if size == 0 {
                    return None;
                }
                return Some(chunk[line_end + 2..line_end + 2 + size].to_vec());
            }
            self.fill().await;
        }
    }
}
