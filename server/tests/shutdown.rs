//! The built `server` binary stopped by signals: a shutdown ends within `SHUTDOWN_GRACE_MS`
//! however long a client holds a request open, keeps what was written and exits 0; a second
//! signal ends it at once with a non-zero code.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECOND: Duration = Duration::from_secs(1);

/// The server binary running as a child process, with its output read line by line.
struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
}

impl Process {
    /// Starts the server on free ports over `dir` with `SHUTDOWN_GRACE_MS=grace_ms`, and
    /// waits for its "listening" line (60 s at most).
    fn start(dir: &TempDir, grace_ms: u64) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .env("EMBEDDED_DB_PATH", dir.path())
            .env("EMBEDDED_DB_ADDR", "127.0.0.1:0")
            .env("LEPTOS_SITE_ADDR", "127.0.0.1:0")
            .env("LEPTOS_OUTPUT_NAME", "realtime")
            .env("SHUTDOWN_GRACE_MS", grace_ms.to_string())
            .env("RUST_LOG", "server=info")
            .env("NO_COLOR", "1")
            .env_remove("MONGO_URI")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = process.line_with("listening", 60 * SECOND);
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .expect("the listening line names the address");
        process.addr = addr.parse().expect("a socket address");
        process
    }

    /// The next output line containing `needle`; fails the test after `wait`.
    fn line_with(&self, needle: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?} within {wait:?}: {e}"),
            }
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM");
    }

    /// The exit status, once the process exits within `wait` (else it is killed and the test
    /// fails).
    async fn exit_within(&mut self, wait: Duration) -> ExitStatus {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("still running {wait:?} after the signal");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A connection holding a request whose head is only half sent.
async fn half_sent_request(addr: SocketAddr) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(b"POST /_server/add_user HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        .await
        .expect("half a head");
    socket
}

/// Adds user `username` through the page's server function.
async fn add_user(process: &Process, username: &str) {
    let response = reqwest::Client::new()
        .post(process.url("/_server/add_user"))
        .header("origin", format!("http://{}", process.addr))
        .header("sec-fetch-site", "same-origin")
        .form(&[
            ("fname", "Kept"),
            ("lname", "Through"),
            ("username", username),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
}

/// SIGTERM while a client holds a half-sent request: the server exits 0 within the grace
/// period (+1 s), and a restart on the same directory finds what was written before.
#[tokio::test]
async fn sigterm_exits_within_the_grace_period_and_keeps_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let grace = SECOND;
    let mut process = Process::start(&dir, 1000);
    add_user(&process, "kept_through_restart").await;
    let _held = half_sent_request(process.addr).await;
    process.terminate();
    let status = process.exit_within(grace + SECOND).await;
    assert_eq!(status.code(), Some(0), "{status}");

    let process = Process::start(&dir, 1000);
    let users = reqwest::get(process.url("/api/users"))
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(users.contains("kept_through_restart"), "{users}");
}

/// A second SIGTERM during a shutdown that waits for a held request ends the process at once,
/// with a non-zero code.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process = Process::start(&dir, 60_000);
    let _held = half_sent_request(process.addr).await;
    process.terminate();
    process.line_with("shutting down", 10 * SECOND);
    process.terminate();
    let status = process.exit_within(2 * SECOND).await;
    assert_eq!(status.code(), Some(143), "{status}");
}
