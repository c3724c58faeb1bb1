//! Database-level `aggregate` with `$documents`.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::common;

#[tokio::test]
async fn documents_feed_a_database_level_pipeline() {
    let server = common::start().await;
    let db = server.db();
    db.collection::<Document>("prices")
        .insert_many([
            doc! { "_id": "pen", "price": 2 },
            doc! { "_id": "ink", "price": 7 },
        ])
        .await
        .expect("insert");
    let out: Vec<Document> = db
        .aggregate([
            doc! { "$documents": [{ "item": "pen", "n": 3 }, { "item": "ink", "n": 1 }, { "item": "pad", "n": 9 }] },
            doc! { "$match": { "n": { "$lt": 5 } } },
            doc! { "$lookup": { "from": "prices", "localField": "item", "foreignField": "_id", "as": "price" } },
            doc! { "$project": { "_id": 0, "item": 1, "price": "$price.price" } },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("docs");
    assert_eq!(
        out,
        [
            doc! { "item": "pen", "price": [2] },
            doc! { "item": "ink", "price": [7] }
        ]
    );

    let on_collection = db
        .collection::<Document>("prices")
        .aggregate([doc! { "$documents": [{ "a": 1 }] }])
        .await
        .expect_err("refused");
    assert_eq!(super::code(&on_collection), 73);
    let not_array = db
        .aggregate([doc! { "$documents": 5 }])
        .await
        .expect_err("refused");
    assert_eq!(super::code(&not_array), 14);
}
