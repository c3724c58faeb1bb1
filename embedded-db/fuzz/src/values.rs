//! Random BSON values and documents of every type, the hostile shapes (deep nesting, huge
//! arrays, long dotted paths, invalid UTF-8), and structure-aware mutation of a [`Doc`] tree.

use crate::raw_bson::{field, s, Doc, Val};
use crate::rng::Rng;

/// Integers at type and size boundaries, plus the server's own limits.
pub(crate) const INTERESTING_I32: &[i32] = &[
    0,
    1,
    -1,
    2,
    64,
    65,
    100,
    101,
    127,
    128,
    255,
    256,
    1024,
    65_535,
    65_536,
    16_777_216,
    48_000_000,
    i32::MAX - 1,
    i32::MAX,
    i32::MIN,
];
/// 64-bit boundaries, including where `f64` stops being exact.
pub(crate) const INTERESTING_I64: &[i64] = &[
    0,
    1,
    -1,
    1 << 31,
    -(1 << 31) - 1,
    1 << 53,
    (1 << 53) + 1,
    -(1 << 53) - 1,
    i64::MAX,
    i64::MIN,
    i64::MAX - 1,
];
/// Doubles that break naive arithmetic and integer conversion.
pub(crate) const INTERESTING_F64: &[f64] = &[
    0.0,
    -0.0,
    0.5,
    1.0,
    -1.0,
    1.5,
    1e308,
    -1e308,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MIN_POSITIVE,
    5e-324,
    9.2e18,
    9.3e18,
    9_007_199_254_740_993.0,
    4_294_967_296.0,
];
/// Byte sequences that are not UTF-8: a stray continuation byte, an overlong NUL, a UTF-16
/// surrogate, a truncated sequence, bytes that never occur.
const INVALID_UTF8: &[&[u8]] = &[
    &[0x80],
    &[0xC0, 0x80],
    &[0xED, 0xA0, 0x80],
    &[0xE2, 0x82],
    &[0xFF, 0xFE],
    &[0xF8, 0x88, 0x80, 0x80, 0x80],
    &[b'a', 0xC3],
];
/// Field names worth trying anywhere: plain, dotted, positional, operator-like, empty, Unicode.
pub(crate) const KEYS: &[&str] = &[
    "a",
    "b",
    "c",
    "x",
    "_id",
    "arr",
    "n",
    "a.b",
    "a.0",
    "arr.1.y",
    "a.$",
    "a.$[]",
    "a.$[e]",
    "$set",
    "$gt",
    "$in",
    "$each",
    "$db",
    "$where",
    "$",
    "",
    ".",
    "a..b",
    " ",
    "$$ROOT",
    "0",
    "-1",
    "99999999999999999999",
    "ñ",
    "🦀",
    "filter",
    "pipeline",
    "cursor",
    "documents",
];

/// The command names of the dispatch table (`embedded-db/src/cmd.rs`) plus a few it lacks; the
/// tests below fail when the server's `listCommands` and this list drift apart.
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
    "ismaster",
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
    "shutdown",
    "mapReduce",
    "eval",
];

/// `component.component.…` with `n` components.
pub(crate) fn dotted(component: &str, n: usize) -> String {
    let mut out = String::with_capacity(n * (component.len() + 1));
    for i in 0..n {
        if i > 0 {
            out.push('.');
        }
        out.push_str(component);
    }
    out
}

/// A dotted path of hostile length: up to 100,000 components.
pub(crate) fn long_path(rng: &mut Rng) -> String {
    let n = *rng.pick(&[100, 1_000, 10_000, 100_000]);
    let component = *rng.pick(&["a", "a", "a", "0", "$[]", "$", "b1"]);
    dotted(component, n)
}

/// Bytes that mix ASCII with one invalid UTF-8 sequence.
pub(crate) fn invalid_utf8(rng: &mut Rng) -> Vec<u8> {
    let mut out = b"a".repeat(rng.small(4));
    out.extend_from_slice(rng.choose(INVALID_UTF8));
    out.extend(b"b".repeat(rng.small(4)));
    out
}

/// `leaf` wrapped in `depth` alternating or uniform levels of documents and arrays, built
/// without recursion.
pub(crate) fn nested(rng: &mut Rng, depth: usize, leaf: Val) -> Val {
    let arrays = rng.below(3); // 0: documents, 1: arrays, 2: alternating
    let key = rng
        .pick(&["a", "a", "$and", "$elemMatch", "0"])
        .as_bytes()
        .to_vec();
    let mut v = leaf;
    for level in 0..depth {
        let array = arrays == 1 || (arrays == 2 && level % 2 == 1);
        v = if array {
            Val::Array(vec![v])
        } else {
            Val::Doc(vec![(key.clone(), v)])
        };
    }
    v
}

