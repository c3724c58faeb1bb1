//! The listener: accepts connections, runs one task per connection, and shuts
//! down (stop accepting, end every connection at its next await point — a command in
//! flight is cancelled and gets no reply —, let the writer commit what it was given, close
//! the data files).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::cmd::{self, Reply};
use crate::connection::{ConnError, Connection};
use crate::cursor::{Cursors, IDLE_TIMEOUT};
use crate::db::{ConnInfo, Db, ServerInfo};
use crate::fail_point::FailPoints;
use crate::limits::THREAD_STACK_SIZE;
use crate::storage::{Store, StoreError};
use crate::wire::{self, Message};

/// Default listen address (`EMBEDDED_DB_ADDR`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:27017";
/// Default data directory (`EMBEDDED_DB_PATH`).
pub const DEFAULT_PATH: &str = "./data/db";
/// Default number of change-log entries kept for resuming change streams.
pub const DEFAULT_HISTORY: u64 = 100_000;
/// Default replica-set name.
pub const DEFAULT_REPLICA_SET: &str = "rs0";
/// Default limit of connections served at once (`EMBEDDED_DB_MAX_CONNECTIONS`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_000;
/// Default time a message may take to arrive once its first byte is in.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a client has to read a reply whole (`EMBEDDED_DB_WRITE_TIMEOUT_MS`).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Threads of the blocking pool at most (each with a [`THREAD_STACK_SIZE`] stack); further
/// storage reads wait for a free one.
const MAX_BLOCKING_THREADS: usize = 64;
/// How long shutdown waits for connection tasks to end (each ends at its next await point,
/// cancelling a command in flight) and for the runtime's threads to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Refused connections are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Data directory, created if missing.
    pub path: PathBuf,
    /// Change-log entries kept (the resumable window of change streams).
    pub history: u64,
    /// Replica-set name reported in `hello` (`setName`).
    pub replica_set: String,
    /// `host:port` reported in `hello` `hosts`; defaults to the bound address
    /// (with `127.0.0.1` for an unspecified IP), which is what a local client dials.
    pub advertised_host: Option<String>,
    /// Connections served at once. Beyond it a new connection is accepted and closed at once,
    /// as `mongod` does, and a warning is logged at most once a second.
    pub max_connections: usize,
    /// Time a message may take to arrive once its first byte is in; a connection that
    /// exceeds it is closed. Idle time between messages is not limited.
    pub frame_timeout: Duration,
    /// Time a client has to read a reply whole, counted from the start of writing it; a
    /// connection whose reply is still unread then is closed with a log line, which frees its
    /// slot under `max_connections` and the reply's memory.
    pub write_timeout: Duration,
    /// Enables test commands (`configureFailPoint`) and says so in `getParameter`
    /// (`enableTestCommands`). Off by default, as in `mongod`: never for production.
    pub enable_test_commands: bool,
}

