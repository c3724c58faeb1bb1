//! The listeners: accept connections on the TCP port and, for the embedding application's
//! own pool, on an optional private Unix socket, each under a connection limit of its own; run
//! one task per connection; and shut down (stop accepting, end every connection at its next
//! await point — a command in flight is cancelled and gets no reply —, let the writer commit
//! what it was given, close the data files, remove the private socket's directory).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::cmd::{self, Reply};
use crate::connection::{ConnError, Connection};
use crate::cursor::{Cursors, IDLE_TIMEOUT};
use crate::db::{ConnInfo, Db, Gate, ServerInfo};
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
    /// Connections served at once on the TCP port. Beyond it a new connection is accepted and
    /// closed at once, as `mongod` does, and a warning is logged at most once a second.
    pub max_connections: usize,
    /// Connections served at once on a private Unix socket, which only the embedding
    /// application can reach (see [`Server::private_uri`]); 0 (the default) opens no private
    /// socket. The private socket has the same deadlines and the same refusal past its limit
    /// as the TCP port, and the two limits are counted apart: outside clients filling the TCP
    /// port never take a private slot, nor the reverse. Unix only; elsewhere there is no
    /// private socket and a warning says so.
    pub private_connections: usize,
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
            private_connections: 0,
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
    /// The private socket could not be made: its directory under the system's temporary
    /// directory (`TMPDIR` on Unix) could not be created, the socket's path is too long for a
    /// socket address (about 100 bytes) or is not UTF-8 (a connection string holds text).
    #[error("cannot create the private socket under {path}: {source}")]
    Private {
        /// The parent directory.
        path: String,
        /// The cause.
        source: std::io::Error,
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
    /// The private socket's directory, removed when dropped (after the listener has closed,
    /// on [`Server::shutdown`]).
    private: Option<private::Socket>,
    /// `None` once shut down.
    runtime: Option<Runtime>,
}

