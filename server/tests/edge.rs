//! The edge of the site through real sockets: deadlines on request heads and bodies, fair
//! shares of connections and streams per client address, and `TRUSTED_PROXIES`.
//!
//! Any address of 127.0.0.0/8 reaches a loopback server, so one test plays several hosts.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mongodb::bson::doc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use common::SseReader;

const SECOND: Duration = Duration::from_secs(1);

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A TCP connection to `addr` from the local address `from`.
async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// Whether the server closed `stream` (or reset it) within `wait`, reading and dropping
/// whatever it sent before.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Opens `count` connections from `from` and sorts them into those the server closed within
/// `wait` and those it kept.
async fn open_many(
    from: IpAddr,
    addr: SocketAddr,
    count: usize,
    wait: Duration,
) -> (usize, Vec<TcpStream>) {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        streams.push(connect_from(from, addr).await);
    }
    let checks = streams.into_iter().map(|mut stream| async move {
        let closed = closed_within(&mut stream, wait).await;
        (closed, stream)
    });
    let mut refused = 0;
    let mut kept = Vec::new();
    for (closed, stream) in futures::future::join_all(checks).await {
        if closed {
            refused += 1;
        } else {
            kept.push(stream);
        }
    }
    (refused, kept)
}

/// `GET /healthz` from `from` on a fresh connection: its status line.
async fn healthz_from(from: IpAddr, addr: SocketAddr) -> String {
    let mut stream = connect_from(from, addr).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    tokio::time::timeout(5 * SECOND, stream.read_to_end(&mut response))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A driver `ping` on the embedded database's own port answers.
async fn database_pings(app: &common::App) {
    let db_addr = app.running.embedded_addr.expect("embedded database");
    let client = mongodb::Client::with_uri_str(format!(
        "mongodb://{db_addr}/?directConnection=true&serverSelectionTimeoutMS=3000"
    ))
    .await
    .expect("client");
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .expect("the database answers a ping");
    client.shutdown().await;
}

/// Inserts a user through the driver; its `_id` as hex.
async fn insert_user(app: &common::App, username: &str) -> String {
    let inserted = app
        .users()
        .insert_one(doc! { "fname": "E", "lname": "Dge", "username": username })
        .await
        .expect("insert");
    inserted
        .inserted_id
        .as_object_id()
        .expect("an ObjectId")
        .to_hex()
}

async fn start(configure: impl FnOnce(&mut server::Config)) -> common::App {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::config(&dir);
    configure(&mut config);
    common::start_with(dir, config).await
}

/// A head trickled a line every 200 ms is cut at the head deadline counted from accept, not
/// from its last byte; a connection that sends nothing, and a kept-alive one idle after its
/// response, are closed at the same deadline; the site answers others meanwhile.
#[tokio::test]
async fn a_request_head_must_be_whole_within_its_deadline() {
    let app = start(|config| config.header_timeout = SECOND).await;
    let addr = app.running.addr;
    let started = Instant::now();
    let mut trickled = TcpStream::connect(addr).await.expect("connect");
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut kept_alive = common::RawHttp::connect(addr).await;
    kept_alive.get("/healthz", &[]).await;
    let (head, _) = kept_alive.response().await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    trickled
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n")
        .await
        .expect("request line");
    let trickle = async {
        let mut buffer = [0u8; 1024];
        loop {
            tokio::select! {
                read = trickled.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if trickled.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        return started.elapsed();
                    }
                }
            }
        }
    };
    let cut = tokio::time::timeout(5 * SECOND, trickle)
        .await
        .expect("the trickled head is cut, though bytes keep coming");
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}");
    assert!(
        cut < 3 * SECOND,
        "cut after {cut:?}: the deadline counts from accept"
    );
    assert!(
        closed_within(&mut silent, 3 * SECOND).await,
        "a silent connection is closed"
    );
    assert!(
        closed_within(&mut kept_alive.stream, 3 * SECOND).await,
        "an idle kept-alive connection is closed"
    );
    assert_eq!(healthz_from(ip(1), addr).await, "HTTP/1.1 200 OK");
    let timeouts = common::metric(&app.base, "realtime_http_timeouts_total{part=\"head\"}").await;
    assert!(timeouts >= 3, "{timeouts} head timeouts counted");
    app.stop().await;
}

