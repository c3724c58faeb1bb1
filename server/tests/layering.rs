//! The server's import rules, checked on its source text (the compiler checks only privacy):
//!
//! - routes speak only HTTP: from the hub they name only its feed API (`Hub`, `Feed`,
//!   `Frame`); what a stream carries (backlog, duplicates, `resync`) is decided in the hub;
//! - the hub knows no HTTP: `hub.rs` and `hub/` name neither `axum` nor the routes, the
//!   listener, the server functions' edge or the handlers' state;
//! - only `lib.rs` (the router) reaches `routes`.

use std::path::{Path, PathBuf};

/// This crate's `src/`.
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// What routes may name from the hub.
const HUB_FEED_API: [&str; 3] = ["crate::hub::Hub", "crate::hub::Feed", "crate::hub::Frame"];

#[test]
fn routes_name_only_the_hub_feed_api() {
    layering::assert_no_paths(
        &src(),
        |file| file == "routes.rs" || file.starts_with("routes/"),
        "crate",
        |path| path.starts_with("crate::hub::") && !HUB_FEED_API.contains(&path),
        "routes speak only HTTP: from the hub they name only Hub, Feed and Frame",
    );
}

#[test]
fn the_hub_knows_no_http() {
    let hub = |file: &str| file == "hub.rs" || file.starts_with("hub/");
    layering::assert_no_paths(&src(), hub, "axum", |_| true, "the hub knows no HTTP");
    layering::assert_no_paths(
        &src(),
        hub,
        "crate",
        |path| {
            ["routes", "net", "server_fns", "state"]
                .iter()
                .any(|module| path.starts_with(&format!("crate::{module}")))
        },
        "the hub knows no HTTP: not the routes, the listener, the server functions or AppState",
    );
}

#[test]
fn only_the_router_reaches_the_routes() {
    layering::assert_no_paths(
        &src(),
        |file| file != "lib.rs" && file != "routes.rs" && !file.starts_with("routes/"),
        "crate",
        |path| path.starts_with("crate::routes"),
        "only lib.rs (the router) reaches the routes",
    );
}
