//! The page's writes (server functions under `/_server`), over real HTTP: what a form sends,
//! with and without WASM, and what a hostile site or client sends.

mod common;

use mongodb::bson::{doc, oid::ObjectId, Document};
use serde_json::Value;

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A form post to server function `name` as the page's script sends it; the status and body.
async fn post(app: &common::App, name: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = client()
        .post(app.url(&format!("/_server/{name}")))
        .header("origin", app.base.as_str())
        .header("sec-fetch-site", "same-origin")
        .form(form)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn user(fname: &str, lname: &str, username: &str) -> Document {
    doc! { "fname": fname, "lname": lname, "username": username }
}

async fn find_user(app: &common::App, username: &str) -> Option<Document> {
    app.users()
        .find_one(doc! { "username": username })
        .await
        .expect("find")
}

/// An added user is stored trimmed; invalid fields are named with 400 and nothing is stored.
#[tokio::test]
async fn adding_a_user_validates_on_the_server() {
    let app = common::start().await;
    let (status, body) = post(
        &app,
        "add_user",
        &[
            ("fname", "  Grace "),
            ("lname", "Hopper"),
            ("username", " ghopper "),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let stored = find_user(&app, "ghopper").await.expect("stored, trimmed");
    assert_eq!(stored.get_str("fname"), Ok("Grace"));
    let id = stored.get_object_id("_id").expect("_id").to_hex();
    assert_eq!(body, Value::String(id), "the answer is the new _id");

    let before = app.users().count_documents(doc! {}).await.expect("count");
    let long = "x".repeat(65);
    let (status, body) = post(
        &app,
        "add_user",
        &[
            ("fname", "   "),
            ("lname", long.as_str()),
            ("username", "fine"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let fields = &body["problem"]["invalid"];
    assert_eq!(fields[0]["field"], "fname");
    assert_eq!(fields[0]["problem"], "required");
    assert_eq!(fields[1]["field"], "lname");
    assert_eq!(fields[1]["problem"], "too_long");
    assert_eq!(fields.as_array().map(Vec::len), Some(2));
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("at most 64")));
    // Missing fields are empty, hence required, not a failure to read the form.
    let (status, _) = post(&app, "add_user", &[("fname", "Only")]).await;
    assert_eq!(status, 400);
    let after = app.users().count_documents(doc! {}).await.expect("count");
    assert_eq!(after, before, "nothing was stored");
}

/// A taken username answers 409 "username taken", on add and on edit; two adds racing for one
/// name store exactly one.
#[tokio::test]
async fn a_taken_username_is_refused() {
    let app = common::start().await;
    app.users()
        .insert_one(user("T_ada", "Lovelace", "t_ada"))
        .await
        .expect("insert");
    let (status, body) = post(
        &app,
        "add_user",
        &[("fname", "A"), ("lname", "B"), ("username", "t_ada")],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["problem"]["invalid"][0]["problem"], "taken");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("username taken")));
    // Case-sensitive: "T_ada" is another name.
    let (status, _) = post(
        &app,
        "add_user",
        &[("fname", "A"), ("lname", "B"), ("username", "T_ada")],
    )
    .await;
    assert_eq!(status, 200);

    let racers = (0..8).map(|i| {
        let app = &app;
        async move {
            let fname = format!("Racer{i}");
            post(
                app,
                "add_user",
                &[("fname", &fname), ("lname", "R"), ("username", "race")],
            )
            .await
            .0
        }
    });
    let mut statuses = futures::future::join_all(racers).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
    let stored = app
        .users()
        .count_documents(doc! { "username": "race" })
        .await
        .expect("count");
    assert_eq!(stored, 1);

    let other = find_user(&app, "T_ada").await.expect("T_ada");
    let other_id = other.get_object_id("_id").expect("_id").to_hex();
    let (status, body) = post(
        &app,
        "edit_user",
        &[
            ("id", &other_id),
            ("fname", "A"),
            ("lname", "B"),
            ("username", "t_ada"),
        ],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["id"], other_id.as_str(), "the error names the row");
    // Keeping one's own name is no conflict.
    let (status, _) = post(
        &app,
        "edit_user",
        &[
            ("id", &other_id),
            ("fname", "Al"),
            ("lname", "B"),
            ("username", "T_ada"),
        ],
    )
    .await;
    assert_eq!(status, 200);
}

/// Edits and deletes of a user that no longer exists say so with 404; a delete of a deleted
/// user is not an error of the server.
#[tokio::test]
async fn edits_of_deleted_users_say_so() {
    let app = common::start().await;
    let id = ObjectId::new();
    let mut doc = user("Alan", "Turing", "t_alan");
    doc.insert("_id", id);
    app.users().insert_one(doc).await.expect("insert");
    let hex = id.to_hex();

    let fields = [
        ("id", hex.as_str()),
        ("fname", "Alan M."),
        ("lname", "Turing"),
        ("username", "aturing"),
    ];
    let (status, body) = post(&app, "edit_user", &fields).await;
    assert_eq!(status, 200, "{body}");
    let stored = find_user(&app, "aturing").await.expect("edited");
    assert_eq!(stored.get_str("fname"), Ok("Alan M."));

    let (status, _) = post(&app, "delete_user", &[("id", &hex)]).await;
    assert_eq!(status, 200);
    assert!(find_user(&app, "aturing").await.is_none());
    let (status, body) = post(&app, "delete_user", &[("id", &hex)]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("deleted meanwhile")));
    let (status, _) = post(&app, "edit_user", &fields).await;
    assert_eq!(status, 404);
    let (status, _) = post(&app, "delete_user", &[("id", "not-an-id")]).await;
    assert_eq!(status, 404);
}

/// Input that looks like a query is stored and matched as the literal string it is.
#[tokio::test]
async fn operator_looking_input_is_stored_literally() {
    let app = common::start().await;
    let cases = [
        ("{\"$gt\": \"\"}", "$where", "sleep(1000)"),
        ("a.b.c", "$set", "{\"$ne\": null}"),
    ];
    for (fname, lname, username) in cases {
        let (status, body) = post(
            &app,
            "add_user",
            &[("fname", fname), ("lname", lname), ("username", username)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let stored = find_user(&app, username).await.expect("stored");
        assert_eq!(stored.get_str("fname"), Ok(fname));
        assert_eq!(stored.get_str("lname"), Ok(lname));
    }
    // The operator-looking username matched only itself, so a third such name is free.
    let users = app
        .users()
        .count_documents(doc! { "username": { "$in": ["sleep(1000)", "{\"$ne\": null}"] } })
        .await
        .expect("count");
    assert_eq!(users, 2);
    let (status, _) = post(
        &app,
        "add_user",
        &[
            ("fname", "x"),
            ("lname", "y"),
            ("username", "{\"$gt\": \"\"}"),
        ],
    )
    .await;
    assert_eq!(status, 200, "no operator matched an existing user");
}

/// One click flips a lock; a bad value is 400, an unknown device 404, a camera is no lock.
#[tokio::test]
async fn locks_flip() {
    let app = common::start().await;
    let lock = app
        .devices()
        .find_one(doc! { "type": "lock" })
        .await
        .expect("find")
        .expect("a seeded lock");
    let id = lock.get_object_id("_id").expect("_id").to_hex();
    let was = lock.get_bool("locked").expect("locked");
    let flipped = (!was).to_string();
    let (status, body) = post(&app, "set_lock", &[("id", &id), ("locked", &flipped)]).await;
    assert_eq!(status, 200, "{body}");
    let now = app
        .devices()
        .find_one(doc! { "_id": lock.get_object_id("_id").expect("_id") })
        .await
        .expect("find")
        .expect("still there");
    assert_eq!(now.get_bool("locked"), Ok(!was));

    let (status, _) = post(&app, "set_lock", &[("id", &id), ("locked", "maybe")]).await;
    assert_eq!(status, 400);
    let unknown = ObjectId::new().to_hex();
    let (status, _) = post(&app, "set_lock", &[("id", &unknown), ("locked", "true")]).await;
    assert_eq!(status, 404);
    let camera = app
        .devices()
        .find_one(doc! { "type": { "$ne": "lock" } })
        .await
        .expect("find");
    if let Some(camera) = camera {
        let camera_id = camera.get_object_id("_id").expect("_id").to_hex();
        let (status, _) = post(&app, "set_lock", &[("id", &camera_id), ("locked", "true")]).await;
        assert_eq!(status, 404, "only lock devices can be locked");
    }
}

/// Without WASM the browser posts the form and accepts HTML: it is sent back to the page, with
/// the error in the URL when there is one (the page shows it).
#[tokio::test]
async fn plain_form_posts_return_to_the_page() {
    let app = common::start().await;
    let page = app.url("/");
    let send_from = |referer: &str, form: &[(&str, &str)]| {
        client()
            .post(app.url("/_server/add_user"))
            .header("accept", "text/html,application/xhtml+xml")
            .header("referer", referer)
            .header("origin", app.base.as_str())
            .form(form)
            .send()
    };
    let response = send_from(
        &page,
        &[
            ("fname", "No"),
            ("lname", "Script"),
            ("username", "noscript"),
        ],
    )
    .await
    .expect("post");
    assert_eq!(response.status().as_u16(), 302);
    let location = response.headers()["location"].to_str().expect("location");
    assert!(!location.contains("__err"), "{location}");
    assert!(find_user(&app, "noscript").await.is_some());

    // An empty field, then a taken name (posted from the page showing the first error): each
    // lands on the page showing it by the field, and only it.
    let mut referer = page.clone();
    for (form, field, text) in [
        (
            &[("fname", ""), ("lname", "Script"), ("username", "other")][..],
            "fname",
            "required",
        ),
        (
            &[
                ("fname", "No"),
                ("lname", "Script"),
                ("username", "noscript"),
            ][..],
            "username",
            "username taken",
        ),
    ] {
        let response = send_from(&referer, form).await.expect("post");
        assert_eq!(response.status().as_u16(), 302);
        let location = response.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        assert!(
            location.contains("__path=%2F_server%2Fadd_user"),
            "{location}"
        );
        assert_eq!(location.matches("__err=").count(), 1, "{location}");
        referer.clone_from(&location);
        let html = reqwest::get(&location)
            .await
            .expect("page")
            .text()
            .await
            .expect("html");
        let shown = format!(r#"data-field-error="{field}""#);
        assert!(html.contains(&shown), "{field} error shown");
        assert!(html.contains(text), "{text}");
    }
    assert_eq!(
        app.users()
            .count_documents(doc! { "username": "other" })
            .await
            .expect("count"),
        0
    );
}

/// Writes from another site, or naming a host that is not ours, are refused before anything
/// runs; nothing is written.
#[tokio::test]
async fn cross_site_writes_are_refused() {
    let app = common::start().await;
    let form = [("fname", "Evil"), ("lname", "Site"), ("username", "evil")];
    let url = app.url("/_server/add_user");
    let attempts = [
        vec![("origin", "http://evil.test")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("host", "evil.test:3000")],
        vec![
            ("accept", "text/html"),
            ("referer", "http://evil.test/"),
            ("origin", "http://evil.test"),
        ],
    ];
    for headers in attempts {
        let mut request = client().post(&url).form(&form);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status().as_u16(), 403, "{headers:?}");
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
        assert_eq!(body["problem"], "cross_site", "{headers:?}");
    }
    assert!(
        find_user(&app, "evil").await.is_none(),
        "nothing was written"
    );
}

/// Bodies no form sends are refused with 4xx, and the server keeps answering.
#[tokio::test]
async fn hostile_bodies_get_client_errors() {
    let app = common::start().await;
    let url = app.url("/_server/add_user");
    let huge = "a".repeat(server::server_fns::BODY_LIMIT + 1);
    let response = client()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("fname={huge}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 413);
    // The same without a length: the body is cut off at the limit.
    let chunks = futures::stream::iter(
        (0..100).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 4096]))),
    );
    let response = client()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 413);
    let response = client()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("fname=%zz&&&=\u{0}")
        .send()
        .await
        .expect("request");
    assert!(
        (400..500).contains(&response.status().as_u16()),
        "{}",
        response.status()
    );
    let response = client().get(&url).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 405);
    // Forms the list reads cannot decode (found by the HTTP fuzzer: Leptos answers 500).
    for (name, body) in [("users", "{\"after\":[]}"), ("lock_devices", "after[]=1")] {
        let response = client()
            .post(app.url(&format!("/_server/{name}")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), 400, "{name} {body}");
    }
    let (status, _) = post(
        &app,
        "add_user",
        &[("fname", "Still"), ("lname", "Here"), ("username", "still")],
    )
    .await;
    assert_eq!(status, 200, "the server still answers");
}

