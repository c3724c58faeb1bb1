//! Command bodies from a grammar of the commands drivers send: `find`, `insert`, `update`,
//! `delete`, `findAndModify`, `aggregate` (including `$changeStream`), `count`, `distinct`,
//! `createIndexes`, `getMore`/`killCursors` and the admin commands, with random operators,
//! paths, values and options. Values come from [`crate::values`], so every BSON type and the
//! hostile shapes (long dotted paths, deep nesting, huge arrays) show up in real argument slots.

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};

use crate::raw_bson::{self, Doc, Val};
use crate::rng::Rng;
use crate::values;

/// A cursor id placeholder: the worker replaces these 8 bytes with an id it saw in a reply
/// (slot `n` is `CURSOR_SENTINEL + n`), so generation never depends on the server's answers.
pub(crate) const CURSOR_SENTINEL: i64 = 0x5EED_C0C0_0000_0000;
/// How many harvested-cursor slots the grammar refers to.
pub(crate) const CURSOR_SLOTS: i64 = 8;

/// A generated OP_MSG: body, kind-1 sections (identifier and documents) and flag bits.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    /// The kind-0 body.
    pub(crate) body: Doc,
    /// Kind-1 document sequences, as drivers send `documents`/`updates`/`deletes`.
    pub(crate) sequences: Vec<(Vec<u8>, Vec<Doc>)>,
    /// OP_MSG flags.
    pub(crate) flags: u32,
}

impl Msg {
    /// Encodes the message as one OP_MSG frame.
    pub(crate) fn to_frame(&self, request_id: i32) -> Vec<u8> {
        let sections: Vec<Vec<u8>> = self
            .sequences
            .iter()
            .map(|(id, docs)| {
                let docs: Vec<Vec<u8>> = docs.iter().map(raw_bson::encode).collect();
                crate::frame::sequence_section(id, &docs)
            })
            .collect();
        crate::frame::op_msg(
            request_id,
            self.flags,
            &raw_bson::encode(&self.body),
            &sections,
        )
    }
}

const COLLECTIONS: &[&str] = &["c", "c", "c", "d", "users", "e.f", "x"];
const DATABASES: &[&str] = &["fuzz", "fuzz", "fuzz", "fuzz", "fuzz2", "admin"];
const SIMPLE_PATHS: &[&str] = &[
    "a", "b", "c", "x", "_id", "a.b", "a.c", "b.c", "arr", "arr.0", "arr.x", "arr.1.y", "a.b.c.d",
    "tags", "n", "s", "_id.k",
];
const POSITIONAL_PATHS: &[&str] = &[
    "arr.$",
    "arr.$[]",
    "arr.$[e]",
    "arr.$[].x",
    "a.$[e].b",
    "arr.$[f]",
    "arr.$.x",
    "$[]",
    "$",
];
const WEIRD_PATHS: &[&str] = &[
    "", ".", "a.", ".a", "a..b", "$a", "a.$bad", "a b", "ñ.ü", "🦀", "a.-1", "a.01",
];
const QUERY_OPS: &[&str] = &[
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$type",
    "$all",
    "$elemMatch",
    "$size",
    "$regex",
    "$not",
    "$mod",
    "$bogus",
];
/// The update operators the server's parser accepts (`embedded_db::UPDATE_OPERATORS`) plus
/// deliberately unknown ones; the tests below fail when the two lists drift apart.
const UPDATE_OPS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$push",
    "$addToSet",
    "$pull",
    "$pullAll",
    "$pop",
    "$currentDate",
    "$setOnInsert",
    "$bit",
    "$unknown",
];
const ACCUMULATORS: &[&str] = &[
    "$sum",
    "$avg",
    "$min",
    "$max",
    "$first",
    "$last",
    "$push",
    "$addToSet",
    "$count",
    "$top",
];
const EXPR_OPS: &[&str] = &[
    "$add",
    "$multiply",
    "$subtract",
    "$divide",
    "$concat",
    "$eq",
    "$gt",
    "$and",
    "$or",
    "$cond",
    "$ifNull",
    "$size",
    "$toString",
    "$arrayElemAt",
    "$literal",
    "$not",
    "$in",
    "$zzz",
];

