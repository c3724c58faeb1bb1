//! The app's import rules, checked on its source text (the compiler checks only privacy):
//!
//! - nothing reaches up into `lib.rs`: other files name the crate's modules, never an item
//!   `lib.rs` defines itself (`App`, `shell`, `HOME`);
//! - `model.rs` is the ground floor, shared by server and browser: it names nothing of the
//!   crate; `repo.rs`, the server-only database side, names only `model`;
//! - `components/` and `pages/` never name `repo`: they reach the database through the server
//!   functions (`api`, `edit`).

use std::path::Path;

#[test]
fn nothing_reaches_up_into_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    // The modules `lib.rs` declares as files (`pub mod api;`), not items it defines itself.
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("pub ");
            line.strip_prefix("mod ")?.strip_suffix(';')
        })
        .map(|name| format!("crate::{}", name.trim()))
        .collect();
    assert_no_paths(
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
    assert_no_paths(
        |file| file == "model.rs",
        "crate",
        |_| true,
        "model.rs names nothing of the crate",
    );
    assert_no_paths(
        |file| file == "repo.rs",
        "crate",
        |path| !path.starts_with("crate::model::"),
        "repo.rs names only model",
    );
}

#[test]
fn the_view_reaches_the_database_only_through_server_functions() {
    assert_no_paths(
        |file| file.starts_with("components") || file.starts_with("pages"),
        "crate",
        |path| path.starts_with("crate::repo"),
        "components/ and pages/ never name repo: they call the server functions",
    );
}

/// Fails, listing every offence, when a file of `src/` that `in_scope` picks names a path
/// under `root` (`crate`, `axum`) that `forbidden` rejects.
fn assert_no_paths(
    in_scope: impl Fn(&str) -> bool,
    root: &str,
    forbidden: impl Fn(&str) -> bool,
    rule: &str,
) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offences = Vec::new();
    for (file, text) in sources(&src, &src) {
        if in_scope(&file) {
            for (line, path) in paths(&text, root) {
                if forbidden(&path) {
                    offences.push(format!("src/{file}:{line}: {path}"));
                }
            }
        }
    }
    assert!(offences.is_empty(), "{rule}:\n{}", offences.join("\n"));
}

/// Every `.rs` file under `dir`: its path relative to `src` (with `/`) and its text.
fn sources(src: &Path, dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(sources(src, &path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.strip_prefix(src).expect("under src/");
            let name = name.to_string_lossy().replace('\\', "/");
            files.push((name, std::fs::read_to_string(&path).expect("a source file")));
        }
    }
    files
}

/// The paths under `root` that `text` names outside comments, with their line numbers; a
/// `use` group is expanded (`use crate::hub::{Feed, Hub};` names `crate::hub::Feed` and
/// `crate::hub::Hub`).
fn paths(text: &str, root: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let start = format!("{root}::");
    let mut found = Vec::new();
    for (at, _) in code.match_indices(&start) {
        let preceded = code[..at].chars().next_back();
        if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `other_crate::`, `$crate::`
        }
        let line = code[..at].matches('\n').count() + 1;
        let path = path_at(&code[at..]);
        found.extend(expand(&path).into_iter().map(|p| (line, p)));
    }
    found
}

/// The path at the start of `code`: `a::b::c`, or `a::b::{…}` with its braces.
fn path_at(code: &str) -> String {
    let mut depth = 0;
    let mut end = 0;
    for (i, c) in code.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            c if depth > 0 || c.is_alphanumeric() || c == '_' || c == ':' || c == '*' => {}
            _ => break,
        }
        end = i + c.len_utf8();
        if depth == 0 && c == '}' {
            break;
        }
    }
    code[..end].split_whitespace().collect()
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.trim_end_matches("::").to_owned()];
    };
    let (prefix, group) = (&path[..open], &path[open + 1..path.len() - 1]);
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&group[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&group[from..]);
    parts
        .into_iter()
        .filter(|part| !part.is_empty())
        .flat_map(|part| expand(&format!("{prefix}{part}")))
        .collect()
}
