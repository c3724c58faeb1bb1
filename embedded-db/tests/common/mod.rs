//! Shared set-up for integration tests: an `embedded-db` server on
//! `127.0.0.1:0` over a temporary data directory, and official-driver clients.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part of this module

use std::time::Duration;

use embedded_db::{Config, Server};
use mongodb::bson::Document;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A running server, its data directory and a connected client.
pub struct TestServer {
    pub server: Server,
    pub dir: TempDir,
    pub client: Client,
}

impl TestServer {
    /// A fresh database with a name unique to this server.
    pub fn db(&self) -> Database {
        self.client.database("test")
    }

    /// The `serverStatus` reply, through the driver.
    pub async fn server_status(&self) -> mongodb::bson::Document {
        self.client
            .database("admin")
            .run_command(mongodb::bson::doc! { "serverStatus": 1 })
            .await
            .expect("serverStatus")
    }

    /// Stops the server (the data directory stays until the value is dropped).
    pub async fn stop(self) -> TempDir {
        self.client.clone().shutdown().await;
        self.server.shutdown().await;
        self.dir
    }
}

/// Starts a server with default settings.
pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// Starts a server after letting `configure` adjust its settings.
pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new("127.0.0.1:0".parse().expect("address"), dir.path());
    configure(&mut config);
    let server = Server::start(config).await.expect("server starts");
    let client = client(&server.uri()).await;
    TestServer {
        server,
        dir,
        client,
    }
}

/// Starts a server without any client, for tests that count the server's connections (a
/// driver client keeps a monitoring connection of its own).
pub async fn start_bare(configure: impl FnOnce(&mut Config)) -> (Server, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new("127.0.0.1:0".parse().expect("address"), dir.path());
    configure(&mut config);
    let server = Server::start(config).await.expect("server starts");
    (server, dir)
}

/// A driver client for `uri`, failing fast when the server is not there.
pub async fn client(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("valid uri");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client")
}

/// The server error code carried by a driver error (command, write or insert-many error).
pub fn code_of(err: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::InsertMany(e) => e.write_errors.as_ref()?.first().map(|w| w.code),
        _ => None,
    }
}

/// Sends `command` (with `$db: admin`) and reads the reply's body; `None` when the server
/// closed the connection instead of answering.
pub async fn raw_command<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request_id: i32,
    command: Document,
) -> Option<Document> {
    let mut command = command;
    command.insert("$db", "admin");
    let bytes = embedded_db::wire::encode_request(request_id, &command).expect("encode");
    stream.write_all(&bytes).await.ok()?;
    let mut header = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
        .await
        .expect("the server reacts in time");
    read.ok()?;
    let len = i32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let mut body = vec![0u8; usize::try_from(len).expect("length") - 16];
    stream.read_exact(&mut body).await.expect("body");
    // Flag bits (4 bytes), then section kind 0 and its document.
    Some(Document::from_reader(&body[5..]).expect("reply document"))
}
