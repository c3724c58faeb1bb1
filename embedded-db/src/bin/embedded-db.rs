//! Run with
//!
//! ```not_rust
//! cargo run -p embedded-db --release -- --addr 127.0.0.1:27017 --path ./data/db
//! ```
//!
//! then connect with `mongosh "mongodb://127.0.0.1:27017/?directConnection=true"`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use embedded_db::{
    Config, Server, DEFAULT_ADDR, DEFAULT_HISTORY, DEFAULT_MAX_CONNECTIONS, DEFAULT_PATH,
    DEFAULT_REPLICA_SET, DEFAULT_WRITE_TIMEOUT,
};

/// A MongoDB-wire-compatible database with change streams, durable on disk.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "EMBEDDED_DB_ADDR", default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Data directory (created if missing).
    #[arg(long, env = "EMBEDDED_DB_PATH", default_value = DEFAULT_PATH)]
    path: PathBuf,
    /// Change-log entries kept for resuming change streams.
    #[arg(long, env = "EMBEDDED_DB_HISTORY", default_value_t = DEFAULT_HISTORY)]
    history: u64,
    /// Replica-set name reported to drivers.
    #[arg(long, env = "EMBEDDED_DB_REPLICA_SET", default_value = DEFAULT_REPLICA_SET)]
    replica_set: String,
    /// `host:port` reported in `hello` (defaults to the bound address).
    #[arg(long, env = "EMBEDDED_DB_ADVERTISE")]
    advertise: Option<String>,
    /// Connections served at once; beyond it new ones are accepted and closed at once (logged
    /// at most once a second).
    #[arg(
        long,
        env = "EMBEDDED_DB_MAX_CONNECTIONS",
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..),
    )]
    max_connections: usize,
    /// Milliseconds a client has to read a reply whole; a connection whose reply is still
    /// unread then is closed (logged), freeing its slot.
    #[arg(
        long,
        env = "EMBEDDED_DB_WRITE_TIMEOUT_MS",
        default_value_t = DEFAULT_WRITE_TIMEOUT.as_millis() as u64,
        value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..),
    )]
    write_timeout_ms: u64,
    /// Enable test commands (`configureFailPoint`) for driver test suites; never in production.
    /// As a variable: `1`/`true` on, `0`/`false` off.
    #[arg(
        long,
        env = "EMBEDDED_DB_TEST_COMMANDS",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    enable_test_commands: bool,
}

// The server runs on a runtime of its own; this one only waits for the shutdown signal.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "embedded_db=info".into()),
        )
        .init();
    let args = Args::parse();
    let config = Config {
        history: args.history,
        replica_set: args.replica_set,
        advertised_host: args.advertise,
        max_connections: args.max_connections,
        write_timeout: Duration::from_millis(args.write_timeout_ms),
        enable_test_commands: args.enable_test_commands,
        ..Config::new(args.addr, args.path)
    };
    let server = match Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            match e {
                embedded_db::StartError::Bind { .. } => {
                    eprintln!("embedded-db: {e} (EMBEDDED_DB_ADDR)");
                }
                embedded_db::StartError::Storage { .. } => {
                    eprintln!("embedded-db: {e} (EMBEDDED_DB_PATH)");
                }
                // The binary opens no private socket; the arm keeps the match exhaustive.
                embedded_db::StartError::Runtime { .. }
                | embedded_db::StartError::Private { .. } => {
                    eprintln!("embedded-db: {e}");
                }
            }
            return ExitCode::FAILURE;
        }
    };
    embedded_db::shutdown_signal().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}
