//! Inserts, queries, updates, deletes and counts through the official Rust driver.

mod common;

use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::options::{FindOneAndUpdateOptions, ReturnDocument};
use mongodb::Collection;

async fn people(server: &common::TestServer) -> Collection<Document> {
    let coll = server.db().collection::<Document>("people");
    coll.insert_many(vec![
        doc! { "_id": 1, "name": "ada", "age": 36, "tags": ["math", "poet"], "address": { "city": "london" } },
        doc! { "_id": 2, "name": "alan", "age": 41, "tags": ["math"], "address": { "city": "wilmslow" } },
        doc! { "_id": 3, "name": "grace", "age": 85, "tags": ["navy", "cobol"] },
        doc! { "_id": 4, "name": "edsger", "age": 72, "tags": [] },
    ])
    .await
    .expect("seed");
    coll
}

async fn ids(coll: &Collection<Document>, filter: Document) -> Vec<i32> {
    coll.find(filter)
        .sort(doc! { "_id": 1 })
        .await
        .expect("find")
        .try_collect::<Vec<_>>()
        .await
        .expect("cursor")
        .iter()
        .map(|d| d.get_i32("_id").expect("_id"))
        .collect()
}

/// Inserted documents come back with `_id` first, generated when missing.
#[tokio::test]
async fn insert_generates_ids_and_round_trips() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("c");
    let result = coll
        .insert_one(doc! { "a": 1, "nested": { "b": [1, 2.5, "x"] } })
        .await
        .expect("insert");
    let id = result
        .inserted_id
        .as_object_id()
        .expect("ObjectId generated");
    let found = coll
        .find_one(doc! { "_id": id })
        .await
        .expect("find")
        .expect("present");
    assert_eq!(found.keys().next().map(String::as_str), Some("_id"));
    assert_eq!(
        found
            .get_document("nested")
            .and_then(|n| n.get_array("b"))
            .map(Vec::len),
        Ok(3)
    );
}

/// Duplicate `_id`s fail with 11000; ordered batches stop there, unordered ones go on.
#[tokio::test]
async fn insert_duplicate_key_ordered_and_unordered() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("c");
    coll.insert_one(doc! { "_id": 1 }).await.expect("first");
    let err = coll
        .insert_one(doc! { "_id": 1 })
        .await
        .expect_err("duplicate");
    assert_eq!(common::code_of(&err), Some(11000));
    let err = coll
        .insert_many(vec![
            doc! { "_id": 2 },
            doc! { "_id": 1 },
            doc! { "_id": 3 },
        ])
        .await
        .expect_err("ordered stops");
    assert_eq!(common::code_of(&err), Some(11000));
    assert_eq!(ids(&coll, doc! {}).await, vec![1, 2]);
    let err = coll
        .insert_many(vec![
            doc! { "_id": 4 },
            doc! { "_id": 1 },
            doc! { "_id": 5 },
        ])
        .ordered(false)
        .await
        .expect_err("unordered continues");
    assert_eq!(common::code_of(&err), Some(11000));
    assert_eq!(ids(&coll, doc! {}).await, vec![1, 2, 4, 5]);
}

