//! Fail points (`configureFailPoint`), the test hooks driver test suites use, through the
//! official Rust driver: present only with test commands enabled, and each `failCommand`
//! option doing what it does in `mongod`.

mod common;

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::Client;

/// A server with test commands enabled.
async fn start() -> common::TestServer {
    common::start_with(|c| c.enable_test_commands = true).await
}

/// Runs `configureFailPoint` on `admin` and returns its `count`: how often the point fired before.
async fn configure(client: &Client, command: Document) -> i64 {
    let reply = client
        .database("admin")
        .run_command(command)
        .await
        .expect("configureFailPoint succeeds");
    reply.get_i64("count").expect("count")
}

/// Turns `failCommand` off and returns how often it fired.
async fn fail_command_off(client: &Client) -> i64 {
    configure(
        client,
        doc! { "configureFailPoint": "failCommand", "mode": "off" },
    )
    .await
}

async fn ping(client: &Client) -> Result<Document, Error> {
    client
        .database("test")
        .run_command(doc! { "ping": 1 })
        .await
}

fn command_error(err: &Error) -> &mongodb::error::CommandError {
    match err.kind.as_ref() {
        ErrorKind::Command(e) => e,
        other => panic!("expected a command error, got {other:?}"),
    }
}

/// Without test commands `configureFailPoint` does not exist (59) and `getParameter` says so;
/// with them it does, is admin-only (13) and knows only its own fail points (266).
#[tokio::test]
async fn fail_points_need_test_commands() {
    let plain = common::start().await;
    let err = plain
        .client
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "alwaysOn" })
        .await
        .expect_err("no such command");
    assert_eq!(common::code_of(&err), Some(59));
    let params = plain
        .client
        .database("admin")
        .run_command(doc! { "getParameter": "*" })
        .await
        .expect("getParameter");
    assert_eq!(params.get_bool("enableTestCommands"), Ok(false));

    let server = start().await;
    let admin = server.client.database("admin");
    let params = admin
        .run_command(doc! { "getParameter": 1, "enableTestCommands": 1 })
        .await
        .expect("getParameter");
    assert_eq!(params.get_bool("enableTestCommands"), Ok(true));
    let err = server
        .db()
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "off" })
        .await
        .expect_err("admin only");
    assert_eq!(common::code_of(&err), Some(13));
    let err = admin
        .run_command(doc! { "configureFailPoint": "noSuchPoint", "mode": "off" })
        .await
        .expect_err("unknown fail point");
    assert_eq!(common::code_of(&err), Some(266));
    let err = admin
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": "sometimes" })
        .await
        .expect_err("unknown mode");
    assert_eq!(common::code_of(&err), Some(2));
}

/// `errorCode` with `{times: 1}` fails the next matching command once, with the code, its
/// `codeName` (generic for a code mongod has no name for) and the `errorLabels`; then the
/// point is off and `count` says it fired once.
#[tokio::test]
async fn error_code_fails_the_given_times() {
    let server = start().await;
    let client = &server.client;
    let before = configure(
        client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["ping"], "errorCode": 4242, "errorLabels": ["SomeLabel"] },
        },
    )
    .await;
    assert_eq!(before, 0);
    let err = ping(client).await.expect_err("the first ping fails");
    let failure = command_error(&err);
    assert_eq!(failure.code, 4242);
    assert_eq!(failure.code_name, "Location4242");
    assert!(err.contains_label("SomeLabel"), "{err:?}");
    ping(client).await.expect("the second ping succeeds");
    assert_eq!(fail_command_off(client).await, 1);

    configure(
        client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": { "failCommands": ["ping"], "errorCode": 10107 },
        },
    )
    .await;
    for _ in 0..2 {
        let err = ping(client).await.expect_err("fails while on");
        assert_eq!(command_error(&err).code_name, "NotWritablePrimary");
    }
    assert_eq!(fail_command_off(client).await, 3, "counts add up");
    ping(client).await.expect("off lets commands through");
}

/// `{skip: 1}` lets the first matching command through and fails every later one.
#[tokio::test]
async fn skip_lets_the_first_through() {
    let server = start().await;
    let client = &server.client;
    configure(
        client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "skip": 1 },
            "data": { "failCommands": ["ping"], "errorCode": 2 },
        },
    )
    .await;
    ping(client).await.expect("the first ping is skipped");
    for _ in 0..2 {
        let err = ping(client).await.expect_err("later pings fail");
        assert_eq!(command_error(&err).code, 2);
        assert_eq!(command_error(&err).code_name, "BadValue");
    }
    assert_eq!(fail_command_off(client).await, 2);
}