impl Server {
    /// Opens the data directory, binds the address (and the private socket, if asked for),
    /// starts the server's runtime and serves.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let bind_error = |source| StartError::Bind {
            addr: config.addr,
            source,
        };
        let listener = std::net::TcpListener::bind(config.addr).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let (private, private_listener) = private::bind(config.private_connections)?.unzip();
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
        let (listener, private_listener) = {
            // Registers the sockets with the server's runtime, not the caller's.
            let _runtime = runtime.enter();
            let private_listener = match (&private, private_listener) {
                (Some(socket), Some(listener)) => Some(socket.listen(listener)?),
                _ => None,
            };
            (
                TcpListener::from_std(listener).map_err(bind_error)?,
                private_listener,
            )
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
                test_commands: config.enable_test_commands,
            },
            tcp: Gate::new(config.max_connections),
            private: Gate::new(if private.is_some() {
                config.private_connections
            } else {
                0
            }),
            connections_created: 0.into(),
            opcounters: crate::db::OpCounters::default(),
            stage_counters: crate::db::StageCounters::default(),
            fail_points: FailPoints::default(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let timeouts = Timeouts {
            frame: config.frame_timeout,
            write: config.write_timeout,
        };
        let private_limit = db.private.limit;
        let task = runtime.spawn(accept_loop(
            listener,
            private_listener,
            db,
            timeouts,
            shutdown_rx,
        ));
        tracing::info!(
            %addr,
            path = %config.path.display(),
            max_connections = config.max_connections,
            private_connections = private_limit,
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
            private,
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

    /// A connection string for the private socket, when there is one
    /// ([`Config::private_connections`] above 0, on Unix): the socket's path percent-encoded
    /// (ending in `.sock`, which is how drivers tell a socket from a host name), with
    /// `directConnection=true`. The socket lives in a fresh directory under the system's
    /// temporary directory that only this process's user may enter (mode 0700), removed on
    /// shutdown. `hello` on it names the TCP host as the replica set's member, as on the TCP
    /// port; under `directConnection` drivers ignore that, whereas `?replicaSet=` discovery
    /// would move a driver to the TCP port, so use the string as given.
    pub fn private_uri(&self) -> Option<String> {
        self.private.as_ref().map(|socket| socket.uri().to_owned())
    }

    /// The replica-set name, for `?replicaSet=` connection strings.
    pub fn replica_set(&self) -> &str {
        &self.replica_set
    }

    /// Stops accepting, ends every connection at its next await point (a command in flight
    /// is cancelled and gets no reply; a write already handed to the writer still commits),
    /// closes the data files after every acknowledged write, stops the server's threads and
    /// removes the private socket's directory. Awaitable from any runtime; it never blocks the
    /// caller's thread.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.task).await;
        if let Some(runtime) = self.runtime.take() {
            dispose(runtime).await;
        }
        // The listener closed with the accept loop; now the socket file and its directory go.
        drop(self.private.take());
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

/// The private socket: a Unix socket in a fresh directory that only this process's user may
/// enter, so only the embedding application (or that user) can take its connections.
#[cfg(unix)]
mod private {
    use std::fs::Permissions;
    use std::io;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::StartError;

    /// The socket's name in its directory; drivers take a host ending in `.sock` for a socket
    /// path. Short, as the directory's name is: a socket's path holds about 100 bytes at most.
    const SOCKET_NAME: &str = "db.sock";
    /// What `whatsmyuri` and the log lines name as the peer of a private connection (a peer
    /// on a Unix socket has no address).
    const PEER: &str = "private socket";

    /// The socket as bound, before it is registered with the server's runtime.
    pub(super) type StdListener = std::os::unix::net::UnixListener;
    /// A private connection.
    pub(super) type Stream = tokio::net::UnixStream;

    /// The private socket's directory (mode 0700) and connection string. Dropping it removes
    /// the directory and the socket file in it.
    #[derive(Debug)]
    pub(super) struct Socket {
        dir: tempfile::TempDir,
        uri: String,
    }

    /// The listening private socket, on the server's runtime.
    #[derive(Debug)]
    pub(super) struct Listener(tokio::net::UnixListener);

    /// Creates the directory and binds the socket in it, when `limit` is above 0.
    pub(super) fn bind(limit: usize) -> Result<Option<(Socket, StdListener)>, StartError> {
        if limit == 0 {
            return Ok(None);
        }
        let parent = std::env::temp_dir();
        let error = |source| StartError::Private {
            path: parent.display().to_string(),
            source,
        };
        // Created with the mode, never widened afterwards, so no other user can ever reach
        // the socket.
        let dir = tempfile::Builder::new()
            .prefix("edb-")
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(&parent)
            .map_err(error)?;
        let path = dir.path().join(SOCKET_NAME);
        let uri = uri(&path).ok_or_else(|| {
            error(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the socket path {} is not UTF-8", path.display()),
            ))
        })?;
        let listener = StdListener::bind(&path).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        Ok(Some((Socket { dir, uri }, listener)))
    }

    /// A `mongodb://` connection string for the socket at `path`: the path percent-encoded
    /// (every byte but letters, digits and `-._~`), with `directConnection=true`; `None` when
    /// the path is not UTF-8.
    fn uri(path: &Path) -> Option<String> {
        let mut host = String::new();
        for byte in path.to_str()?.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                host.push(char::from(byte));
            } else {
                host.push_str(&format!("%{byte:02X}"));
            }
        }
        Some(format!("mongodb://{host}/?directConnection=true"))
    }

    impl Socket {
        /// The connection string ([`super::Server::private_uri`]).
        pub(super) fn uri(&self) -> &str {
            &self.uri
        }

        /// Registers `listener` with the runtime entered by the caller.
        pub(super) fn listen(&self, listener: StdListener) -> Result<Listener, StartError> {
            tokio::net::UnixListener::from_std(listener)
                .map(Listener)
                .map_err(|source| StartError::Private {
                    path: self.dir.path().display().to_string(),
                    source,
                })
        }
    }

    impl Listener {
        /// The next connection, with the name its peer goes by.
        pub(super) async fn accept(&self) -> io::Result<(Stream, String)> {
            let (stream, _) = self.0.accept().await?;
            Ok((stream, PEER.to_owned()))
        }
    }
}

/// No private socket off Unix: the embedding application connects over TCP.
#[cfg(not(unix))]
mod private {
    use super::StartError;

    /// Never made.
    #[derive(Debug)]
    pub(super) enum StdListener {}
    /// A stand-in: no private connection is ever accepted.
    pub(super) type Stream = tokio::net::TcpStream;
    /// Never made.
    #[derive(Debug)]
    pub(super) enum Socket {}
    /// Never made.
    #[derive(Debug)]
    pub(super) enum Listener {}

    /// No private socket; a warning when one was asked for.
    pub(super) fn bind(limit: usize) -> Result<Option<(Socket, StdListener)>, StartError> {
        if limit > 0 {
            tracing::warn!(
                private_connections = limit,
                "no private socket on this platform: the application's own pool shares the TCP port"
            );
        }
        Ok(None)
    }

    impl Socket {
        pub(super) fn uri(&self) -> &str {
            match *self {}
        }

        pub(super) fn listen(&self, _: StdListener) -> Result<Listener, StartError> {
            match *self {}
        }
    }

