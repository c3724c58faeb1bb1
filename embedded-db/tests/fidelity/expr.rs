//! `$expr`: an aggregation expression over the whole document, in every filter.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::{code, common};

#[tokio::test]
async fn expr_compares_fields_in_find_count_update_and_delete() {
    let server = common::start().await;
    let c = server.db().collection::<Document>("budgets");
    c.insert_many([
        doc! { "_id": 1, "spent": 120, "budget": 100 },
        doc! { "_id": 2, "spent": 80, "budget": 100 },
        doc! { "_id": 3, "spent": 150, "budget": 150 },
        doc! { "_id": 4, "spent": 10, "budget": 0 },
    ])
    .await
    .expect("insert");
    let over = doc! { "$expr": { "$gt": ["$spent", "$budget"] } };
    let ids: Vec<i32> = c
        .find(over.clone())
        .sort(doc! { "_id": 1 })
        .await
        .expect("find")
        .try_collect::<Vec<Document>>()
        .await
        .expect("docs")
        .iter()
        .filter_map(|d| d.get_i32("_id").ok())
        .collect();
    assert_eq!(ids, [1, 4]);
    assert_eq!(c.count_documents(over.clone()).await.expect("count"), 2);
    // Inside $or, next to a plain condition.
    let either = doc! { "$or": [{ "_id": 2 }, { "$expr": { "$eq": ["$spent", "$budget"] } }] };
    assert_eq!(c.count_documents(either).await.expect("count"), 2);
    // An expression that fails on a document (division by zero) fails the query, as in
    // mongod; nothing is written by a write that uses it.
    let ratio = doc! { "$expr": { "$gt": [{ "$divide": ["$spent", "$budget"] }, 1] } };
    let err = c.count_documents(ratio.clone()).await.expect_err("fails");
    assert_eq!(code(&err), 2, "{err}");
    let err = c
        .update_many(ratio, doc! { "$set": { "seen": true } })
        .await
        .expect_err("fails");
    assert_eq!(code(&err), 2, "{err}");
    assert_eq!(
        c.count_documents(doc! { "seen": true })
            .await
            .expect("count"),
        0
    );
    // Not inside $elemMatch (mongod: top-level document only).
    let inner = doc! { "tags": { "$elemMatch": { "$expr": { "$eq": [1, 1] } } } };
    assert_eq!(
        code(&c.count_documents(inner).await.expect_err("refused")),
        2
    );

    let updated = c
        .update_many(over.clone(), doc! { "$set": { "over": true } })
        .await
        .expect("update");
    assert_eq!(updated.modified_count, 2);
    let deleted = c.delete_many(over).await.expect("delete");
    assert_eq!(deleted.deleted_count, 2);
    assert_eq!(c.count_documents(doc! {}).await.expect("count"), 2);
    // In an aggregation's $match too.
    let matched: Vec<Document> = c
        .aggregate([doc! { "$match": { "$expr": { "$lt": ["$spent", "$budget"] } } }])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("docs");
    assert_eq!(matched.len(), 1);
}
