//! Crash safety: acknowledged writes, indexes and the change history survive
//! `kill -9` of the `embedded-db` process, and a resume token issued before the
//! crash still resumes after it.

mod binary;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

/// Every write acknowledged before a `kill -9` in the middle of a write storm is there after a
/// restart, the unique index is still enforced, and the pre-crash token resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let process = binary::Process::start(dir.path());
    let client = Client::with_uri_str(process.uri()).await.expect("client");
    let coll = client.database("app").collection::<Document>("events");
    coll.create_index(
        IndexModel::builder()
            .keys(doc! { "email": 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build(),
    )
    .await
    .expect("unique index");
    let mut stream = coll.watch().await.expect("watch");
    coll.insert_one(doc! { "_id": -1, "email": "first@example.com" })
        .await
        .expect("first");
    let token = stream.next().await.expect("event").expect("ok").id;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for worker in 0..8 {
        let coll = coll.clone();
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = worker * 1_000_000 + i;
                let doc = doc! { "_id": id, "email": format!("{id}@example.com") };
                if coll.insert_one(doc).await.is_err() {
                    break;
                }
                acknowledged.lock().expect("lock").push(id);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    process.kill_9();
    for writer in writers {
        writer.await.expect("writer ends once the server is gone");
    }
    client.shutdown().immediate(true).await;
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() > 10,
        "the storm wrote something: {}",
        acknowledged.len()
    );

    let process = binary::Process::start(dir.path());
    let client = Client::with_uri_str(process.uri()).await.expect("client");
    let coll = client.database("app").collection::<Document>("events");
    for id in &acknowledged {
        assert!(
            coll.find_one(doc! { "_id": id })
                .await
                .expect("find")
                .is_some(),
            "acknowledged write {id} lost"
        );
    }
    let err = coll
        .insert_one(doc! { "_id": "dup", "email": "first@example.com" })
        .await
        .expect_err("unique index survives");
    assert!(err.to_string().contains("11000") || format!("{err:?}").contains("11000"));

    // The first event after the pre-crash token is the first acknowledged storm write's
    // worker's first insert; the stream then yields every stored insert.
    let mut resumed = coll
        .watch()
        .resume_after(token)
        .await
        .expect("pre-crash token resumes");
    let stored = coll.count_documents(doc! {}).await.expect("count");
    let mut seen = 0u64;
    while seen + 1 < stored {
        let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .expect("event")
            .expect("open")
            .expect("ok");
        assert!(event.document_key.is_some());
        seen += 1;
    }
    assert_eq!(
        seen + 1,
        stored,
        "one event per stored document after the first"
    );
}
