//! Field names with a `$` prefix or dots: stored by insert, read with `$getField`, written
//! with `$setField` / `$unsetField`, refused in update operators.

use mongodb::bson::{doc, Document};

use super::{code, common};

#[tokio::test]
async fn dollar_and_dotted_names_round_trip() {
    let server = common::start().await;
    let c = server.db().collection::<Document>("odd");
    let doc = doc! { "_id": 1, "$price": 10, "a.b": 2, "a": { "b": 3 } };
    c.insert_one(doc.clone())
        .await
        .expect("insert a $-prefixed name");
    assert_eq!(
        c.find_one(doc! { "_id": 1 }).await.expect("find"),
        Some(doc)
    );

    let by_price = doc! { "$expr": { "$eq": [{ "$getField": { "$literal": "$price" } }, 10] } };
    assert_eq!(c.count_documents(by_price).await.expect("count"), 1);
    // `$getField` takes the name whole; a path would reach a.b = 3.
    let dotted = doc! { "$expr": { "$eq": [{ "$getField": "a.b" }, 2] } };
    assert_eq!(c.count_documents(dotted).await.expect("count"), 1);

    c.update_one(
        doc! { "_id": 1 },
        vec![doc! { "$replaceWith": { "$setField": {
            "field": { "$literal": "$price" }, "input": "$$ROOT", "value": 12,
        } } }],
    )
    .await
    .expect("setField");
    let stored = c
        .find_one(doc! { "_id": 1 })
        .await
        .expect("find")
        .expect("doc");
    assert_eq!(stored.get_i32("$price"), Ok(12));
    c.update_one(
        doc! { "_id": 1 },
        vec![doc! { "$replaceWith": { "$unsetField": { "field": "a.b", "input": "$$ROOT" } } }],
    )
    .await
    .expect("unsetField");
    let stored = c
        .find_one(doc! { "_id": 1 })
        .await
        .expect("find")
        .expect("doc");
    assert!(!stored.contains_key("a.b"));
    assert_eq!(stored.get_document("a"), Ok(&doc! { "b": 3 }));

    // Update operators still refuse a `$`-prefixed path (52).
    let err = c
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "$price": 1 } })
        .await
        .expect_err("refused");
    assert_eq!(code(&err), 52, "{err}");
    // `field` must be a constant string.
    let err = c
        .count_documents(doc! { "$expr": { "$getField": { "field": "$x" } } })
        .await
        .expect_err("refused");
    assert_eq!(code(&err), 2, "{err}");
}