/// `closeConnection` closes the socket without a reply: the driver sees a network error on
/// `ping`, and retries a `find` transparently (retryable reads), so the point fired for both.
#[tokio::test]
async fn close_connection_is_a_network_error() {
    let server = start().await;
    let client = &server.client;
    configure(
        client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["ping"], "closeConnection": true },
        },
    )
    .await;
    let err = ping(client).await.expect_err("the connection is closed");
    assert!(
        matches!(
            err.kind.as_ref(),
            ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. }
        ),
        "a network error, got {err:?}"
    );

    let coll = server.db().collection::<Document>("c");
    coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
    let before = configure(
        client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["find"], "closeConnection": true },
        },
    )
    .await;
    assert_eq!(before, 1);
    let found = coll
        .find_one(doc! {})
        .await
        .expect("retried after the close");
    assert_eq!(found, Some(doc! { "_id": 1 }));
    assert_eq!(
        fail_command_off(client).await,
        2,
        "the find was failed once"
    );
}

/// `blockConnection` holds the command for at least `blockTimeMS`, then runs it.
#[tokio::test]
async fn block_connection_delays_the_command() {
    const BLOCK: Duration = Duration::from_millis(300);
    let server = start().await;
    let client = &server.client;
    configure(
        client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": {
                "failCommands": ["ping"],
                "blockConnection": true,
                "blockTimeMS": i64::try_from(BLOCK.as_millis()).expect("small"),
            },
        },
    )
    .await;
    let started = Instant::now();
    ping(client)
        .await
        .expect("the ping succeeds after the block");
    assert!(
        started.elapsed() >= BLOCK,
        "blocked for {:?}",
        started.elapsed()
    );
    assert_eq!(fail_command_off(client).await, 1);
}

/// With `appName`, only connections whose handshake named that application are failed.
#[tokio::test]
async fn app_name_selects_connections() {
    let server = start().await;
    let mut options = ClientOptions::parse(server.server.uri())
        .await
        .expect("uri");
    options.app_name = Some("victim".to_owned());
    options.server_selection_timeout = Some(Duration::from_secs(5));
    let victim = Client::with_options(options).expect("client");
    configure(
        &server.client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": { "failCommands": ["ping"], "errorCode": 2, "appName": "victim" },
        },
    )
    .await;
    ping(&server.client)
        .await
        .expect("another application is not failed");
    let err = ping(&victim)
        .await
        .expect_err("the named application is failed");
    assert_eq!(command_error(&err).code, 2);
    assert_eq!(fail_command_off(&server.client).await, 1);
    ping(&victim).await.expect("off");
    victim.shutdown().await;
}

/// `writeConcernError` is added to a write that otherwise succeeded: the driver reports the
/// write-concern error, and the document is written.
#[tokio::test]
async fn write_concern_error_is_added_to_the_reply() {
    let server = start().await;
    let client = &server.client;
    configure(
        client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": {
                "failCommands": ["insert"],
                "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out" },
            },
        },
    )
    .await;
    let coll = server.db().collection::<Document>("wc");
    let err = coll
        .insert_one(doc! { "_id": 1 })
        .await
        .expect_err("a write-concern error");
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteConcernError(wce)) => assert_eq!(wce.code, 64),
        other => panic!("expected a write-concern error, got {other:?}"),
    }
    assert_eq!(
        coll.count_documents(doc! {}).await.expect("count"),
        1,
        "the write itself happened"
    );
    assert_eq!(fail_command_off(client).await, 1);
}

/// `maxTimeAlwaysTimeOut` is known: it can be switched on (by times or always) and off.
#[tokio::test]
async fn max_time_always_time_out_can_be_configured() {
    let server = start().await;
    let client = &server.client;
    for mode in [doc! { "mode": { "times": 2 } }, doc! { "mode": "alwaysOn" }] {
        let mut command = doc! { "configureFailPoint": "maxTimeAlwaysTimeOut" };
        command.extend(mode);
        assert_eq!(configure(client, command).await, 0, "nothing consumed it");
    }
    let off = doc! { "configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off" };
    assert_eq!(configure(client, off).await, 0);
}

/// A retryable error code on a retryable write carries `RetryableWriteError`, as mongod labels
/// it, so the driver retries the insert once and it is stored exactly once.
#[tokio::test]
async fn retryable_write_errors_are_labelled_and_retried() {
    let server = start().await;
    configure(
        &server.client,
        doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["insert"], "errorCode": 91 },
        },
    )
    .await;
    let coll = server.db().collection::<Document>("labelled");
    coll.insert_one(doc! { "_id": 1 })
        .await
        .expect("the driver retries a labelled error");
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 1);
    assert_eq!(fail_command_off(&server.client).await, 1, "fired once");
}