/// A depth that is either ordinary, right at the server's limit (64), or far beyond it.
pub(crate) fn hostile_depth(rng: &mut Rng) -> usize {
    match rng.below(3) {
        0 => rng.range(2, 20),
        1 => rng.range(58, 68),
        _ => rng.range(100, 400),
    }
}

/// An array of 1,000 to 100,000 elements (small elements, so at most ~2 MB).
pub(crate) fn huge_array(rng: &mut Rng) -> Val {
    let n: usize = [1_000, 10_000, 100_000][rng.weighted(&[60, 30, 10])];
    let kind = rng.below(4);
    Val::Array(
        (0..n)
            .map(|i| match kind {
                0 => Val::Int32(i32::try_from(i).unwrap_or(0)),
                1 => Val::Null,
                2 => Val::Doc(vec![field("a", Val::Int32(1))]),
                _ => Val::Int32(i32::try_from(n - i).unwrap_or(0)),
            })
            .collect(),
    )
}

/// A random key: usually from [`KEYS`], sometimes random, invalid UTF-8 or a long path.
pub(crate) fn key(rng: &mut Rng) -> Vec<u8> {
    match rng.weighted(&[700, 120, 80, 50, 30, 3]) {
        0 => rng.pick(KEYS).as_bytes().to_vec(),
        1 => {
            let n = rng.range(1, 6);
            dotted(rng.choose(&["a", "b", "0"]), n).into_bytes()
        }
        2 => {
            let n = rng.range(1, 8);
            rng.bytes(n).into_iter().map(|b| b.max(1)).collect()
        }
        3 => format!("${}", rng.pick(&["foo", "inc", "set", "expr", "regex"])).into_bytes(),
        4 => invalid_utf8(rng),
        _ => long_path(rng).into_bytes(),
    }
}

/// A random string value: text, a path, a `$path` field reference, or invalid UTF-8.
pub(crate) fn string(rng: &mut Rng) -> Vec<u8> {
    match rng.weighted(&[400, 200, 150, 80, 40, 8, 40]) {
        0 => rng
            .pick(&["", "x", "abc", "c", "fuzz", "a@x", "ñandú"])
            .as_bytes()
            .to_vec(),
        1 => rng.pick(KEYS).as_bytes().to_vec(),
        2 => format!("${}", String::from_utf8_lossy(&key(rng))).into_bytes(),
        3 => invalid_utf8(rng),
        4 => "x".repeat(rng.range(100, 5_000)).into_bytes(),
        5 => long_path(rng).into_bytes(),
        _ => rng
            .pick(&["$$ROOT", "$$REMOVE", "$$CURRENT", "$$NOW", "$$bogus"])
            .as_bytes()
            .to_vec(),
    }
}

/// A random scalar of any BSON type (including invalid booleans and deprecated types).
pub(crate) fn scalar(rng: &mut Rng) -> Val {
    match rng.below(22) {
        0 | 1 => Val::Double(*rng.pick(INTERESTING_F64)),
        2 | 3 => Val::Str(string(rng)),
        4 => {
            let n = rng.small(20);
            Val::Binary(*rng.pick(&[0, 2, 3, 4, 5, 6, 7, 0x80, 0xFF]), rng.bytes(n))
        }
        5 => Val::Undefined,
        6 => Val::ObjectId(rng.bytes(12).try_into().unwrap_or([0; 12])),
        7 => Val::Bool(if rng.one_in(20) {
            2 + rng.bytes(1)[0] % 250
        } else {
            rng.bytes(1)[0] & 1
        }),
        8 => Val::DateTime(*rng.pick(INTERESTING_I64)),
        9 => Val::Null,
        10 => Val::Regex(
            if rng.one_in(10) {
                invalid_utf8(rng)
            } else {
                rng.pick(&["^a", "a|b", "(", "[", ".*", "x{99999}", "\\"])
                    .as_bytes()
                    .to_vec()
            },
            rng.pick(&["", "i", "imsx", "z", "iiii"])
                .as_bytes()
                .to_vec(),
        ),
        11 => Val::DbPointer(b"fuzz.c".to_vec(), [7; 12]),
        12 => Val::JavaScript(b"function() { return 1; }".to_vec()),
        13 => Val::Symbol(string(rng)),
        14 => Val::CodeWithScope(b"x".to_vec(), vec![field("x", Val::Int32(1))]),
        15..=17 => Val::Int32(*rng.pick(INTERESTING_I32)),
        18 => Val::Timestamp(
            rng.next_u64() as u32,
            *rng.pick(&[0, 1, u32::MAX, 1_700_000_000]),
        ),
        19 => Val::Int64(*rng.pick(INTERESTING_I64)),
        20 => Val::Decimal128(rng.bytes(16).try_into().unwrap_or([0; 16])),
        _ => rng.pick(&[Val::MinKey, Val::MaxKey]).clone(),
    }
}

