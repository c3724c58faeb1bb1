//! Command dispatch: the first key of an OP_MSG body names the command.
//!
//! Commands are grouped by area, one file each (`admin`, `read`, `write`,
//! `catalog`, `aggregate`); this file holds the one dispatch table and the
//! argument helpers they share. Every failure becomes a MongoDB error
//! document; nothing a client sends can panic or close the connection here.

mod admin;
mod aggregate;
mod catalog;
mod explain;
mod fail_point;
mod generic;
mod read;
mod validator;
mod variables;
mod write;

use std::future::Future;
use std::sync::Arc;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};

use crate::cursor::Cursor;
use crate::db::{ConnInfo, Db};
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::namespace::Namespace;
use crate::storage::timestamp_of;
use crate::wire::OpQuery;

pub(crate) use fail_point::FailPoints;

/// Default number of documents in a first batch, as `mongod`.
const DEFAULT_BATCH: usize = 101;
/// Byte budget of one batch (the reply must stay under the message limit).
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A command with its target database.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// The command document.
    pub(crate) body: Document,
    /// `$db`.
    pub(crate) db: String,
    /// The connection it came on.
    pub(crate) conn: &'a ConnInfo,
}

impl Request<'_> {
    /// The command's value: `{ find: "users" }` → `"users"`.
    fn value(&self) -> &Bson {
        self.body.iter().next().map_or(&Bson::Null, |(_, v)| v)
    }

    /// The collection named by the command's value, in the request's database.
    fn namespace(&self) -> CommandResult<Namespace> {
        match self.value() {
            Bson::String(coll) => Namespace::new(&self.db, coll),
            other => Err(CommandError::new(
                ErrorCode::InvalidNamespace,
                format!(
                    "collection name has invalid type {}",
                    crate::query::compare::type_name(other)
                ),
            )),
        }
    }
}

/// What the connection does once a command has run.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Send this document (`ok: 1` or an error document), unless the request had `moreToCome`.
    Document(Document),
    /// Close the connection without a reply (a fail point's `closeConnection`).
    Close,
}

/// The command name: the first key of the body.
fn command_name(body: &Document) -> String {
    body.keys().next().cloned().unwrap_or_default()
}

/// Runs an OP_MSG command and returns the reply document (`ok: 1` or an error document),
/// with `$clusterTime` and `operationTime` as a replica-set member sends them.
pub(crate) async fn execute(db: &Arc<Db>, conn: &ConnInfo, body: Document) -> Reply {
    let name = command_name(&body);
    conn.note_handshake(&name, &body);
    let retryable_write = body.contains_key("txnNumber")
        && !body.contains_key("autocommit")
        && matches!(
            name.as_str(),
            "insert" | "update" | "delete" | "findAndModify" | "findandmodify"
        );
    let reply = run(db, conn, &name, async {
        match body.get("$db") {
            Some(Bson::String(name)) => {
                let request = Request {
                    db: name.clone(),
                    body,
                    conn,
                };
                dispatch(db, request).await
            }
            _ => Err(CommandError::failed_to_parse(
                "OP_MSG requests require a $db argument",
            )),
        }
    })
    .await;
    match reply {
        Reply::Document(mut doc) if retryable_write => {
            label_retryable_error(&mut doc);
            Reply::Document(doc)
        }
        other => other,
    }
}

/// Error codes after which a driver may retry a write (a node stepping down or shutting down,
/// a network failure): mongod labels them `RetryableWriteError` on a retryable write.
const RETRYABLE_WRITE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// Adds the `RetryableWriteError` label to the error reply of a retryable write whose code
/// drivers retry on, unless the reply already carries labels (a fail point's own).
fn label_retryable_error(reply: &mut Document) {
    let failed = reply.get_f64("ok").is_ok_and(|ok| ok == 0.0);
    let retryable = reply
        .get_i32("code")
        .is_ok_and(|code| RETRYABLE_WRITE_CODES.contains(&code));
    if failed && retryable && !reply.contains_key("errorLabels") {
        reply.insert("errorLabels", vec!["RetryableWriteError"]);
    }
}

