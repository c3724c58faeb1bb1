//! Handshake and administrative commands: `hello`, `buildInfo`,
//! `getParameter`, `serverStatus` and the other commands drivers, `mongosh`
//! and Compass send to learn about the server.

use std::sync::atomic::Ordering;

use bson::{doc, Bson, Document};

use super::args::Request;
use crate::db::{ConnInfo, Db};
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::storage::timestamp_of;
use crate::wire::{MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_LEN, MAX_NESTING_DEPTH};

/// The MongoDB version this server answers as (wire version 21).
pub(super) const VERSION: &str = "7.0.14";
const VERSION_ARRAY: [i32; 4] = [7, 0, 14, 0];
const MAX_WIRE_VERSION: i32 = 21;
/// Announcing this makes drivers attach sessions (`lsid`) and allows retryable writes.
const SESSION_TIMEOUT_MINUTES: i32 = 30;

/// Implements `hello` / `isMaster` / `ismaster`: a single-node replica-set primary.
///
/// No `topologyVersion` (so drivers poll instead of expecting awaitable hello) and no
/// `compression` (so no driver sends OP_COMPRESSED).
pub(super) fn hello(db: &Db, conn: &ConnInfo, body: &Document, name: &str) -> Document {
    let host = db.info.host.as_str();
    let mut reply = Document::new();
    if body.get_bool("helloOk").unwrap_or(false) {
        reply.insert("helloOk", true);
    }
    if name == "hello" {
        reply.insert("isWritablePrimary", true);
    } else {
        reply.insert("ismaster", true);
    }
    let last = db.store.last_position();
    reply.extend(doc! {
        "setName": db.info.replica_set.as_str(),
        "hosts": [host],
        "primary": host,
        "me": host,
        "secondary": false,
        "maxBsonObjectSize": i32::try_from(MAX_BSON_OBJECT_SIZE).unwrap_or(i32::MAX),
        "maxMessageSizeBytes": i32::try_from(MAX_MESSAGE_LEN).unwrap_or(i32::MAX),
        "maxWriteBatchSize": 100_000,
        "localTime": bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": SESSION_TIMEOUT_MINUTES,
        "connectionId": i64::try_from(conn.id).unwrap_or(i64::MAX),
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
        "lastWrite": {
            "opTime": { "ts": timestamp_of(last), "t": 1_i64 },
            "lastWriteDate": bson::DateTime::now(),
        },
    });
    reply
}

/// Implements `buildInfo`.
pub(super) fn build_info() -> Document {
    doc! {
        "version": VERSION,
        "gitVersion": concat!("embedded-db-", env!("CARGO_PKG_VERSION")),
        "versionArray": VERSION_ARRAY.to_vec(),
        "modules": [],
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": i32::try_from(MAX_BSON_OBJECT_SIZE).unwrap_or(i32::MAX),
        "storageEngines": ["redb"],
        "openssl": { "running": "disabled" },
        "buildEnvironment": { "target_os": std::env::consts::OS, "target_arch": std::env::consts::ARCH },
    }
}

/// The parameters `getParameter` knows, with the values in force.
fn parameters(db: &Db) -> Document {
    doc! {
        "featureCompatibilityVersion": { "version": "7.0" },
        // Test suites (pymongo's, the unified runner) run their fail-point tests only when
        // this is true, so it says whether `configureFailPoint` exists.
        "enableTestCommands": db.info.test_commands,
        "authenticationMechanisms": [],
        "transactionLifetimeLimitSeconds": 60,
        "maxBSONDepth": i32::try_from(MAX_NESTING_DEPTH).unwrap_or(i32::MAX),
    }
}

/// Implements `getParameter` (`"*"`, or named parameters set to 1).
pub(super) fn get_parameter(db: &Db, req: &Request<'_>) -> CommandResult<Document> {
    let all = parameters(db);
    if matches!(req.value(), Bson::String(s) if s == "*") {
        return Ok(all);
    }
    let mut out = Document::new();
    for key in req.body.keys().skip(1) {
        if super::args::GENERIC_ARGUMENTS.contains(&key.as_str()) {
            continue;
        }
        if let Some(value) = all.get(key) {
            out.insert(key.clone(), value.clone());
        }
    }
    if out.is_empty() {
        return Err(CommandError::new(
            ErrorCode::InvalidOptions,
            "no option found to get",
        ));
    }
    Ok(out)
}