/// A random value; `budget` bounds the size of ordinary nested values.
pub(crate) fn value(rng: &mut Rng, budget: usize) -> Val {
    if budget == 0 {
        return scalar(rng);
    }
    match rng.weighted(&[600, 150, 150, 8, 2, 2]) {
        0 => scalar(rng),
        1 => Val::Doc(document(rng, budget / 2)),
        2 => Val::Array((0..rng.small(6)).map(|_| value(rng, budget / 3)).collect()),
        3 => {
            let depth = hostile_depth(rng);
            let leaf = scalar(rng);
            nested(rng, depth, leaf)
        }
        4 => huge_array(rng),
        _ => Val::Str(long_path(rng).into_bytes()),
    }
}

/// A random document of up to a handful of fields.
pub(crate) fn document(rng: &mut Rng, budget: usize) -> Doc {
    (0..rng.small(6))
        .map(|_| (key(rng), value(rng, budget)))
        .collect()
}

/// A random command body: usually a real command name first, random fields, and `$db`.
pub(crate) fn random_body(rng: &mut Rng) -> Doc {
    let mut body = Doc::new();
    if rng.percent(80) {
        let value = match rng.below(4) {
            0 | 1 => s(rng.choose(&["c", "d", "users"])),
            2 => Val::Int32(1),
            _ => value(rng, 4),
        };
        body.push(field(rng.choose(COMMANDS), value));
    }
    body.extend(document(rng, 8));
    if rng.percent(90) {
        body.push(field(
            "$db",
            s(rng.choose(&["fuzz", "fuzz", "admin", "local", "config", "", "a.b", "$x"])),
        ));
    }
    body
}

/// Applies `rounds` random structure-aware mutations somewhere in `doc`.
pub(crate) fn mutate_doc(rng: &mut Rng, doc: &mut Doc, rounds: usize) {
    for _ in 0..rounds {
        mutate_fields(rng, doc, 0);
    }
}

fn mutate_fields(rng: &mut Rng, doc: &mut Doc, depth: usize) {
    if !doc.is_empty() && !rng.one_in(3) && depth < 200 {
        let i = rng.below(doc.len());
        return mutate_value(rng, &mut doc[i].1, depth + 1);
    }
    match rng.below(7) {
        0 => {
            let at = rng.below(doc.len() + 1);
            doc.insert(at, (key(rng), value(rng, 6)));
        }
        1 if !doc.is_empty() => {
            // The command name (first key) is removed less often: it decides which parser runs.
            let i = if doc.len() > 1 && rng.percent(80) {
                rng.range(1, doc.len() - 1)
            } else {
                0
            };
            doc.remove(i);
        }
        2 if !doc.is_empty() => {
            let i = rng.below(doc.len());
            let dup = doc[i].clone();
            doc.insert(rng.below(doc.len() + 1), dup);
        }
        3 if !doc.is_empty() => {
            let i = rng.below(doc.len());
            doc[i].0 = key(rng);
        }
        4 if !doc.is_empty() => {
            let i = rng.below(doc.len());
            doc.swap(0, i);
        }
        _ => {
            if !doc.is_empty() {
                let i = rng.below(doc.len());
                mutate_value(rng, &mut doc[i].1, depth + 1);
            }
        }
    }
}

fn mutate_value(rng: &mut Rng, v: &mut Val, depth: usize) {
    match v {
        Val::Doc(d) if rng.percent(70) => mutate_fields(rng, d, depth),
        Val::Array(items) if !items.is_empty() && rng.percent(70) && depth < 200 => {
            let i = rng.below(items.len());
            mutate_value(rng, &mut items[i], depth + 1);
        }
        _ => *v = replacement(rng, v),
    }
}