/// A collection name.
fn coll(rng: &mut Rng) -> &'static str {
    rng.choose(COLLECTIONS)
}

/// A field path: mostly ordinary, sometimes positional, deep, odd, or 100 to 100,000
/// components long.
pub(crate) fn path(rng: &mut Rng) -> String {
    match rng.weighted(&[600, 150, 100, 60, 6]) {
        0 => (*rng.pick(SIMPLE_PATHS)).to_owned(),
        1 => (*rng.pick(POSITIONAL_PATHS)).to_owned(),
        2 => values::dotted("a", rng.range(2, 70)),
        3 => (*rng.pick(WEIRD_PATHS)).to_owned(),
        _ => values::long_path(rng),
    }
}

/// A `bson::Bson` from the value generator, with invalid UTF-8 replaced (the grammar builds
/// `bson` documents; invalid UTF-8 is injected later by mutation).
fn value(rng: &mut Rng) -> Bson {
    to_bson(&values::value(rng, 4))
}

fn to_bson(v: &Val) -> Bson {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match v {
        Val::Double(f) => Bson::Double(*f),
        Val::Str(b) | Val::Symbol(b) | Val::JavaScript(b) => Bson::String(text(b)),
        Val::Doc(d) => Bson::Document(to_document(d)),
        Val::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Val::Binary(_, bytes) => Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: bytes.clone(),
        }),
        Val::ObjectId(id) => Bson::ObjectId(bson::oid::ObjectId::from_bytes(*id)),
        Val::Bool(b) => Bson::Boolean(*b != 0),
        Val::DateTime(t) => Bson::DateTime(bson::DateTime::from_millis(*t)),
        Val::Regex(p, o) => Bson::RegularExpression(bson::Regex {
            pattern: text(p),
            options: text(o).chars().filter(char::is_ascii_lowercase).collect(),
        }),
        Val::Int32(i) => Bson::Int32(*i),
        Val::Timestamp(increment, time) => Bson::Timestamp(bson::Timestamp {
            time: *time,
            increment: *increment,
        }),
        Val::Int64(i) => Bson::Int64(*i),
        Val::Decimal128(b) => Bson::Decimal128(bson::Decimal128::from_bytes(*b)),
        Val::MinKey => Bson::MinKey,
        Val::MaxKey => Bson::MaxKey,
        Val::Undefined | Val::Null | Val::DbPointer(..) | Val::CodeWithScope(..) => Bson::Null,
    }
}

fn to_document(d: &Doc) -> Document {
    d.iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).replace('\0', "0"), to_bson(v)))
        .collect()
}

fn small_int(rng: &mut Rng) -> Bson {
    match rng.below(6) {
        0 => Bson::Int32(*rng.pick(values::INTERESTING_I32)),
        1 => Bson::Int64(*rng.pick(values::INTERESTING_I64)),
        2 => Bson::Double(*rng.pick(values::INTERESTING_F64)),
        3 => Bson::String("3".to_owned()),
        _ => Bson::Int32(i32::try_from(rng.small(20)).unwrap_or(0)),
    }
}

/// A query filter, `depth` bounding `$and`/`$or` nesting.
pub(crate) fn filter(rng: &mut Rng, depth: usize) -> Document {
    let mut out = Document::new();
    for _ in 0..rng.small(3) {
        match rng.weighted(&[30, 40, if depth > 0 { 12 } else { 0 }, 5, 4, 3]) {
            0 => {
                out.insert(path(rng), value(rng));
            }
            1 => {
                let op = *rng.pick(QUERY_OPS);
                let operand = operand(rng, op, depth);
                out.insert(path(rng), doc! { op: operand });
            }
            2 => {
                let op = *rng.pick(&["$and", "$or", "$nor"]);
                let items: Vec<Bson> = (0..rng.small(3))
                    .map(|_| Bson::Document(filter(rng, depth - 1)))
                    .collect();
                out.insert(op, items);
            }
            3 => {
                out.insert(
                    *rng.pick(&["$expr", "$where", "$text", "$comment", "$jsonSchema"]),
                    value(rng),
                );
            }
            4 => {
                out.insert("_id", value(rng));
            }
            _ => {
                let depth = values::hostile_depth(rng);
                let leaf = values::scalar(rng);
                let nested = values::nested(rng, depth, leaf);
                out.insert(path(rng), to_bson(&nested));
            }
        }
    }
    out
}

