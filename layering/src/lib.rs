//! Import rules checked on source text, for the workspace's layering tests (the compiler
//! checks only privacy, not which module may name which).
//!
//! Each crate keeps its rules in a test (`app/tests/layering.rs`,
//! `server/tests/layering.rs`, `embedded-db/tests/layering.rs`); this crate reads the files
//! and finds the paths they name: outside comments, with `use` groups expanded.

use std::path::Path;

/// Fails, listing every offence, when a file of `src` (a crate's `src/` folder) that
/// `in_scope` picks (by its path relative to `src`, with `/`) names a path under `root`
/// (`crate`, `axum`) that `forbidden` rejects.
pub fn assert_no_paths(
    src: &Path,
    in_scope: impl Fn(&str) -> bool,
    root: &str,
    forbidden: impl Fn(&str) -> bool,
    rule: &str,
) {
    let mut offences = Vec::new();
    for (file, text) in sources(src) {
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

/// Every `.rs` file under `src`: its path relative to `src` (with `/`) and its text, sorted
/// by path.
pub fn sources(src: &Path) -> Vec<(String, String)> {
    let mut files = sources_under(src, src);
    files.sort();
    files
}

fn sources_under(src: &Path, dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(sources_under(src, &path));
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
pub fn paths(text: &str, root: &str) -> Vec<(usize, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_reads_use_groups_and_inline_paths() {
        let text = "use crate::hub::{Feed, Hub};\n// crate::hub::Beat in a comment\nlet x = \
                    crate::metrics::bump(y);\nuse crate::a::{b::{c, d}, e};\nuse other_crate::x;";
        let found: Vec<_> = paths(text, "crate").into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            found,
            [
                "crate::hub::Feed",
                "crate::hub::Hub",
                "crate::metrics::bump",
                "crate::a::b::c",
                "crate::a::b::d",
                "crate::a::e"
            ]
        );
    }
}
