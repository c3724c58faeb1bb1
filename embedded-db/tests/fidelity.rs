//! What mongosh and driver users reach for, answered as mongod 7.0 answers it, through the
//! official Rust driver.
//!
//! One binary, a module per area (integration binaries are expensive to link).

mod common;

/// The code of a command error or of a write error; -1 for anything else.
fn code(err: &mongodb::error::Error) -> i32 {
    use mongodb::error::{ErrorKind, WriteFailure};
    match err.kind.as_ref() {
        ErrorKind::Command(c) => c.code,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code,
        _ => -1,
    }
}

/// Pipeline-style updates: an array of `$set`/`$addFields`, `$unset`, `$project`,
/// `$replaceRoot`/`$replaceWith` stages on update, findAndModify and multi-statement updates.
mod pipeline_updates {
    use futures::StreamExt;
    use mongodb::bson::{doc, Document};
    use mongodb::options::ReturnDocument;
    use mongodb::Collection;

    use super::{code, common};

    async fn users(server: &common::TestServer) -> Collection<Document> {
        let users = server.db().collection::<Document>("users");
        users
            .insert_many([
                doc! { "_id": 1, "fname": "Ada", "lname": "Lovelace", "old": true },
                doc! { "_id": 2, "fname": "Alan", "lname": "Turing", "old": true },
            ])
            .await
            .expect("insert");
        users
    }

    /// The README's example: `$set` with `$concat` computes a field from others; the change
    /// stream reports an `update` with the fields that changed.
    #[tokio::test]
    async fn set_computes_fields_from_the_document() {
        let server = common::start().await;
        let users = users(&server).await;
        let mut stream = users.watch().await.expect("watch");
        let result = users
            .update_one(
                doc! { "_id": 1 },
                vec![doc! { "$set": { "full": { "$concat": ["$fname", " ", "$lname"] } } }],
            )
            .await
            .expect("pipeline update");
        assert_eq!((result.matched_count, result.modified_count), (1, 1));
        let stored = users.find_one(doc! { "_id": 1 }).await.expect("find");
        assert_eq!(
            stored,
            Some(
                doc! { "_id": 1, "fname": "Ada", "lname": "Lovelace", "old": true, "full": "Ada Lovelace" }
            )
        );
        let event = stream.next().await.expect("event").expect("event ok");
        let description = event.update_description.expect("update description");
        assert_eq!(description.updated_fields, doc! { "full": "Ada Lovelace" });
        assert!(description.removed_fields.is_empty());

        // Nothing changes the second time: matched, not modified.
        let again = users
            .update_one(
                doc! { "_id": 1 },
                vec![doc! { "$set": { "full": { "$concat": ["$fname", " ", "$lname"] } } }],
            )
            .await
            .expect("again");
        assert_eq!((again.matched_count, again.modified_count), (1, 0));
    }

    /// `$unset`, `$project` and `$replaceWith` reshape every matched document; removed fields
    /// are reported as removed.
    #[tokio::test]
    async fn stages_reshape_many_documents() {
        let server = common::start().await;
        let users = users(&server).await;
        let result = users
            .update_many(
                doc! {},
                vec![
                    doc! { "$unset": ["old"] },
                    doc! { "$addFields": { "initial": { "$toUpper": "$fname" } } },
                    doc! { "$project": { "fname": 1, "initial": 1 } },
                ],
            )
            .await
            .expect("update many");
        assert_eq!(result.modified_count, 2);
        let all: Vec<Document> = users
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .expect("find")
            .map(|d| d.expect("doc"))
            .collect()
            .await;
        assert_eq!(
            all,
            [
                doc! { "_id": 1, "fname": "Ada", "initial": "ADA" },
                doc! { "_id": 2, "fname": "Alan", "initial": "ALAN" },
            ]
        );

        let mut stream = users.watch().await.expect("watch");
        users
            .update_one(
                doc! { "_id": 2 },
                vec![doc! { "$replaceWith": { "_id": "$_id", "name": "$fname" } }],
            )
            .await
            .expect("replaceWith");
        let stored = users.find_one(doc! { "_id": 2 }).await.expect("find");
        assert_eq!(stored, Some(doc! { "_id": 2, "name": "Alan" }));
        let event = stream.next().await.expect("event").expect("event ok");
        let description = event.update_description.expect("update description");
        assert_eq!(description.updated_fields, doc! { "name": "Alan" });
        let mut removed = description.removed_fields;
        removed.sort();
        assert_eq!(removed, ["fname", "initial"]);
    }