fn operand(rng: &mut Rng, op: &str, depth: usize) -> Bson {
    match op {
        "$in" | "$nin" | "$all" => Bson::Array((0..rng.small(4)).map(|_| value(rng)).collect()),
        "$exists" => Bson::Boolean(rng.percent(50)),
        "$type" => match rng.below(4) {
            0 => Bson::String(
                (*rng.pick(&["string", "number", "array", "object", "null", "bogus"])).to_owned(),
            ),
            1 => Bson::Int32(*rng.pick(&[1, 2, 3, 4, 16, 18, 19, 127, -1, 0, 42])),
            2 => bson::bson!(["string", 2]),
            _ => value(rng),
        },
        "$size" => small_int(rng),
        "$regex" => Bson::String(
            (*rng.pick(&["^a", "a.*b", "(", "x{1000}{1000}", "^$", "\\d+"])).to_owned(),
        ),
        "$elemMatch" if depth > 0 => Bson::Document(filter(rng, depth - 1)),
        "$not" if depth > 0 => match rng.below(2) {
            0 => doc! { "$gt": value(rng) }.into(),
            _ => value(rng),
        },
        "$mod" => bson::bson!([small_int(rng), small_int(rng)]),
        _ => value(rng),
    }
}

/// A find projection (inclusion, exclusion, positional, `$slice`, `$elemMatch`, expressions).
fn projection(rng: &mut Rng) -> Document {
    let mut out = Document::new();
    for _ in 0..rng.range(1, 4) {
        let spec: Bson = match rng.below(9) {
            0 | 1 => Bson::Int32(1),
            2 | 3 => Bson::Int32(0),
            4 => Bson::Boolean(rng.percent(50)),
            5 => doc! { "$slice": if rng.percent(50) { small_int(rng) } else { bson::bson!([small_int(rng), small_int(rng)]) } }.into(),
            6 => doc! { "$elemMatch": filter(rng, 1) }.into(),
            7 => expr(rng, 2),
            _ => value(rng),
        };
        out.insert(path(rng), spec);
    }
    out
}

/// A sort specification.
fn sort(rng: &mut Rng) -> Document {
    let mut out = Document::new();
    for _ in 0..rng.range(1, 3) {
        let dir: Bson = match rng.below(8) {
            0..=2 => Bson::Int32(1),
            3..=5 => Bson::Int32(-1),
            6 => doc! { "$meta": "textScore" }.into(),
            _ => value(rng),
        };
        out.insert(path(rng), dir);
    }
    out
}

/// An aggregation expression.
fn expr(rng: &mut Rng, depth: usize) -> Bson {
    if depth == 0 || rng.percent(40) {
        return match rng.below(4) {
            0 | 1 => Bson::String(format!("${}", path(rng))),
            2 => Bson::String(
                (*rng.pick(&["$$ROOT", "$$REMOVE", "$$CURRENT.a", "$$NOW", "$$x"])).to_owned(),
            ),
            _ => value(rng),
        };
    }
    let op = *rng.pick(EXPR_OPS);
    let args: Vec<Bson> = (0..rng.range(0, 3)).map(|_| expr(rng, depth - 1)).collect();
    if rng.percent(70) {
        doc! { op: args }.into()
    } else {
        doc! { op: args.into_iter().next().unwrap_or(Bson::Null) }.into()
    }
}

