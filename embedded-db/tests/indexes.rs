//! Index commands: unique (single and compound) indexes are enforced,
//! options are echoed, conflicts and missing indexes get MongoDB's codes.

mod common;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

fn unique(keys: Document) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().unique(true).build())
        .build()
}

/// A unique index rejects a second document with the same key, on insert and on update, and
/// frees the key when the holder changes or goes.
#[tokio::test]
async fn unique_index_is_enforced() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("users");
    let name = coll
        .create_index(unique(doc! { "email": 1 }))
        .await
        .expect("create")
        .index_name;
    assert_eq!(name, "email_1");
    coll.insert_one(doc! { "_id": 1, "email": "a@x" })
        .await
        .expect("first");
    let err = coll
        .insert_one(doc! { "_id": 2, "email": "a@x" })
        .await
        .expect_err("duplicate");
    assert_eq!(common::code_of(&err), Some(11000));
    assert!(err.to_string().contains("email_1"), "{err}");
    coll.insert_one(doc! { "_id": 2, "email": "b@x" })
        .await
        .expect("other key");
    let err = coll
        .update_one(doc! { "_id": 2 }, doc! { "$set": { "email": "a@x" } })
        .await
        .expect_err("update into a taken key");
    assert_eq!(common::code_of(&err), Some(11000));
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "email": "c@x" } })
        .await
        .expect("move key");
    coll.update_one(doc! { "_id": 2 }, doc! { "$set": { "email": "a@x" } })
        .await
        .expect("freed key");
    coll.delete_one(doc! { "_id": 2 }).await.expect("delete");
    coll.insert_one(doc! { "_id": 3, "email": "a@x" })
        .await
        .expect("freed by delete");
    // Missing fields index as null: only one document may lack the field.
    coll.insert_one(doc! { "_id": 4 })
        .await
        .expect("first without email");
    let err = coll
        .insert_one(doc! { "_id": 5 })
        .await
        .expect_err("second null");
    assert_eq!(common::code_of(&err), Some(11000));
}

/// A compound unique index constrains the combination, not each field.
#[tokio::test]
async fn compound_unique_index() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("devices");
    coll.create_index(unique(doc! { "site": 1, "name": 1 }))
        .await
        .expect("create");
    coll.insert_one(doc! { "site": "a", "name": "door" })
        .await
        .expect("insert");
    coll.insert_one(doc! { "site": "b", "name": "door" })
        .await
        .expect("same name, other site");
    let err = coll
        .insert_one(doc! { "site": "a", "name": "door" })
        .await
        .expect_err("duplicate pair");
    assert_eq!(common::code_of(&err), Some(11000));
}

/// Building a unique index over existing duplicates fails with 11000 and leaves no index.
#[tokio::test]
async fn unique_index_over_duplicates_fails() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("dups");
    coll.insert_many(vec![doc! { "k": 1 }, doc! { "k": 1 }])
        .await
        .expect("seed");
    let err = coll
        .create_index(unique(doc! { "k": 1 }))
        .await
        .expect_err("duplicates");
    assert_eq!(common::code_of(&err), Some(11000));
    let names = coll.list_index_names().await.expect("list");
    assert_eq!(names, vec!["_id_".to_owned()]);
}

/// `listIndexes` echoes the options given; same name with another key is 86, same key with
/// another name is 85; a TTL index (not enforced) is refused with 238; `dropIndexes` refuses
/// `_id_` (72) and unknown names (27).
#[tokio::test]
async fn list_conflicts_and_drop() {
    let server = common::start().await;
    let coll = server.db().collection::<Document>("c");
    let ttl = IndexOptions::builder()
        .expire_after(std::time::Duration::from_secs(60))
        .build();
    let err = coll
        .create_index(
            IndexModel::builder()
                .keys(doc! { "at": 1 })
                .options(ttl)
                .build(),
        )
        .await
        .expect_err("TTL indexes are refused, not ignored");
    assert_eq!(common::code_of(&err), Some(238));
    let options = IndexOptions::builder()
        .name("by_age".to_owned())
        .sparse(true)
        .build();
    coll.create_index(
        IndexModel::builder()
            .keys(doc! { "age": -1 })
            .options(options)
            .build(),
    )
    .await
    .expect("create");
    let specs: Vec<Document> = server
        .db()
        .run_command(doc! { "listIndexes": "c" })
        .await
        .expect("list")
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .expect("batch")
        .iter()
        .filter_map(|b| b.as_document().cloned())
        .collect();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].get_str("name"), Ok("_id_"));
    assert_eq!(specs[1].get_str("name"), Ok("by_age"));
    assert_eq!(specs[1].get_bool("sparse"), Ok(true));

    let again = server
        .db()
        .run_command(doc! { "createIndexes": "c", "indexes": [{ "key": { "age": -1 }, "name": "by_age", "sparse": true }] })
        .await
        .expect("idempotent");
    assert_eq!(again.get_str("note"), Ok("all indexes already exist"));
    let err = server
        .db()
        .run_command(
            doc! { "createIndexes": "c", "indexes": [{ "key": { "other": 1 }, "name": "by_age" }] },
        )
        .await
        .expect_err("name clash");
    assert_eq!(common::code_of(&err), Some(86));
    let err = server
        .db()
        .run_command(
            doc! { "createIndexes": "c", "indexes": [{ "key": { "age": -1 }, "name": "other" }] },
        )
        .await
        .expect_err("key clash");
    assert_eq!(common::code_of(&err), Some(85));

    let err = coll.drop_index("_id_").await.expect_err("_id index");
    assert_eq!(common::code_of(&err), Some(72));
    let err = coll.drop_index("nope").await.expect_err("unknown");
    assert_eq!(common::code_of(&err), Some(27));
    coll.drop_index("by_age").await.expect("drop");
    assert_eq!(
        coll.list_index_names().await.expect("list"),
        vec!["_id_".to_owned()]
    );
    let err = server
        .db()
        .collection::<Document>("missing")
        .list_indexes()
        .await
        .expect_err("missing");
    assert_eq!(common::code_of(&err), Some(26));
    let _: Vec<IndexModel> = coll
        .list_indexes()
        .await
        .expect("list")
        .try_collect()
        .await
        .expect("cursor");
}