/// Query operators on dotted paths with array semantics.
#[tokio::test]
async fn find_with_query_operators() {
    let server = common::start().await;
    let coll = people(&server).await;
    assert_eq!(
        ids(&coll, doc! { "age": { "$gt": 40, "$lte": 80 } }).await,
        vec![2, 4]
    );
    assert_eq!(ids(&coll, doc! { "tags": "math" }).await, vec![1, 2]);
    assert_eq!(
        ids(&coll, doc! { "tags": { "$all": ["math", "poet"] } }).await,
        vec![1]
    );
    assert_eq!(ids(&coll, doc! { "tags": { "$size": 0 } }).await, vec![4]);
    assert_eq!(ids(&coll, doc! { "address.city": "london" }).await, vec![1]);
    assert_eq!(
        ids(&coll, doc! { "address": { "$exists": false } }).await,
        vec![3, 4]
    );
    assert_eq!(
        ids(&coll, doc! { "name": { "$in": ["ada", "grace"] } }).await,
        vec![1, 3]
    );
    assert_eq!(
        ids(&coll, doc! { "name": { "$nin": ["ada", "grace"] } }).await,
        vec![2, 4]
    );
    assert_eq!(
        ids(&coll, doc! { "$or": [{ "age": 36 }, { "name": "edsger" }] }).await,
        vec![1, 4]
    );
    assert_eq!(
        ids(&coll, doc! { "$nor": [{ "age": { "$lt": 50 } }] }).await,
        vec![3, 4]
    );
    assert_eq!(
        ids(&coll, doc! { "name": { "$regex": "^A", "$options": "i" } }).await,
        vec![1, 2]
    );
    assert_eq!(
        ids(&coll, doc! { "age": { "$not": { "$gt": 40 } } }).await,
        vec![1]
    );
    assert_eq!(
        ids(
            &coll,
            doc! { "age": { "$type": "number" }, "name": { "$ne": "ada" } }
        )
        .await,
        vec![2, 3, 4]
    );
    assert_eq!(
        ids(&coll, doc! { "tags": { "$elemMatch": { "$eq": "cobol" } } }).await,
        vec![3]
    );
    let err = coll
        .find_one(doc! { "age": { "$bogus": 1 } })
        .await
        .expect_err("unknown operator");
    assert_eq!(common::code_of(&err), Some(2));
}

/// Projection (inclusion, exclusion, `_id` exclusion), sort, skip and limit.
#[tokio::test]
async fn find_projection_sort_skip_limit() {
    let server = common::start().await;
    let coll = people(&server).await;
    let docs: Vec<Document> = coll
        .find(doc! {})
        .projection(doc! { "name": 1, "_id": 0 })
        .sort(doc! { "age": -1 })
        .skip(1)
        .limit(2)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(
        docs,
        vec![doc! { "name": "edsger" }, doc! { "name": "alan" }]
    );
    let excluded = coll
        .find_one(doc! { "_id": 1 })
        .projection(doc! { "tags": 0, "address": 0 })
        .await
        .expect("find");
    assert_eq!(excluded, Some(doc! { "_id": 1, "name": "ada", "age": 36 }));
    let err = coll
        .find_one(doc! {})
        .projection(doc! { "a": 1, "b": 0 })
        .await
        .expect_err("mixed projection");
    assert!(common::code_of(&err).is_some());
}

/// Sorting across BSON types follows MongoDB's order (null < numbers < strings < objects …).
#[tokio::test]
async fn sort_uses_bson_type_order() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("mixed");
    coll.insert_many(vec![
        doc! { "_id": 1, "v": "b" },
        doc! { "_id": 2, "v": 10 },
        doc! { "_id": 3, "v": Bson::Null },
        doc! { "_id": 4, "v": 2.5 },
        doc! { "_id": 5, "v": { "x": 1 } },
        doc! { "_id": 6 },
        doc! { "_id": 7, "v": "a" },
        doc! { "_id": 8, "v": true },
    ])
    .await
    .expect("seed");
    let order: Vec<i32> = coll
        .find(doc! {})
        .sort(doc! { "v": 1, "_id": 1 })
        .await
        .expect("find")
        .try_collect::<Vec<_>>()
        .await
        .expect("cursor")
        .iter()
        .map(|d| d.get_i32("_id").expect("_id"))
        .collect();
    assert_eq!(order, vec![3, 6, 4, 2, 7, 1, 5, 8]);
}

/// Results larger than a batch are fetched with `getMore`; a dropped cursor is killed.
#[tokio::test]
async fn cursors_page_with_get_more() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("many");
    coll.insert_many((0..250).map(|i| doc! { "_id": i }))
        .await
        .expect("seed");
    let all: Vec<Document> = coll
        .find(doc! {})
        .batch_size(7)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(all.len(), 250);
    assert_eq!(all.last().and_then(|d| d.get_i32("_id").ok()), Some(249));
    // Open a cursor, read one batch and kill it explicitly through the command.
    let reply = server
        .db()
        .run_command(doc! { "find": "many", "batchSize": 2 })
        .await
        .expect("find");
    let cursor = reply.get_document("cursor").expect("cursor");
    let id = cursor.get_i64("id").expect("Int64 cursor id");
    assert_ne!(id, 0);
    assert_eq!(cursor.get_str("ns"), Ok("test.many"));
    let killed = server
        .db()
        .run_command(doc! { "killCursors": "many", "cursors": [id, 12345_i64] })
        .await
        .expect("killCursors");
    assert_eq!(
        killed.get_array("cursorsKilled"),
        Ok(&vec![Bson::Int64(id)])
    );
    assert_eq!(
        killed.get_array("cursorsNotFound"),
        Ok(&vec![Bson::Int64(12345)])
    );
    let err = server
        .db()
        .run_command(doc! { "getMore": id, "collection": "many" })
        .await
        .expect_err("killed");
    assert_eq!(common::code_of(&err), Some(43));
}

