//! The handshake and administrative commands, through the official Rust driver.

mod common;

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Runs `command` on `admin` and returns the reply.
async fn admin(server: &common::TestServer, command: Document) -> Document {
    server
        .client
        .database("admin")
        .run_command(command)
        .await
        .expect("command succeeds")
}

/// `hello` describes a writable single-node replica-set primary, without the fields that would
/// switch drivers to streaming monitoring or compression.
#[tokio::test]
async fn hello_reports_replica_set_primary() {
    let server = common::start().await;
    let reply = admin(&server, doc! { "hello": 1 }).await;
    assert_eq!(reply.get_bool("isWritablePrimary"), Ok(true));
    assert_eq!(reply.get_str("setName"), Ok("rs0"));
    assert_eq!(reply.get_i32("maxWireVersion"), Ok(21));
    assert_eq!(reply.get_i32("minWireVersion"), Ok(0));
    assert_eq!(reply.get_i32("logicalSessionTimeoutMinutes"), Ok(30));
    assert_eq!(reply.get_i32("maxBsonObjectSize"), Ok(16 * 1024 * 1024));
    let host = server.server.local_addr().to_string();
    assert_eq!(
        reply.get_array("hosts").ok(),
        Some(&vec![Bson::String(host.clone())])
    );
    assert_eq!(reply.get_str("me"), Ok(host.as_str()));
    assert!(reply.get("topologyVersion").is_none());
    assert!(reply.get("compression").is_none());
    let cluster_time = reply.get_document("$clusterTime").expect("$clusterTime");
    assert!(cluster_time.get_timestamp("clusterTime").is_ok());
    assert!(cluster_time.get_document("signature").is_ok());
    assert!(reply.get_timestamp("operationTime").is_ok());
    let legacy = admin(&server, doc! { "isMaster": 1 }).await;
    assert_eq!(legacy.get_bool("ismaster"), Ok(true));
}

/// A `replicaSet=rs0` connection string (replica-set discovery through `hosts`) works as well as
/// `directConnection=true`.
#[tokio::test]
async fn replica_set_uri_connects() {
    let server = common::start().await;
    let uri = format!("mongodb://{}/?replicaSet=rs0", server.server.local_addr());
    let client = common::client(&uri).await;
    let coll = client.database("test").collection::<Document>("c");
    coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 1);
    let wrong = format!(
        "mongodb://{}/?replicaSet=other&serverSelectionTimeoutMS=300",
        server.server.local_addr()
    );
    let client = mongodb::Client::with_uri_str(&wrong).await.expect("client");
    assert!(client
        .database("test")
        .run_command(doc! { "ping": 1 })
        .await
        .is_err());
}

/// The diagnostic commands tools send at start-up answer with the fields they read.
#[tokio::test]
async fn admin_commands_answer() {
    let server = common::start().await;
    assert_eq!(
        admin(&server, doc! { "ping": 1 }).await.get_f64("ok"),
        Ok(1.0)
    );
    let build = admin(&server, doc! { "buildInfo": 1 }).await;
    assert!(build
        .get_str("version")
        .expect("version")
        .starts_with("7.0."));
    assert_eq!(build.get_array("versionArray").map(Vec::len), Ok(4));
    let params = admin(&server, doc! { "getParameter": "*" }).await;
    assert_eq!(
        params
            .get_document("featureCompatibilityVersion")
            .and_then(|d| d.get_str("version")),
        Ok("7.0")
    );
    assert!(params.contains_key("enableTestCommands"));
    let fcv = admin(
        &server,
        doc! { "getParameter": 1, "featureCompatibilityVersion": 1 },
    )
    .await;
    assert!(fcv.contains_key("featureCompatibilityVersion"));
    let status = admin(&server, doc! { "serverStatus": 1 }).await;
    assert!(
        status
            .get_document("connections")
            .and_then(|c| c.get_i64("current"))
            .expect("current")
            >= 1
    );
    assert!(status
        .get_document("storageEngine")
        .and_then(|s| s.get_str("name"))
        .is_ok());
    let opts = admin(&server, doc! { "getCmdLineOpts": 1 }).await;
    assert!(opts.get_document("parsed").is_ok());
    let conn = admin(
        &server,
        doc! { "connectionStatus": 1, "showPrivileges": true },
    )
    .await;
    assert!(conn.get_document("authInfo").is_ok());
    assert!(admin(&server, doc! { "hostInfo": 1 })
        .await
        .get_document("system")
        .is_ok());
    let log = admin(&server, doc! { "getLog": "startupWarnings" }).await;
    assert_eq!(log.get_array("log").map(Vec::len), Ok(0));
    assert!(admin(&server, doc! { "whatsmyuri": 1 })
        .await
        .get_str("you")
        .is_ok());
    let session = admin(&server, doc! { "startSession": 1 }).await;
    assert!(session.get_document("id").is_ok());
    for command in ["endSessions", "killSessions", "refreshSessions"] {
        admin(&server, doc! { command: [] }).await;
    }
    admin(&server, doc! { "killAllSessions": [] }).await;
    let rs = admin(&server, doc! { "replSetGetStatus": 1 }).await;
    assert_eq!(rs.get_i32("myState"), Ok(1));
}