/// A server-function body trickled a byte every 200 ms gets `408` at the body deadline,
/// counted from the head, and its connection is closed; nothing is written.
#[tokio::test]
async fn a_request_body_must_be_whole_within_its_deadline() {
    let app = start(|config| config.body_timeout = SECOND).await;
    let users_before = app.users().count_documents(doc! {}).await.expect("count");
    let mut stream = TcpStream::connect(app.running.addr).await.expect("connect");
    let form = b"fname=Slow&lname=Loris&username=slowloris";
    let head = format!(
        "POST /_server/add_user HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        form.len() + 100
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let mut answer = Vec::new();
    let trickle = async {
        let mut buffer = [0u8; 4096];
        let mut body = form.iter().chain(std::iter::repeat(&b'x'));
        loop {
            tokio::select! {
                read = stream.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => answer.extend_from_slice(&buffer[..n]),
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    let byte = [*body.next().unwrap_or(&b'x')];
                    if stream.write_all(&byte).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::time::timeout(5 * SECOND, trickle)
        .await
        .expect("answered and closed within 5 s");
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < 3 * SECOND,
        "{elapsed:?}"
    );
    assert_eq!(
        app.users().count_documents(doc! {}).await.expect("count"),
        users_before,
        "nothing written"
    );
    assert_eq!(
        common::metric(&app.base, "realtime_http_timeouts_total{part=\"body\"}").await,
        1
    );
    app.stop().await;
}

/// One address opening many idle connections holds its `HTTP_MAX_CONNECTIONS_PER_IP`; the
/// rest are closed at once (long before the head deadline), while another address gets
/// `/healthz` and the database port answers a driver `ping`.
#[tokio::test]
async fn one_address_gets_its_share_of_connections() {
    let app = start(|config| {
        config.header_timeout = 30 * SECOND;
        config.http_max_connections = Some(100);
        config.http_max_connections_per_ip = Some(5);
    })
    .await;
    let addr = app.running.addr;
    let (refused, kept) = open_many(ip(2), addr, 60, 2 * SECOND).await;
    assert_eq!((refused, kept.len()), (55, 5));
    assert_eq!(healthz_from(ip(3), addr).await, "HTTP/1.1 200 OK");
    database_pings(&app).await;
    assert_eq!(
        common::metric(&app.base, "realtime_http_connections_refused_total").await,
        55
    );
    // A slot given back is a slot another connection of the address can take.
    drop(kept);
    assert_eq!(healthz_from(ip(2), addr).await, "HTTP/1.1 200 OK");
    app.stop().await;
}

/// Many addresses filling the whole HTTP share get fast refusals, never a hang; an event
/// stream opened before keeps its events, and the database port answers.
#[tokio::test]
async fn a_full_share_refuses_fast_and_leaves_streams_and_the_database_alone() {
    let app = start(|config| {
        config.header_timeout = 30 * SECOND;
        config.http_max_connections = Some(20);
        config.http_max_connections_per_ip = Some(5);
    })
    .await;
    let addr = app.running.addr;
    let mut stream = SseReader::open_from(ip(9), &app.url("/api/sse"), &[]).await;
    common::settle(&mut stream).await;
    let mut held = Vec::new();
    for last in 2..=5 {
        let (refused, kept) = open_many(ip(last), addr, 5, SECOND).await;
        assert_eq!(refused, 0, "127.0.0.{last} is within its share");
        held.extend(kept);
    }
    let (refused, kept) = open_many(ip(6), addr, 10, 2 * SECOND).await;
    assert_eq!(
        (refused, kept.len()),
        (10, 0),
        "the share is full: refused at once"
    );
    database_pings(&app).await;
    let id = insert_user(&app, "still.live").await;
    assert_eq!(common::json(&stream.next_message().await)["id"], id);
    drop(held);
    assert_eq!(healthz_from(ip(6), addr).await, "HTTP/1.1 200 OK");
    app.stop().await;
}

/// One address holding its `SSE_MAX_CLIENTS_PER_IP` streams gets `retry:` and a close for
/// one more; a browser on another address gets a live stream and its events.
#[tokio::test]
async fn one_address_gets_its_share_of_streams() {
    let app = start(|config| config.max_clients_per_ip = Some(3)).await;
    let url = app.url("/api/sse");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = SseReader::open_from(ip(2), &url, &[]).await;
        common::settle(&mut stream).await;
        held.push(stream);
    }
    let mut over = SseReader::open_from(ip(2), &url, &[]).await;
    assert!(over
        .next_within(SECOND)
        .await
        .is_some_and(|block| block.retry.is_some()));
    assert!(over.ends_within(2 * SECOND).await, "over its share: closed");
    let mut browser = SseReader::open_from(ip(3), &url, &[]).await;
    common::settle(&mut browser).await;
    let id = insert_user(&app, "other.host").await;
    assert_eq!(common::json(&browser.next_message().await)["id"], id);
    assert_eq!(
        common::metric(&app.base, "realtime_sse_streams_refused_total").await,
        1
    );
    app.stop().await;
}

/// Behind a trusted proxy every connection comes from the proxy: it is exempt from the
/// per-address connection cap, and streams count by the rightmost `X-Forwarded-For` entry
/// that is not a trusted proxy. An untrusted peer's `X-Forwarded-For` is ignored.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_counts() {
    let app = start(|config| {
        config.header_timeout = 30 * SECOND;
        config.http_max_connections_per_ip = Some(2);
        config.max_clients_per_ip = Some(1);
        config.trusted_proxies =
            server::client::TrustedProxies::parse("127.0.0.2, 10.9.0.0/16").expect("list");
    })
    .await;
    let addr = app.running.addr;
    let url = app.url("/api/sse");
    let (refused, kept) = open_many(ip(2), addr, 6, SECOND).await;
    assert_eq!(refused, 0, "the proxy is exempt from the per-address cap");
    drop(kept);

    let proxied = |chain: &'static str| [("x-forwarded-for", chain)];
    let mut first =
        SseReader::open_from(ip(2), &url, &proxied("6.6.6.6, 10.0.0.1, 10.9.0.1")).await;
    common::settle(&mut first).await;
    // Same client through the same proxies (the forged first entry differs): over its share.
    let mut again = SseReader::open_from(ip(2), &url, &proxied("10.0.0.1, 10.9.0.7")).await;
    assert!(
        again.ends_within(2 * SECOND).await,
        "10.0.0.1 holds its one stream"
    );
    let mut other = SseReader::open_from(ip(2), &url, &proxied("10.0.0.2")).await;
    common::settle(&mut other).await;

    // An untrusted peer counts as itself, whatever it forwards.
    let mut direct = SseReader::open_from(ip(3), &url, &proxied("10.0.0.3")).await;
    common::settle(&mut direct).await;
    let mut forged = SseReader::open_from(ip(3), &url, &proxied("10.0.0.4")).await;
    assert!(
        forged.ends_within(2 * SECOND).await,
        "127.0.0.3 holds its one stream"
    );
    app.stop().await;
}
