//! The private socket (`Config::private_connections`): a Unix socket in a directory only this
//! user may enter, with a connection limit of its own, so outside clients filling the TCP port
//! never lock the embedding application's pool out. Everything goes through real sockets.

#![cfg(unix)]

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use embedded_db::{Config, Server, StartError};
use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, ServerAddress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// Whether a connection the kernel accepted is closed by the server at once (EOF) without
/// being served.
async fn closed_at_once<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
        .await
        .expect("the server closes it in time");
    matches!(read, Ok(0))
}

/// A TCP connection that holds a slot: the server has answered a `ping` on it.
async fn tcp_slot(server: &Server) -> TcpStream {
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    common::raw_command(&mut stream, 1, doc! { "ping": 1 })
        .await
        .expect("served");
    stream
}

/// The socket's path, as the driver reads it from [`Server::private_uri`].
async fn socket_path(server: &Server) -> PathBuf {
    let uri = server.private_uri().expect("a private socket");
    let options = ClientOptions::parse(&uri)
        .await
        .expect("the driver parses it");
    assert_eq!(options.direct_connection, Some(true));
    match options.hosts.as_slice() {
        [ServerAddress::Unix { path }] => path.clone(),
        other => panic!("one socket path expected, got {other:?}"),
    }
}

/// `serverStatus.connections`, over `stream`.
async fn connections<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Document {
    common::raw_command(stream, 2, doc! { "serverStatus": 1 })
        .await
        .expect("served")
        .get_document("connections")
        .expect("connections")
        .clone()
}

/// With every TCP slot taken by outside clients (a newcomer is closed at once), the driver
/// still connects through the private socket, reads and writes; `serverStatus` counts the
/// private connections in `current` and `limitExempt`, not against the TCP port's
/// `available`. Once TCP slots free up, a driver `ping` on the TCP port answers again.
#[tokio::test]
async fn private_socket_serves_the_driver_while_tcp_is_full() {
    let (server, _dir) = common::start_bare(|c| {
        c.max_connections = 4;
        c.private_connections = 4;
    })
    .await;
    let mut outside = Vec::new();
    for _ in 0..4 {
        outside.push(tcp_slot(&server).await);
    }
    let mut newcomer = TcpStream::connect(server.local_addr())
        .await
        .expect("the kernel accepts");
    assert!(closed_at_once(&mut newcomer).await, "the TCP port is full");

    let app = common::client(&server.private_uri().expect("a private socket")).await;
    let users = app.database("test").collection::<Document>("users");
    users
        .insert_one(doc! { "_id": 1, "name": "ada" })
        .await
        .expect("a write through the private socket");
    let found = users.find_one(doc! { "_id": 1 }).await.expect("a read");
    assert_eq!(found, Some(doc! { "_id": 1, "name": "ada" }));

    let status = app
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .expect("serverStatus");
    let status = status.get_document("connections").expect("connections");
    let exempt = status.get_i64("limitExempt").expect("limitExempt");
    // The driver's monitor and at least the pooled connection running this command.
    assert!((2..=4).contains(&exempt), "{status}");
    assert_eq!(status.get_i64("current"), Ok(4 + exempt), "{status}");
    assert_eq!(status.get_i64("available"), Ok(0), "{status}");
    assert_eq!(status.get_i64("rejected"), Ok(1), "{status}");

    // Two free TCP slots: a driver's monitor and its pooled connection.
    drop(outside.drain(..2));
    let mut probe = outside.pop().expect("a held connection");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connections(&mut probe).await.get_i64("available") != Ok(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed connections free their TCP slots"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outsider = common::client(&server.uri()).await;
    outsider
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .expect("a driver ping on the TCP port");
    outsider.shutdown().await;
    app.shutdown().await;
    drop((outside, probe));
    server.shutdown().await;
}

/// Past its own limit the private socket accepts and closes a connection at once, as the TCP
/// port does; the refusal is counted in `rejected` without touching the TCP port's room, and a
/// closed private connection frees its slot for a newcomer.
#[tokio::test]
async fn private_socket_refuses_past_its_own_limit() {
    let (server, _dir) = common::start_bare(|c| {
        c.max_connections = 10;
        c.private_connections = 2;
    })
    .await;
    let path = socket_path(&server).await;
    let mut first = UnixStream::connect(&path).await.expect("connect");
    common::raw_command(&mut first, 1, doc! { "ping": 1 })
        .await
        .expect("the first is served");
    let mut second = UnixStream::connect(&path).await.expect("connect");
    common::raw_command(&mut second, 1, doc! { "ping": 1 })
        .await
        .expect("the second is served");
    let mut third = UnixStream::connect(&path)
        .await
        .expect("the kernel accepts");
    assert!(closed_at_once(&mut third).await, "EOF for the third");

    let mut outside = tcp_slot(&server).await;
    let status = connections(&mut outside).await;
    assert_eq!(status.get_i64("current"), Ok(3), "{status}");
    assert_eq!(status.get_i64("limitExempt"), Ok(2), "{status}");
    assert_eq!(status.get_i64("available"), Ok(9), "{status}");
    assert_eq!(status.get_i64("rejected"), Ok(1), "{status}");
    let whoami = common::raw_command(&mut first, 3, doc! { "whatsmyuri": 1 })
        .await
        .expect("served");
    assert_eq!(whoami.get_str("you"), Ok("private socket"));

    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut newcomer = UnixStream::connect(&path).await.expect("connect");
        if common::raw_command(&mut newcomer, 1, doc! { "ping": 1 })
            .await
            .is_some()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed private connection frees its slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((first, outside));
    server.shutdown().await;
}

/// The socket lives in a fresh directory of mode 0700 with a short path, and the directory is
/// gone after `shutdown`, and after an abrupt drop too.
#[tokio::test]
async fn private_socket_directory_is_private_and_removed() {
    let (server, _dir) = common::start_bare(|c| c.private_connections = 1).await;
    let path = socket_path(&server).await;
    assert!(
        path.as_os_str().len() < 100,
        "the path fits a socket address: {}",
        path.display()
    );
    let file = std::fs::metadata(&path).expect("the socket exists");
    assert!(file.file_type().is_socket(), "{}", path.display());
    let dir = path.parent().expect("a directory").to_owned();
    let mode = std::fs::metadata(&dir)
        .expect("the directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "mode {mode:o} of {}", dir.display());
    server.shutdown().await;
    assert!(!dir.exists(), "{} is removed on shutdown", dir.display());

    let (server, _dir) = common::start_bare(|c| c.private_connections = 1).await;
    let dir = socket_path(&server)
        .await
        .parent()
        .expect("a directory")
        .to_owned();
    drop(server);
    assert!(!dir.exists(), "{} is removed on drop", dir.display());
}

/// Without `private_connections` there is no private socket.
#[tokio::test]
async fn no_private_socket_by_default() {
    let (server, _dir) = common::start_bare(|_| {}).await;
    assert_eq!(server.private_uri(), None);
    server.shutdown().await;
}

/// Set in the child process of [`private_socket_follows_the_temporary_directory`].
const CHILD: &str = "EMBEDDED_DB_PRIVATE_SOCKET_CHILD";

/// Runs [`private_socket_in_child`] in a child process whose temporary directory is `tmpdir`;
/// its last line of output.
fn child_outcome(tmpdir: &std::ffi::OsStr) -> String {
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "private_socket_in_child", "--nocapture"])
        .env(CHILD, "1")
        .env("TMPDIR", tmpdir)
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("outcome: "))
        .expect("an outcome line")
        .to_owned()
}

