//! Change streams through the official Rust driver: event shapes, scopes,
//! `fullDocument` modes, resuming, waiting `getMore`s and error codes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use mongodb::change_stream::ChangeStream;
use mongodb::event::{command::CommandEvent, EventHandler};
use mongodb::options::{ClientOptions, FullDocumentType};

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

/// The next event, failing the test instead of hanging when none comes.
async fn next(stream: &mut Stream) -> ChangeStreamEvent<Document> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("event within 10 s")
        .expect("stream open")
        .expect("event")
}

/// The next item, which must be an error, failing the test instead of hanging.
async fn next_error(stream: &mut Stream) -> mongodb::error::Error {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("answer within 10 s")
        .expect("stream open")
        .expect_err("an error")
}

/// Insert, update, replace and delete events carry MongoDB's fields.
#[tokio::test]
async fn collection_stream_event_shapes() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("users");
    let mut stream = coll.watch().await.expect("watch");
    coll.insert_one(doc! { "_id": 1, "name": "ada", "langs": ["a", "b"] })
        .await
        .expect("insert");
    coll.update_one(
        doc! { "_id": 1 },
        doc! { "$set": { "name": "lovelace" }, "$unset": { "langs": "" } },
    )
    .await
    .expect("update");
    coll.replace_one(doc! { "_id": 1 }, doc! { "name": "ada" })
        .await
        .expect("replace");
    coll.delete_one(doc! { "_id": 1 }).await.expect("delete");

    let insert = next(&mut stream).await;
    assert_eq!(insert.operation_type, OperationType::Insert);
    assert_eq!(insert.document_key, Some(doc! { "_id": 1 }));
    assert_eq!(
        insert.full_document,
        Some(doc! { "_id": 1, "name": "ada", "langs": ["a", "b"] })
    );
    let ns = insert.ns.expect("ns");
    assert_eq!(
        (ns.db.as_str(), ns.coll.as_deref()),
        ("test", Some("users"))
    );
    assert!(insert.cluster_time.is_some());
    assert!(insert.wall_time.is_some());

    let update = next(&mut stream).await;
    assert_eq!(update.operation_type, OperationType::Update);
    assert!(
        update.full_document.is_none(),
        "default fullDocument omits the document"
    );
    let description = update.update_description.expect("updateDescription");
    assert_eq!(description.updated_fields, doc! { "name": "lovelace" });
    assert_eq!(description.removed_fields, vec!["langs".to_owned()]);

    let replace = next(&mut stream).await;
    assert_eq!(replace.operation_type, OperationType::Replace);
    assert_eq!(
        replace.full_document,
        Some(doc! { "_id": 1, "name": "ada" })
    );

    let delete = next(&mut stream).await;
    assert_eq!(delete.operation_type, OperationType::Delete);
    assert_eq!(delete.document_key, Some(doc! { "_id": 1 }));
    assert!(insert.cluster_time < delete.cluster_time);
}

/// Dropping or renaming the watched collection ends its stream with `invalidate`.
#[tokio::test]
async fn drop_and_rename_invalidate() {
    let server = common::start().await;
    let db = server.db();
    let coll = db.collection::<Document>("doomed");
    coll.insert_one(doc! { "_id": 1 }).await.expect("create");
    let mut stream = coll.watch().await.expect("watch");
    coll.drop().await.expect("drop");
    assert_eq!(next(&mut stream).await.operation_type, OperationType::Drop);
    let invalidate = next(&mut stream).await;
    assert_eq!(invalidate.operation_type, OperationType::Invalidate);
    assert!(
        stream.next().await.is_none(),
        "the stream ends after invalidate"
    );
    assert!(!stream.is_alive());

    let old = db.collection::<Document>("old");
    old.insert_one(doc! { "_id": 1 }).await.expect("create");
    let mut stream = old.watch().await.expect("watch");
    server
        .client
        .database("admin")
        .run_command(doc! { "renameCollection": "test.old", "to": "test.new" })
        .await
        .expect("rename");
    let rename = next(&mut stream).await;
    assert_eq!(rename.operation_type, OperationType::Rename);
    let to = rename.to.expect("to");
    assert_eq!(to.coll.as_deref(), Some("new"));
    assert_eq!(
        next(&mut stream).await.operation_type,
        OperationType::Invalidate
    );
}

