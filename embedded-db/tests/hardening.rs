//! Hostile and careless clients: what used to crash, corrupt or silently mislead the server
//! now gets a MongoDB error with mongod's code, and the server keeps serving.
//!
//! One binary, a module per area (integration binaries are expensive to link).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs `test` on a thread with a large stack: some tests build documents nested a hundred
/// levels deep, and the driver's (recursive) BSON code needs more than a test thread's
/// 2 MiB for them in a debug build. The server under test runs on its own threads.
fn on_big_stack<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(test());
        })
        .expect("thread")
        .join()
        .expect("test thread");
}

/// Sends one OP_MSG command on a fresh connection and returns the reply document.
async fn raw_command(addr: SocketAddr, body: &Document) -> Document {
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.push(0);
    body.to_writer(&mut payload).expect("encode");
    let len = i32::try_from(16 + payload.len()).expect("small");
    let mut frame = Vec::new();
    for v in [len, 1, 0, 2013] {
        frame.extend_from_slice(&v.to_le_bytes());
    }
    frame.extend_from_slice(&payload);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&frame).await.expect("send");
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut header))
        .await
        .expect("reply in time")
        .expect("reply header");
    let total = i32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let mut rest = vec![0u8; usize::try_from(total).expect("length") - 16];
    stream.read_exact(&mut rest).await.expect("reply body");
    Document::from_reader(&rest[5..]).expect("reply document")
}

/// An integer field of a reply, whichever integer type the server chose.
fn int(reply: &Document, key: &str) -> Option<i64> {
    match reply.get(key)? {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        _ => None,
    }
}

/// Sends one OP_MSG command, hangs up its side and throws away whatever comes back; returns
/// once the server has closed the connection (so the command has run).
async fn send_and_hang_up(addr: SocketAddr, body: &Document) {
    let frame = embedded_db::wire::encode_request(1, body).expect("encode");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&frame).await.expect("send");
    stream.shutdown().await.expect("half-close");
    // The server answers (into a closed socket) and then sees EOF: wait for its side to close.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
}

fn code(reply: &Document) -> Option<i32> {
    reply.get_i32("code").ok()
}

async fn ping(server: &common::TestServer) {
    let reply = server
        .db()
        .run_command(doc! { "ping": 1 })
        .await
        .expect("server still answers");
    assert_eq!(reply.get_f64("ok"), Ok(1.0));
}

/// `"a.a.…a"` with `n` components.
fn long_path(n: usize) -> String {
    vec!["a"; n].join(".")
}

/// `{a: {a: … {a: 1}}}` nesting `depth` documents.
fn nested(depth: usize) -> Document {
    let mut doc = doc! { "a": 1 };
    for _ in 1..depth {
        doc = doc! { "a": doc };
    }
    doc
}

mod bounds {
    use super::*;

    /// The issue's three crashes (projection, `$set`, `$addFields` with a path of 10⁵
    /// components) are `Overflow` (15) errors now, and the server keeps answering.
    #[tokio::test]
    async fn long_paths_are_refused_not_fatal() {
        let server = common::start().await;
        let coll: Collection<Document> = server.db().collection("c");
        coll.insert_one(doc! { "_id": 1 }).await.expect("insert");
        let projection = format!("{}.b", long_path(200_000));
        let err = coll
            .find(doc! {})
            .projection(doc! { projection: 1 })
            .await
            .expect_err("projection path too long");
        assert_eq!(common::code_of(&err), Some(15));
        let set = long_path(100_001);
        let err = coll
            .update_one(doc! {}, doc! { "$set": { set: 1 } })
            .await
            .expect_err("update path too long");
        assert_eq!(common::code_of(&err), Some(15));
        let add = long_path(100_001);
        let err = coll
            .aggregate([doc! { "$addFields": { add: 1 } }])
            .await
            .expect_err("$addFields path too long");
        assert_eq!(common::code_of(&err), Some(15));
        let sort = long_path(300);
        let err = coll
            .find(doc! { long_path(201): 1 })
            .sort(doc! { sort: 1 })
            .await
            .expect_err("filter path too long");
        assert_eq!(common::code_of(&err), Some(15));
        ping(&server).await;
        // 200 components is the limit, not past it.
        let found = coll
            .find_one(doc! { long_path(200): 1 })
            .await
            .expect("a 200-component path is fine");
        assert_eq!(found, None);
    }

