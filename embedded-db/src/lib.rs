//! `embedded-db`: a MongoDB-wire-compatible database server with change
//! streams, durable on disk, that the official drivers (Rust `mongodb`, Node
//! `mongodb` as used by `mongosh` and mongoose, `pymongo`) use unchanged.
//!
//! It answers as a single-node replica set, so `watch()` works as on a real
//! deployment. Start it in-process with [`Server::start`], or run the
//! `embedded-db` binary.
//!
//! ```no_run
//! # async fn demo() -> Result<(), embedded_db::StartError> {
//! let config = embedded_db::Config::new("127.0.0.1:0".parse().expect("address"), "./data/db");
//! let server = embedded_db::Server::start(config).await?;
//! println!("connect to {}", server.uri());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! The data path, from socket to disk; each module names only modules listed after it
//! (`docs/architecture.md` has the rules, `tests/layering.rs` tests them):
//!
//! - `server`: the server's own runtime, the listeners (the TCP port and an optional private
//!   Unix socket for the embedding application's pool), each with its own connection limit,
//!   one task per connection, shutdown.
//! - `connection`: a socket with a read buffer, reading whole frames within the frame timeout.
//! - `cmd`: the dispatch table (`cmd.rs`) over the commands, one file per area (`read`,
//!   `write/` one file per write command, `catalog`, `aggregate`, `admin`, `explain`,
//!   `fail_point` for `configureFailPoint`), which share `args` (reading arguments),
//!   `reply` (cursor replies) and `generic_args` (`maxTimeMS`, `readConcern`, `writeConcern`).
//! - `scan`: the read phase every command shares: matching documents from one snapshot.
//! - `db`: the state every connection shares (storage, cursors, counters, fail points).
//! - `fail_point`: the fail points' state and effects.
//! - `cursor`: open cursors between `getMore`s.
//! - `changes`: change streams, resume tokens and event documents.
//! - `query`: filters, projections, sorting, update operators (`update/`: parsing,
//!   positional paths, application, array operators), aggregation stages; no I/O.
//! - `storage`: the redb tables (`schema`), the change log (`changelog`), snapshot reads
//!   (`read`), transactional writes (`write`) and the group-commit writer thread (`writer`).
//! - `limits`: what one request may cost: `maxTimeMS` deadlines, memory budgets, batch
//!   sizes, thread stacks.
//! - `command_names`: the names of the commands and their aliases (no behaviour).
//! - [`wire`]: bytes ↔ OP_MSG / OP_QUERY requests and OP_MSG / OP_REPLY replies (no I/O).
//! - `keys`: the order-preserving key encoding behind `_id` and unique indexes.
//! - `namespace`: `db.collection` names and their rules.
//! - [`error`]: MongoDB error codes and error documents.

mod changes;
mod cmd;
mod command_names;
mod connection;
mod cursor;
mod db;
pub mod error;
mod fail_point;
mod keys;
mod limits;
mod namespace;
mod query;
mod scan;
mod server;
mod storage;
pub mod wire;

pub use server::{
    Config, Server, StartError, DEFAULT_ADDR, DEFAULT_FRAME_TIMEOUT, DEFAULT_HISTORY,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_PATH, DEFAULT_REPLICA_SET, DEFAULT_WRITE_TIMEOUT,
};

#[doc(hidden)]
pub use query::update::UPDATE_OPERATORS;

/// Resolves on Ctrl-C or SIGTERM: the shutdown trigger of the `embedded-db` binary (the web
/// server has its own, in `server/src/shutdown.rs`).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
