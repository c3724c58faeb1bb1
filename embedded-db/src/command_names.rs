//! The names of the commands this server has: what `listCommands` reports, the other
//! spellings the dispatcher accepts, and the test-only ones.
//!
//! Names only, no behaviour: the dispatch table in `cmd.rs` matches on [`canonical`] names, so
//! an alias is declared once, here, and fail points fold aliases the same way. Tests tie the
//! three lists to the dispatch table (`cmd.rs`'s unit test and `tests/handshake.rs`).

/// The names in the dispatch table, sorted, as `listCommands` reports them.
pub(crate) const COMMANDS: &[&str] = &[
    "abortTransaction",
    "aggregate",
    "buildInfo",
    "collMod",
    "collStats",
    "commitTransaction",
    "connectionStatus",
    "count",
    "create",
    "createIndexes",
    "dbStats",
    "delete",
    "distinct",
    "drop",
    "dropDatabase",
    "dropIndexes",
    "endSessions",
    "explain",
    "find",
    "findAndModify",
    "getCmdLineOpts",
    "getLog",
    "getMore",
    "getParameter",
    "hello",
    "hostInfo",
    "insert",
    "isMaster",
    "killAllSessions",
    "killAllSessionsByPattern",
    "killCursors",
    "killSessions",
    "listCollections",
    "listCommands",
    "listDatabases",
    "listIndexes",
    "ping",
    "refreshSessions",
    "renameCollection",
    "replSetGetStatus",
    "serverStatus",
    "startSession",
    "update",
    "whatsmyuri",
];

/// Other spellings accepted for a command, as `(alias, command)`: `mongod`'s lowercase
/// variants and the old name of `dropIndexes`. `listCommands` reports only `isMaster` of them,
/// as `mongod` does.
pub(crate) const ALIASES: &[(&str, &str)] = &[
    // `isMaster` is what the Rust driver sends first, `ismaster` Node and pymongo.
    ("isMaster", "hello"),
    ("ismaster", "hello"),
    ("buildinfo", "buildInfo"),
    ("findandmodify", "findAndModify"),
    ("deleteIndexes", "dropIndexes"),
];

/// Commands that exist only with test commands enabled (`Config::enable_test_commands`).
pub(crate) const TEST_COMMANDS: &[&str] = &["configureFailPoint"];

/// The one name a command goes by: `name` itself, or the command it is an alias of.
pub(crate) fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, command)| command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_sorted_and_aliases_name_listed_commands() {
        assert!(
            COMMANDS.windows(2).all(|w| w[0] < w[1]),
            "COMMANDS sorted, once each"
        );
        for (alias, command) in ALIASES {
            assert!(
                COMMANDS.contains(command),
                "{alias} is an alias of {command}"
            );
        }
        assert_eq!(canonical("ismaster"), "hello");
        assert_eq!(canonical("find"), "find");
    }
}