    /// Documents nest at most 100 levels: deeper inserts and updates fail with 15, the
    /// limit itself is stored and read back.
    #[test]
    fn stored_documents_nest_at_most_100_levels() {
        on_big_stack(|| async {
            let server = common::start().await;
            let coll: Collection<Document> = server.db().collection("deep");
            let mut at_limit = nested(100);
            at_limit.insert("_id", 1);
            coll.insert_one(at_limit.clone())
                .await
                .expect("100 levels are stored");
            assert_eq!(
                coll.find_one(doc! { "_id": 1 }).await.expect("find"),
                Some(at_limit)
            );
            let mut too_deep = nested(101);
            too_deep.insert("_id", 2);
            let err = coll.insert_one(too_deep).await.expect_err("101 levels");
            assert_eq!(common::code_of(&err), Some(15));
            let err = coll
                .update_one(
                    doc! { "_id": 1 },
                    doc! { "$set": { format!("b.{}", long_path(100)): 1 } },
                )
                .await
                .expect_err("an update that nests 101 levels");
            assert_eq!(common::code_of(&err), Some(15));
            ping(&server).await;
        });
    }

    /// A command nesting 180 levels (a filter of 90 nested `$and`s, each a document and an
    /// array) is parsed and answered.
    #[test]
    fn messages_parse_deeply_nested_commands() {
        on_big_stack(|| async {
            let server = common::start().await;
            let mut filter = doc! { "x": 1 };
            for _ in 0..90 {
                filter = doc! { "$and": [filter] };
            }
            let reply = raw_command(
                server.server.local_addr(),
                &doc! { "count": "c", "query": filter, "$db": "test" },
            )
            .await;
            assert_eq!(reply.get_f64("ok"), Ok(1.0), "{reply}");
            ping(&server).await;
        });
    }
}

mod atomicity {
    use super::*;