/// A body that is not UTF-8 (a raw `0xFF`) is an unreadable form: every server function
/// answers `400` with the edge's short refusal, whether a script or a plain form posts it,
/// nothing is written, and the server keeps answering.
#[tokio::test]
async fn bodies_that_are_not_utf8_get_400() {
    let app = common::start().await;
    let users = app.users().count_documents(doc! {}).await.expect("count");
    let devices = app.devices().find(doc! {}).await.expect("find");
    let devices: Vec<Document> = futures::TryStreamExt::try_collect(devices)
        .await
        .expect("devices");
    let id = ObjectId::new().to_hex();
    let functions = [
        "add_user",
        "edit_user",
        "delete_user",
        "set_lock",
        "users",
        "lock_devices",
    ];
    for name in functions {
        for script in [true, false] {
            let mut body = format!("id={id}&fname=A&lname=B&locked=true&username=").into_bytes();
            body.extend_from_slice(&[0xFF, 0xFE, b'x']);
            let mut request = client()
                .post(app.url(&format!("/_server/{name}")))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
            request = if script {
                request
                    .header("origin", app.base.as_str())
                    .header("sec-fetch-site", "same-origin")
            } else {
                request
                    .header("accept", "text/html,application/xhtml+xml")
                    .header("referer", app.url("/"))
            };
            let response = request.send().await.expect("request");
            assert_eq!(response.status().as_u16(), 400, "{name}, script {script}");
            let body: Value = serde_json::from_str(&response.text().await.expect("body"))
                .expect("a JSON refusal");
            assert_eq!(body["problem"], "bad_request", "{name}: {body}");
        }
    }
    let after = app.users().count_documents(doc! {}).await.expect("count");
    assert_eq!(after, users, "no user was written");
    let now = app.devices().find(doc! {}).await.expect("find");
    let now: Vec<Document> = futures::TryStreamExt::try_collect(now)
        .await
        .expect("devices");
    assert_eq!(now, devices, "no device was changed");
    let (status, _) = post(
        &app,
        "add_user",
        &[("fname", "Still"), ("lname", "Here"), ("username", "utf8")],
    )
    .await;
    assert_eq!(status, 200, "the server still answers");
}