/// A new value for `old`: a boundary value of the same kind, another type, a wrapper, or one
/// of the hostile shapes.
fn replacement(rng: &mut Rng, old: &Val) -> Val {
    match rng.below(12) {
        0 => match old {
            Val::Int32(_) => Val::Int32(*rng.pick(INTERESTING_I32)),
            Val::Int64(_) => Val::Int64(*rng.pick(INTERESTING_I64)),
            Val::Double(_) => Val::Double(*rng.pick(INTERESTING_F64)),
            Val::Str(b) => {
                let mut b = b.clone();
                let at = rng.below(b.len() + 1);
                let bad = invalid_utf8(rng);
                b.splice(at..at, bad);
                Val::Str(b)
            }
            Val::Bool(_) => Val::Bool(2 + rng.bytes(1)[0] % 250),
            _ => scalar(rng),
        },
        1 => Val::Array(vec![old.clone()]),
        2 => Val::Doc(vec![(
            rng.pick(&["$eq", "$each", "a", "$gt", "$literal"])
                .as_bytes()
                .to_vec(),
            old.clone(),
        )]),
        3 => {
            let depth = hostile_depth(rng);
            nested(rng, depth, old.clone())
        }
        4 => Val::Str(long_path(rng).into_bytes()),
        5 => Val::Str(format!("${}", dotted("a", rng.range(1, 80))).into_bytes()),
        6 if rng.one_in(4) => huge_array(rng),
        7 => Val::Doc(Vec::new()),
        8 => Val::Array(Vec::new()),
        _ => value(rng, 4),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bson::doc;
    use mongodb::error::ErrorKind;

    use super::COMMANDS;

    /// Names in [`COMMANDS`] that the server answers but `listCommands` does not report (as
    /// mongod's does not).
    const UNLISTED_ALIASES: &[&str] = &[
        // `isMaster` in lower case: the legacy OP_QUERY handshake of Node and pymongo.
        "ismaster",
    ];

    /// Deliberately unknown: names in [`COMMANDS`] that mongod has and embedded-db refuses with
    /// CommandNotFound (59), so the fuzzer keeps exercising the refusal path.
    const DELIBERATELY_UNKNOWN: &[&str] = &["shutdown", "mapReduce", "eval"];

    /// Every command the server lists is in [`COMMANDS`], and every other name there is an
    /// unlisted alias the server answers or a deliberately unknown one it refuses.
    #[tokio::test]
    async fn commands_match_the_server_list_commands() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = embedded_db::Config::new("127.0.0.1:0".parse().expect("address"), dir.path());
        let server = embedded_db::Server::start(config)
            .await
            .expect("server starts");
        let client = mongodb::Client::with_uri_str(server.uri())
            .await
            .expect("client");
        let admin = client.database("admin");
        let reply = admin
            .run_command(doc! { "listCommands": 1 })
            .await
            .expect("listCommands");
        let listed: BTreeSet<&str> = reply
            .get_document("commands")
            .expect("a commands document")
            .keys()
            .map(String::as_str)
            .collect();
        let ours: BTreeSet<&str> = COMMANDS.iter().copied().collect();
        let missing: Vec<_> = listed.difference(&ours).collect();
        assert!(
            missing.is_empty(),
            "commands the server lists that values::COMMANDS lacks: {missing:?}"
        );
        let explained: BTreeSet<&str> = UNLISTED_ALIASES
            .iter()
            .chain(DELIBERATELY_UNKNOWN)
            .copied()
            .collect();
        let unexplained: Vec<_> = ours
            .difference(&listed)
            .filter(|n| !explained.contains(*n))
            .collect();
        assert!(
            unexplained.is_empty(),
            "names in values::COMMANDS the server does not list, neither an unlisted alias nor \
             deliberately unknown: {unexplained:?}"
        );
        let stale: Vec<_> = explained
            .iter()
            .filter(|n| listed.contains(*n) || !ours.contains(*n))
            .collect();
        assert!(
            stale.is_empty(),
            "explained names the server lists or values::COMMANDS lacks: {stale:?}"
        );
        for &name in UNLISTED_ALIASES {
            if let Err(e) = admin.run_command(doc! { name: 1 }).await {
                panic!("the alias {name} is refused: {e}");
            }
        }
        for &name in DELIBERATELY_UNKNOWN {
            let code = match admin.run_command(doc! { name: 1 }).await {
                Ok(_) => None,
                Err(e) => match *e.kind {
                    ErrorKind::Command(ref c) => Some(c.code),
                    _ => None,
                },
            };
            assert_eq!(
                code,
                Some(59),
                "{name} is meant to be unknown to the server"
            );
        }
        client.shutdown().await;
        server.shutdown().await;
    }
}