/// An update: operators, a replacement document, or a pipeline.
fn update_spec(rng: &mut Rng) -> Bson {
    match rng.weighted(&[75, 15, 5, 5]) {
        0 => {
            let mut out = Document::new();
            for _ in 0..rng.range(1, 3) {
                let op = *rng.pick(UPDATE_OPS);
                let mut args = Document::new();
                for _ in 0..rng.range(1, 3) {
                    args.insert(path(rng), update_arg(rng, op));
                }
                out.insert(op, args);
            }
            out.into()
        }
        1 => {
            let mut replacement = insert_document(rng);
            replacement.remove("_id");
            replacement.into()
        }
        2 => bson::bson!([{ "$set": { path(rng): expr(rng, 2) } }]),
        _ => Document::new().into(),
    }
}

fn update_arg(rng: &mut Rng, op: &str) -> Bson {
    match op {
        "$unset" => Bson::String(String::new()),
        "$inc" | "$mul" => small_int(rng),
        "$rename" => Bson::String(path(rng)),
        "$push" | "$addToSet" if rng.percent(40) => {
            let mut each =
                doc! { "$each": (0..rng.small(4)).map(|_| value(rng)).collect::<Vec<_>>() };
            if rng.percent(50) {
                each.insert("$slice", small_int(rng));
            }
            if rng.percent(30) {
                each.insert(
                    "$sort",
                    if rng.percent(50) {
                        Bson::Int32(-1)
                    } else {
                        sort(rng).into()
                    },
                );
            }
            if rng.percent(30) {
                each.insert("$position", small_int(rng));
            }
            each.into()
        }
        "$pull" if rng.percent(50) => Bson::Document(filter(rng, 1)),
        "$pullAll" => Bson::Array((0..rng.small(3)).map(|_| value(rng)).collect()),
        "$pop" => Bson::Int32(*rng.pick(&[1, -1, 0, 2])),
        "$currentDate" => match rng.below(3) {
            0 => Bson::Boolean(true),
            1 => doc! { "$type": *rng.pick(&["date", "timestamp", "bogus"]) }.into(),
            _ => value(rng),
        },
        "$bit" => doc! { *rng.pick(&["and", "or", "xor", "nand"]): small_int(rng) }.into(),
        _ => value(rng),
    }
}

fn array_filters(rng: &mut Rng) -> Vec<Bson> {
    (0..rng.range(1, 3))
        .map(|_| {
            let id = *rng.pick(&["e", "f", "e.x", "E", "1e", ""]);
            let cond = match rng.below(2) {
                0 => doc! { "$gt": value(rng) }.into(),
                _ => value(rng),
            };
            doc! { id: cond }.into()
        })
        .collect()
}

/// A document to insert, with an `_id` of a random (sometimes invalid) type.
fn insert_document(rng: &mut Rng) -> Document {
    let mut out = Document::new();
    match rng.below(10) {
        0..=2 => {}
        3..=5 => {
            out.insert("_id", i32::try_from(rng.below(50)).unwrap_or(0));
        }
        6 => {
            out.insert("_id", format!("k{}", rng.below(50)));
        }
        7 => {
            out.insert(
                "_id",
                doc! { "k": i32::try_from(rng.below(5)).unwrap_or(0) },
            );
        }
        _ => {
            out.insert("_id", value(rng));
        }
    }
    for _ in 0..rng.small(5) {
        let key = rng.pick(&["a", "b", "arr", "tags", "n", "s", "x", "c"]);
        let v = match *key {
            "arr" => bson::bson!([{ "x": 1, "y": [1, 2] }, { "x": small_int(rng) }, value(rng)]),
            "a" if rng.percent(50) => doc! { "b": value(rng), "c": [1, 2, 3] }.into(),
            _ => value(rng),
        };
        out.insert(*key, v);
    }
    if rng.one_in(30) {
        out.insert(path(rng), value(rng));
    }
    out
}

