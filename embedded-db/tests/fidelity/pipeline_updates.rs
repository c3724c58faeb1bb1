//! Pipeline-style updates: an array of `$set`/`$addFields`, `$unset`, `$project`,
//! `$replaceRoot`/`$replaceWith` stages on update, findAndModify and multi-statement updates.

use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;

use super::{code, common};

async fn users(server: &common::TestServer) -> Collection<Document> {
    let users = server.db().collection::<Document>("users");
    users
        .insert_many([
            doc! { "_id": 1, "fname": "Ada", "lname": "Lovelace", "old": true },
            doc! { "_id": 2, "fname": "Alan", "lname": "Turing", "old": true },
        ])
        .await
        .expect("insert");
    users
}

/// `$set` with `$concat` computes a field from others; the change
/// stream reports an `update` with the fields that changed.
#[tokio::test]
async fn set_computes_fields_from_the_document() {
    let server = common::start().await;
    let users = users(&server).await;
    let mut stream = users.watch().await.expect("watch");
    let result = users
        .update_one(
            doc! { "_id": 1 },
            vec![doc! { "$set": { "full": { "$concat": ["$fname", " ", "$lname"] } } }],
        )
        .await
        .expect("pipeline update");
    assert_eq!((result.matched_count, result.modified_count), (1, 1));
    let stored = users.find_one(doc! { "_id": 1 }).await.expect("find");
    assert_eq!(
        stored,
        Some(
            doc! { "_id": 1, "fname": "Ada", "lname": "Lovelace", "old": true, "full": "Ada Lovelace" }
        )
    );
    let event = stream.next().await.expect("event").expect("event ok");
    let description = event.update_description.expect("update description");
    assert_eq!(description.updated_fields, doc! { "full": "Ada Lovelace" });
    assert!(description.removed_fields.is_empty());

    // Nothing changes the second time: matched, not modified.
    let again = users
        .update_one(
            doc! { "_id": 1 },
            vec![doc! { "$set": { "full": { "$concat": ["$fname", " ", "$lname"] } } }],
        )
        .await
        .expect("again");
    assert_eq!((again.matched_count, again.modified_count), (1, 0));
}

/// `$unset`, `$project` and `$replaceWith` reshape every matched document; removed fields
/// are reported as removed.
#[tokio::test]
async fn stages_reshape_many_documents() {
    let server = common::start().await;
    let users = users(&server).await;
    let result = users
        .update_many(
            doc! {},
            vec![
                doc! { "$unset": ["old"] },
                doc! { "$addFields": { "initial": { "$toUpper": "$fname" } } },
                doc! { "$project": { "fname": 1, "initial": 1 } },
            ],
        )
        .await
        .expect("update many");
    assert_eq!(result.modified_count, 2);
    let all: Vec<Document> = users
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .expect("find")
        .map(|d| d.expect("doc"))
        .collect()
        .await;
    assert_eq!(
        all,
        [
            doc! { "_id": 1, "fname": "Ada", "initial": "ADA" },
            doc! { "_id": 2, "fname": "Alan", "initial": "ALAN" },
        ]
    );

    let mut stream = users.watch().await.expect("watch");
    users
        .update_one(
            doc! { "_id": 2 },
            vec![doc! { "$replaceWith": { "_id": "$_id", "name": "$fname" } }],
        )
        .await
        .expect("replaceWith");
    let stored = users.find_one(doc! { "_id": 2 }).await.expect("find");
    assert_eq!(stored, Some(doc! { "_id": 2, "name": "Alan" }));
    let event = stream.next().await.expect("event").expect("event ok");
    let description = event.update_description.expect("update description");
    assert_eq!(description.updated_fields, doc! { "name": "Alan" });
    let mut removed = description.removed_fields;
    removed.sort();
    assert_eq!(removed, ["fname", "initial"]);
}

/// findAndModify takes a pipeline too, and an upsert runs it over the query's equality
/// fields.
#[tokio::test]
async fn find_and_modify_and_upsert() {
    let server = common::start().await;
    let users = users(&server).await;
    let after = users
        .find_one_and_update(
            doc! { "_id": 2 },
            vec![doc! { "$set": { "n": { "$add": [40, 2] } } }],
        )
        .return_document(ReturnDocument::After)
        .await
        .expect("findAndModify");
    assert_eq!(after.and_then(|d| d.get_i32("n").ok()), Some(42));

    let upserted = users
        .update_one(
            doc! { "k": 7 },
            vec![doc! { "$set": { "v": { "$multiply": ["$k", 6] } } }],
        )
        .upsert(true)
        .await
        .expect("upsert");
    assert!(upserted.upserted_id.is_some());
    let stored = users
        .find_one(doc! { "k": 7 })
        .await
        .expect("find")
        .expect("stored");
    assert_eq!(stored.get_i32("v"), Ok(42));
}

/// Several pipeline statements in one `update` command (a bulk of updates).
#[tokio::test]
async fn multi_statement_update_command() {
    let server = common::start().await;
    let users = users(&server).await;
    let reply = server
        .db()
        .run_command(doc! {
            "update": "users",
            "updates": [
                { "q": { "_id": 1 }, "u": [{ "$set": { "a": 1 } }] },
                { "q": { "_id": 2 }, "u": [{ "$set": { "a": { "$add": ["$a", 2] } } }] },
            ],
        })
        .await
        .expect("update");
    let count = |field: &str| {
        reply
            .get(field)
            .and_then(|n| n.as_i32().map(i64::from).or_else(|| n.as_i64()))
    };
    assert_eq!(
        (count("n"), count("nModified")),
        (Some(2), Some(2)),
        "{reply}"
    );
    let two = users
        .find_one(doc! { "_id": 2 })
        .await
        .expect("find")
        .expect("doc");
    // `$a` is missing in document 2, so `$add` gives null.
    assert_eq!(two.get("a"), Some(&mongodb::bson::Bson::Null));
}

/// What mongod refuses: a stage other than the six (72), a changed or removed `_id` (66);
/// the document is left as it was.
#[tokio::test]
async fn refusals_leave_the_document_alone() {
    let server = common::start().await;
    let users = users(&server).await;
    let before = users.find_one(doc! { "_id": 1 }).await.expect("find");
    for (pipeline, expected) in [
        (vec![doc! { "$match": { "fname": "Ada" } }], 72),
        (vec![doc! { "$group": { "_id": null } }], 72),
        (vec![doc! { "$set": { "_id": 9 } }], 66),
        (vec![doc! { "$project": { "_id": 0, "fname": 1 } }], 66),
        (vec![doc! { "$unset": "_id" }], 66),
    ] {
        let err = users
            .update_one(doc! { "_id": 1 }, pipeline.clone())
            .await
            .expect_err("refused");
        assert_eq!(code(&err), expected, "{pipeline:?}: {err}");
    }
    let err = users
        .update_one(doc! { "_id": 1 }, vec![doc! { "$bogus": {} }])
        .await
        .expect_err("unknown stage");
    assert_eq!(code(&err), 40324, "{err}");
    let err = users
        .update_one(doc! { "_id": 1 }, vec![doc! { "$lookup": { "from": "x" } }])
        .await
        .expect_err("lookup");
    assert_eq!(code(&err), 72, "{err}");
    assert_eq!(
        users.find_one(doc! { "_id": 1 }).await.expect("find"),
        before
    );
}