    /// findAndModify takes a pipeline too, and an upsert runs it over the query's equality
    /// fields.
    #[tokio::test]
    async fn find_and_modify_and_upsert() {
        let server = common::start().await;
        let users = users(&server).await;
        let after = users
            .find_one_and_update(
                doc! { "_id": 2 },
                vec![doc! { "$set": { "n": { "$add": [40, 2] } } }],
            )
            .return_document(ReturnDocument::After)
            .await
            .expect("findAndModify");
        assert_eq!(after.and_then(|d| d.get_i32("n").ok()), Some(42));

        let upserted = users
            .update_one(
                doc! { "k": 7 },
                vec![doc! { "$set": { "v": { "$multiply": ["$k", 6] } } }],
            )
            .upsert(true)
            .await
            .expect("upsert");
        assert!(upserted.upserted_id.is_some());
        let stored = users
            .find_one(doc! { "k": 7 })
            .await
            .expect("find")
            .expect("stored");
        assert_eq!(stored.get_i32("v"), Ok(42));
    }

    /// Several pipeline statements in one `update` command (a bulk of updates).
    #[tokio::test]
    async fn multi_statement_update_command() {
        let server = common::start().await;
        let users = users(&server).await;
        let reply = server
            .db()
            .run_command(doc! {
                "update": "users",
                "updates": [
                    { "q": { "_id": 1 }, "u": [{ "$set": { "a": 1 } }] },
                    { "q": { "_id": 2 }, "u": [{ "$set": { "a": { "$add": ["$a", 2] } } }] },
                ],
            })
            .await
            .expect("update");
        let count = |field: &str| {
            reply
                .get(field)
                .and_then(|n| n.as_i32().map(i64::from).or_else(|| n.as_i64()))
        };
        assert_eq!(
            (count("n"), count("nModified")),
            (Some(2), Some(2)),
            "{reply}"
        );
        let two = users
            .find_one(doc! { "_id": 2 })
            .await
            .expect("find")
            .expect("doc");
        // `$a` is missing in document 2, so `$add` gives null.
        assert_eq!(two.get("a"), Some(&mongodb::bson::Bson::Null));
    }

    /// What mongod refuses: a stage other than the six (72), a changed or removed `_id` (66);
    /// the document is left as it was.
    #[tokio::test]
    async fn refusals_leave_the_document_alone() {
        let server = common::start().await;
        let users = users(&server).await;
        let before = users.find_one(doc! { "_id": 1 }).await.expect("find");
        for (pipeline, expected) in [
            (vec![doc! { "$match": { "fname": "Ada" } }], 72),
            (vec![doc! { "$group": { "_id": null } }], 72),
            (vec![doc! { "$set": { "_id": 9 } }], 66),
            (vec![doc! { "$project": { "_id": 0, "fname": 1 } }], 66),
            (vec![doc! { "$unset": "_id" }], 66),
        ] {
            let err = users
                .update_one(doc! { "_id": 1 }, pipeline.clone())
                .await
                .expect_err("refused");
            assert_eq!(code(&err), expected, "{pipeline:?}: {err}");
        }
        let err = users
            .update_one(doc! { "_id": 1 }, vec![doc! { "$bogus": {} }])
            .await
            .expect_err("unknown stage");
        assert_eq!(code(&err), 40324, "{err}");
        let err = users
            .update_one(doc! { "_id": 1 }, vec![doc! { "$lookup": { "from": "x" } }])
            .await
            .expect_err("lookup");
        assert_eq!(code(&err), 72, "{err}");
        assert_eq!(
            users.find_one(doc! { "_id": 1 }).await.expect("find"),
            before
        );
    }
}

/// `explain` of the reads and writes mongosh explains, in the shape it reads.
mod explain {
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
        let code = |result: mongodb::error::Result<Document>| {
            result.map_or_else(|e| super::code(&e), |_| 0)
        };
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
}

/// `$expr`: an aggregation expression over the whole document, in every filter.
mod expr {
    use futures::TryStreamExt;
    use mongodb::bson::{doc, Document};

    use super::{code, common};