fn stage(rng: &mut Rng) -> Document {
    match rng.below(18) {
        0 | 1 => doc! { "$match": filter(rng, 2) },
        2 => doc! { "$project": projection(rng) },
        3 => doc! { *rng.pick(&["$addFields", "$set"]): { path(rng): expr(rng, 3) } },
        4 => {
            doc! { "$unset": if rng.percent(50) { Bson::String(path(rng)) } else { bson::bson!([path(rng), path(rng)]) } }
        }
        5 | 6 => {
            let mut group = doc! { "_id": if rng.percent(30) { Bson::Null } else { expr(rng, 2) } };
            for _ in 0..rng.small(3) {
                group.insert(path(rng), doc! { *rng.pick(ACCUMULATORS): expr(rng, 2) });
            }
            doc! { "$group": group }
        }
        7 => match rng.below(2) {
            0 => doc! { "$unwind": format!("${}", path(rng)) },
            _ => doc! { "$unwind": {
                "path": format!("${}", path(rng)),
                "includeArrayIndex": path(rng),
                "preserveNullAndEmptyArrays": rng.percent(50),
            } },
        },
        8 => doc! { "$sort": sort(rng) },
        9 => doc! { "$limit": small_int(rng) },
        10 => doc! { "$skip": small_int(rng) },
        11 => doc! { "$count": path(rng) },
        12 => doc! { "$replaceRoot": { "newRoot": expr(rng, 2) } },
        13 => doc! { "$replaceWith": expr(rng, 2) },
        14 => {
            doc! { *rng.pick(&["$lookup", "$facet", "$sortByCount", "$sample", "$out", "$bogus"]): value(rng) }
        }
        15 => doc! { "$changeStream": change_stream_options(rng) },
        16 => write_stage(rng),
        _ => {
            doc! { "$match": { path(rng): { "$in": (0..rng.small(5)).map(|_| value(rng)).collect::<Vec<_>>() } } }
        }
    }
}

/// `$out` or `$merge`, mostly well formed, into one of the fuzzed collections.
fn write_stage(rng: &mut Rng) -> Document {
    if rng.percent(40) {
        let target = if rng.percent(80) {
            Bson::from(coll(rng))
        } else {
            value(rng)
        };
        return doc! { "$out": target };
    }
    let mut spec = doc! { "into": coll(rng) };
    if rng.percent(30) {
        spec.insert("on", *rng.pick(&["_id", "a", "n", "s"]));
    }
    if rng.percent(60) {
        let when_matched = match rng.below(6) {
            0 => bson::bson!([{ "$set": { path(rng): expr(rng, 2) } }]),
            1 => value(rng),
            _ => Bson::from(*rng.pick(&["replace", "keepExisting", "merge", "fail"])),
        };
        spec.insert("whenMatched", when_matched);
    }
    if rng.percent(40) {
        spec.insert(
            "whenNotMatched",
            *rng.pick(&["insert", "discard", "fail", "x"]),
        );
    }
    if rng.percent(10) {
        spec.insert("let", doc! { "v": expr(rng, 2) });
    }
    doc! { "$merge": spec }
}

fn change_stream_options(rng: &mut Rng) -> Document {
    let mut out = Document::new();
    if rng.percent(30) {
        out.insert("showExpandedEvents", rng.percent(90));
    }
    if rng.percent(40) {
        out.insert(
            "fullDocument",
            *rng.pick(&[
                "default",
                "updateLookup",
                "whenAvailable",
                "required",
                "bogus",
            ]),
        );
    }
    if rng.percent(20) {
        out.insert(
            "fullDocumentBeforeChange",
            *rng.pick(&["off", "whenAvailable", "required", "x"]),
        );
    }
    match rng.below(6) {
        0 => {
            out.insert(
                "resumeAfter",
                doc! { "_data": format!("{:016X}", rng.next_u64()) },
            );
        }
        1 => {
            out.insert("startAfter", value(rng));
        }
        2 => {
            out.insert(
                "startAtOperationTime",
                bson::Timestamp {
                    time: *rng.pick(&[0, 1, 1_700_000_000, u32::MAX]),
                    increment: rng.next_u64() as u32,
                },
            );
        }
        _ => {}
    }
    if rng.percent(10) {
        out.insert("allChangesForCluster", true);
    }
    out
}

