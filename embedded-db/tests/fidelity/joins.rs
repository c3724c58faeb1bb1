//! `$lookup` (equality and pipeline forms) and `$unionWith`.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

use super::common;

async fn seeded(server: &common::TestServer) {
    let db = server.db();
    db.collection::<Document>("orders")
        .insert_many([
            doc! { "_id": 1, "item": "pen", "qty": 2 },
            doc! { "_id": 2, "item": "ink", "qty": 5 },
            doc! { "_id": 3, "item": ["pen", "pad"], "qty": 1 },
            doc! { "_id": 4, "qty": 9 },
        ])
        .await
        .expect("orders");
    db.collection::<Document>("stock")
        .insert_many([
            doc! { "_id": "a", "sku": "pen", "left": 3 },
            doc! { "_id": "b", "sku": "pad", "left": 0 },
            doc! { "_id": "c", "sku": "ink", "left": 10 },
            doc! { "_id": "d", "left": 1 },
        ])
        .await
        .expect("stock");
}

async fn run(server: &common::TestServer, pipeline: Vec<Document>) -> Vec<Document> {
    server
        .db()
        .collection::<Document>("orders")
        .aggregate(pipeline)
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("docs")
}

fn ids(docs: &Bson) -> Vec<Bson> {
    docs.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_document().and_then(|d| d.get("_id")).cloned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn lookup_by_equal_fields() {
    let server = common::start().await;
    seeded(&server).await;
    let out = run(
        &server,
        vec![
            doc! { "$lookup": { "from": "stock", "localField": "item", "foreignField": "sku", "as": "stock" } },
            doc! { "$sort": { "_id": 1 } },
        ],
    )
    .await;
    let joined: Vec<Vec<Bson>> = out
        .iter()
        .map(|d| ids(d.get("stock").expect("as")))
        .collect();
    assert_eq!(
        joined,
        [
            vec![Bson::String("a".into())],
            vec![Bson::String("c".into())],
            // An array local field matches each element.
            vec![Bson::String("a".into()), Bson::String("b".into())],
            // A missing local field matches a missing foreign field (both null).
            vec![Bson::String("d".into())],
        ]
    );
    // A missing collection joins nothing.
    let none = run(
        &server,
        vec![doc! { "$lookup": { "from": "nope", "localField": "item", "foreignField": "sku", "as": "x" } }],
    )
    .await;
    assert!(none
        .iter()
        .all(|d| d.get_array("x").is_ok_and(Vec::is_empty)));
}

#[tokio::test]
async fn lookup_with_a_pipeline_and_variables() {
    let server = common::start().await;
    seeded(&server).await;
    let out = run(
        &server,
        vec![
            doc! { "$match": { "_id": { "$in": [1, 2] } } },
            doc! { "$lookup": {
                "from": "stock",
                "let": { "wanted": "$qty", "sku": "$item" },
                "pipeline": [
                    { "$match": { "$expr": { "$and": [
                        { "$eq": ["$sku", "$$sku"] },
                        { "$gte": ["$left", "$$wanted"] },
                    ] } } },
                    { "$project": { "_id": 1 } },
                ],
                "as": "enough",
            } },
            doc! { "$sort": { "_id": 1 } },
        ],
    )
    .await;
    assert_eq!(
        out[0].get_array("enough").map(Vec::len),
        Ok(1),
        "3 pens left, 2 wanted"
    );
    assert_eq!(
        out[1].get_array("enough").map(Vec::len),
        Ok(1),
        "10 ink left, 5 wanted"
    );
    // Equality and pipeline together.
    let both = run(
        &server,
        vec![
            doc! { "$match": { "_id": 3 } },
            doc! { "$lookup": {
                "from": "stock", "localField": "item", "foreignField": "sku",
                "pipeline": [{ "$match": { "left": { "$gt": 0 } } }],
                "as": "available",
            } },
        ],
    )
    .await;
    assert_eq!(
        ids(both[0].get("available").expect("as")),
        [Bson::String("a".into())]
    );
}

#[tokio::test]
async fn union_with_appends_another_collection() {
    let server = common::start().await;
    seeded(&server).await;
    let out = run(
        &server,
        vec![
            doc! { "$project": { "_id": 1 } },
            doc! { "$unionWith": { "coll": "stock", "pipeline": [{ "$match": { "left": { "$gt": 2 } } }, { "$project": { "_id": 1 } }] } },
        ],
    )
    .await;
    let got: Vec<Bson> = out.iter().filter_map(|d| d.get("_id").cloned()).collect();
    assert_eq!(got.len(), 6, "{got:?}");
    let plain = run(&server, vec![doc! { "$unionWith": "stock" }]).await;
    assert_eq!(plain.len(), 8);
}

#[tokio::test]
async fn bad_joins_are_refused() {
    let server = common::start().await;
    seeded(&server).await;
    let orders = server.db().collection::<Document>("orders");
    for (stage, expected) in [
        (doc! { "$lookup": { "from": "stock", "as": "x" } }, 9),
        (
            doc! { "$lookup": { "from": "stock", "localField": "a", "as": "x" } },
            9,
        ),
        (
            doc! { "$lookup": { "localField": "a", "foreignField": "b", "as": "x" } },
            9,
        ),
        (
            doc! { "$lookup": { "from": "stock", "pipeline": [{ "$bogus": 1 }], "as": "x" } },
            40324,
        ),
        (
            doc! { "$lookup": { "from": "stock", "pipeline": [{ "$lookup": { "from": "o", "pipeline": [], "as": "y" } }], "as": "x" } },
            238,
        ),
        (doc! { "$unionWith": 5 }, 9),
    ] {
        let err = orders
            .aggregate([stage.clone()])
            .await
            .expect_err("refused");
        assert_eq!(super::code(&err), expected, "{stage}");
    }
}
