//! The JSON routes, health checks and start-up errors, over real HTTP.

mod common;

use mongodb::bson::{doc, oid::ObjectId};
use serde_json::{json, Value};

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("request");
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.expect("body")).expect("JSON body"),
    )
}

/// `GET /api/users` lists every user in `_id` order with the contract's fields only.
#[tokio::test]
async fn users_are_listed_in_id_order() {
    let app = common::start().await;
    let id = ObjectId::new();
    app.users()
        .insert_one(
            doc! { "_id": id, "fname": "Zed", "lname": "Last", "username": "zed", "secret": "x" },
        )
        .await
        .expect("insert");
    let (status, body) = get_json(&app.url("/api/users")).await;
    assert_eq!(status, 200);
    let users = body.as_array().expect("array");
    assert_eq!(users.len(), 6, "5 seeded users and the new one");
    let ids: Vec<&str> = users
        .iter()
        .map(|u| u["id"].as_str().expect("id"))
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "_id order");
    assert_eq!(
        users.last(),
        Some(&json!({ "id": id.to_hex(), "fname": "Zed", "lname": "Last", "username": "zed" }))
    );
    assert!(users
        .iter()
        .all(|u| u["id"].as_str().is_some_and(|s| s.len() == 24)));
}

/// `GET /api/lockDevices` lists only devices of type "lock".
#[tokio::test]
async fn lock_devices_only() {
    let app = common::start().await;
    let (status, body) = get_json(&app.url("/api/lockDevices")).await;
    assert_eq!(status, 200);
    let devices = body.as_array().expect("array");
    assert_eq!(devices.len(), 3);
    for device in devices {
        assert_eq!(device["type"], "lock");
        assert!(device["locked"].is_boolean());
        assert!(device["name"].is_string());
        assert_eq!(device.as_object().map(|o| o.len()), Some(4));
    }
}

/// Other methods on `/api/lockDevices` get 405, `Allow: GET` and a JSON body.
#[tokio::test]
async fn other_methods_are_not_allowed() {
    let app = common::start().await;
    let client = reqwest::Client::new();
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let response = client
            .request(method.clone(), app.url("/api/lockDevices"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 405, "{method}");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some("GET")
        );
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
        assert_eq!(body, json!({ "message": "Method not allowed" }));
    }
    let (status, body) = get_json(&app.url("/api/nothing")).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

/// The page's first HTML already lists every user as `fname lname - username`.
#[tokio::test]
async fn page_is_server_rendered_with_users() {
    let app = common::start().await;
    let html = app.page().await;
    for line in [
        "Ada Lovelace - ada",
        "Grace Hopper - grace",
        "Barbara Liskov - barbara",
    ] {
        assert!(html.contains(line), "{line} in the HTML");
    }
    assert!(html.contains("Front door"), "lock devices are rendered too");
    assert!(
        !html.contains("Hallway camera"),
        "cameras are not lock devices"
    );
}