fn cursor_id(rng: &mut Rng) -> Bson {
    match rng.below(10) {
        0..=5 => Bson::Int64(CURSOR_SENTINEL + i64::try_from(rng.below(8)).unwrap_or(0)),
        6 => Bson::Int64(*rng.pick(values::INTERESTING_I64)),
        7 => Bson::Int64(i64::from_le_bytes(rng.next_u64().to_le_bytes())),
        _ => value(rng),
    }
}

/// Generic arguments drivers attach to commands (sessions, concerns, time limits).
fn generic_arguments(rng: &mut Rng, body: &mut Document) {
    if rng.percent(30) {
        body.insert(
            "lsid",
            doc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: rng.bytes(16) } },
        );
    }
    if rng.percent(15) {
        body.insert("$clusterTime", doc! {
            "clusterTime": bson::Timestamp { time: 1_700_000_000, increment: 1 },
            "signature": { "hash": Binary { subtype: BinarySubtype::Generic, bytes: vec![0; 20] }, "keyId": 0_i64 },
        });
    }
    if rng.percent(10) {
        body.insert(
            "writeConcern",
            doc! { "w": value(rng), "j": rng.percent(50) },
        );
    }
    if rng.percent(8) {
        body.insert("readConcern", doc! { "level": *rng.pick(&["local", "majority", "snapshot", "linearizable", "bogus"]) });
    }
    if rng.percent(5) {
        body.insert("maxTimeMS", small_int(rng));
    }
    if rng.percent(3) {
        body.insert("txnNumber", 1_i64);
        if rng.percent(50) {
            body.insert("startTransaction", true);
            body.insert("autocommit", false);
        }
    }
    if rng.percent(5) {
        body.insert("comment", value(rng));
    }
}

