//! The app's own database pool, in-process: it connects through the embedded database's
//! private socket, so outside clients that fill every slot of the database's TCP port
//! (`EMBEDDED_DB_MAX_CONNECTIONS`) cannot lock the site out. Through real sockets.

#![cfg(unix)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{json, SseReader};
use mongodb::bson::{doc, Document};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `command` (with `$db: admin`) on a raw connection and reads the reply's body; `None`
/// when the database closed the connection instead of answering (refused at its limit).
async fn command(stream: &mut TcpStream, command: Document) -> Option<Document> {
    let mut command = command;
    command.insert("$db", "admin");
    let bytes = embedded_db::wire::encode_request(1, &command).expect("encode");
    stream.write_all(&bytes).await.ok()?;
    let mut header = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
        .await
        .expect("the database reacts in time");
    read.ok()?;
    let len = i32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let mut body = vec![0u8; usize::try_from(len).expect("length") - 16];
    stream.read_exact(&mut body).await.expect("body");
    // Flag bits (4 bytes), then section kind 0 and its document.
    Some(Document::from_reader(&body[5..]).expect("reply document"))
}

/// A raw connection to the database's TCP port that the database serves (it answered a
/// `ping`), or `None` when it was refused.
async fn outside_connection(app: &common::App) -> Option<TcpStream> {
    let addr = app.running.embedded_addr.expect("embedded database");
    let mut stream = TcpStream::connect(addr).await.expect("the kernel accepts");
    command(&mut stream, doc! { "ping": 1 }).await?;
    Some(stream)
}

/// The usernames `GET /api/users` lists.
async fn listed_usernames(app: &common::App) -> Vec<String> {
    let response = reqwest::get(app.url("/api/users")).await.expect("request");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let users: Vec<Value> = serde_json::from_str(&text).expect("JSON");
    users
        .iter()
        .map(|user| user["username"].as_str().expect("username").to_owned())
        .collect()
}

/// With every slot of the database's TCP port held by outside clients (a newcomer is closed
/// at once), the site still lists users, takes a write from the page and sends its event on
/// `/api/sse`: the app's pool is on the private socket (`limitExempt` in `serverStatus`).
#[tokio::test]
async fn the_app_works_while_outside_clients_fill_the_database_port() {
    const MAX: usize = 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = server::Config {
        embedded_max_connections: Some(MAX),
        ..common::config(&dir)
    };
    let app = common::start_with(dir, config).await;
    let mut reader = SseReader::open(&app.url("/api/sse"), &[]).await;
    common::settle(&mut reader).await;

    let mut outside = Vec::new();
    while let Some(stream) = outside_connection(&app).await {
        outside.push(stream);
        assert!(outside.len() <= MAX, "the port holds at most {MAX}");
    }
    let status = command(&mut outside[0], doc! { "serverStatus": 1 })
        .await
        .expect("served");
    let connections = status.get_document("connections").expect("connections");
    assert_eq!(connections.get_i64("available"), Ok(0), "{connections}");
    let exempt = connections.get_i64("limitExempt").expect("limitExempt");
    let most = i64::try_from(server::db::PRIVATE_CONNECTIONS).expect("a count");
    // At least the driver's monitor and the hub's change stream.
    assert!((2..=most).contains(&exempt), "{connections}");

    assert!(listed_usernames(&app).await.contains(&"ada".to_owned()));
    let response = reqwest::Client::new()
        .post(app.url("/_server/add_user"))
        .header("origin", app.base.as_str())
        .header("sec-fetch-site", "same-origin")
        .form(&[
            ("fname", "Port"),
            ("lname", "Full"),
            ("username", "portfull"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        200,
        "the write goes through the app's pool"
    );
    let event = json(&reader.next_message().await);
    assert_eq!(event["operationType"], "insert", "{event}");
    assert_eq!(event["collection"], "users", "{event}");
    assert!(listed_usernames(&app)
        .await
        .contains(&"portfull".to_owned()));

    assert!(
        outside_connection(&app).await.is_none(),
        "the TCP port is still full: the app took none of its slots"
    );
    drop((outside, reader));
    app.stop().await;
}

/// Set in the child process of [`an_unusable_temporary_directory_stops_start_up`].
const CHILD: &str = "SERVER_PRIVATE_SOCKET_CHILD";

/// The child's half of [`an_unusable_temporary_directory_stops_start_up`] (does nothing in a
/// plain test run): starts the server under its `TMPDIR` and prints the start-up error.
#[tokio::test]
async fn start_up_in_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let dir = tempfile::Builder::new()
        .tempdir_in("/tmp")
        .expect("a data directory");
    let config = common::config(&dir);
    match server::start(config, common::leptos_options()).await {
        Ok(_) => panic!("the server started"),
        Err(e) => println!("outcome: {}: {}", e.variable, e.message),
    }
}

/// When the private socket's directory cannot be made under the temporary directory,
/// start-up stops with one line naming `TMPDIR`.
#[test]
fn an_unusable_temporary_directory_stops_start_up() {
    let root = tempfile::Builder::new()
        .tempdir_in("/tmp")
        .expect("a directory");
    let missing = root.path().join("missing");
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "start_up_in_child", "--nocapture"])
        .env(CHILD, "1")
        .env("TMPDIR", &missing)
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outcome = stdout
        .lines()
        .find_map(|line| line.strip_prefix("outcome: "))
        .expect("an outcome line");
    assert!(
        outcome.starts_with(&format!(
            "TMPDIR: cannot create the private socket under {}",
            missing.display()
        )),
        "{outcome}"
    );
}
