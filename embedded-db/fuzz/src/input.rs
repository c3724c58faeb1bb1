//! The seed corpus and the input mix: each input is raw bytes (a), a structurally valid OP_MSG
//! with a random or mutated BSON body (b), or a grammar command (c), possibly mutated.

use std::path::Path;

use crate::frame::{self, FLAG_CHECKSUM, FLAG_MORE_TO_COME, OP_MSG};
use crate::grammar::{self, Msg};
use crate::raw;
use crate::raw_bson::{self, Doc};
use crate::rng::Rng;
use crate::values;

/// Which generator made an input (for the statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// (a) raw bytes and damaged frames.
    Raw,
    /// (b) a valid frame around a random or mutated BSON body.
    Bson,
    /// (c) a grammar command.
    Grammar,
}

/// One input: exactly the bytes that go on the wire, and how they were made.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    /// The bytes, sent as they are.
    pub(crate) bytes: Vec<u8>,
    /// The generator.
    pub(crate) kind: Kind,
    /// A one-line description: generator, seed file, mutations.
    pub(crate) origin: String,
}

/// A corpus file: its bytes and, for a parseable OP_MSG, its structure.
#[derive(Debug)]
struct Seed {
    name: String,
    bytes: Vec<u8>,
    msg: Option<Msg>,
}

/// The seed corpus the mutators start from (`embedded-db/fuzz/corpus/*.bin`, one raw frame per
/// file).
#[derive(Debug)]
pub(crate) struct Corpus {
    seeds: Vec<Seed>,
    parsed: Vec<usize>,
}

impl Corpus {
    /// Reads every `*.bin` file of `dir`, in name order.
    pub(crate) fn load(dir: &Path) -> Result<Self, String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("corpus {}: {e}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "bin"))
            .collect();
        paths.sort();
        let mut seeds = Vec::new();
        for path in paths {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let msg = parse_op_msg(&bytes);
            seeds.push(Seed { name, bytes, msg });
        }
        if seeds.is_empty() {
            return Err(format!("corpus {} has no *.bin files", dir.display()));
        }
        let parsed = (0..seeds.len())
            .filter(|i| seeds[*i].msg.is_some())
            .collect();
        Ok(Self { seeds, parsed })
    }

    /// Number of seed files.
    pub(crate) fn len(&self) -> usize {
        self.seeds.len()
    }
}

/// The structure of a valid OP_MSG frame, or `None`.
fn parse_op_msg(bytes: &[u8]) -> Option<Msg> {
    if frame::read_i32(bytes, 12)? != OP_MSG {
        return None;
    }
    let flags = u32::from_le_bytes(bytes.get(16..20)?.try_into().ok()?);
    let end = bytes.len() - if flags & FLAG_CHECKSUM != 0 { 4 } else { 0 };
    let mut rest = bytes.get(20..end)?;
    let mut body = None;
    let mut sequences = Vec::new();
    while let Some((&kind, tail)) = rest.split_first() {
        match kind {
            0 => {
                let len = usize::try_from(frame::read_i32(tail, 0)?).ok()?;
                let doc = bson::Document::from_reader(tail.get(..len)?).ok()?;
                body = Some(raw_bson::from_document(&doc));
                rest = &tail[len..];
            }
            1 => {
                let size = usize::try_from(frame::read_i32(tail, 0)?).ok()?;
                let mut section = tail.get(4..size)?;
                let nul = section.iter().position(|b| *b == 0)?;
                let id = section[..nul].to_vec();
                section = &section[nul + 1..];
                let mut docs = Vec::new();
                while !section.is_empty() {
                    let len = usize::try_from(frame::read_i32(section, 0)?).ok()?;
                    docs.push(raw_bson::from_document(
                        &bson::Document::from_reader(section.get(..len)?).ok()?,
                    ));
                    section = &section[len..];
                }
                sequences.push((id, docs));
                rest = &tail[size..];
            }
            _ => return None,
        }
    }
    Some(Msg {
        body: body?,
        sequences,
        flags,
    })
}

/// Generates the next input. `request_id` numbers the frames the generators build.
pub(crate) fn generate(rng: &mut Rng, corpus: &Corpus, request_id: i32) -> Input {
    // Weights: a quarter raw bytes, a quarter BSON bodies, half grammar commands (the commands
    // reach the deepest code).
    match rng.weighted(&[25, 25, 50]) {
        0 => raw_input(rng, corpus, request_id),
        1 => bson_input(rng, corpus, request_id),
        _ => grammar_input(rng, request_id),
    }
}

fn raw_input(rng: &mut Rng, corpus: &Corpus, request_id: i32) -> Input {
    let mut log = Vec::new();
    let (bytes, what) = match rng.weighted(&[35, 20, 10, 15, 12, 3]) {
        0 => {
            let seed = rng.pick(&corpus.seeds);
            (
                raw::mutate_frame(rng, seed.bytes.clone(), &mut log),
                format!("corpus {}", seed.name),
            )
        }
        1 => {
            let msg = grammar::command(rng);
            let name = frame::command_name(&msg.to_frame(request_id));
            (
                raw::mutate_frame(rng, msg.to_frame(request_id), &mut log),
                format!("grammar {name}"),
            )
        }
        2 => (raw::random_bytes(rng), "random bytes".to_owned()),
        3 => {
            let q = raw::op_query(rng);
            if rng.percent(25) {
                (raw::mutate_frame(rng, q, &mut log), "OP_QUERY".to_owned())
            } else {
                (q, "OP_QUERY".to_owned())
            }
        }
        4 => {
            let body = raw_bson::encode(&values::random_body(rng));
            (
                raw::mutate_frame(rng, frame::op_msg(request_id, 0, &body, &[]), &mut log),
                "random body".to_owned(),
            )
        }
        _ => (raw::huge(rng), "huge declared length".to_owned()),
    };
    let origin = if log.is_empty() {
        format!("raw: {what}")
    } else {
        format!("raw: {what} + {}", log.join(","))
    };
    Input {
        bytes,
        kind: Kind::Raw,
        origin,
    }
}

