//! The harness can fail: pointed at tiny fake servers, its `5xx` and hang detectors fire, and
//! a server that closes without an answer is not counted against it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use server_fuzz::exchange::{self, Ending, Limits};
use server_fuzz::generate::Case;
use server_fuzz::run::{self, Settings, Shared, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a fake server does with each request head it reads.
#[derive(Debug, Clone, Copy)]
enum Fake {
    /// Answers `500`.
    Fails,
    /// Reads and never answers or closes.
    Silent,
    /// Answers `200` and keeps the connection open forever.
    AnswersThenHolds,
    /// Closes without an answer.
    Closes,
}

/// Starts a fake server; it runs until the test's runtime ends.
async fn fake(mode: Fake) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(stream, mode));
        }
    });
    addr
}

async fn serve(mut stream: TcpStream, mode: Fake) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            received.drain(..end + 4);
            let answer: &[u8] = match mode {
                Fake::Fails => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\n\r\n{}",
                Fake::AnswersThenHolds => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                Fake::Closes => return,
                Fake::Silent => b"",
            };
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                // A silent fake keeps its side open even after the client's half-close.
                if matches!(mode, Fake::Silent) {
                    std::future::pending::<()>().await;
                }
                return;
            }
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Short deadlines, so a hang shows within a second.
fn limits() -> Limits {
    Limits {
        header: Duration::from_millis(200),
        body: Duration::from_millis(200),
        margin: Duration::from_millis(300),
        quiet: Duration::from_millis(100),
    }
}

/// One GET whose answer is owed.
fn get() -> Case {
    Case::from_plan(
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
        "expect=1\nrequest=0 0 GET /healthz\n",
    )
    .expect("plan")
}

/// A `500` answer fails the case, and the answer is kept as evidence.
#[tokio::test]
async fn a_500_is_a_failure() {
    let outcome = exchange::run(fake(Fake::Fails).await, &get(), &limits()).await;
    assert_eq!(outcome.statuses, vec![500]);
    assert!(outcome.failed());
    assert!(outcome.evidence.starts_with(b"HTTP/1.1 500"));
}

/// A request nobody answers, on a connection nobody closes, is a hang once the silence is
/// longer than the deadlines plus the margin.
#[tokio::test]
async fn silence_past_the_deadline_is_a_hang() {
    let outcome = exchange::run(fake(Fake::Silent).await, &get(), &limits()).await;
    let Ending::Hang { waited, .. } = outcome.ending else {
        panic!("expected a hang, got {:?}", outcome.ending);
    };
    assert!(waited >= limits().silence());
    assert!(outcome.failed());
    // Unknown framing: half-closed after the quiet moment, and still a hang when the server
    // keeps its side open.
    let unknown = Case::from_plan(b"GET / HTTP/1.1\r\n\r\n".to_vec(), "").expect("plan");
    let outcome = exchange::run(fake(Fake::Silent).await, &unknown, &limits()).await;
    assert!(outcome.half_closed);
    assert!(matches!(outcome.ending, Ending::Hang { .. }));
}

/// A kept-alive connection the server never closes is a hang against the header deadline.
#[tokio::test]
async fn an_idle_connection_never_closed_is_a_hang() {
    let idle = Case::from_plan(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        "expect=1\nhold=head 27\nrequest=0 0 GET /\n",
    )
    .expect("plan");
    let outcome = exchange::run(fake(Fake::AnswersThenHolds).await, &idle, &limits()).await;
    assert_eq!(outcome.statuses, vec![200]);
    let Ending::Hang { waiting_for, .. } = &outcome.ending else {
        panic!("expected a hang, got {:?}", outcome.ending);
    };
    assert!(waiting_for.contains("head deadline"), "{waiting_for}");
}

/// A trickled body the server never cuts is a hang against the body deadline, although bytes
/// keep flowing.
#[tokio::test]
async fn a_trickle_never_cut_is_a_hang() {
    let head = b"POST /_server/add_user HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
    let mut bytes = head.to_vec();
    bytes.extend_from_slice(&[b'a'; 1000]);
    let plan = format!(
        "delivery=trickle {0} 1 20\nexpect=0\nhold=body {0}\nrequest=0 0 POST /_server/add_user\n",
        head.len()
    );
    let case = Case::from_plan(bytes, &plan).expect("plan");
    let outcome = exchange::run(fake(Fake::Silent).await, &case, &limits()).await;
    let Ending::Hang { waiting_for, .. } = &outcome.ending else {
        panic!("expected a hang, got {:?}", outcome.ending);
    };
    assert!(waiting_for.contains("body deadline"), "{waiting_for}");
}

/// A server that closes without an answer is not a failure.
#[tokio::test]
async fn a_close_without_an_answer_is_fine() {
    let outcome = exchange::run(fake(Fake::Closes).await, &get(), &limits()).await;
    assert_eq!(outcome.ending, Ending::Closed);
    assert!(!outcome.failed());
}

/// The whole run against a failing server: findings recorded and saved with the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_a_failing_server_has_findings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = Settings {
        target: Target::Address(fake(Fake::Fails).await),
        seed: 1,
        duration: None,
        requests: Some(200),
        connections: 2,
        slow_connections: 0,
        limits: limits(),
        findings: dir.path().to_owned(),
        stop_on_finding: false,
        progress: false,
    };
    let shared = Arc::new(Shared::new(settings).expect("no process to start"));
    run::fuzz(Arc::clone(&shared)).await;
    assert!(shared.stats.server_errors() > 0);
    let findings = shared.findings.lock().expect("findings");
    assert!(findings.total > 0);
    let saved = findings
        .by_signature
        .values()
        .find_map(|(_, path)| path.clone())
        .expect("a finding saved");
    assert!(saved.join("case-1.bin").is_file());
    assert!(saved.join("note.txt").is_file());
    let cases = server_fuzz::findings::load(&saved).expect("the finding loads");
    assert!(!cases.is_empty());
}