    #[tokio::test]
    async fn expr_compares_fields_in_find_count_update_and_delete() {
        let server = common::start().await;
        let c = server.db().collection::<Document>("budgets");
        c.insert_many([
            doc! { "_id": 1, "spent": 120, "budget": 100 },
            doc! { "_id": 2, "spent": 80, "budget": 100 },
            doc! { "_id": 3, "spent": 150, "budget": 150 },
            doc! { "_id": 4, "spent": 10, "budget": 0 },
        ])
        .await
        .expect("insert");
        let over = doc! { "$expr": { "$gt": ["$spent", "$budget"] } };
        let ids: Vec<i32> = c
            .find(over.clone())
            .sort(doc! { "_id": 1 })
            .await
            .expect("find")
            .try_collect::<Vec<Document>>()
            .await
            .expect("docs")
            .iter()
            .filter_map(|d| d.get_i32("_id").ok())
            .collect();
        assert_eq!(ids, [1, 4]);
        assert_eq!(c.count_documents(over.clone()).await.expect("count"), 2);
        // Inside $or, next to a plain condition.
        let either = doc! { "$or": [{ "_id": 2 }, { "$expr": { "$eq": ["$spent", "$budget"] } }] };
        assert_eq!(c.count_documents(either).await.expect("count"), 2);
        // An expression that fails on a document (division by zero) fails the query, as in
        // mongod; nothing is written by a write that uses it.
        let ratio = doc! { "$expr": { "$gt": [{ "$divide": ["$spent", "$budget"] }, 1] } };
        let err = c.count_documents(ratio.clone()).await.expect_err("fails");
        assert_eq!(code(&err), 2, "{err}");
        let err = c
            .update_many(ratio, doc! { "$set": { "seen": true } })
            .await
            .expect_err("fails");
        assert_eq!(code(&err), 2, "{err}");
        assert_eq!(
            c.count_documents(doc! { "seen": true })
                .await
                .expect("count"),
            0
        );
        // Not inside $elemMatch (mongod: top-level document only).
        let inner = doc! { "tags": { "$elemMatch": { "$expr": { "$eq": [1, 1] } } } };
        assert_eq!(
            code(&c.count_documents(inner).await.expect_err("refused")),
            2
        );

        let updated = c
            .update_many(over.clone(), doc! { "$set": { "over": true } })
            .await
            .expect("update");
        assert_eq!(updated.modified_count, 2);
        let deleted = c.delete_many(over).await.expect("delete");
        assert_eq!(deleted.deleted_count, 2);
        assert_eq!(c.count_documents(doc! {}).await.expect("count"), 2);
        // In an aggregation's $match too.
        let matched: Vec<Document> = c
            .aggregate([doc! { "$match": { "$expr": { "$lt": ["$spent", "$budget"] } } }])
            .await
            .expect("aggregate")
            .try_collect()
            .await
            .expect("docs");
        assert_eq!(matched.len(), 1);
    }
}

/// `let` variables on find, aggregate, update, delete and findAndModify.
mod let_variables {
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
}

/// `$lookup` (equality and pipeline forms) and `$unionWith`.
mod joins {
    use futures::TryStreamExt;
    use mongodb::bson::{doc, Bson, Document};

    use super::common;

    async fn seeded(server: &common::TestServer) {
        let db = server.db();
        db.collection::<Document>("orders")
            .insert_many([
                doc! { "_id": 1, "item": "pen", "qty": 2 },
                doc! { "_id": 2, "item": "ink", "qty": 5 },
                doc! { "_id": 3, "item": ["pen", "pad"], "qty": 1 },
                doc! { "_id": 4, "qty": 9 },
            ])
            .await
            .expect("orders");
        db.collection::<Document>("stock")
            .insert_many([
                doc! { "_id": "a", "sku": "pen", "left": 3 },
                doc! { "_id": "b", "sku": "pad", "left": 0 },
                doc! { "_id": "c", "sku": "ink", "left": 10 },
                doc! { "_id": "d", "left": 1 },
            ])
            .await
            .expect("stock");
    }

    async fn run(server: &common::TestServer, pipeline: Vec<Document>) -> Vec<Document> {
        server
            .db()
            .collection::<Document>("orders")
            .aggregate(pipeline)
            .await
            .expect("aggregate")
            .try_collect()
            .await
            .expect("docs")
    }