    async fn unique(coll: &Collection<Document>, field: &str) {
        coll.create_index(
            IndexModel::builder()
                .keys(doc! { field: 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("unique index");
    }

    /// The issue's repro: an update refused with E11000 leaves the index as it was, so the
    /// old key still blocks a duplicate.
    #[tokio::test]
    async fn failed_update_keeps_its_index_keys() {
        let server = common::start().await;
        let coll: Collection<Document> = server.db().collection("u");
        unique(&coll, "e").await;
        coll.insert_many([doc! { "_id": 1, "e": "a" }, doc! { "_id": 2, "e": "b" }])
            .await
            .expect("insert");
        let err = coll
            .update_one(doc! { "_id": 2 }, doc! { "$set": { "e": "a" } })
            .await
            .expect_err("duplicate");
        assert_eq!(common::code_of(&err), Some(11000));
        let err = coll
            .insert_one(doc! { "_id": 9, "e": "b" })
            .await
            .expect_err("'b' still belongs to _id 2");
        assert_eq!(common::code_of(&err), Some(11000));
        assert_eq!(
            coll.find_one(doc! { "_id": 2 }).await.expect("find"),
            Some(doc! { "_id": 2, "e": "b" })
        );
    }

    /// With two unique indexes, an insert refused on the second leaves no phantom key in
    /// the first.
    #[tokio::test]
    async fn refused_insert_leaves_no_phantom_keys() {
        let server = common::start().await;
        let coll: Collection<Document> = server.db().collection("two");
        unique(&coll, "a").await;
        unique(&coll, "b").await;
        coll.insert_one(doc! { "_id": 1, "a": 1, "b": 1 })
            .await
            .expect("insert");
        let err = coll
            .insert_one(doc! { "_id": 2, "a": 2, "b": 1 })
            .await
            .expect_err("b clashes");
        assert_eq!(common::code_of(&err), Some(11000));
        coll.insert_one(doc! { "_id": 3, "a": 2, "b": 2 })
            .await
            .expect("a: 2 is free");
        let replaced = coll
            .replace_one(doc! { "_id": 3 }, doc! { "a": 1, "b": 3 })
            .await
            .expect_err("a: 1 is taken");
        assert_eq!(common::code_of(&replaced), Some(11000));
        coll.insert_one(doc! { "_id": 4, "a": 4, "b": 3 })
            .await
            .expect("b: 3 was never taken");
    }

    /// A unique index that existing documents violate is not created, and leaves nothing
    /// behind.
    #[tokio::test]
    async fn failed_index_build_leaves_nothing() {
        let server = common::start().await;
        let coll: Collection<Document> = server.db().collection("dups");
        coll.insert_many([
            doc! { "_id": 1, "k": 1 },
            doc! { "_id": 2, "k": 2 },
            doc! { "_id": 3, "k": 1 },
        ])
        .await
        .expect("insert");
        let err = coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "k": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .expect_err("existing duplicates");
        assert_eq!(common::code_of(&err), Some(11000));
        let names = coll.list_index_names().await.expect("list");
        assert_eq!(names, vec!["_id_".to_owned()]);
        coll.insert_one(doc! { "_id": 4, "k": 2 })
            .await
            .expect("no index, no clash");
    }
}

mod retryable {
    use super::*;

    fn retryable(command: Document, txn: i64) -> Document {
        let mut body = command;
        body.insert("lsid", doc! { "id": Bson::Binary(mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] }) });
        body.insert("txnNumber", txn);
        body.insert("$db", "test");
        body
    }

    /// The same `update {$inc}` sent twice with one `(lsid, txnNumber)` applies once, and
    /// the retry gets the first reply; a retried insert is not a duplicate key.
    #[tokio::test]
    async fn a_retry_is_applied_once() {
        let server = common::start().await;
        let addr = server.server.local_addr();
        let coll: Collection<Document> = server.db().collection("r");
        let insert = retryable(
            doc! { "insert": "r", "documents": [{ "_id": 1, "n": 0 }] },
            1,
        );
        for _ in 0..2 {
            let reply = raw_command(addr, &insert).await;
            assert_eq!(int(&reply, "n"), Some(1), "{reply}");
            assert!(reply.get("writeErrors").is_none(), "{reply}");
        }
        let inc = retryable(
            doc! { "update": "r", "updates": [{ "q": { "_id": 1 }, "u": { "$inc": { "n": 1 } } }] },
            2,
        );
        let first = raw_command(addr, &inc).await;
        let second = raw_command(addr, &inc).await;
        assert_eq!(int(&first, "n"), Some(1), "{first}");
        assert_eq!(first.get("nModified"), second.get("nModified"));
        assert_eq!(
            coll.find_one(doc! { "_id": 1 }).await.expect("find"),
            Some(doc! { "_id": 1, "n": 1 })
        );
        // An older txnNumber is refused.
        let old = raw_command(
            addr,
            &retryable(
                doc! { "update": "r", "updates": [{ "q": {}, "u": { "$inc": { "n": 1 } } }] },
                1,
            ),
        )
        .await;
        assert_eq!(code(&old), Some(225), "{old}");
        assert_eq!(old.get_str("codeName"), Ok("TransactionTooOld"));
    }

    /// A reply the client never uses (it hangs up and throws the reply away): the retry on a
    /// new connection gets the recorded reply and the `$inc` is applied once.
    #[tokio::test]
    async fn a_lost_reply_is_not_applied_twice() {
        let server = common::start().await;
        let addr = server.server.local_addr();
        let coll: Collection<Document> = server.db().collection("lost");
        coll.insert_one(doc! { "_id": 1, "n": 0 })
            .await
            .expect("insert");
        let inc = retryable(
            doc! { "update": "lost", "updates": [{ "q": { "_id": 1 }, "u": { "$inc": { "n": 1 } } }] },
            5,
        );
        send_and_hang_up(addr, &inc).await;
        let retry = raw_command(addr, &inc).await;
        assert_eq!(int(&retry, "n"), Some(1), "{retry}");
        assert_eq!(
            coll.find_one(doc! { "_id": 1 }).await.expect("find"),
            Some(doc! { "_id": 1, "n": 1 })
        );
    }

    /// The driver's own retry: `closeConnection` drops the first `insert`, the driver retries
    /// it once with the same transaction number, and exactly one document is stored.
    #[tokio::test]
    async fn driver_retries_through_a_dropped_connection() {
        let server = common::start_with(|c| c.enable_test_commands = true).await;
        server
            .client
            .database("admin")
            .run_command(doc! {
                "configureFailPoint": "failCommand",
                "mode": { "times": 1 },
                "data": { "failCommands": ["insert"], "closeConnection": true },
            })
            .await
            .expect("fail point");
        let coll: Collection<Document> = server.db().collection("dropped");
        coll.insert_one(doc! { "_id": 1 })
            .await
            .expect("retried by the driver");
        assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 1);
    }