fn bson_input(rng: &mut Rng, corpus: &Corpus, request_id: i32) -> Input {
    let (mut msg, what) = if corpus.parsed.is_empty() || rng.percent(50) {
        (
            Msg {
                body: values::random_body(rng),
                sequences: Vec::new(),
                flags: 0,
            },
            "random body".to_owned(),
        )
    } else {
        let seed = &corpus.seeds[*rng.pick(&corpus.parsed)];
        let msg = seed.msg.clone().unwrap_or_else(|| Msg {
            body: Doc::new(),
            sequences: Vec::new(),
            flags: 0,
        });
        (msg, format!("corpus {}", seed.name))
    };
    let rounds = rng.range(1, 4);
    values::mutate_doc(rng, &mut msg.body, rounds);
    for (_, docs) in &mut msg.sequences {
        if let Some(doc) = docs.first_mut() {
            if rng.percent(30) {
                values::mutate_doc(rng, doc, 1);
            }
        }
    }
    if rng.percent(3) {
        msg.flags |= FLAG_MORE_TO_COME;
    }
    Input {
        bytes: msg.to_frame(request_id),
        kind: Kind::Bson,
        origin: format!("bson: {what} + {rounds} tree mutations"),
    }
}

fn grammar_input(rng: &mut Rng, request_id: i32) -> Input {
    let mut msg = grammar::command(rng);
    let mut origin = "grammar".to_owned();
    if rng.percent(30) {
        let rounds = rng.range(1, 3);
        values::mutate_doc(rng, &mut msg.body, rounds);
        origin = format!("grammar + {rounds} tree mutations");
    }
    Input {
        bytes: msg.to_frame(request_id),
        kind: Kind::Grammar,
        origin,
    }
}

/// Cursor ids seen in replies on one connection sequence, most recent first, which fill the
/// placeholders of [`grammar::CURSOR_SENTINEL`] at send time. Inputs (and saved findings)
/// keep the placeholders, so they never depend on the ids a particular server handed out.
#[derive(Debug, Default)]
pub(crate) struct CursorIds(std::collections::VecDeque<i64>);

impl CursorIds {
    /// How many ids are kept.
    const KEEP: usize = 8;

    /// Remembers an id from a reply.
    pub(crate) fn remember(&mut self, id: i64) {
        if !self.0.contains(&id) {
            self.0.push_front(id);
            self.0.truncate(Self::KEEP);
        }
    }

    /// `bytes` with placeholder slot `n` replaced by the `n % len`-th remembered id; unchanged
    /// (borrowed) without placeholders or ids (then the server sees an unknown id).
    pub(crate) fn fill<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let tail = &grammar::CURSOR_SENTINEL.to_le_bytes()[1..];
        let is_slot = |w: &[u8]| &w[1..] == tail && i64::from(w[0]) < grammar::CURSOR_SLOTS;
        if self.0.is_empty() || !bytes.windows(8).any(is_slot) {
            return std::borrow::Cow::Borrowed(bytes);
        }
        let mut out = bytes.to_vec();
        let mut i = 0;
        while i + 8 <= out.len() {
            if is_slot(&out[i..i + 8]) {
                let id = self.0[usize::from(out[i]) % self.0.len()];
                out[i..i + 8].copy_from_slice(&id.to_le_bytes());
                i += 8;
            } else {
                i += 1;
            }
        }
        std::borrow::Cow::Owned(out)
    }
}

/// An insert of a few sample documents (with the fields and shapes the grammar's paths name)
/// into the collection `frame` targets, or `None` when its `$db` and collection cannot be read.
/// Triage sends it first when an input alone does not fail a fresh server: queries, updates
/// and projections only run their per-document code on documents that exist.
pub(crate) fn setup_for(frame: &[u8]) -> Option<Input> {
    if frame::read_i32(frame, 12)? != OP_MSG || frame.get(20)? != &0 {
        return None;
    }
    let len = usize::try_from(frame::read_i32(frame, 21)?).ok()?;
    let body = bson::Document::from_reader(frame.get(21..21 + len)?).ok()?;
    let db = body.get_str("$db").ok()?;
    let (_, coll) = body.iter().next()?;
    let coll = coll.as_str()?;
    let setup = bson::doc! {
        "insert": coll,
        "documents": [
            {
                "_id": 1, "a": { "b": { "c": { "d": 1 } }, "c": 2 }, "b": { "c": 3 },
                "arr": [{ "x": 1, "y": [1, 2] }, { "x": 2 }, 3], "tags": ["a", "b"],
                "n": 5, "s": "x", "x": 1, "c": 1,
            },
            { "_id": "k1", "a": [{ "b": 1 }, { "a": { "a": 1 } }], "arr": [], "n": -1.5, "_k": null },
            { "_id": { "k": 2 }, "a": { "a": { "a": { "a": 1 } } }, "arr": [[1], { "x": [{ "y": 1 }] }] },
        ],
        "ordered": false,
        "$db": db,
    };
    let body = bson::to_vec(&setup).ok()?;
    Some(Input {
        bytes: frame::op_msg(1, 0, &body, &[]),
        kind: Kind::Grammar,
        origin: format!("setup: 3 sample documents into {db}.{coll}"),
    })
}