    fn ids(docs: &Bson) -> Vec<Bson> {
        docs.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_document().and_then(|d| d.get("_id")).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn lookup_by_equal_fields() {
        let server = common::start().await;
        seeded(&server).await;
        let out = run(
            &server,
            vec![
                doc! { "$lookup": { "from": "stock", "localField": "item", "foreignField": "sku", "as": "stock" } },
                doc! { "$sort": { "_id": 1 } },
            ],
        )
        .await;
        let joined: Vec<Vec<Bson>> = out
            .iter()
            .map(|d| ids(d.get("stock").expect("as")))
            .collect();
        assert_eq!(
            joined,
            [
                vec![Bson::String("a".into())],
                vec![Bson::String("c".into())],
                // An array local field matches each element.
                vec![Bson::String("a".into()), Bson::String("b".into())],
                // A missing local field matches a missing foreign field (both null).
                vec![Bson::String("d".into())],
            ]
        );
        // A missing collection joins nothing.
        let none = run(
            &server,
            vec![doc! { "$lookup": { "from": "nope", "localField": "item", "foreignField": "sku", "as": "x" } }],
        )
        .await;
        assert!(none
            .iter()
            .all(|d| d.get_array("x").is_ok_and(Vec::is_empty)));
    }

    #[tokio::test]
    async fn lookup_with_a_pipeline_and_variables() {
        let server = common::start().await;
        seeded(&server).await;
        let out = run(
            &server,
            vec![
                doc! { "$match": { "_id": { "$in": [1, 2] } } },
                doc! { "$lookup": {
                    "from": "stock",
                    "let": { "wanted": "$qty", "sku": "$item" },
                    "pipeline": [
                        { "$match": { "$expr": { "$and": [
                            { "$eq": ["$sku", "$$sku"] },
                            { "$gte": ["$left", "$$wanted"] },
                        ] } } },
                        { "$project": { "_id": 1 } },
                    ],
                    "as": "enough",
                } },
                doc! { "$sort": { "_id": 1 } },
            ],
        )
        .await;
        assert_eq!(
            out[0].get_array("enough").map(Vec::len),
            Ok(1),
            "3 pens left, 2 wanted"
        );
        assert_eq!(
            out[1].get_array("enough").map(Vec::len),
            Ok(1),
            "10 ink left, 5 wanted"
        );
        // Equality and pipeline together.
        let both = run(
            &server,
            vec![
                doc! { "$match": { "_id": 3 } },
                doc! { "$lookup": {
                    "from": "stock", "localField": "item", "foreignField": "sku",
                    "pipeline": [{ "$match": { "left": { "$gt": 0 } } }],
                    "as": "available",
                } },
            ],
        )
        .await;
        assert_eq!(
            ids(both[0].get("available").expect("as")),
            [Bson::String("a".into())]
        );
    }

    #[tokio::test]
    async fn union_with_appends_another_collection() {
        let server = common::start().await;
        seeded(&server).await;
        let out = run(
            &server,
            vec![
                doc! { "$project": { "_id": 1 } },
                doc! { "$unionWith": { "coll": "stock", "pipeline": [{ "$match": { "left": { "$gt": 2 } } }, { "$project": { "_id": 1 } }] } },
            ],
        )
        .await;
        let got: Vec<Bson> = out.iter().filter_map(|d| d.get("_id").cloned()).collect();
        assert_eq!(got.len(), 6, "{got:?}");
        let plain = run(&server, vec![doc! { "$unionWith": "stock" }]).await;
        assert_eq!(plain.len(), 8);
    }

    #[tokio::test]
    async fn bad_joins_are_refused() {
        let server = common::start().await;
        seeded(&server).await;
        let orders = server.db().collection::<Document>("orders");
        for (stage, expected) in [
            (doc! { "$lookup": { "from": "stock", "as": "x" } }, 9),
            (
                doc! { "$lookup": { "from": "stock", "localField": "a", "as": "x" } },
                9,
            ),
            (
                doc! { "$lookup": { "localField": "a", "foreignField": "b", "as": "x" } },
                9,
            ),
            (
                doc! { "$lookup": { "from": "stock", "pipeline": [{ "$bogus": 1 }], "as": "x" } },
                40324,
            ),
            (
                doc! { "$lookup": { "from": "stock", "pipeline": [{ "$lookup": { "from": "o", "pipeline": [], "as": "y" } }], "as": "x" } },
                238,
            ),
            (doc! { "$unionWith": 5 }, 9),
        ] {
            let err = orders
                .aggregate([stage.clone()])
                .await
                .expect_err("refused");
            assert_eq!(super::code(&err), expected, "{stage}");
        }
    }
}

/// `$facet`: several pipelines over the same input, in one document.
mod facet {
    use futures::TryStreamExt;
    use mongodb::bson::{doc, Document};