    /// A retried `findAndModify` returns the recorded document, also after a restart.
    #[tokio::test]
    async fn retried_find_and_modify_returns_the_recorded_document_across_restart() {
        let server = common::start().await;
        let addr = server.server.local_addr();
        server
            .db()
            .collection::<Document>("f")
            .insert_one(doc! { "_id": 1, "n": 10 })
            .await
            .expect("insert");
        let fam = retryable(
            doc! { "findAndModify": "f", "query": { "_id": 1 }, "update": { "$inc": { "n": 5 } }, "new": true },
            3,
        );
        let first = raw_command(addr, &fam).await;
        assert_eq!(
            first.get_document("value").ok(),
            Some(&doc! { "_id": 1, "n": 15 })
        );
        let dir = server.stop().await;
        let server = common::start_with(|c| c.path = dir.path().to_path_buf()).await;
        let again = raw_command(server.server.local_addr(), &fam).await;
        assert_eq!(
            again.get_document("value").ok(),
            Some(&doc! { "_id": 1, "n": 15 })
        );
        let stored = server
            .db()
            .collection::<Document>("f")
            .find_one(doc! { "_id": 1 })
            .await
            .expect("find");
        assert_eq!(stored, Some(doc! { "_id": 1, "n": 15 }), "applied once");
        drop(dir);
    }
}

mod refusals {
    use super::*;

    /// A validator is enforced (121), `moderate` and `bypassDocumentValidation` as mongod;
    /// `$jsonSchema` is refused, not ignored.
    #[tokio::test]
    async fn validators_are_enforced() {
        let server = common::start().await;
        let db = server.db();
        db.run_command(doc! { "create": "v", "validator": { "age": { "$gte": 0 } } })
            .await
            .expect("create with validator");
        let coll: Collection<Document> = db.collection("v");
        coll.insert_one(doc! { "_id": 1, "age": 3 })
            .await
            .expect("valid");
        let err = coll
            .insert_one(doc! { "_id": 2, "age": -1 })
            .await
            .expect_err("invalid");
        assert_eq!(common::code_of(&err), Some(121));
        let err = coll
            .update_one(doc! { "_id": 1 }, doc! { "$set": { "age": -5 } })
            .await
            .expect_err("invalid update");
        assert_eq!(common::code_of(&err), Some(121));
        coll.insert_one(doc! { "_id": 3, "age": -1 })
            .bypass_document_validation(true)
            .await
            .expect("bypass");
        let err = db
            .run_command(
                doc! { "create": "js", "validator": { "$jsonSchema": { "required": ["a"] } } },
            )
            .await
            .expect_err("$jsonSchema");
        assert_eq!(common::code_of(&err), Some(238));
    }

