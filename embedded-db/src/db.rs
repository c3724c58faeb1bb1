//! The state every connection shares: storage, cursors and what the server
//! says about itself in `hello`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Instant;

use crate::cursor::Cursors;
use crate::storage::Store;

/// Shared server state, behind an `Arc`.
#[derive(Debug)]
pub(crate) struct Db {
    /// Durable data and the change log.
    pub(crate) store: Store,
    /// Open cursors, shared by all connections (drivers `getMore` on any pooled connection).
    pub(crate) cursors: Cursors,
    /// Identity reported by `hello`, `buildInfo`, `getCmdLineOpts`.
    pub(crate) info: ServerInfo,
    /// Connections open now.
    pub(crate) connections: AtomicUsize,
    /// Connections accepted since start; also the source of `connectionId`s.
    pub(crate) connections_created: AtomicU64,
}

/// How the server describes itself.
#[derive(Debug, Clone)]
pub(crate) struct ServerInfo {
    /// Replica-set name (`setName`).
    pub(crate) replica_set: String,
    /// `host:port` in `hosts`, `me` and `primary`: what clients dial.
    pub(crate) host: String,
    /// The bound port.
    pub(crate) port: u16,
    /// The bound IP, as text.
    pub(crate) bind_ip: String,
    /// The data directory.
    pub(crate) path: PathBuf,
    /// When the server started.
    pub(crate) started: Instant,
}

/// One client connection, as commands see it.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// `connectionId` in `hello`.
    pub(crate) id: u64,
    /// The peer address (`whatsmyuri`).
    pub(crate) peer: String,
}