/// A database stream sees every collection of its database, and `dropDatabase` then
/// `invalidate`; a deployment stream sees every database.
#[tokio::test]
async fn database_and_cluster_streams() {
    let server = common::start().await;
    let db = server.client.database("shop");
    let mut db_stream = db.watch().await.expect("db watch");
    let mut all = server.client.watch().await.expect("cluster watch");
    db.collection::<Document>("a")
        .insert_one(doc! { "_id": 1 })
        .await
        .expect("insert a");
    db.collection::<Document>("b")
        .insert_one(doc! { "_id": 2 })
        .await
        .expect("insert b");
    server
        .client
        .database("other")
        .collection::<Document>("c")
        .insert_one(doc! { "_id": 3 })
        .await
        .expect("insert c");
    db.drop().await.expect("drop database");

    let colls: Vec<Option<String>> = vec![
        next(&mut db_stream).await.ns.and_then(|n| n.coll),
        next(&mut db_stream).await.ns.and_then(|n| n.coll),
    ];
    assert_eq!(colls, vec![Some("a".to_owned()), Some("b".to_owned())]);
    let mut kinds = Vec::new();
    loop {
        let event = next(&mut db_stream).await;
        kinds.push(event.operation_type.clone());
        if event.operation_type == OperationType::Invalidate {
            break;
        }
    }
    assert_eq!(
        kinds,
        vec![
            OperationType::Drop,
            OperationType::Drop,
            OperationType::DropDatabase,
            OperationType::Invalidate
        ]
    );

    let dbs: Vec<String> = [
        next(&mut all).await,
        next(&mut all).await,
        next(&mut all).await,
    ]
    .into_iter()
    .map(|e| e.ns.expect("ns").db)
    .collect();
    assert_eq!(dbs, vec!["shop", "shop", "other"]);
}

/// `updateLookup` returns the current document; `whenAvailable`/`required` use post-images
/// when the collection keeps them; pre-images appear as `fullDocumentBeforeChange`.
#[tokio::test]
async fn full_document_modes() {
    let server = common::start().await;
    let db = server.db();
    let plain = db.collection::<Document>("plain");
    plain
        .insert_one(doc! { "_id": 1, "n": 0 })
        .await
        .expect("insert");
    let mut lookup = plain
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .expect("watch");
    let mut when = plain
        .watch()
        .full_document(FullDocumentType::WhenAvailable)
        .await
        .expect("watch");
    plain
        .update_one(doc! { "_id": 1 }, doc! { "$inc": { "n": 1 } })
        .await
        .expect("update");
    assert_eq!(
        next(&mut lookup).await.full_document,
        Some(doc! { "_id": 1, "n": 1 })
    );
    assert_eq!(
        next(&mut when).await.full_document,
        None,
        "no post-image kept: null"
    );
    let mut required = plain
        .watch()
        .full_document(FullDocumentType::Required)
        .await
        .expect("watch");
    plain
        .update_one(doc! { "_id": 1 }, doc! { "$inc": { "n": 1 } })
        .await
        .expect("update");
    let err = next_error(&mut required).await;
    assert_eq!(common::code_of(&err), Some(280));

    db.run_command(
        doc! { "create": "imaged", "changeStreamPreAndPostImages": { "enabled": true } },
    )
    .await
    .expect("create with images");
    let imaged = db.collection::<Document>("imaged");
    imaged
        .insert_one(doc! { "_id": 1, "n": 0 })
        .await
        .expect("insert");
    let mut stream = imaged
        .watch()
        .full_document(FullDocumentType::Required)
        .full_document_before_change(mongodb::options::FullDocumentBeforeChangeType::Required)
        .await
        .expect("watch");
    imaged
        .update_one(doc! { "_id": 1 }, doc! { "$inc": { "n": 5 } })
        .await
        .expect("update");
    // A later change must not leak into the image of the earlier one.
    imaged
        .update_one(doc! { "_id": 1 }, doc! { "$inc": { "n": 5 } })
        .await
        .expect("update");
    let event = next(&mut stream).await;
    assert_eq!(event.full_document, Some(doc! { "_id": 1, "n": 5 }));
    assert_eq!(
        event.full_document_before_change,
        Some(doc! { "_id": 1, "n": 0 })
    );
}