    use super::common;

    #[tokio::test]
    async fn facets_run_over_the_same_input() {
        let server = common::start().await;
        let c = server.db().collection::<Document>("sales");
        c.insert_many((1..=6).map(|i| doc! { "_id": i, "region": if i % 2 == 0 { "east" } else { "west" }, "amount": i * 10 }))
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
}

/// Field names with a `$` prefix or dots: stored by insert, read with `$getField`, written
/// with `$setField` / `$unsetField`, refused in update operators.
mod odd_field_names {
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
}

/// Database-level `aggregate` with `$documents`.
mod documents {
    use futures::TryStreamExt;
    use mongodb::bson::{doc, Document};

    use super::common;

    #[tokio::test]
    async fn documents_feed_a_database_level_pipeline() {
        let server = common::start().await;
        let db = server.db();
        db.collection::<Document>("prices")
            .insert_many([
                doc! { "_id": "pen", "price": 2 },
                doc! { "_id": "ink", "price": 7 },
            ])
            .await
            .expect("insert");
        let out: Vec<Document> = db
            .aggregate([
                doc! { "$documents": [{ "item": "pen", "n": 3 }, { "item": "ink", "n": 1 }, { "item": "pad", "n": 9 }] },
                doc! { "$match": { "n": { "$lt": 5 } } },
                doc! { "$lookup": { "from": "prices", "localField": "item", "foreignField": "_id", "as": "price" } },
                doc! { "$project": { "_id": 0, "item": 1, "price": "$price.price" } },
            ])
            .await
            .expect("aggregate")
            .try_collect()
            .await
            .expect("docs");
        assert_eq!(
            out,
            [
                doc! { "item": "pen", "price": [2] },
                doc! { "item": "ink", "price": [7] }
            ]
        );

        let on_collection = db
            .collection::<Document>("prices")
            .aggregate([doc! { "$documents": [{ "a": 1 }] }])
            .await
            .expect_err("refused");
        assert_eq!(super::code(&on_collection), 73);
        let not_array = db
            .aggregate([doc! { "$documents": 5 }])
            .await
            .expect_err("refused");
        assert_eq!(super::code(&not_array), 14);
    }
}

/// Change streams opened with `showExpandedEvents`: catalog events, `collectionUUID`,
/// `operationDescription` and `disambiguatedPaths`.
mod expanded_events {
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
        db.run_command(
            doc! { "create": "kept", "changeStreamPreAndPostImages": { "enabled": true } },
        )
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
}

/// The write stages: `$out` (all or nothing, the target keeps its indexes) and `$merge` (each
/// mode of `whenMatched` / `whenNotMatched`, `on` fields, `let`).
mod write_stages {
    use futures::{StreamExt, TryStreamExt};
    use mongodb::bson::{doc, Document};
    use mongodb::options::IndexOptions;
    use mongodb::{Collection, Database, IndexModel};

    use super::{code, common};

    async fn all(c: &Collection<Document>) -> Vec<Document> {
        c.find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("docs")
    }

    async fn unique(c: &Collection<Document>, keys: Document) {
        let options = IndexOptions::builder().unique(true).build();
        c.create_index(IndexModel::builder().keys(keys).options(options).build())
            .await
            .expect("createIndex");
    }

    async fn names(db: &Database) -> Vec<String> {
        let mut names = db.list_collection_names().await.expect("names");
        names.sort();
        names
    }

    /// Error code of an aggregate over `orders` ending in `stages`.
    async fn refused(c: &Collection<Document>, stages: Vec<Document>) -> i32 {
        let err = c.aggregate(stages).await.expect_err("refused");
        code(&err)
    }

