//! The app's import rules, checked on its source text (the compiler checks only privacy):
//!
//! - nothing reaches up into `lib.rs`: other files name the crate's modules, never an item
//!   `lib.rs` defines itself (`App`, `shell`, `HOME`);
//! - `model.rs` is the ground floor, shared by server and browser: it names nothing of the
//!   crate; `repo.rs`, the server-only database side, names only `model`;
//! - `components/` and `pages/` never name `repo`: they reach the database through the server
//!   functions (`api`, `edit`).

use std::path::{Path, PathBuf};

/// This crate's `src/`.
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn nothing_reaches_up_into_lib_rs() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    // The modules `lib.rs` declares as files (`pub mod api;`), not items it defines itself.
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("pub ");
            line.strip_prefix("mod ")?.strip_suffix(';')
        })
        .map(|name| format!("crate::{}", name.trim()))
        .collect();
    layering::assert_no_paths(
        &src(),
        |file| file != "lib.rs",
        "crate",
        |path| {
            !modules
                .iter()
                .any(|module| path == module || path.starts_with(&format!("{module}::")))
        },
        "only lib.rs may name what lib.rs defines; other files name its modules",
    );
}

#[test]
fn model_is_the_ground_floor() {
    layering::assert_no_paths(
        &src(),
        |file| file == "model.rs",
        "crate",
        |_| true,
        "model.rs names nothing of the crate",
    );
    layering::assert_no_paths(
        &src(),
        |file| file == "repo.rs",
        "crate",
        |path| !path.starts_with("crate::model::"),
        "repo.rs names only model",
    );
}

#[test]
fn the_view_reaches_the_database_only_through_server_functions() {
    layering::assert_no_paths(
        &src(),
        |file| file.starts_with("components") || file.starts_with("pages"),
        "crate",
        |path| path.starts_with("crate::repo"),
        "components/ and pages/ never name repo: they call the server functions",
    );
}