/// `resumeAfter` a token, `startAfter` an invalidate and `startAtOperationTime` deliver exactly
/// the changes after that point, in order.
#[tokio::test]
async fn resume_options() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("r");
    let mut stream = coll.watch().await.expect("watch");
    coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
    let first = next(&mut stream).await;
    coll.insert_one(doc! { "_id": 2 }).await.expect("insert");
    coll.insert_one(doc! { "_id": 3 }).await.expect("insert");
    drop(stream);

    let mut resumed = coll
        .watch()
        .resume_after(first.id.clone())
        .await
        .expect("resume");
    assert_eq!(
        next(&mut resumed).await.document_key,
        Some(doc! { "_id": 2 })
    );
    assert_eq!(
        next(&mut resumed).await.document_key,
        Some(doc! { "_id": 3 })
    );

    let at = first.cluster_time.expect("clusterTime");
    let mut from_time = coll
        .watch()
        .start_at_operation_time(at)
        .await
        .expect("start at");
    assert_eq!(
        next(&mut from_time).await.document_key,
        Some(doc! { "_id": 1 }),
        "inclusive"
    );

    coll.drop().await.expect("drop");
    let mut until_drop = coll
        .watch()
        .resume_after(first.id.clone())
        .await
        .expect("resume");
    let mut invalidate = None;
    while invalidate.is_none() {
        let event = next(&mut until_drop).await;
        if event.operation_type == OperationType::Invalidate {
            invalidate = Some(event.id);
        }
    }
    let invalidate = invalidate.expect("invalidate token");
    let err = coll
        .watch()
        .resume_after(invalidate.clone())
        .await
        .expect_err("resumeAfter invalidate");
    assert_eq!(common::code_of(&err), Some(260));
    let mut after = coll
        .watch()
        .start_after(invalidate)
        .await
        .expect("startAfter invalidate");
    coll.insert_one(doc! { "_id": 4 })
        .await
        .expect("insert into new collection");
    assert_eq!(next(&mut after).await.document_key, Some(doc! { "_id": 4 }));
}

/// A user `$match` filters events, and the resume token still moves past filtered changes.
#[tokio::test]
async fn pipeline_filters_and_token_advances() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("p");
    let mut stream = coll
        .watch()
        .pipeline(vec![doc! { "$match": { "operationType": "delete" } }])
        .await
        .expect("watch");
    let start = stream.resume_token().expect("initial token");
    coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
    // The first call consumes the aggregate's (empty) first batch; the second sends a getMore.
    for _ in 0..2 {
        assert!(stream.next_if_any().await.expect("getMore").is_none());
    }
    let later = stream.resume_token().expect("token after getMore");
    assert_ne!(
        start, later,
        "postBatchResumeToken advances past the filtered insert"
    );
    coll.delete_one(doc! { "_id": 1 }).await.expect("delete");
    assert_eq!(
        next(&mut stream).await.operation_type,
        OperationType::Delete
    );

    let err = coll
        .watch()
        .pipeline(vec![doc! { "$out": "x" }])
        .await
        .expect_err("stage not allowed");
    assert_eq!(common::code_of(&err), Some(40324));
    let mut projected = coll
        .watch()
        .pipeline(vec![doc! { "$project": { "_id": 0 } }])
        .await
        .expect("watch");
    coll.insert_one(doc! { "_id": 2 }).await.expect("insert");
    let err = next_error(&mut projected).await;
    assert_eq!(common::code_of(&err), Some(280));
}