    #[tokio::test]
    async fn out_replaces_the_target_whole() {
        let server = common::start().await;
        let db = server.db();
        let orders = db.collection::<Document>("orders");
        orders
            .insert_many([
                doc! { "_id": 1, "who": "ada", "n": 2 },
                doc! { "_id": 2, "who": "alan", "n": 5 },
                doc! { "_id": 3, "who": "ada", "n": 4 },
            ])
            .await
            .expect("insert");
        let totals = db.collection::<Document>("totals");
        totals
            .insert_one(doc! { "_id": "old", "total": 0 })
            .await
            .expect("insert");
        unique(&totals, doc! { "total": 1 }).await;
        let mut watching = totals.watch().await.expect("watch");

        let group = doc! { "$group": { "_id": "$who", "total": { "$sum": "$n" } } };
        let out: Vec<Document> = orders
            .aggregate([group.clone(), doc! { "$out": "totals" }])
            .await
            .expect("aggregate")
            .try_collect()
            .await
            .expect("cursor");
        assert!(out.is_empty(), "$out returns no documents");
        assert_eq!(
            all(&totals).await,
            [
                doc! { "_id": "ada", "total": 6 },
                doc! { "_id": "alan", "total": 5 }
            ]
        );
        let indexes = totals.list_index_names().await.expect("indexes");
        assert_eq!(indexes, ["_id_", "total_1"], "the target keeps its indexes");
        assert_eq!(
            names(&db).await,
            ["orders", "totals"],
            "no temporary collection is left"
        );
        let event = watching.next().await.expect("event").expect("ok");
        assert_eq!(
            event.operation_type,
            mongodb::change_stream::event::OperationType::Rename
        );

        // A result the target's unique index refuses: 11000, the target as it was.
        let clash = doc! { "$project": { "total": { "$literal": 1 } } };
        assert_eq!(
            refused(&orders, vec![clash, doc! { "$out": "totals" }]).await,
            11000
        );
        assert_eq!(all(&totals).await.len(), 2);
        assert_eq!(names(&db).await, ["orders", "totals"]);

        // Another database; an empty result makes an empty collection.
        orders
            .aggregate([
                group,
                doc! { "$out": { "db": "reports", "coll": "totals" } },
            ])
            .await
            .expect("aggregate");
        let reports = server
            .client
            .database("reports")
            .collection::<Document>("totals");
        assert_eq!(all(&reports).await.len(), 2);
        orders
            .aggregate([doc! { "$match": { "n": 99 } }, doc! { "$out": "none" }])
            .await
            .expect("aggregate");
        assert!(names(&db).await.contains(&"none".to_owned()));

        let out = doc! { "$out": "x" };
        assert_eq!(
            refused(&orders, vec![out.clone(), doc! { "$match": {} }]).await,
            40601
        );
        assert_eq!(
            refused(&orders, vec![doc! { "$out": "system.x" }]).await,
            17385
        );
        assert_eq!(refused(&orders, vec![doc! { "$out": 5 }]).await, 16990);
        assert_eq!(
            refused(&orders, vec![doc! { "$out": { "db": "d" } }]).await,
            40414
        );
        let lookup = doc! { "$lookup": { "from": "x", "pipeline": [out.clone()], "as": "y" } };
        assert_eq!(refused(&orders, vec![lookup]).await, 51047);
        let union = doc! { "$unionWith": { "coll": "x", "pipeline": [out.clone()] } };
        assert_eq!(refused(&orders, vec![union]).await, 31441);
        assert_eq!(
            refused(&orders, vec![doc! { "$facet": { "a": [out] } }]).await,
            40600
        );
    }

    /// `stock` holds two documents again.
    async fn reset(stock: &Collection<Document>) {
        stock.delete_many(doc! {}).await.expect("clear");
        stock
            .insert_many([
                doc! { "_id": 1, "qty": 1, "note": "keep" },
                doc! { "_id": 2, "qty": 2 },
            ])
            .await
            .expect("insert");
    }

    /// Merges `{_id: 1, qty: 10}` and `{_id: 3, qty: 3}` as `spec` says.
    async fn merge(db: &Database, spec: Document) -> mongodb::error::Result<()> {
        db.aggregate([
            doc! { "$documents": [{ "_id": 1, "qty": 10 }, { "_id": 3, "qty": 3 }] },
            doc! { "$merge": spec },
        ])
        .await
        .map(|_| ())
    }

