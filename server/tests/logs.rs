//! What clients send cannot forge or flood the log: the server's own subscriber
//! (`server::logging`), writing to a buffer, while real HTTP requests carry newlines and
//! 10 KiB values to the places that log them.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::SseReader;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// The start of the line a client tries to add to the log.
const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO server: forged";

/// Every byte the subscriber writes.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// The log's lines once `wanted` lines contain `needle` (10 s at most).
    async fn lines_once(&self, needle: &str, wanted: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if text.lines().filter(|l| l.contains(needle)).count() >= wanted {
                return text.lines().map(str::to_owned).collect();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{wanted} lines with {needle:?} within 10 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Buffer {
    type Writer = Self;

    fn make_writer(&'w self) -> Self {
        self.clone()
    }
}

/// A `lastEventId` holding a newline and a forged line is logged on one line, escaped; a
/// 10 KiB one, and a 10 KiB path of a refused write, are logged cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_values_cannot_forge_or_flood_log_lines() {
    let buffer = Buffer::default();
    server::logging::subscriber(
        tracing_subscriber::EnvFilter::new("server=info"),
        buffer.clone(),
    )
    .try_init()
    .expect("the only subscriber of this test binary");
    let app = common::start().await;

    let forged = FORGED.replace(' ', "%20");
    let long = "a".repeat(10 * 1024);
    for id in [format!("x%0A{forged}"), format!("{long}%0A{forged}")] {
        let mut reader =
            SseReader::open(&app.url(&format!("/api/sse?lastEventId={id}")), &[]).await;
        let resync = reader.next_message().await;
        assert_eq!(resync.event.as_deref(), Some("resync"));
    }
    let path = format!("/_server/{}", "p".repeat(10 * 1024));
    let refused = reqwest::Client::new()
        .post(app.url(&path))
        .header("origin", "http://evil.test")
        .form(&[("fname", "x")])
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status().as_u16(), 403);

    buffer.lines_once("client must resync", 2).await;
    let lines = buffer.lines_once("cross-site request refused", 1).await;
    for line in &lines {
        assert!(!line.starts_with(FORGED), "a forged line: {line}");
        assert!(!line.starts_with("2026-01-01"), "a forged line: {line}");
    }
    let escaped = format!("x\\n{FORGED}");
    assert!(
        lines.iter().any(|l| l.contains(&escaped)),
        "the newline is shown escaped:\n{}",
        lines.join("\n")
    );
    let long_id = lines
        .iter()
        .find(|l| l.contains("client must resync") && l.contains("aaaa"))
        .expect("the long position is logged");
    assert!(long_id.len() < 1024, "cut: {} bytes", long_id.len());
    let long_path = lines
        .iter()
        .find(|l| l.contains("cross-site request refused"))
        .expect("the refusal is logged");
    let shown = format!("/_server/{}…", "p".repeat(128 - "/_server/".len()));
    assert!(long_path.contains(&shown), "{long_path}");
    assert!(long_path.len() < 512, "cut: {} bytes", long_path.len());
}
