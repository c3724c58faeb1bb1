//! Write replies carry `n` and `nModified` as 32-bit integers, as mongod's do.

use mongodb::bson::{doc, Bson};

use super::common;

#[tokio::test]
async fn counts_are_int32() {
    let server = common::start().await;
    let db = server.db();
    let replies = [
        doc! { "insert": "t", "documents": [{ "_id": 1, "a": 1 }, { "_id": 2 }] },
        doc! { "update": "t", "updates": [{ "q": {}, "u": { "$set": { "a": 2 } }, "multi": true }] },
        doc! { "delete": "t", "deletes": [{ "q": {}, "limit": 0 }] },
    ];
    let mut counts = Vec::new();
    for command in replies {
        let reply = db.run_command(command).await.expect("write");
        for key in ["n", "nModified"] {
            if let Some(value) = reply.get(key) {
                counts.push((key, value.clone()));
            }
        }
    }
    assert_eq!(
        counts,
        [
            ("n", Bson::Int32(2)),
            ("n", Bson::Int32(2)),
            ("nModified", Bson::Int32(2)),
            ("n", Bson::Int32(2)),
        ]
    );
}