/// Update operators, multi updates and the `updatedFields` they report.
#[tokio::test]
async fn update_operators() {
    let server = common::start().await;
    let coll = people(&server).await;
    let result = coll
        .update_one(
            doc! { "_id": 1 },
            doc! {
                "$set": { "address.zip": "N1" },
                "$inc": { "age": 1 },
                "$push": { "tags": { "$each": ["a", "b"], "$slice": -3 } },
                "$unset": { "name": "" },
                "$currentDate": { "seen": true },
            },
        )
        .await
        .expect("update");
    assert_eq!((result.matched_count, result.modified_count), (1, 1));
    let ada = coll
        .find_one(doc! { "_id": 1 })
        .await
        .expect("find")
        .expect("present");
    assert_eq!(ada.get_i32("age"), Ok(37));
    assert_eq!(
        ada.get_document("address").and_then(|a| a.get_str("zip")),
        Ok("N1")
    );
    assert_eq!(ada.get_array("tags").map(Vec::len), Ok(3));
    assert!(ada.get("name").is_none());
    assert!(ada.get_datetime("seen").is_ok());
    let many = coll
        .update_many(
            doc! { "tags": "math" },
            doc! { "$addToSet": { "tags": "logic" }, "$mul": { "age": 2 } },
        )
        .await
        .expect("update many");
    assert_eq!((many.matched_count, many.modified_count), (1, 1));
    let same = coll
        .update_one(doc! { "_id": 2 }, doc! { "$set": { "name": "alan" } })
        .await
        .expect("no-op");
    assert_eq!((same.matched_count, same.modified_count), (1, 0));
    coll.update_one(
        doc! { "_id": 3 },
        doc! { "$pull": { "tags": "navy" }, "$rename": { "age": "years" }, "$max": { "rank": 5 } },
    )
    .await
    .expect("pull and rename");
    let grace = coll
        .find_one(doc! { "_id": 3 })
        .await
        .expect("find")
        .expect("present");
    assert_eq!(
        grace.get_array("tags"),
        Ok(&vec![Bson::String("cobol".into())])
    );
    assert_eq!(grace.get_i32("years"), Ok(85));
    assert_eq!(grace.get_i32("rank"), Ok(5));
    let err = coll
        .update_one(doc! { "_id": 3 }, doc! { "$inc": { "tags": 1 } })
        .await
        .expect_err("type");
    assert_eq!(common::code_of(&err), Some(14));
    let err = coll
        .update_one(doc! { "_id": 3 }, doc! { "$set": { "_id": 9 } })
        .await
        .expect_err("immutable");
    assert_eq!(common::code_of(&err), Some(66));
    let err = coll
        .update_one(doc! { "_id": 3 }, doc! { "$frobnicate": { "a": 1 } })
        .await
        .expect_err("unknown modifier");
    assert_eq!(common::code_of(&err), Some(9));
}

