//! The write stages: `$out` (all or nothing, the target keeps its indexes) and `$merge` (each
//! mode of `whenMatched` / `whenNotMatched`, `on` fields, `let`).

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use super::{code, common};

async fn all(c: &Collection<Document>) -> Vec<Document> {
    c.find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("docs")
}

async fn unique(c: &Collection<Document>, keys: Document) {
    let options = IndexOptions::builder().unique(true).build();
    c.create_index(IndexModel::builder().keys(keys).options(options).build())
        .await
        .expect("createIndex");
}

async fn names(db: &Database) -> Vec<String> {
    let mut names = db.list_collection_names().await.expect("names");
    names.sort();
    names
}

/// Error code of an aggregate over `orders` ending in `stages`.
async fn refused(c: &Collection<Document>, stages: Vec<Document>) -> i32 {
    let err = c.aggregate(stages).await.expect_err("refused");
    code(&err)
}

#[tokio::test]
async fn out_replaces_the_target_whole() {
    let server = common::start().await;
    let db = server.db();
    let orders = db.collection::<Document>("orders");
    orders
        .insert_many([
            doc! { "_id": 1, "who": "ada", "n": 2 },
            doc! { "_id": 2, "who": "alan", "n": 5 },
            doc! { "_id": 3, "who": "ada", "n": 4 },
        ])
        .await
        .expect("insert");
    let totals = db.collection::<Document>("totals");
    totals
        .insert_one(doc! { "_id": "old", "total": 0 })
        .await
        .expect("insert");
    unique(&totals, doc! { "total": 1 }).await;
    let mut watching = totals.watch().await.expect("watch");

    let group = doc! { "$group": { "_id": "$who", "total": { "$sum": "$n" } } };
    let out: Vec<Document> = orders
        .aggregate([group.clone(), doc! { "$out": "totals" }])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("cursor");
    assert!(out.is_empty(), "$out returns no documents");
    assert_eq!(
        all(&totals).await,
        [
            doc! { "_id": "ada", "total": 6 },
            doc! { "_id": "alan", "total": 5 }
        ]
    );
    let indexes = totals.list_index_names().await.expect("indexes");
    assert_eq!(indexes, ["_id_", "total_1"], "the target keeps its indexes");
    assert_eq!(
        names(&db).await,
        ["orders", "totals"],
        "no temporary collection is left"
    );
    let event = watching.next().await.expect("event").expect("ok");
    assert_eq!(
        event.operation_type,
        mongodb::change_stream::event::OperationType::Rename
    );

    // A result the target's unique index refuses: 11000, the target as it was.
    let clash = doc! { "$project": { "total": { "$literal": 1 } } };
    assert_eq!(
        refused(&orders, vec![clash, doc! { "$out": "totals" }]).await,
        11000
    );
    assert_eq!(all(&totals).await.len(), 2);
    assert_eq!(names(&db).await, ["orders", "totals"]);

    // Another database; an empty result makes an empty collection.
    orders
        .aggregate([
            group,
            doc! { "$out": { "db": "reports", "coll": "totals" } },
        ])
        .await
        .expect("aggregate");
    let reports = server
        .client
        .database("reports")
        .collection::<Document>("totals");
    assert_eq!(all(&reports).await.len(), 2);
    orders
        .aggregate([doc! { "$match": { "n": 99 } }, doc! { "$out": "none" }])
        .await
        .expect("aggregate");
    assert!(names(&db).await.contains(&"none".to_owned()));

    let out = doc! { "$out": "x" };
    assert_eq!(
        refused(&orders, vec![out.clone(), doc! { "$match": {} }]).await,
        40601
    );
    assert_eq!(
        refused(&orders, vec![doc! { "$out": "system.x" }]).await,
        17385
    );
    assert_eq!(refused(&orders, vec![doc! { "$out": 5 }]).await, 16990);
    assert_eq!(
        refused(&orders, vec![doc! { "$out": { "db": "d" } }]).await,
        40414
    );
    let lookup = doc! { "$lookup": { "from": "x", "pipeline": [out.clone()], "as": "y" } };
    assert_eq!(refused(&orders, vec![lookup]).await, 51047);
    let union = doc! { "$unionWith": { "coll": "x", "pipeline": [out.clone()] } };
    assert_eq!(refused(&orders, vec![union]).await, 31441);
    assert_eq!(
        refused(&orders, vec![doc! { "$facet": { "a": [out] } }]).await,
        40600
    );
}

/// `stock` holds two documents again.
async fn reset(stock: &Collection<Document>) {
    stock.delete_many(doc! {}).await.expect("clear");
    stock
        .insert_many([
            doc! { "_id": 1, "qty": 1, "note": "keep" },
            doc! { "_id": 2, "qty": 2 },
        ])
        .await
        .expect("insert");
}