/// Counts `getMore` commands the driver sends.
#[derive(Clone, Default)]
struct GetMoreCounter(Arc<AtomicUsize>);

impl GetMoreCounter {
    fn handler(&self) -> EventHandler<CommandEvent> {
        let count = Arc::clone(&self.0);
        EventHandler::callback(move |event: CommandEvent| {
            if let CommandEvent::Started(started) = event {
                if started.command_name == "getMore" {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }
}

/// An idle stream's `getMore` waits for `maxAwaitTimeMS` instead of answering at once, and a
/// waiting `getMore` wakes up as soon as a change commits.
#[tokio::test]
async fn get_more_awaits_and_wakes() {
    let server = common::start().await;
    let counter = GetMoreCounter::default();
    let mut options = ClientOptions::parse(server.server.uri())
        .await
        .expect("uri");
    options.command_event_handler = Some(counter.handler());
    let client = mongodb::Client::with_options(options).expect("client");
    let coll = client.database("test").collection::<Document>("idle");
    let mut stream = coll
        .watch()
        .max_await_time(Duration::from_millis(300))
        .await
        .expect("watch");
    let idle = tokio::time::timeout(Duration::from_millis(1000), stream.next()).await;
    assert!(idle.is_err(), "no event while idle");
    let sent = counter.0.load(Ordering::Relaxed);
    // About three 300 ms waits fit in one second; an answer-at-once server would make hundreds.
    assert!(
        (1..=6).contains(&sent),
        "{sent} getMores in one idle second"
    );

    let mut waiting = coll
        .watch()
        .max_await_time(Duration::from_secs(30))
        .await
        .expect("watch");
    let waiter = tokio::spawn(async move { next(&mut waiting).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = counter.0.load(Ordering::Relaxed);
    coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
    let event = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken well before the 30 s await ends")
        .expect("task");
    assert_eq!(event.document_key, Some(doc! { "_id": 1 }));
    assert!(counter.0.load(Ordering::Relaxed) - before <= 2);
}

/// Every change-stream reply carries `postBatchResumeToken`, a non-zero Int64 cursor id and the
/// stream's namespace.
#[tokio::test]
async fn raw_replies_carry_post_batch_token() {
    let server = common::start().await;
    let db = server.db();
    let reply = db
        .run_command(doc! { "aggregate": 1, "pipeline": [{ "$changeStream": {} }], "cursor": {} })
        .await
        .expect("aggregate");
    let cursor = reply.get_document("cursor").expect("cursor");
    let id = cursor.get_i64("id").expect("Int64 id");
    assert_ne!(id, 0);
    assert_eq!(cursor.get_str("ns"), Ok("test.$cmd.aggregate"));
    assert!(cursor
        .get_document("postBatchResumeToken")
        .and_then(|t| t.get_str("_data"))
        .is_ok());
    let more = db
        .run_command(doc! { "getMore": id, "collection": "$cmd.aggregate", "maxTimeMS": 10 })
        .await
        .expect("getMore");
    let cursor = more.get_document("cursor").expect("cursor");
    assert_eq!(cursor.get_array("nextBatch").map(Vec::len), Ok(0));
    assert!(cursor.get_document("postBatchResumeToken").is_ok());
    assert!(more.get_timestamp("operationTime").is_ok());
}

/// Tokens that cannot be resumed from fail on the `aggregate` with MongoDB's codes, never a
/// loop: malformed (2), never issued (280), older than the kept history (286).
#[tokio::test]
async fn unusable_tokens_fail_with_codes() {
    let server = common::start_with(|c| c.history = 5).await;
    let db = server.db();
    let coll = db.collection::<Document>("h");
    let mut stream = coll.watch().await.expect("watch");
    coll.insert_one(doc! { "_id": 0 }).await.expect("insert");
    let oldest = next(&mut stream).await.id;
    for i in 1..20 {
        coll.insert_one(doc! { "_id": i }).await.expect("insert");
    }
    let open = |options: Document| {
        let db = db.clone();
        async move {
            db.run_command(
                doc! { "aggregate": "h", "pipeline": [{ "$changeStream": options }], "cursor": {} },
            )
            .await
        }
    };
    let err = open(doc! { "resumeAfter": { "_data": "nonsense" } })
        .await
        .expect_err("malformed");
    assert_eq!(common::code_of(&err), Some(2));
    let err = open(doc! { "resumeAfter": { "_data": "7FFFFFFF0000000101" } })
        .await
        .expect_err("unknown");
    assert_eq!(common::code_of(&err), Some(280));
    let err = coll
        .watch()
        .resume_after(oldest)
        .await
        .expect_err("trimmed");
    assert_eq!(common::code_of(&err), Some(286));
    let err = open(doc! { "resumeAfter": { "_data": "000000000000000101" } })
        .await
        .expect_err("ancient");
    assert_eq!(common::code_of(&err), Some(286));
    let err = open(doc! { "resumeAfter": { "_data": "000000000000000101" }, "startAfter": { "_data": "000000000000000101" } })
        .await
        .expect_err("two start options");
    assert_eq!(common::code_of(&err), Some(2));
    let err = db
        .run_command(doc! { "aggregate": "h", "pipeline": [{ "$match": {} }, { "$changeStream": {} }], "cursor": {} })
        .await
        .expect_err("not first");
    assert_eq!(common::code_of(&err), Some(40602));
}

/// A stream waiting in a `getMore` still counts as an open cursor in `serverStatus`.
#[tokio::test]
async fn waiting_stream_counts_as_open_cursor() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("counted");
    let mut stream = coll
        .watch()
        .max_await_time(Duration::from_secs(5))
        .await
        .expect("watch");
    let waiter =
        tokio::spawn(async move { stream.next().await.map(|e| e.map(|e| e.operation_type)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = server.server_status().await;
    let open = status
        .get_document("metrics")
        .and_then(|m| m.get_document("cursor"))
        .and_then(|c| c.get_document("open"))
        .and_then(|o| o.get_i64("total"));
    assert_eq!(open, Ok(1));
    coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
    let event = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken")
        .expect("task");
    assert!(matches!(event, Some(Ok(OperationType::Insert))));
}

/// `serverStatus.metrics.aggStageCounters` counts each stage of accepted pipelines, as mongod
/// does: a change stream once when it is opened, stages never used as 0.
#[tokio::test]
async fn stage_counters_count_opened_streams() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("staged");
    let first = coll.watch().await.expect("watch");
    let second = coll
        .watch()
        .pipeline([doc! { "$match": { "operationType": "insert" } }])
        .await
        .expect("watch with a pipeline");
    coll.insert_one(doc! { "_id": 1, "k": "a" })
        .await
        .expect("insert");
    let grouped = coll
        .aggregate([
            doc! { "$match": {} },
            doc! { "$group": { "_id": "$k", "n": { "$sum": 1 } } },
        ])
        .await
        .expect("aggregate");
    drop((first, second, grouped));
    let status = server.server_status().await;
    let counters = status
        .get_document("metrics")
        .and_then(|m| m.get_document("aggStageCounters"))
        .expect("aggStageCounters")
        .clone();
    assert_eq!(counters.get_i64("$changeStream"), Ok(2));
    assert_eq!(counters.get_i64("$match"), Ok(2));
    assert_eq!(counters.get_i64("$group"), Ok(1));
    assert_eq!(counters.get_i64("$sort"), Ok(0));
}