    /// Options that would be ignored are refused with mongod's codes.
    #[tokio::test]
    async fn ignored_options_are_refused() {
        let server = common::start().await;
        let db = server.db();
        let coll: Collection<Document> = db.collection("o");
        coll.insert_one(doc! { "_id": 1, "s": "a" })
            .await
            .expect("insert");
        let french = mongodb::options::Collation::builder().locale("fr").build();
        let err = coll
            .find(doc! {})
            .collation(french)
            .await
            .expect_err("collation");
        assert_eq!(common::code_of(&err), Some(238));
        let err = db
            .run_command(doc! { "update": "o", "updates": [{ "q": {}, "u": { "$set": { "s": "b" } }, "sort": { "s": 1 } }] })
            .await
            .expect_err("sort on an update statement");
        assert_eq!(common::code_of(&err), Some(40415));
        let err = db
            .run_command(doc! { "collMod": "o", "bogus": 1 })
            .await
            .expect_err("unknown collMod key");
        assert_eq!(common::code_of(&err), Some(40415));
        let err = db
            .run_command(doc! { "find": "o", "tailable": true })
            .await
            .expect_err("tailable");
        assert_eq!(common::code_of(&err), Some(238));
    }

    /// `w` above one member, or an unknown tag, applies the write and reports a
    /// `writeConcernError` (100, 79), as a one-node replica set does.
    #[tokio::test]
    async fn unsatisfiable_write_concerns_are_reported() {
        let server = common::start().await;
        let db = server.db();
        for (w, expected) in [(Bson::Int32(2), 100), (Bson::String("dc1".into()), 79)] {
            let id = expected;
            let reply = db
                .run_command(doc! { "insert": "wc", "documents": [{ "_id": id }], "writeConcern": { "w": w } })
                .await
                .expect("the write itself succeeds");
            let wce = reply
                .get_document("writeConcernError")
                .expect("writeConcernError");
            assert_eq!(wce.get_i32("code"), Ok(expected));
        }
        let stored = db
            .collection::<Document>("wc")
            .count_documents(doc! {})
            .await
            .expect("count");
        assert_eq!(stored, 2);
    }

    /// After `batchSize: 0`, a `getMore` without a batch size returns everything left (up to
    /// 16 MiB), not an empty batch forever.
    #[tokio::test]
    async fn get_more_without_batch_size_fills_its_batch() {
        let server = common::start().await;
        let db = server.db();
        let docs: Vec<Document> = (0..250).map(|i| doc! { "_id": i }).collect();
        db.collection::<Document>("b")
            .insert_many(docs)
            .await
            .expect("insert");
        let first = db
            .run_command(doc! { "find": "b", "batchSize": 0 })
            .await
            .expect("find");
        let cursor = first.get_document("cursor").expect("cursor");
        assert!(cursor.get_array("firstBatch").expect("batch").is_empty());
        let id = cursor.get_i64("id").expect("id");
        let more = db
            .run_command(doc! { "getMore": id, "collection": "b" })
            .await
            .expect("getMore");
        let next = more.get_document("cursor").expect("cursor");
        assert_eq!(next.get_array("nextBatch").expect("batch").len(), 250);
    }
}

mod limits {
    use super::*;