    #[tokio::test]
    async fn merge_modes_match_mongod() {
        let server = common::start().await;
        let db = server.db();
        let stock = db.collection::<Document>("stock");
        let reset = || reset(&stock);
        let merge = |spec: Document| merge(&db, spec);

        reset().await;
        let mut events = stock.watch().await.expect("watch");
        merge(doc! { "into": "stock" }).await.expect("merge");
        assert_eq!(
            all(&stock).await,
            [
                doc! { "_id": 1, "qty": 10, "note": "keep" },
                doc! { "_id": 2, "qty": 2 },
                doc! { "_id": 3, "qty": 3 },
            ],
            "default: merge the fields of a match, insert the rest"
        );
        let kinds: Vec<String> = [
            events.next().await.expect("event").expect("ok"),
            events.next().await.expect("event").expect("ok"),
        ]
        .iter()
        .map(|e| format!("{:?}", e.operation_type))
        .collect();
        assert_eq!(kinds, ["Update", "Insert"]);

        reset().await;
        merge(doc! { "into": "stock", "whenMatched": "replace", "whenNotMatched": "discard" })
            .await
            .expect("merge");
        assert_eq!(
            all(&stock).await,
            [doc! { "_id": 1, "qty": 10 }, doc! { "_id": 2, "qty": 2 }]
        );

        reset().await;
        merge(doc! { "into": "stock", "whenMatched": "keepExisting" })
            .await
            .expect("merge");
        assert_eq!(
            all(&stock).await[0],
            doc! { "_id": 1, "qty": 1, "note": "keep" }
        );

        reset().await;
        let add = doc! {
            "into": "stock",
            "let": { "extra": "$qty" },
            "whenMatched": [{ "$set": { "qty": { "$add": ["$qty", "$$extra", "$$new.qty"] } } }],
            "whenNotMatched": "discard",
        };
        merge(add).await.expect("merge");
        assert_eq!(
            all(&stock).await[0],
            doc! { "_id": 1, "qty": 21, "note": "keep" }
        );

        // A match with `fail`: 11000. Documents before the failing one stay written.
        reset().await;
        let err = db
            .aggregate([
                doc! { "$documents": [{ "_id": 9 }, { "_id": 1 }, { "_id": 8 }] },
                doc! { "$merge": { "into": "stock", "whenMatched": "fail" } },
            ])
            .await
            .expect_err("duplicate");
        assert_eq!(code(&err), 11000, "{err}");
        let ids: Vec<i32> = all(&stock)
            .await
            .iter()
            .filter_map(|d| d.get_i32("_id").ok())
            .collect();
        assert_eq!(ids, [1, 2, 9]);
        let err = merge(doc! { "into": "stock", "whenNotMatched": "fail" })
            .await
            .expect_err("no match");
        assert_eq!(code(&err), 13113, "{err}");

        // `on` other fields: a unique index must cover them; every result must hold them.
        let err = merge(doc! { "into": "stock", "on": "qty" })
            .await
            .expect_err("no index");
        assert_eq!(code(&err), 51183, "{err}");
        reset().await;
        unique(&stock, doc! { "qty": 1 }).await;
        db.aggregate([
            doc! { "$documents": [{ "qty": 2, "seen": true }] },
            doc! { "$merge": { "into": "stock", "on": "qty" } },
        ])
        .await
        .expect("merge on qty");
        assert_eq!(
            all(&stock).await[1],
            doc! { "_id": 2, "qty": 2, "seen": true }
        );
        let err = db
            .aggregate([
                doc! { "$documents": [{ "other": 1 }] },
                doc! { "$merge": { "into": "stock", "on": "qty" } },
            ])
            .await
            .expect_err("missing on field");
        assert_eq!(code(&err), 51132, "{err}");

        for (spec, expected) in [
            (doc! { "into": "stock", "let": { "a": 1 } }, 51199),
            (doc! { "into": 5 }, 51178),
            (doc! { "into": "stock", "on": 5 }, 51186),
            (doc! { "into": "stock", "whenMatched": 5 }, 51191),
            (doc! { "into": "stock", "whenMatched": "sometimes" }, 2),
            (
                doc! { "into": "stock", "whenMatched": [{ "$match": {} }] },
                72,
            ),
            (doc! { "into": "system.js" }, 31319),
            (doc! { "into": "stock", "extra": 1 }, 40415),
        ] {
            let err = merge(spec.clone()).await.expect_err("refused");
            assert_eq!(code(&err), expected, "{spec}: {err}");
        }
    }
}

/// `readConcern`: every level one member serves; snapshot reads on find, aggregate and
/// distinct; `atClusterTime` in the past is 239, as mongod past its history window.
mod read_concern {
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
}

/// Write replies carry `n` and `nModified` as 32-bit integers, as mongod's do.
mod reply_types {
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
}