/// Replacement keeps `_id`; upserts build the new document from the query's equality fields.
#[tokio::test]
async fn replace_and_upsert() {
    let server = common::start().await;
    let coll = people(&server).await;
    coll.replace_one(doc! { "_id": 2 }, doc! { "name": "turing" })
        .await
        .expect("replace");
    assert_eq!(
        coll.find_one(doc! { "_id": 2 }).await.expect("find"),
        Some(doc! { "_id": 2, "name": "turing" })
    );
    let up = coll
        .update_one(
            doc! { "name": "barbara", "meta.kind": "new" },
            doc! { "$set": { "age": 1 }, "$setOnInsert": { "created": true } },
        )
        .upsert(true)
        .await
        .expect("upsert");
    let id = up.upserted_id.expect("upserted");
    let created = coll
        .find_one(doc! { "_id": id.clone() })
        .await
        .expect("find")
        .expect("present");
    assert_eq!(created.get_str("name"), Ok("barbara"));
    assert_eq!(
        created.get_document("meta").and_then(|m| m.get_str("kind")),
        Ok("new")
    );
    assert_eq!(created.get_bool("created"), Ok(true));
    let again = coll
        .update_one(
            doc! { "name": "barbara" },
            doc! { "$set": { "age": 2 }, "$setOnInsert": { "created": false } },
        )
        .upsert(true)
        .await
        .expect("update existing");
    assert!(again.upserted_id.is_none());
    assert_eq!(
        coll.find_one(doc! { "_id": id })
            .await
            .expect("find")
            .and_then(|d| d.get_bool("created").ok()),
        Some(true)
    );
    let replaced = coll
        .replace_one(doc! { "_id": 99 }, doc! { "x": 1 })
        .upsert(true)
        .await
        .expect("replace upsert");
    assert_eq!(replaced.upserted_id, Some(Bson::Int32(99)));
}

/// `deleteOne` removes the first match, `deleteMany` every match.
#[tokio::test]
async fn delete_one_and_many() {
    let server = common::start().await;
    let coll = people(&server).await;
    assert_eq!(
        coll.delete_one(doc! { "tags": "math" })
            .await
            .expect("delete")
            .deleted_count,
        1
    );
    assert_eq!(ids(&coll, doc! {}).await, vec![2, 3, 4]);
    assert_eq!(
        coll.delete_many(doc! { "age": { "$gt": 50 } })
            .await
            .expect("delete")
            .deleted_count,
        2
    );
    assert_eq!(ids(&coll, doc! {}).await, vec![2]);
    assert_eq!(
        coll.delete_many(doc! { "nothing": 1 })
            .await
            .expect("delete")
            .deleted_count,
        0
    );
}

/// `findAndModify`: before/after images, sort, upsert, remove, projection.
#[tokio::test]
async fn find_and_modify_variants() {
    let server = common::start().await;
    let coll = people(&server).await;
    let before = coll
        .find_one_and_update(doc! { "tags": "math" }, doc! { "$inc": { "age": 10 } })
        .sort(doc! { "age": -1 })
        .await
        .expect("update")
        .expect("matched");
    assert_eq!(before.get_i32("_id"), Ok(2));
    assert_eq!(before.get_i32("age"), Ok(41));
    let options = FindOneAndUpdateOptions::builder()
        .return_document(ReturnDocument::After)
        .upsert(true)
        .projection(doc! { "age": 1 })
        .build();
    let after = coll
        .find_one_and_update(doc! { "_id": 10 }, doc! { "$set": { "age": 5 } })
        .with_options(options)
        .await
        .expect("upsert")
        .expect("new document");
    assert_eq!(after, doc! { "_id": 10, "age": 5 });
    let replaced = coll
        .find_one_and_replace(doc! { "_id": 3 }, doc! { "name": "hopper" })
        .return_document(ReturnDocument::After)
        .await
        .expect("replace");
    assert_eq!(replaced, Some(doc! { "_id": 3, "name": "hopper" }));
    let removed = coll
        .find_one_and_delete(doc! { "_id": 4 })
        .await
        .expect("delete");
    assert_eq!(
        removed.and_then(|d| d.get_str("name").ok().map(str::to_owned)),
        Some("edsger".into())
    );
    assert!(coll
        .find_one_and_delete(doc! { "_id": 4 })
        .await
        .expect("delete")
        .is_none());
}

/// `countDocuments` (aggregate), `estimatedDocumentCount` (count) and `distinct`.
#[tokio::test]
async fn counts_and_distinct() {
    let server = common::start().await;
    let coll = people(&server).await;
    assert_eq!(
        coll.count_documents(doc! { "age": { "$gte": 41 } })
            .await
            .expect("count"),
        3
    );
    assert_eq!(
        coll.count_documents(doc! {})
            .skip(1)
            .limit(2)
            .await
            .expect("count"),
        2
    );
    assert_eq!(coll.estimated_document_count().await.expect("estimate"), 4);
    let missing = server.db().collection::<Document>("missing");
    assert_eq!(missing.count_documents(doc! {}).await.expect("count"), 0);
    assert_eq!(
        missing.estimated_document_count().await.expect("estimate"),
        0
    );
    let tags = coll.distinct("tags", doc! {}).await.expect("distinct");
    assert_eq!(tags.len(), 4);
    let cities = coll
        .distinct("address.city", doc! { "age": { "$lt": 40 } })
        .await
        .expect("distinct");
    assert_eq!(cities, vec![Bson::String("london".into())]);
}