/// The child's half of [`private_socket_follows_the_temporary_directory`] (does nothing in a
/// plain test run): starts a server with a private socket under its `TMPDIR` and prints
/// either the start error or that a driver `ping` through the socket answered.
#[tokio::test]
async fn private_socket_in_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let data = tempfile::Builder::new()
        .tempdir_in("/tmp")
        .expect("a data directory");
    let mut config = Config::new("127.0.0.1:0".parse().expect("address"), data.path());
    // The driver needs two: its monitor's and a pooled one.
    config.private_connections = 2;
    match Server::start(config).await {
        Ok(server) => {
            let client = common::client(&server.private_uri().expect("a private socket")).await;
            client
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
                .expect("a ping through the private socket");
            client.shutdown().await;
            server.shutdown().await;
            println!("outcome: served");
        }
        Err(e @ StartError::Private { .. }) => println!("outcome: {e}"),
        Err(e) => panic!("unexpected start error: {e}"),
    }
}

/// The socket's directory is made under the system's temporary directory (`TMPDIR`): one whose
/// name needs percent-encoding still gives a connection string the driver follows; one that is
/// missing, too long for a socket address or not UTF-8 stops start-up with
/// `StartError::Private` naming it.
#[test]
fn private_socket_follows_the_temporary_directory() {
    use std::os::unix::ffi::OsStrExt;

    let root = tempfile::Builder::new()
        .tempdir_in("/tmp")
        .expect("a directory");
    let odd = root.path().join("a b,c%d@e?f");
    std::fs::create_dir(&odd).expect("create");
    assert_eq!(child_outcome(odd.as_os_str()), "served");

    let missing = root.path().join("missing");
    let outcome = child_outcome(missing.as_os_str());
    assert!(
        outcome.starts_with(&format!(
            "cannot create the private socket under {}",
            missing.display()
        )),
        "{outcome}"
    );

    let long = root.path().join("x".repeat(120));
    std::fs::create_dir(&long).expect("create");
    let outcome = child_outcome(long.as_os_str());
    assert!(
        outcome.starts_with(&format!(
            "cannot create the private socket under {}",
            long.display()
        )),
        "{outcome}"
    );

    let mut bytes = root.path().as_os_str().as_bytes().to_vec();
    bytes.extend_from_slice(b"/not-utf8-\xff");
    let not_utf8 = std::ffi::OsStr::from_bytes(&bytes);
    std::fs::create_dir(not_utf8).expect("create");
    let outcome = child_outcome(not_utf8);
    assert!(outcome.contains("is not UTF-8"), "{outcome}");
}