    /// A blocking sort over more than 100 MB answers 292, with or without `allowDiskUse`;
    /// a top-k sort (with a limit) and an unsorted scan of the same data work.
    #[tokio::test]
    async fn large_blocking_sorts_are_refused() {
        let server = common::start().await;
        let coll: Collection<Document> = server.db().collection("big");
        let blob = "x".repeat(1024 * 1024);
        for chunk in 0..11 {
            let docs: Vec<Document> = (0..10)
                .map(|i| doc! { "_id": chunk * 10 + i, "k": -(chunk * 10 + i), "blob": &blob })
                .collect();
            coll.insert_many(docs).await.expect("insert");
        }
        for disk in [false, true] {
            let err = coll
                .find(doc! {})
                .sort(doc! { "k": 1 })
                .allow_disk_use(disk)
                .await
                .expect_err("110 MB sort");
            assert_eq!(common::code_of(&err), Some(292));
        }
        let top = coll
            .find_one(doc! {})
            .sort(doc! { "k": 1 })
            .projection(doc! { "blob": 0 })
            .await
            .expect("top-1 sort");
        assert_eq!(top, Some(doc! { "_id": 109, "k": -109 }));
        // `_id` order is the order of a scan: read lazily, whatever the collection's size.
        let by_id = coll
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .projection(doc! { "blob": 0 })
            .await
            .expect("find in _id order");
        let by_id: Vec<Document> = futures::TryStreamExt::try_collect(by_id)
            .await
            .expect("docs");
        assert_eq!(by_id.len(), 110);
        assert_eq!(by_id.first(), Some(&doc! { "_id": 0, "k": 0 }));
        let err = coll
            .aggregate([doc! { "$group": { "_id": null, "all": { "$push": "$blob" } } }])
            .await
            .expect_err("$group over 100 MB");
        assert_eq!(common::code_of(&err), Some(292));
        assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 110);
    }
}

mod max_time {
    use super::*;

    /// With `maxTimeAlwaysTimeOut` on, every command that sets `maxTimeMS` fails with 50
    /// (MaxTimeMSExpired) without doing anything, and the same commands without a limit, or
    /// after the fail point is off, succeed: the limit is checked on each of them.
    #[tokio::test]
    async fn max_time_ms_is_checked_by_every_command() {
        let server = common::start_with(|c| c.enable_test_commands = true).await;
        let db = server.db();
        let coll: Collection<Document> = db.collection("t");
        coll.insert_many((0..10).map(|i| doc! { "_id": i, "v": i }))
            .await
            .expect("insert");
        let admin = server.client.database("admin");
        admin
            .run_command(doc! { "configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "alwaysOn" })
            .await
            .expect("fail point on");
        let limit = Duration::from_secs(60);
        let expired = |r: Result<Document, mongodb::error::Error>| {
            let err = r.expect_err("time limit");
            assert_eq!(common::code_of(&err), Some(50), "{err}");
        };
        expired(
            coll.find(doc! {})
                .max_time(limit)
                .await
                .map(|_| Document::new()),
        );
        expired(
            coll.count_documents(doc! {})
                .max_time(limit)
                .await
                .map(|_| Document::new()),
        );
        expired(
            coll.distinct("v", doc! {})
                .max_time(limit)
                .await
                .map(|_| Document::new()),
        );
        expired(
            coll.aggregate([doc! { "$match": {} }])
                .max_time(limit)
                .await
                .map(|_| Document::new()),
        );
        expired(
            coll.find_one_and_update(doc! { "_id": 1 }, doc! { "$set": { "v": 100 } })
                .max_time(limit)
                .await
                .map(|_| Document::new()),
        );
        let limited = |mut command: Document| {
            command.insert("maxTimeMS", 60_000);
            command
        };
        expired(db.run_command(limited(doc! { "count": "t" })).await);
        expired(db.run_command(limited(doc! { "update": "t", "updates": [{ "q": {}, "u": { "$set": { "v": 0 } }, "multi": true }] })).await);
        expired(
            db.run_command(limited(
                doc! { "delete": "t", "deletes": [{ "q": {}, "limit": 0 }] },
            ))
            .await,
        );
        // Nothing was changed, and commands without a limit still run.
        assert_eq!(
            coll.count_documents(doc! { "v": 100 })
                .await
                .expect("count"),
            0
        );
        assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 10);
        admin
            .run_command(doc! { "configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off" })
            .await
            .expect("fail point off");
        let found = coll
            .find(doc! {})
            .max_time(limit)
            .await
            .expect("find within its limit");
        let docs: Vec<Document> = futures::TryStreamExt::try_collect(found)
            .await
            .expect("docs");
        assert_eq!(docs.len(), 10);
    }
}

mod write_timeout {
    use super::*;
    use tokio::net::TcpSocket;

