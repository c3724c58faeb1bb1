//! `let` variables on find, aggregate, update, delete and findAndModify.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::common;

#[tokio::test]
async fn variables_reach_expressions_and_only_expressions() {
    let server = common::start().await;
    let c = server.db().collection::<Document>("items");
    c.insert_many([
        doc! { "_id": 1, "qty": 5, "tag": "$$limit" },
        doc! { "_id": 2, "qty": 50, "tag": "b" },
    ])
    .await
    .expect("insert");
    let vars = doc! { "limit": 10, "label": { "$concat": ["cheap", "!"] } };

    let found: Vec<Document> = c
        .find(doc! { "$expr": { "$lt": ["$qty", "$$limit"] } })
        .let_vars(vars.clone())
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("docs");
    assert_eq!(found.len(), 1);
    // Outside $expr a "$$limit" string is data.
    let literal = c
        .find(doc! { "tag": "$$limit" })
        .let_vars(vars.clone())
        .await
        .expect("find")
        .try_collect::<Vec<Document>>()
        .await
        .expect("docs");
    assert_eq!(literal.len(), 1);

    let labelled: Vec<Document> = c
        .aggregate([
            doc! { "$match": { "$expr": { "$lt": ["$qty", "$$limit"] } } },
            doc! { "$set": { "label": "$$label" } },
        ])
        .let_vars(vars.clone())
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("docs");
    assert_eq!(labelled[0].get_str("label"), Ok("cheap!"));

    let updated = c
        .update_many(
            doc! { "$expr": { "$gte": ["$qty", "$$limit"] } },
            vec![doc! { "$set": { "over": { "$subtract": ["$qty", "$$limit"] } } }],
        )
        .let_vars(vars.clone())
        .await
        .expect("update");
    assert_eq!(updated.modified_count, 1);
    let two = c
        .find_one(doc! { "_id": 2 })
        .await
        .expect("find")
        .expect("doc");
    assert_eq!(two.get_i32("over"), Ok(40));

    let modified = c
        .find_one_and_update(
            doc! { "$expr": { "$eq": ["$_id", "$$one"] } },
            vec![doc! { "$set": { "seen": "$$one" } }],
        )
        .let_vars(doc! { "one": 1 })
        .await
        .expect("findAndModify");
    assert!(modified.is_some());
    let deleted = c
        .delete_many(doc! { "$expr": { "$lt": ["$qty", "$$limit"] } })
        .let_vars(vars)
        .await
        .expect("delete");
    assert_eq!(deleted.deleted_count, 1);
}

#[tokio::test]
async fn bad_variables_get_mongods_codes() {
    let server = common::start().await;
    let c = server.db().collection::<Document>("items");
    for (vars, expected) in [
        (doc! { "Limit": 1 }, 16867),
        (doc! { "a-b": 1 }, 16868),
        (doc! { "x": { "$bogus": 1 } }, 168),
    ] {
        let err = c
            .find(doc! {})
            .let_vars(vars.clone())
            .await
            .expect_err("refused");
        assert_eq!(super::code(&err), expected, "{vars}");
    }
    let err = server
        .db()
        .run_command(doc! { "find": "items", "let": 1 })
        .await
        .expect_err("refused");
    assert_eq!(super::code(&err), 14);
}
