//! `explain` of the reads and writes mongosh explains, in the shape it reads.

use mongodb::bson::{doc, Document};

use super::common;

async fn seeded(server: &common::TestServer) {
    let docs: Vec<Document> = (1..=10).map(|i| doc! { "_id": i, "n": i % 3 }).collect();
    server
        .db()
        .collection::<Document>("c")
        .insert_many(docs)
        .await
        .expect("insert");
}

async fn explain(server: &common::TestServer, command: Document, verbosity: &str) -> Document {
    server
        .db()
        .run_command(doc! { "explain": command, "verbosity": verbosity })
        .await
        .expect("explain")
}

fn stage(plan: &Document) -> &str {
    plan.get_str("stage").unwrap_or("?")
}

/// A filtered, sorted, limited find: COLLSCAN under SORT and LIMIT; executionStats count
/// what it returns and examines, and the collection is unchanged.
#[tokio::test]
async fn find_plans_and_counts() {
    let server = common::start().await;
    seeded(&server).await;
    let reply = explain(
        &server,
        doc! { "find": "c", "filter": { "n": 1 }, "sort": { "_id": -1 }, "limit": 2 },
        "executionStats",
    )
    .await;
    let planner = reply.get_document("queryPlanner").expect("queryPlanner");
    assert_eq!(planner.get_str("namespace"), Ok("test.c"));
    assert_eq!(planner.get_document("parsedQuery"), Ok(&doc! { "n": 1 }));
    let limit = planner.get_document("winningPlan").expect("winningPlan");
    assert_eq!(stage(limit), "LIMIT");
    let sort = limit.get_document("inputStage").expect("sort");
    assert_eq!(stage(sort), "SORT");
    assert_eq!(
        stage(sort.get_document("inputStage").expect("scan")),
        "COLLSCAN"
    );
    assert_eq!(planner.get_array("rejectedPlans").map(Vec::len), Ok(0));
    let stats = reply
        .get_document("executionStats")
        .expect("executionStats");
    assert_eq!(stats.get_bool("executionSuccess"), Ok(true));
    // n == 1 for 1, 4, 7, 10; limited to 2.
    assert_eq!(stats.get_i64("nReturned"), Ok(2));
    assert_eq!(stats.get_i64("totalDocsExamined"), Ok(10));
    assert_eq!(
        reply
            .get_document("command")
            .and_then(|c| c.get_str("find")),
        Ok("c")
    );

    let by_id = explain(
        &server,
        doc! { "find": "c", "filter": { "_id": 3 } },
        "queryPlanner",
    )
    .await;
    let plan = by_id
        .get_document("queryPlanner")
        .and_then(|p| p.get_document("winningPlan"))
        .expect("plan");
    assert_eq!(stage(plan), "IDHACK");
    assert!(
        by_id.get("executionStats").is_none(),
        "queryPlanner has no stats"
    );
}

/// Writes are explained, never applied; counts, distinct and aggregates too, and
/// `aggregate` with `explain: true` answers the plan.
#[tokio::test]
async fn writes_are_explained_not_applied() {
    let server = common::start().await;
    seeded(&server).await;
    let update = explain(
        &server,
        doc! { "update": "c", "updates": [{ "q": { "n": 0 }, "u": { "$set": { "x": 1 } }, "multi": true }] },
        "executionStats",
    )
    .await;
    let stats = update.get_document("executionStats").expect("stats");
    let top = stats.get_document("executionStages").expect("stages");
    assert_eq!(stage(top), "UPDATE");
    assert_eq!(top.get_i64("nMatched"), Ok(3));
    let delete = explain(
        &server,
        doc! { "delete": "c", "deletes": [{ "q": {}, "limit": 1 }] },
        "executionStats",
    )
    .await;
    let top = delete
        .get_document("executionStats")
        .and_then(|s| s.get_document("executionStages"))
        .expect("stages");
    assert_eq!((stage(top), top.get_i64("nWouldDelete")), ("DELETE", Ok(1)));
    let coll = server.db().collection::<Document>("c");
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 10);
    assert_eq!(
        coll.count_documents(doc! { "x": 1 }).await.expect("count"),
        0
    );

    for command in [
        doc! { "count": "c", "query": { "n": 2 } },
        doc! { "distinct": "c", "key": "n" },
        doc! { "aggregate": "c", "pipeline": [{ "$match": { "n": 2 } }], "cursor": {} },
        doc! { "findAndModify": "c", "query": { "_id": 1 }, "remove": true },
    ] {
        let reply = explain(&server, command.clone(), "allPlansExecution").await;
        assert!(reply.get_document("queryPlanner").is_ok(), "{command}");
        assert!(reply.get_document("executionStats").is_ok(), "{command}");
    }
    assert_eq!(coll.count_documents(doc! {}).await.expect("count"), 10);

    let reply = server
        .db()
        .run_command(
            doc! { "aggregate": "c", "pipeline": [{ "$match": { "n": 1 } }], "explain": true },
        )
        .await
        .expect("aggregate explain");
    let planner = reply.get_document("queryPlanner").expect("queryPlanner");
    assert_eq!(planner.get_document("parsedQuery"), Ok(&doc! { "n": 1 }));
}

/// Bad requests get mongod's codes.
#[tokio::test]
async fn bad_explains_are_refused() {
    let server = common::start().await;
    // 0: answered.
    let code =
        |result: mongodb::error::Result<Document>| result.map_or_else(|e| super::code(&e), |_| 0);
    let db = server.db();
    assert_eq!(
        code(
            db.run_command(doc! { "explain": { "find": "c" }, "verbosity": "loud" })
                .await
        ),
        2
    );
    assert_eq!(code(db.run_command(doc! { "explain": 1 }).await), 14);
    assert_eq!(
        code(
            db.run_command(doc! { "explain": { "insert": "c", "documents": [{}] } })
                .await
        ),
        59
    );
    assert_eq!(
        code(db.run_command(doc! { "explain": { "find": "c" } }).await),
        0,
        "a missing collection explains as empty"
    );
}
