//! The routes the fuzzer aims at, as the contract and the code name them: the page, the JSON
//! routes, the event stream, health and metrics, the server functions with their form fields,
//! and the static files of the site root the harness writes (see [`STATIC_FILES`]).
//!
//! The server-function names come from `app/src/api.rs` and `app/src/edit.rs`
//! (`#[server(prefix = "/_server", endpoint = …)]`); a test below keeps them honest.

/// Where the server functions are mounted.
pub const SERVER_FN_PREFIX: &str = "/_server/";

/// A server function and the url-encoded form fields it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFn {
    /// The endpoint name after [`SERVER_FN_PREFIX`].
    pub name: &'static str,
    /// The form fields it takes.
    pub fields: &'static [&'static str],
    /// Whether it writes (and so counts against `WRITE_RATE_PER_IP`).
    pub writes: bool,
}

/// Every server function of the page.
pub const SERVER_FNS: &[ServerFn] = &[
    ServerFn {
        name: "users",
        fields: &["after"],
        writes: false,
    },
    ServerFn {
        name: "lock_devices",
        fields: &["after"],
        writes: false,
    },
    ServerFn {
        name: "add_user",
        fields: &["fname", "lname", "username"],
        writes: true,
    },
    ServerFn {
        name: "edit_user",
        fields: &["id", "fname", "lname", "username"],
        writes: true,
    },
    ServerFn {
        name: "delete_user",
        fields: &["id"],
        writes: true,
    },
    ServerFn {
        name: "set_lock",
        fields: &["id", "locked"],
        writes: true,
    },
];

/// Plain `GET` routes (the event stream apart: it is long-lived and sent sparingly).
pub const GET_ROUTES: &[&str] = &[
    "/",
    "/api/users",
    "/api/lockDevices",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// The event stream.
pub const SSE: &str = "/api/sse";

/// Paths no route serves: the old name of the list route, other `/api/*`, the fallback.
pub const MISSING: &[&str] = &[
    "/api/getData",
    "/api/",
    "/api/users/1",
    "/api/lockdevices",
    "/_server/",
    "/_server/nope",
    "/nope",
    "/index.html",
    "/pkg/missing.js",
];

/// The static files the harness puts in the site root, with their content; `.gz` and `.br`
/// copies exist for the first three (the file handler serves precompressed copies).
pub const STATIC_FILES: &[(&str, &[u8])] = &[
    ("pkg/realtime.js", b"export function hydrate() {}\n"),
    ("pkg/realtime.css", b"body { margin: 0 }\n"),
    ("pkg/realtime_bg.wasm", b"\0asm\x01\0\0\0"),
    ("favicon.ico", b"\0\0\x01\0\x01\0\x10\x10"),
];

/// Paths that reach the static-file handler: the files above, directories, traversal tries.
pub const STATIC_PATHS: &[&str] = &[
    "/pkg/realtime.js",
    "/pkg/realtime.css",
    "/pkg/realtime_bg.wasm",
    "/favicon.ico",
    "/pkg/",
    "/pkg",
    "/pkg/../favicon.ico",
    "/pkg/%2e%2e/favicon.ico",
    "/../../etc/passwd",
    "/pkg/realtime.js.gz",
    "/%00",
    "//favicon.ico",
];

/// Methods: the usual ones, odd but valid tokens, and lowercase.
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "post",
    "PROPFIND", "M-SEARCH", "X",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The server-function names match the app's `#[server(endpoint = …)]` attributes.
    #[test]
    fn server_fn_names_match_the_app() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../app/src/");
        let source = ["api.rs", "edit.rs"]
            .iter()
            .map(|f| std::fs::read_to_string(format!("{root}{f}")).expect("app source"))
            .collect::<String>();
        let mut names: Vec<&str> = source
            .split("endpoint = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        names.sort_unstable();
        let mut ours: Vec<&str> = SERVER_FNS.iter().map(|f| f.name).collect();
        ours.sort_unstable();
        assert_eq!(names, ours);
    }
}