/// Runs a legacy OP_QUERY command: only the handshake (`isMaster`/`ismaster`/`hello`) is
/// answered, as by `mongod`; anything else gets 352 UnsupportedOpQueryCommand.
pub(crate) async fn execute_legacy(db: &Arc<Db>, conn: &ConnInfo, query: &OpQuery) -> Reply {
    // Old drivers wrap the command as { $query: {...}, $readPreference: ... }.
    let body = match query.query.get_document("$query") {
        Ok(inner) => inner.clone(),
        Err(_) => query.query.clone(),
    };
    let name = command_name(&body);
    conn.note_handshake(&name, &body);
    run(db, conn, &name, async {
        if !query.full_collection_name.ends_with(".$cmd") {
            return Err(CommandError::new(
                ErrorCode::UnsupportedOpQueryCommand,
                "OP_QUERY is only supported for commands on <db>.$cmd",
            ));
        }
        if !matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
            return Err(CommandError::new(
                ErrorCode::UnsupportedOpQueryCommand,
                format!("Unsupported OP_QUERY command: {name}. The client driver may require an upgrade."),
            ));
        }
        Ok(admin::hello(db, conn, &body, &name))
    })
    .await
}

/// Runs `command` (named `name`) under the `failCommand` fail point: the one place where fail
/// points act on commands. Without an active fail point this is just `finish(command.await)`.
async fn run(
    db: &Db,
    conn: &ConnInfo,
    name: &str,
    command: impl Future<Output = CommandResult<Document>>,
) -> Reply {
    let Some(failure) = db.fail_points.fail_command(name, conn.app_name()) else {
        return Reply::Document(finish(db, command.await));
    };
    tracing::info!(
        connection_id = conn.id,
        command = name,
        ?failure,
        "failCommand fail point applies"
    );
    if let Some(pause) = failure.block() {
        tokio::time::sleep(pause).await;
    }
    if failure.closes_connection() {
        return Reply::Close;
    }
    if let Some(error) = failure.error_reply() {
        return Reply::Document(stamp(db, error));
    }
    let mut result = command.await;
    if let Ok(reply) = &mut result {
        failure.amend(reply);
    }
    Reply::Document(finish(db, result))
}

fn finish(db: &Db, result: CommandResult<Document>) -> Document {
    let reply = match result {
        Ok(mut reply) => {
            reply.insert("ok", 1.0);
            reply
        }
        Err(e) => e.to_reply(),
    };
    stamp(db, reply)
}

/// Adds `$clusterTime` and `operationTime` to a reply.
fn stamp(db: &Db, mut reply: Document) -> Document {
    let time = timestamp_of(db.store.last_position());
    reply.insert(
        "$clusterTime",
        doc! {
            "clusterTime": time,
            "signature": {
                "hash": Binary { subtype: BinarySubtype::Generic, bytes: vec![0; 20] },
                "keyId": 0_i64,
            },
        },
    );
    reply.insert("operationTime", time);
    reply
}

async fn dispatch(db: &Arc<Db>, req: Request<'_>) -> CommandResult<Document> {
    let name = command_name(&req.body);
    db.opcounters.count(&name, &req.body);
    // Generic arguments are honoured or refused before the command does anything.
    generic::check_collation(&req.body)?;
    let write_concern = generic::WriteConcern::parse(&req.body)?;
    if READS.contains(&name.as_str()) && req.body.contains_key("writeConcern") {
        return Err(CommandError::new(
            ErrorCode::InvalidOptions,
            format!("Command {name} does not support writeConcern"),
        ));
    }
    let req = Request {
        body: variables::bind(&name, req.body)?,
        ..req
    };
    let mut reply = run_command(db, &req, &name).await?;
    if let Some(error) = write_concern.error() {
        reply.insert("writeConcernError", error);
    }
    Ok(reply)
}

/// Read commands, which refuse a `writeConcern` (as mongod does).
const READS: &[&str] = &["count", "distinct", "find", "getMore"];