/// `serverStatus.connections` as the driver reads it: connections served now, the room left
/// under `max_connections`, all served since start, and those refused at the limit.
#[tokio::test]
async fn server_status_counts_connections() {
    let server = common::start_with(|c| c.max_connections = 4).await;
    let connections = || async {
        admin(&server, doc! { "serverStatus": 1 })
            .await
            .get_document("connections")
            .expect("connections")
            .clone()
    };
    // Polls until `current` reaches `want` (the server sees opens and closes asynchronously).
    let current_reaches = |want: i64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = connections().await;
            if now.get_i64("current") == Ok(want) {
                return now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "current never reached {want}: {now}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let before = connections().await;
    // The driver holds two: its monitor's and the pooled one that runs these commands.
    assert_eq!(before.get_i64("current"), Ok(2), "{before}");
    assert_eq!(before.get_i64("available"), Ok(2));
    assert_eq!(before.get_i64("rejected"), Ok(0));
    let created = before.get_i64("totalCreated").expect("totalCreated");
    assert!(created >= 2);

    let addr = server.server.local_addr();
    let raw = [
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    let full = current_reaches(4).await;
    assert_eq!(full.get_i64("available"), Ok(0));
    assert_eq!(full.get_i64("totalCreated"), Ok(created + 2));

    let mut refused = TcpStream::connect(addr).await.expect("the kernel accepts");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte))
        .await
        .expect("closed in time");
    assert_eq!(read.expect("an orderly close"), 0);
    let after = connections().await;
    assert_eq!(after.get_i64("rejected"), Ok(1));
    assert_eq!(after.get_i64("current"), Ok(4));
    assert_eq!(after.get_i64("totalCreated"), Ok(created + 2));

    drop(raw);
    let freed = current_reaches(2).await;
    assert_eq!(freed.get_i64("available"), Ok(2));
}

/// Unknown commands, unknown parameters and transactions fail with MongoDB's codes.
#[tokio::test]
async fn unsupported_requests_get_error_codes() {
    let server = common::start().await;
    let admin_db = server.client.database("admin");
    let err = admin_db
        .run_command(doc! { "atlasVersion": 1 })
        .await
        .expect_err("unknown");
    assert_eq!(common::code_of(&err), Some(59));
    let err = admin_db
        .run_command(doc! { "getParameter": 1, "nope": 1 })
        .await
        .expect_err("unknown parameter");
    assert_eq!(common::code_of(&err), Some(72));
    let mut session = server.client.start_session().await.expect("session");
    session
        .start_transaction()
        .await
        .expect("client-side start");
    let coll = server.db().collection::<Document>("tx");
    let err = coll
        .insert_one(doc! { "x": 1 })
        .session(&mut session)
        .await
        .expect_err("transactions are refused");
    assert_eq!(common::code_of(&err), Some(20));
    // Nothing was committed behind the client's back.
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 0);
}

/// `listDatabases` and `dropDatabase` see the databases that hold collections.
#[tokio::test]
async fn list_and_drop_databases() {
    let server = common::start().await;
    server
        .client
        .database("one")
        .collection::<Document>("a")
        .insert_one(doc! { "x": 1 })
        .await
        .expect("insert");
    server
        .client
        .database("two")
        .collection::<Document>("b")
        .insert_one(doc! { "x": 1 })
        .await
        .expect("insert");
    let names = server.client.list_database_names().await.expect("names");
    assert_eq!(names, vec!["one".to_owned(), "two".to_owned()]);
    let specs = server.client.list_databases().await.expect("databases");
    assert!(specs.iter().all(|d| d.size_on_disk > 0 && !d.empty));
    server.client.database("one").drop().await.expect("drop");
    assert_eq!(
        server.client.list_database_names().await.expect("names"),
        vec!["two".to_owned()]
    );
    // Dropping a database that does not exist succeeds, as on MongoDB.
    server
        .client
        .database("nothing")
        .drop()
        .await
        .expect("drop missing");
}

/// Every command `listCommands` names (test commands included) reaches a handler: run with a
/// bare `{<name>: 1}` it may be refused for its arguments, but never as "no such command"
/// (59), which only a name outside the dispatch table gets.
#[tokio::test]
async fn every_listed_command_is_dispatched() {
    let server = common::start_with(|config| config.enable_test_commands = true).await;
    let reply = admin(&server, doc! { "listCommands": 1 }).await;
    let names: Vec<String> = reply
        .get_document("commands")
        .expect("commands")
        .keys()
        .cloned()
        .collect();
    assert!(
        names.len() > 40,
        "listCommands names {} commands",
        names.len()
    );
    assert!(names.iter().any(|n| n == "configureFailPoint"));
    let db = server.client.database("dispatch_check");
    for name in names {
        let result = db.run_command(doc! { name.as_str(): 1 }).await;
        let code = result.as_ref().err().and_then(common::code_of);
        assert_ne!(
            code,
            Some(59),
            "{name} is listed but not dispatched: {result:?}"
        );
    }
    let unknown = db.run_command(doc! { "noSuchCommand": 1 }).await;
    assert_eq!(unknown.as_ref().err().and_then(common::code_of), Some(59));
}