/// One command from the grammar, already wrapped as an OP_MSG (sequences and flags included).
pub(crate) fn command(rng: &mut Rng) -> Msg {
    let c = coll(rng);
    let weights = [14, 12, 12, 6, 8, 12, 3, 4, 4, 4, 8, 3, 2, 2, 2, 3, 1];
    let (mut body, sequence_field) = match rng.weighted(&weights) {
        0 => {
            let mut b = doc! { "find": c, "filter": filter(rng, 3) };
            for (opt, p) in [
                ("projection", 40),
                ("sort", 30),
                ("skip", 15),
                ("limit", 20),
                ("batchSize", 25),
                ("singleBatch", 5),
            ] {
                if rng.percent(p) {
                    let v: Bson = match opt {
                        "projection" => projection(rng).into(),
                        "sort" => sort(rng).into(),
                        "singleBatch" => rng.percent(50).into(),
                        _ => small_int(rng),
                    };
                    b.insert(opt, v);
                }
            }
            (b, None)
        }
        1 => {
            let docs: Vec<Bson> = (0..rng.range(1, 5))
                .map(|_| insert_document(rng).into())
                .collect();
            (
                doc! { "insert": c, "documents": docs, "ordered": rng.percent(80) },
                Some("documents"),
            )
        }
        2 => {
            let updates: Vec<Bson> = (0..rng.range(1, 3))
                .map(|_| {
                    let mut u = doc! { "q": filter(rng, 2), "u": update_spec(rng) };
                    if rng.percent(30) {
                        u.insert("upsert", true);
                    }
                    if rng.percent(30) {
                        u.insert("multi", true);
                    }
                    if rng.percent(25) {
                        u.insert("arrayFilters", array_filters(rng));
                    }
                    if rng.percent(5) {
                        u.insert("collation", doc! { "locale": "fr" });
                    }
                    u.into()
                })
                .collect();
            (doc! { "update": c, "updates": updates }, Some("updates"))
        }
        3 => {
            let deletes: Vec<Bson> = (0..rng.range(1, 3))
                .map(|_| doc! { "q": filter(rng, 2), "limit": *rng.pick(&[0, 1, 1, 2, -1]) }.into())
                .collect();
            (doc! { "delete": c, "deletes": deletes }, Some("deletes"))
        }
        4 => {
            let mut b = doc! { "findAndModify": c, "query": filter(rng, 2) };
            if rng.percent(80) {
                b.insert("update", update_spec(rng));
            } else {
                b.insert("remove", true);
            }
            for (opt, p) in [
                ("new", 40),
                ("upsert", 30),
                ("fields", 25),
                ("sort", 25),
                ("arrayFilters", 20),
            ] {
                if rng.percent(p) {
                    let v: Bson = match opt {
                        "fields" => projection(rng).into(),
                        "sort" => sort(rng).into(),
                        "arrayFilters" => array_filters(rng).into(),
                        _ => rng.percent(70).into(),
                    };
                    b.insert(opt, v);
                }
            }
            (b, None)
        }
        5 => {
            let pipeline: Vec<Bson> = (0..rng.small(5)).map(|_| stage(rng).into()).collect();
            (
                doc! { "aggregate": c, "pipeline": pipeline, "cursor": { "batchSize": small_int(rng) } },
                None,
            )
        }
        6 => {
            let mut pipeline = vec![Bson::from(
                doc! { "$changeStream": change_stream_options(rng) },
            )];
            if rng.percent(40) {
                pipeline.push(doc! { "$match": { "operationType": *rng.pick(&["insert", "update", "delete"]) } }.into());
            }
            let target: Bson = if rng.percent(20) {
                Bson::Int32(1)
            } else {
                c.into()
            };
            (
                doc! { "aggregate": target, "pipeline": pipeline, "cursor": {} },
                None,
            )
        }
        7 => {
            let mut b = doc! { "count": c, "query": filter(rng, 2) };
            if rng.percent(30) {
                b.insert("limit", small_int(rng));
            }
            if rng.percent(30) {
                b.insert("skip", small_int(rng));
            }
            (b, None)
        }
        8 => (
            doc! { "distinct": c, "key": path(rng), "query": filter(rng, 1) },
            None,
        ),
        9 => {
            let mut key = Document::new();
            for _ in 0..rng.range(1, 3) {
                let kind: Bson = match rng.below(6) {
                    0..=2 => Bson::Int32(1),
                    3 => Bson::Int32(-1),
                    4 => Bson::String(
                        (*rng.pick(&["text", "2dsphere", "hashed", "bogus"])).to_owned(),
                    ),
                    _ => value(rng),
                };
                key.insert(path(rng), kind);
            }
            let mut index = doc! { "key": key, "name": format!("i{}", rng.below(6)) };
            if rng.percent(40) {
                index.insert("unique", rng.percent(80));
            }
            if rng.percent(10) {
                index.insert("sparse", true);
            }
            if rng.percent(10) {
                index.insert("partialFilterExpression", filter(rng, 1));
            }
            (doc! { "createIndexes": c, "indexes": [index] }, None)
        }
        10 => {
            let mut b = doc! { "getMore": cursor_id(rng), "collection": c };
            if rng.percent(40) {
                b.insert("batchSize", small_int(rng));
            }
            // Short waits: a tailable getMore blocks for maxTimeMS (default 1 s).
            b.insert("maxTimeMS", *rng.pick(&[0, 1, 10, 50, 100]));
            (b, None)
        }
        11 => {
            let ids: Vec<Bson> = (0..rng.range(0, 3)).map(|_| cursor_id(rng)).collect();
            (doc! { "killCursors": c, "cursors": ids }, None)
        }
        12 => {
            let mut b = doc! { "create": c };
            if rng.percent(30) {
                b.insert(
                    *rng.pick(&[
                        "capped",
                        "validator",
                        "changeStreamPreAndPostImages",
                        "viewOn",
                        "timeseries",
                    ]),
                    value(rng),
                );
            }
            (b, None)
        }
        13 => match rng.below(4) {
            0 => (doc! { "drop": c }, None),
            1 => (
                doc! { "dropIndexes": c, "index": *rng.pick(&["*", "i0", "i1", "_id_"]) },
                None,
            ),
            2 => (
                doc! { "renameCollection": format!("fuzz.{c}"), "to": format!("fuzz.{}", coll(rng)), "dropTarget": rng.percent(50) },
                None,
            ),
            _ => (
                doc! { "collMod": c, "changeStreamPreAndPostImages": { "enabled": rng.percent(50) } },
                None,
            ),
        },
        14 => (
            doc! { *rng.pick(&["listCollections", "listIndexes", "collStats", "dbStats"]): c, "filter": filter(rng, 1) },
            None,
        ),
        15 => {
            let name = *rng.pick(&[
                "hello",
                "isMaster",
                "ismaster",
                "ping",
                "buildInfo",
                "serverStatus",
                "getParameter",
                "connectionStatus",
                "hostInfo",
                "getLog",
                "listCommands",
                "replSetGetStatus",
                "whatsmyuri",
                "endSessions",
                "startSession",
                "listDatabases",
                "getCmdLineOpts",
                "abortTransaction",
                "commitTransaction",
                "killSessions",
                "refreshSessions",
            ]);
            let mut b = doc! { name: 1 };
            if rng.percent(30) {
                b.insert(
                    *rng.pick(&[
                        "helloOk",
                        "topologyVersion",
                        "maxAwaitTimeMS",
                        "client",
                        "saslSupportedMechs",
                        "*",
                        "nameOnly",
                        "filter",
                    ]),
                    value(rng),
                );
            }
            (b, None)
        }
        _ => (
            doc! { *rng.pick(&["dropDatabase", "shutdown", "mapReduce", "explain", "fsync", ""]): 1 },
            None,
        ),
    };
    generic_arguments(rng, &mut body);
    let db = *rng.pick(DATABASES);
    body.insert("$db", db);
    let mut msg = Msg {
        body: raw_bson::from_document(&body),
        sequences: Vec::new(),
        flags: 0,
    };
    // Drivers send the bulk arrays as document sequences (kind-1 sections).
    if let Some(name) = sequence_field {
        if rng.percent(40) {
            if let Some(i) = msg.body.iter().position(|(k, _)| k == name.as_bytes()) {
                let (k, v) = msg.body.remove(i);
                let docs = match v {
                    Val::Array(items) => items
                        .into_iter()
                        .map(|item| match item {
                            Val::Doc(d) => d,
                            other => vec![(b"v".to_vec(), other)],
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                msg.sequences.push((k, docs));
            }
        }
    }
    if rng.percent(4) {
        msg.flags |= crate::frame::FLAG_MORE_TO_COME;
    }
    if rng.percent(3) {
        msg.flags |= crate::frame::FLAG_CHECKSUM;
    }
    if rng.percent(3) {
        msg.flags |= crate::frame::FLAG_EXHAUST_ALLOWED;
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::UPDATE_OPS;

    /// Deliberately unknown: names in [`UPDATE_OPS`] the server's parser refuses ("Unknown
    /// modifier"), so the fuzzer keeps exercising that refusal.
    const DELIBERATELY_UNKNOWN: &[&str] = &[
        "$bit",     // mongod has it; embedded-db does not
        "$unknown", // no server has it
    ];

    /// Every operator the server's update parser accepts is in [`UPDATE_OPS`], and every other
    /// name there is deliberately unknown.
    #[test]
    fn update_ops_match_the_server_parser() {
        let accepted = embedded_db::UPDATE_OPERATORS;
        let missing: Vec<_> = accepted
            .iter()
            .filter(|op| !UPDATE_OPS.contains(op))
            .collect();
        assert!(
            missing.is_empty(),
            "update operators the server accepts that grammar::UPDATE_OPS lacks: {missing:?}"
        );
        let unexplained: Vec<_> = UPDATE_OPS
            .iter()
            .filter(|op| !accepted.contains(op) && !DELIBERATELY_UNKNOWN.contains(op))
            .collect();
        assert!(
            unexplained.is_empty(),
            "names in grammar::UPDATE_OPS the server refuses, not deliberately unknown: \
             {unexplained:?}"
        );
        let stale: Vec<_> = DELIBERATELY_UNKNOWN
            .iter()
            .filter(|op| accepted.contains(op) || !UPDATE_OPS.contains(op))
            .collect();
        assert!(
            stale.is_empty(),
            "deliberately unknown names the server accepts or grammar::UPDATE_OPS lacks: {stale:?}"
        );
    }
}
