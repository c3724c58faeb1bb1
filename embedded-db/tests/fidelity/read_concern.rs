//! `readConcern`: every level one member serves; snapshot reads on find, aggregate and
//! distinct; `atClusterTime` in the past is 239, as mongod past its history window.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document, Timestamp};
use mongodb::options::{ReadConcern, ReadConcernLevel};

use super::{code, common};

/// Every document of `c`, read in `session`.
async fn snapshot_read(
    c: &mongodb::Collection<Document>,
    session: &mut mongodb::ClientSession,
) -> mongodb::error::Result<Vec<Document>> {
    let mut cursor = c.find(doc! {}).session(&mut *session).await?;
    cursor.stream(session).try_collect().await
}

#[tokio::test]
async fn snapshot_reads_and_old_cluster_times() {
    let server = common::start().await;
    let db = server.db();
    let c = db.collection::<Document>("rc");
    c.insert_one(doc! { "_id": 1 }).await.expect("insert");
    for level in [ReadConcernLevel::Majority, ReadConcernLevel::Snapshot] {
        let found: Vec<Document> = c
            .find(doc! {})
            .read_concern(ReadConcern::from(level))
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("docs");
        assert_eq!(found.len(), 1);
    }
    // A snapshot read reports its cluster time, and its later batches come from the same
    // snapshot: a document inserted between getMores is not in them.
    c.insert_many([doc! { "_id": 2 }, doc! { "_id": 3 }])
        .await
        .expect("insert");
    let snapshot = doc! { "level": "snapshot" };
    let reply = db
        .run_command(doc! { "find": "rc", "batchSize": 1, "readConcern": snapshot.clone() })
        .await
        .expect("find");
    let cursor = reply.get_document("cursor").expect("cursor");
    assert!(cursor.get_timestamp("atClusterTime").is_ok(), "{reply}");
    c.insert_one(doc! { "_id": 4 }).await.expect("insert");
    let rest = db
        .run_command(doc! { "getMore": cursor.get_i64("id").expect("id"), "collection": "rc" })
        .await
        .expect("getMore");
    let rest = rest
        .get_document("cursor")
        .and_then(|c| c.get_array("nextBatch"))
        .expect("batch");
    assert_eq!(
        rest.len(),
        2,
        "the snapshot's other two documents, not the new one"
    );
    let distinct = db
        .run_command(doc! { "distinct": "rc", "key": "_id", "readConcern": snapshot })
        .await
        .expect("distinct");
    assert!(
        distinct.get_timestamp("atClusterTime").is_ok(),
        "{distinct}"
    );

    // A snapshot session pins its reads to the first one's time: after a write they are
    // refused (239), never silently served from a newer state.
    let mut session = server
        .client
        .start_session()
        .snapshot(true)
        .await
        .expect("session");
    assert_eq!(
        snapshot_read(&c, &mut session).await.expect("first").len(),
        4
    );
    assert_eq!(
        snapshot_read(&c, &mut session)
            .await
            .expect("same snapshot")
            .len(),
        4
    );
    c.insert_one(doc! { "_id": 5 }).await.expect("insert");
    let err = snapshot_read(&c, &mut session)
        .await
        .expect_err("snapshot gone");
    assert_eq!(code(&err), 239, "{err}");

    let old = Timestamp {
        time: 1,
        increment: 1,
    };
    let err = db
        .run_command(doc! {
            "find": "rc", "readConcern": { "level": "snapshot", "atClusterTime": old },
        })
        .await
        .expect_err("no history");
    assert_eq!(code(&err), 239, "{err}");
    let err = db
        .run_command(doc! { "count": "rc", "readConcern": { "level": "snapshot" } })
        .await
        .expect_err("not for count");
    assert_eq!(code(&err), 72, "{err}");
}
