//! `$facet`: several pipelines over the same input, in one document.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

use super::common;

#[tokio::test]
async fn facets_run_over_the_same_input() {
    let server = common::start().await;
    let c = server.db().collection::<Document>("sales");
    c.insert_many((1..=6).map(
        |i| doc! { "_id": i, "region": if i % 2 == 0 { "east" } else { "west" }, "amount": i * 10 },
    ))
    .await
    .expect("insert");
    c.insert_one(doc! { "_id": 100, "region": "north", "amount": 5 })
        .await
        .expect("insert");
    let out: Vec<Document> = c
        .aggregate([
            doc! { "$match": { "amount": { "$gte": 10 } } },
            doc! { "$facet": {
                "count": [{ "$count": "n" }],
                "byRegion": [
                    { "$group": { "_id": "$region", "total": { "$sum": "$amount" } } },
                    { "$sort": { "_id": 1 } },
                ],
                "top": [{ "$sort": { "amount": -1 } }, { "$limit": 1 }, { "$project": { "_id": 1 } }],
            } },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("docs");
    assert_eq!(out.len(), 1);
    let facets = &out[0];
    assert_eq!(
        facets.get_array("count").expect("count")[0],
        doc! { "n": 6 }.into()
    );
    assert_eq!(
        facets.get_array("byRegion").expect("groups"),
        &vec![
            doc! { "_id": "east", "total": 120 }.into(),
            doc! { "_id": "west", "total": 90 }.into(),
        ]
    );
    assert_eq!(
        facets.get_array("top").expect("top")[0],
        doc! { "_id": 6 }.into()
    );

    // No input: one document of empty arrays.
    let empty: Vec<Document> = c
        .aggregate([
            doc! { "$match": { "amount": { "$gt": 1000 } } },
            doc! { "$facet": { "all": [{ "$match": {} }] } },
        ])
        .await
        .expect("aggregate")
        .try_collect()
        .await
        .expect("docs");
    assert_eq!(empty, [doc! { "all": [] }]);

    let err = c
        .aggregate([doc! { "$facet": { "inner": [{ "$facet": { "x": [] } }] } }])
        .await
        .expect_err("nested facet");
    assert_eq!(super::code(&err), 40600);
}
