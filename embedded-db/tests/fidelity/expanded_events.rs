//! Change streams opened with `showExpandedEvents`: catalog events, `collectionUUID`,
//! `operationDescription` and `disambiguatedPaths`.

use futures::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::ChangeStream;
use mongodb::{Database, IndexModel};

use super::{code, common};

async fn next(stream: &mut ChangeStream<Document>) -> Document {
    stream
        .next()
        .await
        .expect("an event")
        .expect("not an error")
}

async fn expanded(db: &Database) -> ChangeStream<Document> {
    db.watch()
        .show_expanded_events(true)
        .await
        .expect("watch")
        .with_type::<Document>()
}

async fn uuid_of(db: &Database, name: &str) -> Bson {
    let reply = db
        .run_command(doc! { "listCollections": 1, "filter": { "name": name } })
        .await
        .expect("listCollections");
    reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .ok()
        .and_then(|batch| batch.first())
        .and_then(Bson::as_document)
        .and_then(|entry| entry.get_document("info").ok())
        .and_then(|info| info.get("uuid"))
        .cloned()
        .expect("a collection UUID")
}

fn op(event: &Document) -> &str {
    event.get_str("operationType").unwrap_or_default()
}

/// Every catalog change is an event of its own, each with the collection's UUID; a stream
/// without the flag sees only the document changes and the rename, as before.
#[tokio::test]
async fn catalog_changes_are_reported() {
    let server = common::start().await;
    let db = server.db();
    db.create_collection("target").await.expect("create");
    let target_uuid = uuid_of(&db, "target").await;
    let mut stream = expanded(&db).await;
    let mut plain = db.watch().await.expect("watch").with_type::<Document>();
    let mut on_target = db
        .collection::<Document>("target")
        .watch()
        .await
        .expect("watch")
        .with_type::<Document>();

    let things = db.collection::<Document>("things");
    things.insert_one(doc! { "_id": 1 }).await.expect("insert");
    let uuid = uuid_of(&db, "things").await;
    things
        .create_index(IndexModel::builder().keys(doc! { "x": 1 }).build())
        .await
        .expect("createIndex");
    let validator = doc! { "x": { "$exists": false } };
    db.run_command(doc! { "collMod": "things", "validator": validator.clone() })
        .await
        .expect("collMod");
    things.drop_index("x_1").await.expect("dropIndex");
    // A createIndexes that fails on its second index (two documents without `z`) builds
    // nothing and announces nothing.
    things.insert_one(doc! { "_id": 2 }).await.expect("insert");
    let clash = db
        .run_command(doc! { "createIndexes": "things", "indexes": [
            { "key": { "y": 1 }, "name": "y_1" },
            { "key": { "z": 1 }, "name": "z_1", "unique": true },
        ] })
        .await
        .expect_err("duplicate keys");
    assert_eq!(code(&clash), 11000, "{clash}");
    assert_eq!(things.list_index_names().await.expect("indexes"), ["_id_"]);
    server
        .client
        .database("admin")
        .run_command(
            doc! { "renameCollection": "test.things", "to": "test.target", "dropTarget": true },
        )
        .await
        .expect("rename");
    db.collection::<Document>("target")
        .insert_one(doc! { "_id": "last" })
        .await
        .expect("insert");

    let create = next(&mut stream).await;
    assert_eq!(op(&create), "create");
    assert_eq!(
        create.get_document("ns"),
        Ok(&doc! { "db": "test", "coll": "things" })
    );
    assert_eq!(create.get("collectionUUID"), Some(&uuid));
    assert_eq!(
        create.get_document("operationDescription"),
        Ok(&doc! { "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_" } })
    );
    let insert = next(&mut stream).await;
    assert_eq!(op(&insert), "insert");
    assert_eq!(insert.get("collectionUUID"), Some(&uuid));
    let created = next(&mut stream).await;
    assert_eq!(op(&created), "createIndexes");
    assert_eq!(
        created.get_document("operationDescription"),
        Ok(&doc! { "indexes": [{ "v": 2, "key": { "x": 1 }, "name": "x_1" }] })
    );
    let modify = next(&mut stream).await;
    assert_eq!(op(&modify), "modify");
    assert_eq!(
        modify.get_document("operationDescription"),
        Ok(&doc! { "validator": validator })
    );
    assert_eq!(
        modify.get_document("stateBeforeChange"),
        Ok(&doc! { "collectionOptions": { "uuid": uuid.clone() } })
    );
    let dropped = next(&mut stream).await;
    assert_eq!(op(&dropped), "dropIndexes");
    assert_eq!(
        dropped.get_document("operationDescription"),
        Ok(&doc! { "indexes": [{ "v": 2, "key": { "x": 1 }, "name": "x_1" }] })
    );
    assert_eq!(op(&next(&mut stream).await), "insert");
    let rename = next(&mut stream).await;
    assert_eq!(op(&rename), "rename", "{rename}");
    assert_eq!(rename.get("collectionUUID"), Some(&uuid));
    assert_eq!(
        rename.get_document("operationDescription"),
        Ok(&doc! { "to": { "db": "test", "coll": "target" }, "dropTarget": target_uuid })
    );
    let last = next(&mut stream).await;
    assert_eq!(op(&last), "insert", "the replaced target has no drop event");

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next(&mut plain).await);
    }
    let ops: Vec<String> = seen
        .iter()
        .map(|e| {
            assert!(!e.contains_key("collectionUUID"), "{e}");
            assert!(!e.contains_key("operationDescription"), "{e}");
            op(e).to_owned()
        })
        .collect();
    assert_eq!(ops, ["insert", "insert", "rename", "insert"]);

    // The replaced collection's own stream sees the rename, then ends.
    assert_eq!(op(&next(&mut on_target).await), "rename");
    assert_eq!(op(&next(&mut on_target).await), "invalidate");
}