impl Config {
    /// Defaults for everything but the address and the data directory.
    pub fn new(addr: SocketAddr, path: impl Into<PathBuf>) -> Self {
        Self {
            addr,
            path: path.into(),
            history: DEFAULT_HISTORY,
            replica_set: DEFAULT_REPLICA_SET.to_owned(),
            advertised_host: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            enable_test_commands: false,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory or database file could not be used.
    #[error("cannot open data directory {path}: {reason}")]
    Storage {
        /// The data directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The server's threads could not be started (the system refused to create threads).
    #[error("cannot start the database threads: {source}")]
    Runtime {
        /// The cause.
        source: std::io::Error,
    },
}

/// A running server.
///
/// It runs on a runtime of its own (threads named `embedded-db`, [`THREAD_STACK_SIZE`]
/// stacks), never on the caller's threads, so an application's `#[tokio::main]` or a test's
/// runtime only awaits it.
///
/// Call [`Server::shutdown`] to stop it gracefully. Dropping a `Server` without that stops it
/// abruptly instead, without blocking and without panicking (also inside an async context):
/// the listener closes, open connections are cut at their next await point without waiting
/// for their command, and the runtime's threads wind down in the background. Acknowledged
/// writes are durable either way (a write is acknowledged only once committed); the data file
/// is closed asynchronously once the writer thread has finished the writes already queued, so
/// reopening the same directory right after a drop may find it still in use.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    replica_set: String,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// `None` once shut down.
    runtime: Option<Runtime>,
}

impl Server {
    /// Opens the data directory, binds the address, starts the server's runtime and serves.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let bind_error = |source| StartError::Bind {
            addr: config.addr,
            source,
        };
        let listener = std::net::TcpListener::bind(config.addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let store = Store::open(&config.path, config.history).map_err(|e| StartError::Storage {
            path: config.path.display().to_string(),
            reason: match e {
                StoreError::Directory { source, .. } => source.to_string(),
                StoreError::Database(reason) => reason,
            },
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().max(2)))
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("embedded-db")
            .thread_stack_size(THREAD_STACK_SIZE)
            .enable_all()
            .build()
            .map_err(|source| StartError::Runtime { source })?;
        let listener = {
            // Registers the socket with the server's runtime, not the caller's.
            let _runtime = runtime.enter();
            TcpListener::from_std(listener).map_err(bind_error)?
        };
        let host = config.advertised_host.clone().unwrap_or_else(|| {
            let ip = if addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                addr.ip().to_string()
            };
            format!("{ip}:{}", addr.port())
        });
        let db = Arc::new(Db {
            store,
            cursors: Cursors::default(),
            info: ServerInfo {
                replica_set: config.replica_set.clone(),
                host,
                port: addr.port(),
                bind_ip: addr.ip().to_string(),
                path: config.path.clone(),
                started: Instant::now(),
                max_connections: config.max_connections,
                test_commands: config.enable_test_commands,
            },
            connections: 0.into(),
            connections_created: 0.into(),
            connections_rejected: 0.into(),
            opcounters: crate::db::OpCounters::default(),
            stage_counters: crate::db::StageCounters::default(),
            fail_points: FailPoints::default(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let timeouts = Timeouts {
            frame: config.frame_timeout,
            write: config.write_timeout,
        };
        let task = runtime.spawn(accept_loop(listener, db, timeouts, shutdown_rx));
        tracing::info!(
            %addr,
            path = %config.path.display(),
            max_connections = config.max_connections,
            test_commands = config.enable_test_commands,
            "embedded-db listening"
        );
        if config.enable_test_commands {
            tracing::warn!("test commands are enabled: configureFailPoint can fail any command");
        }
        Ok(Self {
            addr,
            replica_set: config.replica_set,
            shutdown,
            task,
            runtime: Some(runtime),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string for this server (`directConnection=true`, so no DNS or host
    /// matching is involved).
    pub fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.addr)
    }

    /// The replica-set name, for `?replicaSet=` connection strings.
    pub fn replica_set(&self) -> &str {
        &self.replica_set
    }

    /// Stops accepting, ends every connection at its next await point (a command in flight
    /// is cancelled and gets no reply; a write already handed to the writer still commits),
    /// closes the data files after every acknowledged write, and stops the server's threads. Awaitable from any runtime; it never blocks the caller's thread.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
        if let Some(runtime) = self.runtime.take() {
            dispose(runtime).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            let _ = self.shutdown.send(true);
            // Never blocks, so it cannot panic inside an async context as dropping would.
            runtime.shutdown_background();
        }
    }
}

/// Stops `runtime` on a plain thread, where waiting for its blocking pool (storage reads still
/// running) is allowed, and resolves once it has; dropping a runtime inside an async context
/// would panic.
async fn dispose(runtime: Runtime) {
    let slot = Arc::new(Mutex::new(Some(runtime)));
    let take =
        |slot: &Mutex<Option<Runtime>>| slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    let (done, stopped) = oneshot::channel();
    let for_thread = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("embedded-db-stop".into())
        .spawn(move || {
            if let Some(runtime) = take(&for_thread) {
                runtime.shutdown_timeout(DRAIN_TIMEOUT);
            }
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = stopped.await;
        }
        Err(e) => {
            tracing::warn!(cause = %e, "cannot start a thread to stop the runtime; stopping it in the background");
            if let Some(runtime) = take(&slot) {
                runtime.shutdown_background();
            }
        }
    }
}

/// Rate limit of the "connection refused" warning: at most one line per
/// [`REFUSAL_LOG_INTERVAL`], each carrying how many connections were refused since the last.
#[derive(Debug, Default)]
struct RefusalLog {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Refusals not yet logged.
    pending: u64,
}

impl RefusalLog {
    /// Notes one refusal at `now`; returns the count to log now, if a line is due.
    fn refused(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        self.flush(now)
    }

    /// The count to log at `now`, if refusals are pending and a line is due.
    fn flush(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_INTERVAL);
        if self.pending == 0 || !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }

    /// When pending refusals are due to be logged, if any are pending.
    fn due_at(&self) -> Option<Instant> {
        if self.pending == 0 {
            return None;
        }
        Some(
            self.last
                .map_or_else(Instant::now, |last| last + REFUSAL_LOG_INTERVAL),
        )
    }
}

fn log_refused(refused: u64, max_connections: usize) {
    tracing::warn!(
        refused,
        max_connections,
        "connections refused: the connection limit is reached"
    );
}

/// A served connection's place in [`Db::connections`], given back when dropped (whether the
/// connection ended, failed or was aborted).
#[derive(Debug)]
struct Slot(Arc<Db>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The per-connection deadlines of [`Config`].
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// [`Config::frame_timeout`].
    frame: Duration,
    /// [`Config::write_timeout`].
    write: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    db: Arc<Db>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut reaper = tokio::time::interval(Duration::from_secs(60));
    let mut refusals = RefusalLog::default();
    let max_connections = db.info.max_connections;
    loop {
        let log_due = refusals.due_at();
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Only this loop raises the count, so checking and raising cannot race.
                    if db.connections.load(Ordering::Relaxed) >= max_connections {
                        // Accepted and closed at once, as mongod does: the client sees the
                        // connection end and tries again later.
                        drop(stream);
                        db.connections_rejected.fetch_add(1, Ordering::Relaxed);
                        if let Some(refused) = refusals.refused(Instant::now()) {
                            log_refused(refused, max_connections);
                        }
                        continue;
                    }
                    db.connections.fetch_add(1, Ordering::Relaxed);
                    let slot = Slot(Arc::clone(&db));
                    let id = db.connections_created.fetch_add(1, Ordering::Relaxed) + 1;
                    let conn = ConnInfo::new(id, peer.to_string());
                    connections.spawn(serve(stream, conn, slot, timeouts, shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = tokio::time::sleep_until(log_due.unwrap_or_else(Instant::now).into()), if log_due.is_some() => {
                if let Some(refused) = refusals.flush(Instant::now()) {
                    log_refused(refused, max_connections);
                }
            }
            _ = reaper.tick() => {
                let closed = db.cursors.reap(IDLE_TIMEOUT);
                if closed > 0 {
                    tracing::debug!(closed, "closed idle cursors");
                }
                let store = db.store.clone();
                tokio::spawn(async move {
                    match store.write(|ctx| ctx.expire_sessions()).await {
                        Ok(0) => {}
                        Ok(expired) => tracing::debug!(expired, "forgot expired retryable-write sessions"),
                        Err(e) => tracing::warn!(cause = %e, "cannot expire sessions"),
                    }
                });
                while connections.try_join_next().is_some() {}
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    db.store.close().await;
    tracing::info!("embedded-db stopped");
}

async fn serve(
    stream: TcpStream,
    conn: ConnInfo,
    slot: Slot,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let db = &slot.0;
    // Replies are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let mut connection = Connection::new(stream, timeouts.frame, timeouts.write);
    tracing::debug!(connection_id = conn.id, peer = %conn.peer, "connection accepted");
    let result = tokio::select! {
        result = serve_requests(&mut connection, db, &conn) => result,
        _ = shutdown.wait_for(|stop| *stop) => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(connection_id = conn.id, peer = %conn.peer, cause = %e, "closing connection");
    }
    tracing::debug!(connection_id = conn.id, peer = %conn.peer, "connection closed");
}

async fn serve_requests(
    connection: &mut Connection,
    db: &Arc<Db>,
    conn: &ConnInfo,
) -> Result<(), ConnError> {
    let mut reply_id: i32 = 0;
    while let Some(request) = connection.read_message().await? {
        reply_id = reply_id.wrapping_add(1);
        let response_to = request.request_id();
        // OP_MSG is answered with OP_MSG, the legacy OP_QUERY handshake with OP_REPLY.
        let (reply, op_msg, more_to_come) = match request {
            Message::Msg(msg) => (
                cmd::execute(db, conn, msg.body).await,
                true,
                msg.more_to_come,
            ),
            Message::Query(query) => (cmd::execute_legacy(db, conn, &query).await, false, false),
        };
        let reply = match reply {
            Reply::Document(reply) => reply,
            Reply::Close => {
                tracing::info!(
                    connection_id = conn.id,
                    "closing connection for the failCommand fail point"
                );
                return Ok(());
            }
        };
        if more_to_come {
            // The client asked for no reply (w:0); sending one would shift every later
            // response by one.
            continue;
        }
        let bytes = if op_msg {
            wire::encode_msg(reply_id, response_to, &reply)
        } else {
            wire::encode_reply(reply_id, response_to, &reply)
        };
        match bytes {
            Ok(bytes) => connection.write_reply(&bytes).await?,
            Err(e) => {
                // A reply too large to send: tell the client with an error document instead.
                tracing::warn!(cause = %e, "reply could not be encoded");
                let error = crate::error::CommandError::new(
                    crate::error::ErrorCode::BsonObjectTooLarge,
                    "reply exceeds the maximum message size",
                )
                .to_reply();
                let bytes = wire::encode_msg(reply_id, response_to, &error)?;
                connection.write_reply(&bytes).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first refusal is logged at once; later ones within the interval are counted and
    /// logged together once it has passed.
    #[test]
    fn refusals_are_logged_at_most_once_a_second() {
        let start = Instant::now();
        let mut log = RefusalLog::default();
        assert_eq!(log.due_at(), None, "nothing pending");
        assert_eq!(log.refused(start), Some(1));
        let soon = start + Duration::from_millis(300);
        assert_eq!(log.refused(soon), None);
        assert_eq!(log.refused(soon), None);
        assert_eq!(log.due_at(), Some(start + REFUSAL_LOG_INTERVAL));
        assert_eq!(log.flush(soon), None, "not due yet");
        assert_eq!(log.flush(start + REFUSAL_LOG_INTERVAL), Some(2));
        assert_eq!(log.due_at(), None);
        let later = start + 3 * REFUSAL_LOG_INTERVAL;
        assert_eq!(log.refused(later), Some(1));
    }
}