/// The dispatch table: runs the command `name`.
async fn run_command(db: &Arc<Db>, req: &Request<'_>, name: &str) -> CommandResult<Document> {
    if req.body.get_bool("startTransaction").unwrap_or(false)
        || req.body.get("autocommit").is_some()
    {
        return Err(CommandError::new(
            ErrorCode::IllegalOperation,
            "Multi-document transactions are not supported by embedded-db",
        ));
    }
    generic::check_read_concern(name, &req.body)?;
    // One sorted table; aliases are listed explicitly.
    match name {
        "abortTransaction" | "commitTransaction" => Err(CommandError::new(
            ErrorCode::IllegalOperation,
            "Multi-document transactions are not supported by embedded-db",
        )),
        "aggregate" => aggregate::aggregate(db, req).await,
        "buildInfo" | "buildinfo" => Ok(admin::build_info()),
        "collMod" => catalog::coll_mod(db, req).await,
        "collStats" => catalog::coll_stats(db, req).await,
        // Test-only, as in `mongod`: without test commands it is "no such command".
        "configureFailPoint" if db.info.test_commands => db.fail_points.configure(req),
        "connectionStatus" => Ok(admin::connection_status(req)),
        "count" => read::count(db, req).await,
        "create" => catalog::create(db, req).await,
        "createIndexes" => catalog::create_indexes(db, req).await,
        "dbStats" => catalog::db_stats(db, req).await,
        "delete" => write::delete(db, req).await,
        "distinct" => read::distinct(db, req).await,
        "drop" => catalog::drop(db, req).await,
        "dropDatabase" => catalog::drop_database(db, req).await,
        "dropIndexes" | "deleteIndexes" => catalog::drop_indexes(db, req).await,
        "explain" => explain::explain(db, req).await,
        "endSessions"
        | "killAllSessions"
        | "killAllSessionsByPattern"
        | "killSessions"
        | "refreshSessions" => Ok(Document::new()),
        "find" => read::find(db, req).await,
        "findAndModify" | "findandmodify" => write::find_and_modify(db, req).await,
        "getCmdLineOpts" => Ok(admin::cmd_line_opts(db)),
        "getLog" => admin::get_log(req),
        "getMore" => read::get_more(db, req).await,
        "getParameter" => admin::get_parameter(db, req),
        // `hello` is current; `isMaster` is what the Rust driver sends first, `ismaster` Node and pymongo.
        "hello" | "isMaster" | "ismaster" => Ok(admin::hello(db, req.conn, &req.body, name)),
        "hostInfo" => Ok(admin::host_info()),
        "insert" => write::insert(db, req).await,
        "killCursors" => read::kill_cursors(db, req),
        "listCollections" => catalog::list_collections(db, req).await,
        "listCommands" => Ok(admin::list_commands(db)),
        "listDatabases" => catalog::list_databases(db, req).await,
        "listIndexes" => catalog::list_indexes(db, req).await,
        "ping" => Ok(Document::new()),
        "renameCollection" => catalog::rename_collection(db, req).await,
        "replSetGetStatus" => Ok(admin::repl_set_status(db)),
        "serverStatus" => Ok(admin::server_status(db)),
        "startSession" => Ok(admin::start_session()),
        "update" => write::update(db, req).await,
        "whatsmyuri" => Ok(doc! { "you": req.conn.peer.as_str() }),
        _ => Err(CommandError::new(
            ErrorCode::CommandNotFound,
            format!("no such command: '{name}'"),
        )),
    }
}

/// The names in the dispatch table, for `listCommands` (`configureFailPoint`, which exists only
/// with test commands, is added there when it does).
pub(crate) const COMMANDS: &[&str] = &[
    "abortTransaction",
    "aggregate",
    "buildInfo",
    "collMod",
    "collStats",
    "commitTransaction",
    "connectionStatus",
    "count",
    "create",
    "createIndexes",
    "dbStats",
    "delete",
    "distinct",
    "drop",
    "dropDatabase",
    "dropIndexes",
    "endSessions",
    "explain",
    "find",
    "findAndModify",
    "getCmdLineOpts",
    "getLog",
    "getMore",
    "getParameter",
    "hello",
    "hostInfo",
    "insert",
    "isMaster",
    "killAllSessions",
    "killAllSessionsByPattern",
    "killCursors",
    "killSessions",
    "listCollections",
    "listCommands",
    "listDatabases",
    "listIndexes",
    "ping",
    "refreshSessions",
    "renameCollection",
    "replSetGetStatus",
    "serverStatus",
    "startSession",
    "update",
    "whatsmyuri",
];

/// An optional sub-document argument; `TypeMismatch` when present with another type.
fn opt_document<'a>(body: &'a Document, key: &str) -> CommandResult<Option<&'a Document>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected type 'object'",
            crate::query::compare::type_name(other)
        ))),
    }
}

/// An optional boolean argument (numbers count as booleans, as `mongod` accepts).
fn opt_bool(body: &Document, key: &str) -> CommandResult<Option<bool>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Boolean(b)) => Ok(Some(*b)),
        Some(Bson::Int32(i)) => Ok(Some(*i != 0)),
        Some(Bson::Int64(i)) => Ok(Some(*i != 0)),
        Some(Bson::Double(f)) => Ok(Some(*f != 0.0)),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected type 'bool'",
            crate::query::compare::type_name(other)
        ))),
    }
}