    impl Listener {
        pub(super) async fn accept(&self) -> std::io::Result<(Stream, String)> {
            match *self {}
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

fn log_refused(refused: u64, port: Port, limit: usize) {
    tracing::warn!(
        refused,
        listener = port.name(),
        limit,
        "connections refused: the connection limit is reached"
    );
}

/// The listener a connection came in on; each has a [`Gate`] of its own.
#[derive(Debug, Clone, Copy)]
enum Port {
    /// The TCP port (outside clients).
    Tcp,
    /// The private socket (the embedding application's pool).
    Private,
}

impl Port {
    /// This listener's limit and counts.
    fn gate(self, db: &Db) -> &Gate {
        match self {
            Self::Tcp => &db.tcp,
            Self::Private => &db.private,
        }
    }

    /// The listener's name in log lines.
    fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Private => "private",
        }
    }
}

/// A served connection's place in its listener's [`Gate`], given back when dropped (whether
/// the connection ended, failed or was aborted).
#[derive(Debug)]
struct Slot {
    db: Arc<Db>,
    port: Port,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.port
            .gate(&self.db)
            .current
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Admission on one listener: its limit, and the log of its refusals.
#[derive(Debug)]
struct Admission {
    port: Port,
    refusals: RefusalLog,
}

impl Admission {
    fn new(port: Port) -> Self {
        Self {
            port,
            refusals: RefusalLog::default(),
        }
    }

    /// A slot for a connection just accepted, or `None` at the listener's limit: the caller
    /// then drops the connection, so it is accepted and closed at once, as `mongod` does (the
    /// client sees the connection end and tries again later), never left in the backlog.
    fn admit(&mut self, db: &Arc<Db>) -> Option<Slot> {
        let gate = self.port.gate(db);
        // Only the accept loop raises the count, so checking and raising cannot race.
        if gate.current.load(Ordering::Relaxed) >= gate.limit {
            gate.rejected.fetch_add(1, Ordering::Relaxed);
            if let Some(refused) = self.refusals.refused(Instant::now()) {
                log_refused(refused, self.port, gate.limit);
            }
            return None;
        }
        gate.current.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            db: Arc::clone(db),
            port: self.port,
        })
    }

    /// Logs the refusals due by now, if any.
    fn flush(&mut self, db: &Db) {
        if let Some(refused) = self.refusals.flush(Instant::now()) {
            log_refused(refused, self.port, self.port.gate(db).limit);
        }
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

/// The connection tasks, and what each is started with.
#[derive(Debug)]
struct Tasks {
    set: JoinSet<()>,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
}

impl Tasks {
    /// Serves `stream` in a task of its own, holding `slot` until it ends.
    fn serve<S>(&mut self, stream: S, peer: String, slot: Slot)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let id = slot.db.connections_created.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = ConnInfo::new(id, peer);
        let task = serve(stream, conn, slot, self.timeouts, self.shutdown.clone());
        self.set.spawn(task);
    }
}

/// The next connection on the private socket; never resolves when there is none.
async fn accept_private(
    listener: Option<&private::Listener>,
) -> std::io::Result<(private::Stream, String)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_loop(
    listener: TcpListener,
    private_listener: Option<private::Listener>,
    db: Arc<Db>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = Tasks {
        set: JoinSet::new(),
        timeouts,
        shutdown: shutdown.clone(),
    };
    let mut reaper = tokio::time::interval(Duration::from_secs(60));
    let mut tcp = Admission::new(Port::Tcp);
    let mut private = Admission::new(Port::Private);
    loop {
        let log_due = tcp
            .refusals
            .due_at()
            .into_iter()
            .chain(private.refusals.due_at())
            .min();
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = tcp.admit(&db) else { continue };
                    // Replies are small and latency matters more than packet count.
                    let _ = stream.set_nodelay(true);
                    connections.serve(stream, peer.to_string(), slot);
                }
                Err(e) => accept_failed(Port::Tcp, &e).await,
            },
            accepted = accept_private(private_listener.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = private.admit(&db) else { continue };
                    connections.serve(stream, peer, slot);
                }
                Err(e) => accept_failed(Port::Private, &e).await,
            },
            () = tokio::time::sleep_until(log_due.unwrap_or_else(Instant::now).into()), if log_due.is_some() => {
                tcp.flush(&db);
                private.flush(&db);
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
                while connections.set.try_join_next().is_some() {}
            }
            _ = shutdown.changed() => break,
        }
    }
    drop((listener, private_listener));
    let mut connections = connections.set;
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

/// Out of file descriptors and the like: logs, then backs off instead of spinning.
async fn accept_failed(port: Port, e: &std::io::Error) {
    tracing::warn!(listener = port.name(), cause = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    conn: ConnInfo,
    slot: Slot,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let db = &slot.db;
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

async fn serve_requests<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut Connection<S>,
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