    /// `serverStatus.connections` read through the driver.
    async fn connections(server: &common::TestServer) -> Document {
        server
            .server_status()
            .await
            .get_document("connections")
            .expect("connections")
            .clone()
    }

    /// Polls until `serverStatus.connections.current` is `want`, failing after `within`.
    async fn current_reaches(server: &common::TestServer, want: i64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = connections(server).await;
            if now.get_i64("current") == Ok(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "current never reached {want} within {within:?}: {now}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client that sends `find`s for 10 MB batches and never reads is cut once a reply has
    /// waited the write timeout: its slot under `max_connections` comes back (a newcomer is
    /// served) while a driver client is answered throughout.
    #[tokio::test]
    async fn unread_replies_close_the_connection() {
        const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
        // The driver holds two connections (its monitor's and a pooled one); the stalled
        // client takes the last slot.
        let server = common::start_with(|c| {
            c.write_timeout = WRITE_TIMEOUT;
            c.max_connections = 3;
        })
        .await;
        let coll: Collection<Document> = server.db().collection("big");
        let blob = "x".repeat(1_000_000);
        let docs: Vec<Document> = (0..10).map(|i| doc! { "_id": i, "blob": &blob }).collect();
        coll.insert_many(docs).await.expect("insert 10 MB");
        current_reaches(&server, 2, Duration::from_secs(5)).await;

        // Why the server's write blocks: the client's receive buffer is asked to be 4 KiB
        // (Linux doubles it to 8 KiB and, once set, no longer grows it), and the server's send
        // buffer grows to at most `net.ipv4.tcp_wmem`'s maximum (4 MiB by default). So at most
        // about 4 MiB + 8 KiB of one ~10 MB reply can leave the server's process before
        // someone reads; the rest of the reply waits in its `write_all`, and the later `find`s
        // wait unread behind it.
        let addr = server.server.local_addr();
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let mut stalled = socket.connect(addr).await.expect("connect");
        let find = doc! { "find": "big", "batchSize": 10, "$db": "test" };
        // Before the first request: the server's write, hence its deadline, starts after it.
        let sent = tokio::time::Instant::now();
        for request_id in 1..=3 {
            let frame = embedded_db::wire::encode_request(request_id, &find).expect("encode");
            stalled.write_all(&frame).await.expect("send a find");
        }
        current_reaches(&server, 3, Duration::from_secs(5)).await;

        // The slot is taken: a newcomer is accepted and closed at once.
        let mut refused = TcpStream::connect(addr).await.expect("the kernel accepts");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte))
            .await
            .expect("closed in time");
        assert_eq!(read.expect("an orderly close"), 0, "refused at the limit");
        // The driver is answered while the stalled reply waits.
        ping(&server).await;

        current_reaches(&server, 2, WRITE_TIMEOUT + Duration::from_secs(5)).await;
        assert!(
            sent.elapsed() >= WRITE_TIMEOUT,
            "cut only once the write timeout passed"
        );
        // Draining the socket ends in EOF or a reset (the server closed with requests unread),
        // never in a wait.
        let mut sink = vec![0u8; 64 * 1024];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stalled.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the stalled connection is closed");

        // Its slot is free again: a newcomer is served.
        let reply = raw_command(addr, &doc! { "ping": 1, "$db": "admin" }).await;
        assert_eq!(reply.get_f64("ok"), Ok(1.0));
        ping(&server).await;
    }
}