/// Merges `{_id: 1, qty: 10}` and `{_id: 3, qty: 3}` as `spec` says.
async fn merge(db: &Database, spec: Document) -> mongodb::error::Result<()> {
    db.aggregate([
        doc! { "$documents": [{ "_id": 1, "qty": 10 }, { "_id": 3, "qty": 3 }] },
        doc! { "$merge": spec },
    ])
    .await
    .map(|_| ())
}

#[tokio::test]
async fn merge_modes_match_mongod() {
    let server = common::start().await;
    let db = server.db();
    let stock = db.collection::<Document>("stock");
    let reset = || reset(&stock);
    let merge = |spec: Document| merge(&db, spec);

    reset().await;
    let mut events = stock.watch().await.expect("watch");
    merge(doc! { "into": "stock" }).await.expect("merge");
    assert_eq!(
        all(&stock).await,
        [
            doc! { "_id": 1, "qty": 10, "note": "keep" },
            doc! { "_id": 2, "qty": 2 },
            doc! { "_id": 3, "qty": 3 },
        ],
        "default: merge the fields of a match, insert the rest"
    );
    let kinds: Vec<String> = [
        events.next().await.expect("event").expect("ok"),
        events.next().await.expect("event").expect("ok"),
    ]
    .iter()
    .map(|e| format!("{:?}", e.operation_type))
    .collect();
    assert_eq!(kinds, ["Update", "Insert"]);

    reset().await;
    merge(doc! { "into": "stock", "whenMatched": "replace", "whenNotMatched": "discard" })
        .await
        .expect("merge");
    assert_eq!(
        all(&stock).await,
        [doc! { "_id": 1, "qty": 10 }, doc! { "_id": 2, "qty": 2 }]
    );

    reset().await;
    merge(doc! { "into": "stock", "whenMatched": "keepExisting" })
        .await
        .expect("merge");
    assert_eq!(
        all(&stock).await[0],
        doc! { "_id": 1, "qty": 1, "note": "keep" }
    );

    reset().await;
    let add = doc! {
        "into": "stock",
        "let": { "extra": "$qty" },
        "whenMatched": [{ "$set": { "qty": { "$add": ["$qty", "$$extra", "$$new.qty"] } } }],
        "whenNotMatched": "discard",
    };
    merge(add).await.expect("merge");
    assert_eq!(
        all(&stock).await[0],
        doc! { "_id": 1, "qty": 21, "note": "keep" }
    );

    // A match with `fail`: 11000. Documents before the failing one stay written.
    reset().await;
    let err = db
        .aggregate([
            doc! { "$documents": [{ "_id": 9 }, { "_id": 1 }, { "_id": 8 }] },
            doc! { "$merge": { "into": "stock", "whenMatched": "fail" } },
        ])
        .await
        .expect_err("duplicate");
    assert_eq!(code(&err), 11000, "{err}");
    let ids: Vec<i32> = all(&stock)
        .await
        .iter()
        .filter_map(|d| d.get_i32("_id").ok())
        .collect();
    assert_eq!(ids, [1, 2, 9]);
    let err = merge(doc! { "into": "stock", "whenNotMatched": "fail" })
        .await
        .expect_err("no match");
    assert_eq!(code(&err), 13113, "{err}");

    // `on` other fields: a unique index must cover them; every result must hold them.
    let err = merge(doc! { "into": "stock", "on": "qty" })
        .await
        .expect_err("no index");
    assert_eq!(code(&err), 51183, "{err}");
    reset().await;
    unique(&stock, doc! { "qty": 1 }).await;
    db.aggregate([
        doc! { "$documents": [{ "qty": 2, "seen": true }] },
        doc! { "$merge": { "into": "stock", "on": "qty" } },
    ])
    .await
    .expect("merge on qty");
    assert_eq!(
        all(&stock).await[1],
        doc! { "_id": 2, "qty": 2, "seen": true }
    );
    let err = db
        .aggregate([
            doc! { "$documents": [{ "other": 1 }] },
            doc! { "$merge": { "into": "stock", "on": "qty" } },
        ])
        .await
        .expect_err("missing on field");
    assert_eq!(code(&err), 51132, "{err}");

    for (spec, expected) in [
        (doc! { "into": "stock", "let": { "a": 1 } }, 51199),
        (doc! { "into": 5 }, 51178),
        (doc! { "into": "stock", "on": 5 }, 51186),
        (doc! { "into": "stock", "whenMatched": 5 }, 51191),
        (doc! { "into": "stock", "whenMatched": "sometimes" }, 2),
        (
            doc! { "into": "stock", "whenMatched": [{ "$match": {} }] },
            72,
        ),
        (doc! { "into": "system.js" }, 31319),
        (doc! { "into": "stock", "extra": 1 }, 40415),
    ] {
        let err = merge(spec.clone()).await.expect_err("refused");
        assert_eq!(code(&err), expected, "{spec}: {err}");
    }
}
