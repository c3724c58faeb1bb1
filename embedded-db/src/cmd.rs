//! Command dispatch: the first key of an OP_MSG body names the command.
//!
//! Commands are grouped by area, one file each (`admin`, `read`, `write`,
//! `catalog`, `aggregate`, `explain`, `fail_point`); this file holds the one dispatch
//! table and nothing the handlers import: they share `args` (reading arguments) and
//! `reply` (cursor replies). Every failure becomes a MongoDB error
//! document; nothing a client sends can panic or close the connection here.

mod admin;
mod aggregate;
mod args;
mod catalog;
mod explain;
mod fail_point;
mod generic_args;
mod read;
mod reply;
mod validator;
mod variables;
mod write;

use std::future::Future;
use std::sync::Arc;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};

use crate::command_names::{canonical, COMMANDS, TEST_COMMANDS};
use crate::db::{ConnInfo, Db};
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::storage::timestamp_of;
use crate::wire::OpQuery;

use args::{command_name, Request};

/// What the connection does once a command has run.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Send this document (`ok: 1` or an error document), unless the request had `moreToCome`.
    Document(Document),
    /// Close the connection without a reply (a fail point's `closeConnection`).
    Close,
}

/// Runs an OP_MSG command and returns the reply document (`ok: 1` or an error document),
/// with `$clusterTime` and `operationTime` as a replica-set member sends them.
pub(crate) async fn execute(db: &Arc<Db>, conn: &ConnInfo, body: Document) -> Reply {
    let name = command_name(&body);
    conn.note_handshake(&name, &body);
    let retryable_write = body.contains_key("txnNumber")
        && !body.contains_key("autocommit")
        && matches!(
            canonical(&name),
            "insert" | "update" | "delete" | "findAndModify"
        );
    let reply = run(db, conn, &name, async {
        match body.get("$db") {
            Some(Bson::String(name)) => {
                let request = Request {
                    database: name.clone(),
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
        if canonical(&name) != "hello" {
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
    generic_args::check_collation(&req.body)?;
    let write_concern = generic_args::WriteConcern::parse(&req.body)?;
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
    generic_args::check_read_concern(name, &req.body)?;
    // One sorted table of canonical names; aliases are declared in `command_names`.
    match canonical(name) {
        "abortTransaction" | "commitTransaction" => Err(CommandError::new(
            ErrorCode::IllegalOperation,
            "Multi-document transactions are not supported by embedded-db",
        )),
        "aggregate" => aggregate::aggregate(db, req).await,
        "buildInfo" => Ok(admin::build_info()),
        "collMod" => catalog::coll_mod(db, req).await,
        "collStats" => catalog::coll_stats(db, req).await,
        // Test-only, as in `mongod`: without test commands it is "no such command".
        "configureFailPoint" if db.info.test_commands => {
            fail_point::configure(&db.fail_points, req)
        }
        "connectionStatus" => Ok(admin::connection_status(req)),
        "count" => read::count(db, req).await,
        "create" => catalog::create(db, req).await,
        "createIndexes" => catalog::create_indexes(db, req).await,
        "dbStats" => catalog::db_stats(db, req).await,
        "delete" => write::delete(db, req).await,
        "distinct" => read::distinct(db, req).await,
        "drop" => catalog::drop(db, req).await,
        "dropDatabase" => catalog::drop_database(db, req).await,
        "dropIndexes" => catalog::drop_indexes(db, req).await,
        "explain" => explain::explain(db, req).await,
        "endSessions"
        | "killAllSessions"
        | "killAllSessionsByPattern"
        | "killSessions"
        | "refreshSessions" => Ok(Document::new()),
        "find" => read::find(db, req).await,
        "findAndModify" => write::find_and_modify(db, req).await,
        "getCmdLineOpts" => Ok(admin::cmd_line_opts(db)),
        "getLog" => admin::get_log(req),
        "getMore" => read::get_more(db, req).await,
        "getParameter" => admin::get_parameter(db, req),
        // Also `isMaster`/`ismaster`, which get the same reply under their own name.
        "hello" => Ok(admin::hello(db, req.conn, &req.body, name)),
        "hostInfo" => Ok(admin::host_info()),
        "insert" => write::insert(db, req).await,
        "killCursors" => read::kill_cursors(db, req),
        "listCollections" => catalog::list_collections(db, req).await,
        "listCommands" => Ok(admin::list_commands(db, COMMANDS, TEST_COMMANDS)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command_names::ALIASES;

    /// The names the dispatch table's arms match, read from this file: the quoted names that
    /// open an arm (or continue one with `|`) at the table's indentation.
    fn dispatch_arms() -> Vec<&'static str> {
        let source = include_str!("cmd.rs");
        let start = source
            .find("match canonical(name) {")
            .expect("the dispatch table");
        let table = &source[start..];
        let end = table.find("        _ => Err(").expect("the fallback arm");
        table[..end]
            .lines()
            .filter_map(|line| line.strip_prefix("        "))
            .filter_map(|arm| arm.strip_prefix("| ").or(Some(arm)))
            .filter(|arm| arm.starts_with('"'))
            .flat_map(|arm| arm.split("=>").next().unwrap_or_default().split('|'))
            .filter_map(|name| name.split('"').nth(1))
            .collect()
    }

    /// `COMMANDS`, `TEST_COMMANDS` and `ALIASES` name exactly what the dispatch table runs:
    /// a command added to the table but not to the lists (or the other way) fails here.
    #[test]
    fn name_lists_match_the_dispatch_table() {
        let arms = dispatch_arms();
        assert!(arms.len() > 40, "parsed {} arms: {arms:?}", arms.len());
        for arm in &arms {
            assert!(
                COMMANDS.contains(arm) || TEST_COMMANDS.contains(arm),
                "{arm} is dispatched but not listed"
            );
            assert_eq!(
                canonical(arm),
                *arm,
                "{arm} is an alias with an arm of its own"
            );
        }
        for name in COMMANDS.iter().chain(TEST_COMMANDS) {
            assert!(
                arms.contains(&canonical(name)),
                "{name} is listed but not dispatched"
            );
        }
        for (alias, _) in ALIASES {
            assert!(arms.contains(&canonical(alias)), "{alias} leads nowhere");
        }
    }
}