/// A server with a small write allowance per address: bursts of 3, one more a minute (so no
/// write comes back while the test runs).
async fn start_with_small_write_rate() -> common::App {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::config(&dir);
    config.write_rate = server::config::WriteRate {
        count: std::num::NonZeroU32::MIN,
        period: std::time::Duration::from_secs(60),
        burst: std::num::NonZeroU32::new(3).expect("3"),
    };
    common::start_with(dir, config).await
}

/// `Retry-After` of a response, in seconds.
fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("whole seconds")
}

/// Past its `WRITE_RATE_PER_IP` an address's writes get `429` with `Retry-After` and nothing
/// is written, from every write function; the list reads go on; another address still writes;
/// a plain form post is sent back to the page, which shows "Too many changes".
#[tokio::test]
async fn writes_past_the_rate_per_address_get_429() {
    let app = start_with_small_write_rate().await;
    for i in 0..3 {
        let username = format!("rate{i}");
        let (status, body) = post(
            &app,
            "add_user",
            &[("fname", "R"), ("lname", "L"), ("username", &username)],
        )
        .await;
        assert_eq!(status, 200, "write {i} is within the burst: {body}");
    }
    let response = client()
        .post(app.url("/_server/add_user"))
        .header("origin", app.base.as_str())
        .header("sec-fetch-site", "same-origin")
        .form(&[("fname", "R"), ("lname", "L"), ("username", "rate3")])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 429);
    let wait = retry_after(&response);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: Value = serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert_eq!(body["problem"]["too_fast"]["retry_after"], wait, "{body}");
    let message = body["message"].as_str().expect("message");
    assert_eq!(message, format!("Too many changes; try again in {wait} s."));
    assert!(find_user(&app, "rate3").await.is_none(), "nothing written");

    // The other writes share the allowance.
    let lock = app
        .devices()
        .find_one(doc! { "type": "lock" })
        .await
        .expect("find")
        .expect("a seeded lock");
    let lock_id = lock.get_object_id("_id").expect("_id");
    let flipped = (!lock.get_bool("locked").expect("locked")).to_string();
    let user_id = find_user(&app, "rate0")
        .await
        .expect("rate0")
        .get_object_id("_id")
        .expect("_id")
        .to_hex();
    let hex = lock_id.to_hex();
    for (name, form) in [
        (
            "set_lock",
            vec![("id", hex.as_str()), ("locked", flipped.as_str())],
        ),
        ("delete_user", vec![("id", user_id.as_str())]),
        (
            "edit_user",
            vec![
                ("id", user_id.as_str()),
                ("fname", "E"),
                ("lname", "L"),
                ("username", "edited"),
            ],
        ),
    ] {
        let (status, body) = post(&app, name, &form).await;
        assert_eq!(status, 429, "{name}: {body}");
    }
    let now = app
        .devices()
        .find_one(doc! { "_id": lock_id })
        .await
        .expect("find")
        .expect("the lock");
    assert_eq!(now.get_bool("locked"), lock.get_bool("locked"), "unchanged");
    assert!(
        find_user(&app, "rate0").await.is_some(),
        "neither deleted nor edited"
    );

    // List reads are not writes.
    for _ in 0..10 {
        for name in ["users", "lock_devices"] {
            let (status, body) = post(&app, name, &[]).await;
            assert_eq!(status, 200, "{name}: {body}");
        }
    }

    // Another address has its own allowance (all of 127/8 is loopback on Linux).
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = other
        .post(app.url("/_server/add_user"))
        .form(&[
            ("fname", "O"),
            ("lname", "A"),
            ("username", "other_address"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    assert!(find_user(&app, "other_address").await.is_some());

    // Without scripts: back to the page, which says so next to the form.
    let page = app.url("/");
    let response = client()
        .post(app.url("/_server/add_user"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("referer", page.as_str())
        .header("origin", app.base.as_str())
        .form(&[
            ("fname", "N"),
            ("lname", "S"),
            ("username", "noscript_fast"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 302);
    assert!(retry_after(&response) >= 1);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(location.starts_with(&page), "{location}");
    assert!(
        location.contains("__path=%2F_server%2Fadd_user"),
        "{location}"
    );
    let html = reqwest::get(&location)
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(html.contains("Too many changes; try again in "), "shown");
    assert!(
        find_user(&app, "noscript_fast").await.is_none(),
        "nothing written"
    );
}

/// Behind a trusted proxy the write allowance is the forwarded client's (the rightmost
/// `X-Forwarded-For` entry that is not a trusted proxy): one client used up does not stop
/// another behind the same proxy.
#[tokio::test]
async fn behind_a_trusted_proxy_writes_count_by_the_forwarded_client() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = common::config(&dir);
    config.write_rate = server::config::WriteRate {
        count: std::num::NonZeroU32::MIN,
        period: std::time::Duration::from_secs(60),
        burst: std::num::NonZeroU32::MIN,
    };
    // The test's requests come from 127.0.0.1: the proxy.
    config.trusted_proxies = server::client::TrustedProxies::parse("127.0.0.1").expect("list");
    let app = common::start_with(dir, config).await;
    let add = |forwarded_for: &'static str, username: &'static str| {
        client()
            .post(app.url("/_server/add_user"))
            .header("origin", app.base.as_str())
            .header("sec-fetch-site", "same-origin")
            .header("x-forwarded-for", forwarded_for)
            .form(&[("fname", "P"), ("lname", "X"), ("username", username)])
            .send()
    };
    let status =
        |response: reqwest::Result<reqwest::Response>| response.expect("request").status().as_u16();
    assert_eq!(status(add("203.0.113.7", "proxied1").await), 200);
    assert_eq!(
        status(add("198.51.100.1, 203.0.113.7", "proxied2").await),
        429
    );
    assert_eq!(status(add("203.0.113.8", "proxied3").await), 200);
    assert!(find_user(&app, "proxied2").await.is_none());
    assert!(find_user(&app, "proxied3").await.is_some());
}
