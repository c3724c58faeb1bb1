//! embedded-db's import rules (`docs/architecture.md`), checked on the source: each module
//! may name only the modules below it (`crate::x` paths), the command handlers never climb
//! back into the dispatcher, and the pure layers do no I/O. A new `use` that breaks a rule
//! fails here with the file, the line and the rule. Test modules (`#[cfg(test)] mod tests`)
//! are not checked: tests may reach anywhere.

use std::path::{Path, PathBuf};

/// Each top-level module (a `src/<name>.rs` file with its `src/<name>/` folder) and the
/// modules it may name, bottom floor first. `lib.rs` may name everything.
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("keys", &[]),
    ("command_names", &[]),
    ("limits", &["error"]),
    ("namespace", &["error"]),
    ("wire", &["limits"]),
    ("fail_point", &["command_names", "error"]),
    ("query", &["error", "keys", "limits", "wire"]),
    ("storage", &["error", "keys", "limits", "namespace", "wire"]),
    (
        "changes",
        &["error", "limits", "namespace", "query", "storage"],
    ),
    (
        "cursor",
        &["changes", "error", "limits", "namespace", "query"],
    ),
    (
        "db",
        &["command_names", "cursor", "fail_point", "query", "storage"],
    ),
    (
        "scan",
        &[
            "db",
            "error",
            "keys",
            "limits",
            "namespace",
            "query",
            "storage",
        ],
    ),
    (
        "cmd",
        &[
            "changes",
            "command_names",
            "cursor",
            "db",
            "error",
            "fail_point",
            "keys",
            "limits",
            "namespace",
            "query",
            "scan",
            "storage",
            "wire",
        ],
    ),
    ("connection", &["wire"]),
    (
        "server",
        &[
            "cmd",
            "connection",
            "cursor",
            "db",
            "error",
            "fail_point",
            "limits",
            "storage",
            "wire",
        ],
    ),
];

/// Crates and paths that mean I/O: none of them may appear in the pure layers.
const IO_PATHS: &[&str] = &["tokio::", "std::net", "std::fs", "std::io", "redb::"];

/// Modules that do no I/O.
const PURE: &[&str] = &["wire", "query", "keys", "namespace", "command_names"];

/// This crate's `src/`.
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A file's text without its `#[cfg(test)]` module.
fn without_tests(text: &str) -> &str {
    let end = text.find("\n#[cfg(test)]\nmod tests").unwrap_or(text.len());
    &text[..end]
}

/// The top-level module a file belongs to: `cmd/write/insert.rs` → `cmd`.
fn module_of(file: &str) -> &str {
    let first = file.split('/').next().unwrap_or(file);
    first.trim_end_matches(".rs")
}

/// The second segment of a path: `crate::query::filter::Filter` → `query`.
fn second(path: &str) -> &str {
    path.split("::").nth(1).unwrap_or_default()
}

#[test]
fn each_module_names_only_the_modules_below_it() {
    let mut found = Vec::new();
    for (file, text) in layering::sources(&src()) {
        let module = module_of(&file);
        if matches!(module, "lib" | "bin") {
            continue; // the crate root and the binary may name everything
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(name, _)| *name == module) else {
            found.push(format!("src/{file}: module {module} has no row in ALLOWED"));
            continue;
        };
        for (line, path) in layering::paths(without_tests(&text), "crate") {
            let used = second(&path);
            if used != module && !allowed.contains(&used) {
                found.push(format!("src/{file}:{line}: {module} may not use {path}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "import rules broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_pure_layers_do_no_io() {
    let mut found = Vec::new();
    for (file, text) in layering::sources(&src()) {
        if !PURE.contains(&module_of(&file)) {
            continue;
        }
        for root in ["tokio", "std", "redb"] {
            for (line, path) in layering::paths(without_tests(&text), root) {
                if IO_PATHS
                    .iter()
                    .any(|io| format!("{path}::").starts_with(io))
                {
                    found.push(format!("src/{file}:{line}: {path} is I/O"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "pure layers doing I/O:\n{}",
        found.join("\n")
    );
}

/// Command handlers (`cmd/<file>.rs`) import from their sibling modules (`args`, `reply`, …),
/// never from `cmd.rs` itself: the dispatcher sits on top of them. Each `super::<name>` in a
/// handler must name one of the `mod`s that `cmd.rs` declares.
#[test]
fn handlers_never_import_from_the_dispatcher() {
    let dispatcher = std::fs::read_to_string(src().join("cmd.rs")).expect("cmd.rs");
    let siblings: Vec<&str> = dispatcher
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut found = Vec::new();
    for (file, text) in layering::sources(&src().join("cmd")) {
        if file.contains('/') {
            continue; // `cmd/write/insert.rs` names its parent `write.rs`, not the dispatcher
        }
        for (line, path) in layering::paths(without_tests(&text), "super") {
            let name = second(&path);
            if name != "super" && !siblings.contains(&name) {
                found.push(format!("src/cmd/{file}:{line}: {path} is in cmd.rs"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "handlers importing from the dispatcher:\n{}",
        found.join("\n")
    );
}