/// Aggregation stages beyond counting.
#[tokio::test]
async fn aggregate_pipeline() {
    let server = common::start().await;
    let coll = people(&server).await;
    let out: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$match": { "age": { "$gt": 30 } } },
            doc! { "$unwind": "$tags" },
            doc! { "$group": { "_id": "$tags", "n": { "$sum": 1 }, "avgAge": { "$avg": "$age" }, "who": { "$addToSet": "$name" } } },
            doc! { "$sort": { "n": -1, "_id": 1 } },
            doc! { "$limit": 2 },
            doc! { "$project": { "n": 1, "avgAge": 1 } },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(
        out,
        vec![
            doc! { "_id": "math", "n": 2, "avgAge": 38.5 },
            doc! { "_id": "cobol", "n": 1, "avgAge": 85.0 }
        ]
    );
    let counted: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$match": { "tags": "math" } },
            doc! { "$count": "total" },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(counted, vec![doc! { "total": 2 }]);
    let err = coll
        .aggregate(vec![doc! { "$frob": {} }])
        .await
        .expect_err("unknown stage");
    assert_eq!(common::code_of(&err), Some(40324));
}

/// Writes from many connections at once are all applied exactly once.
#[tokio::test]
async fn concurrent_writers_stay_consistent() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("counter");
    coll.insert_one(doc! { "_id": "c", "n": 0 })
        .await
        .expect("seed");
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let coll = coll.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                coll.update_one(doc! { "_id": "c" }, doc! { "$inc": { "n": 1 } })
                    .await
                    .expect("inc");
                coll.insert_one(doc! { "_id": ObjectId::new(), "worker": worker, "i": i })
                    .await
                    .expect("insert");
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    let counter = coll
        .find_one(doc! { "_id": "c" })
        .await
        .expect("find")
        .expect("present");
    assert_eq!(counter.get_i32("n"), Ok(320));
    assert_eq!(
        coll.count_documents(doc! { "worker": { "$exists": true } })
            .await
            .expect("count"),
        320
    );
}

/// Positional updates (`$`, `$[]`, `$[ident]` with `arrayFilters`) and positional projection.
#[tokio::test]
async fn positional_updates_and_projection() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("grades");
    coll.insert_one(doc! { "_id": 1, "scores": [70, 85, 90], "items": [{ "k": "a", "n": 1 }, { "k": "b", "n": 2 }] })
        .await
        .expect("seed");
    coll.update_one(
        doc! { "_id": 1, "scores": 85 },
        doc! { "$set": { "scores.$": 86 } },
    )
    .await
    .expect("positional $");
    coll.update_one(doc! { "_id": 1 }, doc! { "$inc": { "items.$[].n": 10 } })
        .await
        .expect("all positional");
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "scores.$[low]": 0 } })
        .array_filters(vec![doc! { "low": { "$lt": 80 } }])
        .await
        .expect("filtered positional");
    let doc = coll
        .find_one(doc! { "_id": 1 })
        .await
        .expect("find")
        .expect("present");
    assert_eq!(
        doc.get_array("scores"),
        Ok(&vec![Bson::Int32(0), Bson::Int32(86), Bson::Int32(90)])
    );
    let ns: Vec<i32> = doc
        .get_array("items")
        .expect("items")
        .iter()
        .filter_map(|i| i.as_document().and_then(|d| d.get_i32("n").ok()))
        .collect();
    assert_eq!(ns, vec![11, 12]);
    let err = coll
        .update_one(
            doc! { "_id": 1 },
            doc! { "$set": { "scores.$[missing]": 1 } },
        )
        .await
        .expect_err("identifier without arrayFilters");
    assert!(common::code_of(&err).is_some());
    let projected = coll
        .find_one(doc! { "items.k": "b" })
        .projection(doc! { "items.$": 1 })
        .await
        .expect("find")
        .expect("present");
    assert_eq!(
        projected,
        doc! { "_id": 1, "items": [{ "k": "b", "n": 12 }] }
    );
}