/// A stream opened before a collection exists hears of its explicit creation, options
/// included.
#[tokio::test]
async fn create_carries_the_options() {
    let server = common::start().await;
    let db = server.db();
    let mut stream = expanded(&db).await;
    db.run_command(doc! { "create": "kept", "changeStreamPreAndPostImages": { "enabled": true } })
        .await
        .expect("create");
    let create = next(&mut stream).await;
    assert_eq!(op(&create), "create");
    assert_eq!(
        create.get_document("operationDescription"),
        Ok(&doc! {
            "idIndex": { "v": 2, "key": { "_id": 1 }, "name": "_id_" },
            "changeStreamPreAndPostImages": { "enabled": true },
        })
    );
    let err = db
        .run_command(doc! {
            "aggregate": 1, "pipeline": [{ "$changeStream": { "showExpandedEvents": "yes" } }], "cursor": {},
        })
        .await
        .expect_err("not a bool");
    assert_eq!(code(&err), 14, "{err}");
}

/// `updateDescription.disambiguatedPaths` (the specification's cases): present, empty when
/// nothing is ambiguous, with the flag; absent without it.
#[tokio::test]
async fn ambiguous_update_paths_are_spelled_out() {
    let server = common::start().await;
    let db = server.db();
    let c = db.collection::<Document>("paths");
    c.insert_many([
        doc! { "_id": 1, "a": { "1": 1 } },
        doc! { "_id": 2, "a": [{ "1": 1 }] },
    ])
    .await
    .expect("insert");
    let mut stream = expanded(&db).await;
    let mut plain = c.watch().await.expect("watch").with_type::<Document>();
    c.update_one(doc! { "_id": 1 }, doc! { "$set": { "a.1": 2 } })
        .await
        .expect("update");
    c.update_one(doc! { "_id": 2 }, doc! { "$set": { "a.0.1": 2 } })
        .await
        .expect("update");
    c.update_one(doc! { "_id": 1 }, doc! { "$set": { "b": 1 } })
        .await
        .expect("update");
    c.update_one(
        doc! { "_id": 1 },
        vec![doc! { "$replaceWith": { "$setField": { "field": "x.y", "input": "$$ROOT", "value": 1 } } }],
    )
    .await
    .expect("pipeline update");

    let mut paths = Vec::new();
    for _ in 0..4 {
        let event = next(&mut stream).await;
        let description = event.get_document("updateDescription").expect("update");
        paths.push(
            description
                .get_document("disambiguatedPaths")
                .cloned()
                .expect("present"),
        );
    }
    assert_eq!(
        paths,
        [
            doc! { "a.1": ["a", "1"] },
            doc! { "a.0.1": ["a", 0_i32, "1"] },
            Document::new(),
            doc! { "x.y": ["x.y"] },
        ]
    );
    let event = next(&mut plain).await;
    let description = event.get_document("updateDescription").expect("update");
    assert!(!description.contains_key("disambiguatedPaths"), "{event}");
}
