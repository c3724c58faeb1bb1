//! The import rules of `docs/architecture.md`, checked on the source: each module may name
//! only the modules below it (`crate::x` paths), the command handlers never climb back into
//! the dispatcher, and the pure layers do no I/O. A new `use` that breaks a rule fails here
//! with the file, the line and the rule.

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

/// Paths that mean I/O: none of them may appear in the pure layers.
const IO_PATHS: &[&str] = &["tokio::", "std::net", "std::fs", "std::io", "redb::"];

/// Modules that do no I/O (their tests may: a test of `wire` spawns a thread).
const PURE: &[&str] = &["wire", "query", "keys", "namespace", "command_names"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("src is readable");
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `cmd/write/insert.rs` → `cmd`.
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .expect("a file under src")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The code lines of a file, numbered from 1, without comments and without its
/// `#[cfg(test)]` module (tests may reach anywhere).
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let end = text.find("\n#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or_default()))
        .collect()
}

/// The `crate::<module>` names a line uses.
fn crate_modules(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .filter(|(at, _)| !line[..*at].ends_with(char::is_alphanumeric))
        .map(|(at, _)| {
            let rest = &line[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Every broken rule, as `file:line: rule` lines.
fn violations() -> Vec<String> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut found = Vec::new();
    for path in files {
        let relative = path.strip_prefix(&root).expect("under src").to_path_buf();
        let module = module_of(&relative);
        if module == "lib" || module == "bin" || module == "layering" {
            continue;
        }
        let Some((_, allowed)) = ALLOWED.iter().find(|(name, _)| *name == module) else {
            found.push(format!(
                "{}: module {module} has no row in ALLOWED",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("source is readable");
        for (number, line) in code_lines(&text) {
            let at = format!("{}:{number}", relative.display());
            for used in crate_modules(line) {
                if used != module && !allowed.contains(&used) {
                    found.push(format!("{at}: {module} may not use crate::{used}"));
                }
            }
            if PURE.contains(&module.as_str()) {
                for io in IO_PATHS.iter().filter(|io| line.contains(*io)) {
                    found.push(format!("{at}: {module} does no I/O, but names {io}"));
                }
            }
        }
    }
    found.extend(handler_climbs());
    found
}

/// Command handlers (`cmd/<file>.rs`) import from their sibling modules (`args`, `reply`, …),
/// never from `cmd.rs` itself: the dispatcher sits on top of them. Each `super::<name>` in a
/// handler must name one of the `mod`s that `cmd.rs` declares.
fn handler_climbs() -> Vec<String> {
    let root = src();
    let dispatcher = std::fs::read_to_string(root.join("cmd.rs")).expect("cmd.rs");
    let siblings: Vec<&str> = dispatcher
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut found = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("cmd")).expect("cmd/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("source is readable");
        for (number, line) in code_lines(&text) {
            for (at, _) in line.match_indices("super::") {
                if line[..at].ends_with("super::") {
                    continue; // `super::super::x` reaches a sibling's item through the parent
                }
                let rest = &line[at + "super::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let name = &rest[..end];
                if !siblings.contains(&name) && name != "super" {
                    found.push(format!(
                        "cmd/{}:{number}: handlers may not import {name} from cmd.rs",
                        path.file_name().unwrap_or_default().to_string_lossy()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn imports_follow_the_layers() {
    let found = violations();
    assert!(
        found.is_empty(),
        "import rules broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_sees_what_it_checks() {
    assert_eq!(
        crate_modules("use crate::query::filter::Filter;"),
        ["query"]
    );
    assert_eq!(crate_modules("x(crate::a::b, crate::c)"), ["a", "c"]);
    assert_eq!(module_of(Path::new("cmd/write/insert.rs")), "cmd");
    assert_eq!(module_of(Path::new("db.rs")), "db");
    let lines = code_lines("use a; // crate::x\n#[cfg(test)]\nmod tests {\nuse crate::y;\n}\n");
    assert_eq!(lines, [(1, "use a; ")]);
}