/// An optional integral argument (any numeric type holding a whole number).
fn opt_i64(body: &Document, key: &str) -> CommandResult<Option<i64>> {
    match body.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int32(i)) => Ok(Some(i64::from(*i))),
        Some(Bson::Int64(i)) => Ok(Some(*i)),
        #[allow(clippy::cast_possible_truncation)]
        Some(Bson::Double(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(*f as i64)),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected a number",
            crate::query::compare::type_name(other)
        ))),
    }
}

/// An optional non-negative count argument.
fn opt_count(body: &Document, key: &str) -> CommandResult<Option<usize>> {
    match opt_i64(body, key)? {
        None => Ok(None),
        Some(n) => usize::try_from(n).map(Some).map_err(|_| {
            CommandError::bad_value(format!(
                "{key} value must be non-negative, but received: {n}"
            ))
        }),
    }
}

/// A required array of documents (`documents`, `updates`, `deletes`, `indexes`).
fn documents_arg(body: &Document, key: &str) -> CommandResult<Vec<Document>> {
    let array = match body.get(key) {
        Some(Bson::Array(a)) => a,
        Some(other) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field '{key}' is the wrong type '{}', expected type 'array'",
                crate::query::compare::type_name(other)
            )))
        }
        None => {
            return Err(CommandError::new(
                ErrorCode::FailedToParse,
                format!("BSON field '{key}' is missing but a required field"),
            ))
        }
    };
    array
        .iter()
        .map(|item| match item {
            Bson::Document(d) => Ok(d.clone()),
            other => Err(CommandError::type_mismatch(format!(
                "BSON field '{key}' element is the wrong type '{}', expected type 'object'",
                crate::query::compare::type_name(other)
            ))),
        })
        .collect()
}

/// Splits off the first batch of `docs` and registers the rest as a cursor.
///
/// The batch holds at most `batch_size` documents (default 101) and 16 MiB; with
/// `single_batch` or when nothing remains, the cursor id is 0. The rest counts against the
/// cursors' memory budget (`ExceededMemoryLimit` when it does not fit).
fn first_batch(
    db: &Db,
    ns: &str,
    docs: Vec<Document>,
    batch_size: Option<usize>,
    single_batch: bool,
) -> CommandResult<Document> {
    let mut remaining: std::collections::VecDeque<Document> = docs.into();
    let batch = take_batch(&mut remaining, batch_size.unwrap_or(DEFAULT_BATCH));
    let id = if single_batch || remaining.is_empty() {
        0
    } else {
        db.cursors
            .insert(Cursor::documents(ns.to_owned(), remaining))?
    };
    Ok(cursor_reply(ns, id, "firstBatch", batch, None))
}

/// Takes up to `limit` documents and at most [`BATCH_BYTES`] from the front of `queue`
/// (always at least one, so a large document still makes progress).
fn take_batch(queue: &mut std::collections::VecDeque<Document>, limit: usize) -> Vec<Bson> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while batch.len() < limit {
        let Some(next) = queue.front() else { break };
        let size = bson::to_vec(next).map_or(0, |v| v.len());
        if !batch.is_empty() && bytes + size > BATCH_BYTES {
            break;
        }
        bytes += size;
        if let Some(doc) = queue.pop_front() {
            batch.push(Bson::Document(doc));
        }
    }
    batch
}

/// `{ cursor: { <which>: batch, id: Int64, ns, postBatchResumeToken? } }`.
fn cursor_reply(
    ns: &str,
    id: i64,
    which: &str,
    batch: Vec<Bson>,
    post_batch_token: Option<Document>,
) -> Document {
    let mut cursor = doc! { which: batch, "id": id, "ns": ns };
    if let Some(token) = post_batch_token {
        cursor.insert("postBatchResumeToken", token);
    }
    doc! { "cursor": cursor }
}

/// Keys every command may carry that are not options of the command itself.
const GENERIC_ARGUMENTS: &[&str] = &[
    "$db",
    "$clusterTime",
    "$readPreference",
    "lsid",
    "txnNumber",
    "writeConcern",
    "readConcern",
    "comment",
    "maxTimeMS",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

/// The command's own options: everything but its name and the generic arguments.
fn command_options(body: &Document) -> Document {
    body.iter()
        .skip(1)
        .filter(|(k, _)| !GENERIC_ARGUMENTS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