/// Implements `serverStatus` (the fields tools read). `connections` is the truth, counted
/// as `mongod` counts connections exempt from its limit: `current` connections served now on
/// either listener, `limitExempt` those of them on the private socket (the embedding
/// application's own pool, which has a limit of its own), `available` the TCP port's limit
/// minus its connections (what outside clients can still open), `totalCreated` connections
/// served since start, `rejected` connections refused at either listener's limit.
pub(super) fn server_status(db: &Db) -> Document {
    let uptime = db.info.started.elapsed();
    let tcp = db.tcp.current.load(Ordering::Relaxed);
    let private = db.private.current.load(Ordering::Relaxed);
    let rejected =
        db.tcp.rejected.load(Ordering::Relaxed) + db.private.rejected.load(Ordering::Relaxed);
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    doc! {
        "host": db.info.host.as_str(),
        "version": VERSION,
        "process": "mongod",
        "pid": i64::from(std::process::id()),
        "uptime": uptime.as_secs_f64().floor(),
        "uptimeMillis": i64::try_from(uptime.as_millis()).unwrap_or(i64::MAX),
        "uptimeEstimate": i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX),
        "localTime": bson::DateTime::now(),
        "connections": {
            "current": i64::try_from(tcp + private).unwrap_or(i64::MAX),
            "available": i64::try_from(db.tcp.limit.saturating_sub(tcp)).unwrap_or(i64::MAX),
            "limitExempt": i64::try_from(private).unwrap_or(i64::MAX),
            "totalCreated": count(db.connections_created.load(Ordering::Relaxed)),
            "rejected": count(rejected),
        },
        "opcounters": db.opcounters.to_document(),
        "metrics": { "cursor": {
            "open": { "total": i64::try_from(db.cursors.len()).unwrap_or(i64::MAX) },
            // Bytes of materialised results open cursors hold (embedded-db's own field).
            "materializedBytes": i64::try_from(db.cursors.held_bytes()).unwrap_or(i64::MAX),
        }, "aggStageCounters": db.stage_counters.to_document() },
        "storageEngine": { "name": "redb", "persistent": true },
        "repl": { "setName": db.info.replica_set.as_str(), "isWritablePrimary": true, "hosts": [db.info.host.as_str()] },
    }
}

/// Implements `getCmdLineOpts`.
pub(super) fn cmd_line_opts(db: &Db) -> Document {
    let argv: Vec<String> = std::env::args().collect();
    doc! {
        "argv": argv,
        "parsed": {
            "net": { "port": i32::from(db.info.port), "bindIp": db.info.bind_ip.as_str() },
            "replication": { "replSetName": db.info.replica_set.as_str() },
            "storage": { "dbPath": db.info.path.display().to_string() },
        },
    }
}

/// Implements `connectionStatus`: no authentication, so no users.
pub(super) fn connection_status(req: &Request<'_>) -> Document {
    let mut info = doc! { "authenticatedUsers": [], "authenticatedUserRoles": [] };
    if req.body.get_bool("showPrivileges").unwrap_or(false) {
        info.insert("authenticatedUserPrivileges", Bson::Array(Vec::new()));
    }
    doc! { "authInfo": info }
}

/// Implements `hostInfo`.
pub(super) fn host_info() -> Document {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    doc! {
        "system": {
            "currentTime": bson::DateTime::now(),
            "hostname": "localhost",
            "cpuAddrSize": 64,
            "numCores": i32::try_from(cores).unwrap_or(1),
            "cpuArch": std::env::consts::ARCH,
        },
        "os": { "type": std::env::consts::OS, "name": std::env::consts::OS },
        "extra": {},
    }
}

/// Implements `getLog`: the server keeps no log lines for clients.
pub(super) fn get_log(req: &Request<'_>) -> CommandResult<Document> {
    match req.value() {
        Bson::String(s) if s == "*" => Ok(doc! { "names": ["global", "startupWarnings"] }),
        Bson::String(s) if s == "global" || s == "startupWarnings" => {
            Ok(doc! { "totalLinesWritten": 0, "log": [] })
        }
        Bson::String(s) => Err(CommandError::bad_value(format!("no RamLog named: {s}"))),
        _ => Err(CommandError::type_mismatch(
            "Argument to getLog must be of type String",
        )),
    }
}

/// Implements `startSession` (sessions live on the client; the id is all a server gives).
pub(super) fn start_session() -> Document {
    doc! {
        "id": { "id": bson::Uuid::new() },
        "timeoutMinutes": SESSION_TIMEOUT_MINUTES,
    }
}

/// Implements `listCommands`: `commands` (the dispatch table's names), plus `test_commands`
/// when test commands are on.
pub(super) fn list_commands(db: &Db, commands: &[&str], test_commands: &[&str]) -> Document {
    let test_only: &[&str] = if db.info.test_commands {
        test_commands
    } else {
        &[]
    };
    let mut names: Vec<&str> = commands.iter().chain(test_only).copied().collect();
    names.sort_unstable();
    let commands: Document = names
        .into_iter()
        .map(|name| (name.to_owned(), Bson::Document(doc! { "help": "" })))
        .collect();
    doc! { "commands": commands }
}

/// Implements `replSetGetStatus` (`rs.status()`): one healthy primary.
pub(super) fn repl_set_status(db: &Db) -> Document {
    let last = timestamp_of(db.store.last_position());
    doc! {
        "set": db.info.replica_set.as_str(),
        "date": bson::DateTime::now(),
        "myState": 1,
        "term": 1_i64,
        "members": [{
            "_id": 0,
            "name": db.info.host.as_str(),
            "health": 1.0,
            "state": 1,
            "stateStr": "PRIMARY",
            "uptime": i64::try_from(db.info.started.elapsed().as_secs()).unwrap_or(i64::MAX),
            "optime": { "ts": last, "t": 1_i64 },
            "self": true,
        }],
    }
}
