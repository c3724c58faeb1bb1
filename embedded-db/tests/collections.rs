//! Collection commands: `create`, `drop`, `listCollections`, `renameCollection`.

mod common;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

/// `create` makes an empty collection once (48 the second time); `drop` removes it and its
/// documents, and dropping a missing collection succeeds.
#[tokio::test]
async fn create_and_drop() {
    let server = common::start().await;
    let db = server.db();
    db.create_collection("a").await.expect("create");
    let err = db.create_collection("a").await.expect_err("exists");
    assert_eq!(common::code_of(&err), Some(48));
    db.collection::<Document>("a")
        .insert_one(doc! { "x": 1 })
        .await
        .expect("insert");
    db.collection::<Document>("a").drop().await.expect("drop");
    assert!(db.list_collection_names().await.expect("names").is_empty());
    assert_eq!(
        db.collection::<Document>("a")
            .count_documents(doc! {})
            .await
            .expect("count"),
        0
    );
    db.collection::<Document>("never")
        .drop()
        .await
        .expect("drop missing");
    let err = db.create_collection("bad$name").await.expect_err("invalid");
    assert_eq!(common::code_of(&err), Some(73));
    let err = db
        .create_collection("view")
        .view_on("a".to_owned())
        .await
        .expect_err("views");
    assert_eq!(common::code_of(&err), Some(238));
}

/// `listCollections` returns full specifications (as the Rust driver parses them), honours a
/// name filter and pages with `getMore`.
#[tokio::test]
async fn list_collections_with_filter() {
    let server = common::start().await;
    let db = server.db();
    for name in ["users", "devices", "logs"] {
        db.create_collection(name).await.expect("create");
    }
    let mut names = db.list_collection_names().await.expect("names");
    names.sort();
    assert_eq!(names, vec!["devices", "logs", "users"]);
    let specs: Vec<_> = db
        .list_collections()
        .filter(doc! { "name": "users" })
        .await
        .expect("list")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name, "users");
    assert!(!specs[0].info.read_only);
    let reply = db
        .run_command(doc! { "listCollections": 1, "cursor": { "batchSize": 1 }, "nameOnly": true })
        .await
        .expect("command");
    let cursor = reply.get_document("cursor").expect("cursor");
    assert_eq!(cursor.get_str("ns"), Ok("test.$cmd.listCollections"));
    assert_ne!(cursor.get_i64("id"), Ok(0));
}

/// `renameCollection` moves documents and indexes; an existing target needs `dropTarget`.
#[tokio::test]
async fn rename_collection() {
    let server = common::start().await;
    let db = server.db();
    let admin = server.client.database("admin");
    db.collection::<Document>("a")
        .insert_one(doc! { "_id": 1 })
        .await
        .expect("insert");
    db.collection::<Document>("b")
        .insert_one(doc! { "_id": 2 })
        .await
        .expect("insert");
    let err = admin
        .run_command(doc! { "renameCollection": "test.a", "to": "test.b" })
        .await
        .expect_err("target exists");
    assert_eq!(common::code_of(&err), Some(48));
    admin
        .run_command(doc! { "renameCollection": "test.a", "to": "test.b", "dropTarget": true })
        .await
        .expect("rename");
    let b = db
        .collection::<Document>("b")
        .find_one(doc! {})
        .await
        .expect("find");
    assert_eq!(b, Some(doc! { "_id": 1 }));
    let err = admin
        .run_command(doc! { "renameCollection": "test.nothing", "to": "test.c" })
        .await
        .expect_err("missing source");
    assert_eq!(common::code_of(&err), Some(26));
}