/// The page carries its title and stylesheet; any other path answers 404 with "Page not
/// found." (no lists).
#[tokio::test]
async fn other_paths_are_not_found() {
    let app = common::start().await;
    let html = app.page().await;
    assert!(html.contains("<title>Realtime users</title>"));
    assert!(html.contains(r#"href="/pkg/realtime.css""#));
    let response = reqwest::get(app.url("/nope")).await.expect("request");
    assert_eq!(response.status().as_u16(), 404);
    let html = response.text().await.expect("html");
    assert!(html.contains("Page not found."));
    assert!(!html.contains("Ada Lovelace"));
    // A target without a path (found by the HTTP fuzzer: it made the page handler panic and
    // the connection close without an answer).
    let mut raw = common::RawHttp::connect(app.running.addr).await;
    let target = app.running.addr.to_string();
    raw.get(&target, &[]).await;
    let (head, body) = raw.response().await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert_eq!(body, b"The request target has no path.");
}

/// `/healthz` is 200; `/readyz` is 200 with the database and the change stream up.
#[tokio::test]
async fn health_and_readiness() {
    let app = common::start().await;
    let (status, _) = get_json(&app.url("/healthz")).await;
    assert_eq!(status, 200);
    let (status, body) = get_json(&app.url("/readyz")).await;
    assert_eq!(status, 200);
    assert_eq!(body["changeStream"], true);
    assert_eq!(app.running.state.hub.streams_opened(), 1);
}

/// When the database is gone, `/readyz` says 503 and `/api/*` answers the generic 500 body
/// (details only in the log).
#[tokio::test]
async fn database_failure_is_a_500() {
    let db_dir = tempfile::tempdir().expect("temp dir");
    let database = common::start_database(db_dir.path()).await;
    let (running, base) = common::start_against(database.local_addr()).await;
    assert_eq!(get_json(&format!("{base}/api/users")).await.0, 200);
    database.shutdown().await;
    assert_eq!(common::wait_ready(&base, 503).await, 503);
    for path in ["/api/users", "/api/lockDevices"] {
        let (status, body) = get_json(&format!("{base}{path}")).await;
        assert_eq!(status, 500, "{path}");
        assert_eq!(body, json!({ "error": "Internal server error" }));
    }
    running.shutdown().await;
}

/// Start-up errors name the variable to fix.
#[tokio::test]
async fn unreachable_database_stops_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::config(&dir);
    config.mongo_uri = Some("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200".to_owned());
    let err = server::start(config, common::leptos_options())
        .await
        .expect_err("unreachable");
    assert_eq!(err.variable, "MONGO_URI");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut config = common::config(&dir);
    config.embedded_addr = taken.local_addr().expect("addr");
    let err = server::start(config, common::leptos_options())
        .await
        .expect_err("address in use");
    assert_eq!(err.variable, "EMBEDDED_DB_ADDR");

    let mut config = common::config(&dir);
    config.site_addr = taken.local_addr().expect("addr");
    let err = server::start(config, common::leptos_options())
        .await
        .expect_err("site address in use");
    assert_eq!(err.variable, "LEPTOS_SITE_ADDR");
}

/// A write acknowledged anywhere is in the very next response, even before the live feed has
/// seen it (the cache checks the deployment's operation time).
#[tokio::test]
async fn reads_see_acknowledged_writes() {
    let app = common::start().await;
    for i in 0..20 {
        let id = ObjectId::new();
        app.users()
            .insert_one(
                doc! { "_id": id, "fname": "Read", "lname": "Write", "username": format!("rw{i}") },
            )
            .await
            .expect("insert");
        let (_, body) = get_json(&app.url("/api/users")).await;
        let ids: Vec<&str> = body
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|u| u["id"].as_str())
            .collect();
        assert!(
            ids.contains(&id.to_hex().as_str()),
            "write {i} visible at once"
        );
        let html = app.page().await;
        assert!(
            html.contains(&format!("Read Write - rw{i}")),
            "write {i} in the page at once"
        );
    }
    // Without writes, refetches are served from the snapshot: no further list reads.
    let before = app.running.state.repo.reads();
    for _ in 0..10 {
        get_json(&app.url("/api/users")).await;
    }
    assert_eq!(app.running.state.repo.reads(), before);
}

/// Start-up creates the unique index `username_1`: a second user with a taken username is
/// refused with E11000, whoever writes it.
#[tokio::test]
async fn usernames_are_unique() {
    let app = common::start().await;
    let names = app.users().list_index_names().await.expect("indexes");
    assert!(names.iter().any(|n| n == "username_1"), "{names:?}");
    let err = app
        .users()
        .insert_one(doc! { "fname": "Ada", "lname": "Again", "username": "ada" })
        .await
        .expect_err("a seeded username is taken");
    assert!(err.to_string().contains("E11000"), "{err}");
}

/// Users that already share a username do not stop start-up: the app serves them, and the
/// index waits until they are fixed.
#[tokio::test]
async fn duplicate_usernames_do_not_stop_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = common::start_database(dir.path()).await;
    let client = mongodb::Client::with_uri_str(database.uri())
        .await
        .expect("client");
    let users = client
        .database("realtime")
        .collection::<mongodb::bson::Document>("users");
    for lname in ["One", "Two"] {
        users
            .insert_one(doc! { "fname": "Twin", "lname": lname, "username": "twin" })
            .await
            .expect("insert");
    }
    client.shutdown().await;
    database.shutdown().await;

    let config = common::config(&dir);
    let app = common::start_with(dir, config).await;
    let names = app.users().list_index_names().await.expect("indexes");
    assert!(!names.iter().any(|n| n == "username_1"), "{names:?}");
    let (status, body) = get_json(&app.url("/api/users")).await;
    assert_eq!(status, 200);
    let twins = body
        .as_array()
        .expect("array")
        .iter()
        .filter(|u| u["username"] == "twin")
        .count();
    assert_eq!(twins, 2);
}
