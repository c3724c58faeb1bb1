//! The state every connection shares: storage, cursors and what the server
//! says about itself in `hello`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::OnceLock;
use std::time::Instant;

use crate::cursor::Cursors;
use crate::fail_point::FailPoints;
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
    /// The TCP port's connections (outside clients), under `Config::max_connections`.
    pub(crate) tcp: Gate,
    /// The private socket's connections (the embedding application's own pool), under
    /// `Config::private_connections`; never counted against the TCP port's limit, nor the
    /// TCP port's against this one. A limit of 0 when there is no private socket.
    pub(crate) private: Gate,
    /// Connections served since start, on either listener; also the source of `connectionId`s.
    pub(crate) connections_created: AtomicU64,
    /// Commands served, by kind (`serverStatus.opcounters`).
    pub(crate) opcounters: OpCounters,
    /// Pipeline stages run, by name (`serverStatus.metrics.aggStageCounters`).
    pub(crate) stage_counters: StageCounters,
    /// Test hooks set by `configureFailPoint`; all off unless a test turns one on.
    pub(crate) fail_points: FailPoints,
}

impl Db {
    /// Whether the `maxTimeAlwaysTimeOut` fail point is on: a command with `maxTimeMS` must then
    /// fail with `MaxTimeMSExpired` (50) at its first deadline check. Each `true` consumes one
    /// of the point's `times`; while no fail point is on this is a single atomic load.
    pub(crate) fn max_time_always_times_out(&self) -> bool {
        self.fail_points.max_time_always_times_out()
    }
}

/// One listener's connection limit and counts.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Connections served at once at most.
    pub(crate) limit: usize,
    /// Connections served now. Only the accept loop raises it, and only below `limit`, so it
    /// never exceeds the limit; each connection lowers it when it ends, however it ends.
    pub(crate) current: AtomicUsize,
    /// Connections refused since start because `limit` were open.
    pub(crate) rejected: AtomicU64,
}

impl Gate {
    /// No connection yet, at most `limit` at once.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            current: 0.into(),
            rejected: 0.into(),
        }
    }
}

/// `serverStatus.opcounters`: how many commands of each kind were served, as `mongod` counts
/// them (documents are not counted; a batch insert counts once per document, as in mongod).
#[derive(Debug, Default)]
pub(crate) struct OpCounters {
    /// Documents inserted by `insert` commands.
    pub(crate) insert: AtomicU64,
    /// `find` commands.
    pub(crate) query: AtomicU64,
    /// `update` statements.
    pub(crate) update: AtomicU64,
    /// `delete` statements.
    pub(crate) delete: AtomicU64,
    /// `getMore` commands.
    pub(crate) getmore: AtomicU64,
    /// Every other command.
    pub(crate) command: AtomicU64,
}

impl OpCounters {
    /// Counts one command named `name` with `body`.
    pub(crate) fn count(&self, name: &str, body: &bson::Document) {
        let batch = |key: &str| body.get_array(key).map_or(1, |a| a.len() as u64);
        let (counter, n) = match name {
            "insert" => (&self.insert, batch("documents")),
            "find" => (&self.query, 1),
            "update" => (&self.update, batch("updates")),
            "delete" => (&self.delete, batch("deletes")),
            "getMore" => (&self.getmore, 1),
            _ => (&self.command, 1),
        };
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The `opcounters` document.
    pub(crate) fn to_document(&self) -> bson::Document {
        let get = |c: &AtomicU64| {
            i64::try_from(c.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(i64::MAX)
        };
        bson::doc! {
            "insert": get(&self.insert),
            "query": get(&self.query),
            "update": get(&self.update),
            "delete": get(&self.delete),
            "getmore": get(&self.getmore),
            "command": get(&self.command),
        }
    }
}

/// Stages `aggStageCounters` reports, as mongod does: every stage the server runs, used or not.
const COUNTED_STAGES: &[&str] = &crate::query::aggregate::STAGE_NAMES;

/// `serverStatus.metrics.aggStageCounters`: how many accepted pipelines used each stage (a
/// change stream counts once when it is opened, not per `getMore`).
#[derive(Debug, Default)]
pub(crate) struct StageCounters {
    counts: [AtomicU64; COUNTED_STAGES.len()],
}

impl StageCounters {
    /// Counts one use of each stage of `pipeline` (stage documents; unknown names are skipped).
    pub(crate) fn count<'a>(&self, pipeline: impl IntoIterator<Item = &'a bson::Bson>) {
        for stage in pipeline {
            let name = stage.as_document().and_then(|d| d.keys().next());
            if let Some(i) = name.and_then(|n| COUNTED_STAGES.iter().position(|s| s == n)) {
                self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// The `aggStageCounters` document.
    pub(crate) fn to_document(&self) -> bson::Document {
        COUNTED_STAGES
            .iter()
            .zip(&self.counts)
            .map(|(name, count)| {
                let n = count.load(std::sync::atomic::Ordering::Relaxed);
                (
                    (*name).to_owned(),
                    bson::Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)),
                )
            })
            .collect()
    }
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
    /// Whether test commands (`configureFailPoint`) exist (`Config::enable_test_commands`).
    pub(crate) test_commands: bool,
}

/// One client connection, as commands see it.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    /// `connectionId` in `hello`.
    pub(crate) id: u64,
    /// The peer address (`whatsmyuri`).
    pub(crate) peer: String,
    /// `client.application.name` from the connection's first handshake that carried one; set
    /// once, never changed (drivers send client metadata only in their first `hello`).
    app_name: OnceLock<String>,
}

impl ConnInfo {
    /// A connection with no handshake yet.
    pub(crate) fn new(id: u64, peer: String) -> Self {
        Self {
            id,
            peer,
            app_name: OnceLock::new(),
        }
    }

    /// Records the application name from a handshake command (`hello`, `isMaster`,
    /// `ismaster`) before it runs, so that fail points filtered by `appName` apply to the
    /// handshake itself, as in `mongod`. Other commands are ignored.
    pub(crate) fn note_handshake(&self, command: &str, body: &bson::Document) {
        if crate::command_names::canonical(command) != "hello" || self.app_name.get().is_some() {
            return;
        }
        let name = body
            .get_document("client")
            .and_then(|client| client.get_document("application"))
            .and_then(|application| application.get_str("name"));
        if let Ok(name) = name {
            let _ = self.app_name.set(name.to_owned());
        }
    }

    /// The application name given in the handshake, if any.
    pub(crate) fn app_name(&self) -> Option<&str> {
        self.app_name.get().map(String::as_str)
    }
}
