//! Findings: what failed (crash, hang, panic), the inputs that did it, and how they are saved:
//! one directory per distinct signature with the raw frames (`input-N.bin`) and a `note.txt`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bson::Bson;

use crate::frame;
use crate::input::Input;

/// How the server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// The process exited (abort, stack overflow, signal, exit code).
    Crash,
    /// The process runs but a fresh connection's `ping` got no answer in time.
    Hang,
    /// The process printed a panic message (a connection task died) but still serves.
    Panic,
}

impl FailKind {
    /// Lower-case name used in signatures and directory names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Hang => "hang",
            Self::Panic => "panic",
        }
    }
}

/// Evidence of one failure, taken from the server that failed.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// Crash, hang or panic.
    pub(crate) kind: FailKind,
    /// Exit status or the ping error.
    pub(crate) detail: String,
    /// The server's last stderr lines.
    pub(crate) stderr: Vec<String>,
    /// The server's last log lines.
    pub(crate) stdout: Vec<String>,
}

impl Failure {
    /// The cause in a few words, from stderr when it says: `stack overflow in thread …`,
    /// `panic at src/x.rs:12`, `allocation failure`, or else the exit status / ping error.
    pub(crate) fn reason(&self) -> String {
        if self.kind == FailKind::Hang {
            // The ping error text varies (timeout, reset); the detail line keeps it.
            return "no answer to ping".to_owned();
        }
        for line in &self.stderr {
            if line.contains("overflowed its stack") {
                // `thread 'embedded-db-writer' (123) has overflowed its stack`: the thread
                // name tells the request path from the storage writer.
                let thread = line.split('\'').nth(1).unwrap_or("?");
                return format!("stack overflow in thread {thread}");
            }
            if let Some(rest) = line.split("panicked at ").nth(1) {
                // `src/query/path.rs:12:5:` → `src/query/path.rs:12` (the column and message vary).
                let place: Vec<&str> = rest.trim_end_matches(':').split(':').take(2).collect();
                return format!("panic at {}", place.join(":"));
            }
            if line.contains("memory allocation of") {
                return "allocation failure".to_owned();
            }
        }
        if let Some(line) = self
            .stderr
            .iter()
            .find(|l| l.contains("fatal runtime error"))
        {
            return line.trim().to_owned();
        }
        self.detail.clone()
    }
}

/// How far triage narrowed the inputs down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reproduced {
    /// One input, alone on a fresh server, fails it.
    Alone,
    /// A setup insert of sample documents into the input's collection, then the input, fails
    /// a fresh server.
    WithSetup,
    /// Several inputs, replayed in order on one connection, fail a fresh server.
    Group,
    /// Nothing failed in isolation: every suspect input is saved.
    No,
}

/// A failure with the inputs that caused it.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    /// Evidence from the reproduction (or from the original failure when not reproduced).
    pub(crate) failure: Failure,
    /// The inputs, in sending order (on one connection).
    pub(crate) inputs: Vec<Input>,
    /// What triage achieved.
    pub(crate) reproduced: Reproduced,
    /// Context: seed, worker, time.
    pub(crate) context: String,
}

impl Finding {
    /// The inputs that fail the server, without a setup input.
    pub(crate) fn culprits(&self) -> &[Input] {
        match self.reproduced {
            Reproduced::WithSetup => self.inputs.get(1..).unwrap_or_default(),
            _ => &self.inputs,
        }
    }

    /// What deduplicates findings: kind, cause, and the command(s) of the inputs.
    pub(crate) fn signature(&self) -> String {
        let mut commands: Vec<String> = self
            .culprits()
            .iter()
            .map(|i| frame::command_name(&i.bytes))
            .collect();
        commands.dedup();
        commands.truncate(3);
        let suffix = if self.reproduced == Reproduced::No {
            " (unreproduced)"
        } else {
            ""
        };
        // Where a single culprit carries its longest dotted path tells apart overflows that
        // share a command (a projection's path from an update operator's).
        let place = match self.culprits() {
            [one] => long_path_at(&one.bytes)
                .map_or_else(String::new, |at| format!(", long path at {at}")),
            _ => String::new(),
        };
        format!(
            "{}: {}; {}{place}{suffix}",
            self.failure.kind.name(),
            self.failure.reason(),
            commands.join("+")
        )
    }
}

/// Every finding of the run, by signature; the first of each signature is saved to disk.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Signature → (occurrences, where the first was saved).
    pub(crate) by_signature: BTreeMap<String, (u64, Option<PathBuf>)>,
    /// All occurrences.
    pub(crate) total: u64,
}

impl Findings {
    /// Records `finding`; saves it under `dir` if its signature is new. Returns the signature,
    /// whether it was new, and where it is saved.
    pub(crate) fn record(
        &mut self,
        dir: &Path,
        finding: &Finding,
    ) -> (String, bool, Option<PathBuf>) {
        self.total += 1;
        let signature = finding.signature();
        if let Some((count, path)) = self.by_signature.get_mut(&signature) {
            *count += 1;
            return (signature, false, path.clone());
        }
        let saved = save(dir, finding, &signature)
            .map_err(|e| eprintln!("fuzz: cannot save finding: {e}"))
            .ok();
        self.by_signature
            .insert(signature.clone(), (1, saved.clone()));
        (signature, true, saved)
    }
}

/// Writes `NNN-<kind>-<command>/` under `dir` with `input-N.bin` and `note.txt`.
fn save(dir: &Path, finding: &Finding, signature: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let next = std::fs::read_dir(dir)?.filter_map(Result::ok).count() + 1;
    let command = finding
        .culprits()
        .first()
        .map_or_else(|| "none".to_owned(), |i| frame::command_name(&i.bytes));
    let path = dir.join(format!(
        "{next:03}-{}-{command}",
        finding.failure.kind.name()
    ));
    std::fs::create_dir_all(&path)?;
    let mut note = String::new();
    let _ = writeln!(note, "embedded-db fuzz finding\n");
    let _ = writeln!(note, "signature:  {signature}");
    let _ = writeln!(note, "server:     {}", finding.failure.detail);
    let _ = writeln!(
        note,
        "reproduced: {}",
        match finding.reproduced {
            Reproduced::Alone => "yes: this one input alone, on a fresh server".to_owned(),
            Reproduced::WithSetup => "yes: input-1 (sample documents for input-2 to act on), \
                                     then input-2, on one connection, on a fresh server"
                .to_owned(),
            Reproduced::Group =>
                "yes: these inputs in this order, on one connection, on a fresh server".to_owned(),
            Reproduced::No => format!(
                "no: none of the {} inputs in flight failed a fresh server again; all are saved",
                finding.inputs.len()
            ),
        }
    );
    let _ = writeln!(note, "context:    {}", finding.context);
    let _ = writeln!(
        note,
        "replay:     cargo run --release -p embedded-db-fuzz -- --replay {}\n",
        path.display()
    );
    let _ = writeln!(
        note,
        "{}",
        if finding.reproduced == Reproduced::No {
            "inputs (in flight on several connections when the server failed, grouped by connection):"
        } else {
            "inputs (sent in this order on one connection):"
        }
    );
    for (i, input) in finding.inputs.iter().enumerate() {
        let name = format!("input-{}.bin", i + 1);
        std::fs::write(path.join(&name), &input.bytes)?;
        let _ = writeln!(
            note,
            "\n{name}: {} bytes, {}",
            input.bytes.len(),
            input.origin
        );
        let _ = writeln!(note, "  {}", describe(&input.bytes));
    }
    let _ = writeln!(note, "\nserver stderr (last lines):");
    for line in &finding.failure.stderr {
        let _ = writeln!(note, "  {line}");
    }
    let _ = writeln!(note, "\nserver log (last lines):");
    for line in &finding.failure.stdout {
        let _ = writeln!(note, "  {line}");
    }
    std::fs::write(path.join("note.txt"), note)?;
    Ok(path)
}

/// The command of a frame as the server sees it, when it decodes: an OP_MSG's kind-0 body with
/// its kind-1 document sequences folded in as array fields, or an OP_QUERY's query.
fn body_document(bytes: &[u8]) -> Option<bson::Document> {
    let read_doc = |buf: &[u8]| -> Option<(bson::Document, usize)> {
        let len = usize::try_from(frame::read_i32(buf, 0)?).ok()?;
        Some((bson::Document::from_reader(buf.get(..len)?).ok()?, len))
    };
    match frame::read_i32(bytes, 12)? {
        frame::OP_MSG if bytes.get(20) == Some(&0) => {
            let (mut doc, len) = read_doc(bytes.get(21..)?)?;
            let mut rest = bytes.get(21 + len..)?;
            // Kind-1 sections; anything else (a checksum, damage) ends the walk.
            while rest.first() == Some(&1) {
                let size = usize::try_from(frame::read_i32(rest, 1)?).ok()?;
                let section = rest.get(5..1 + size)?;
                let nul = section.iter().position(|b| *b == 0)?;
                let mut docs = Vec::new();
                let mut at = nul + 1;
                while let Some((d, len)) = section.get(at..).and_then(read_doc) {
                    docs.push(Bson::Document(d));
                    at += len;
                }
                doc.insert(String::from_utf8_lossy(&section[..nul]).into_owned(), docs);
                rest = rest.get(1 + size..)?;
            }
            Some(doc)
        }
        frame::OP_QUERY => {
            let rest = bytes.get(20..)?;
            Some(read_doc(rest.get(rest.iter().position(|b| *b == 0)? + 9..)?)?.0)
        }
        _ => None,
    }
}

/// Where the body holds its longest dotted path (key or string, at least 100 components), as
/// the keys leading there with array positions as `[]`: `updates[].u.$set`, `projection`.
fn long_path_at(bytes: &[u8]) -> Option<String> {
    fn walk(doc: &bson::Document, at: &str, best: &mut (usize, String)) {
        for (key, value) in doc {
            let dots = key.matches('.').count();
            if dots > best.0 {
                *best = (
                    dots,
                    if at.is_empty() {
                        "a key".to_owned()
                    } else {
                        format!("a key in {at}")
                    },
                );
            }
            let here = if key.len() > 40 {
                format!("{at}.<long key>")
            } else if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            visit(value, &here, best);
        }
    }
    fn visit(value: &Bson, at: &str, best: &mut (usize, String)) {
        match value {
            Bson::String(s) if s.matches('.').count() > best.0 => {
                *best = (s.matches('.').count(), at.to_owned())
            }
            Bson::Document(d) => walk(d, at, best),
            Bson::Array(items) => items
                .iter()
                .for_each(|i| visit(i, &format!("{at}[]"), best)),
            _ => {}
        }
    }
    let doc = body_document(bytes)?;
    let mut best = (0, String::new());
    walk(&doc, "", &mut best);
    (best.0 >= 99).then_some(best.1)
}

/// A readable rendering of a frame: header fields and, when it decodes, the kind-0 body as
/// relaxed extended JSON with long strings and keys abbreviated.
pub(crate) fn describe(bytes: &[u8]) -> String {
    let declared = frame::read_i32(bytes, 0).map_or_else(|| "-".to_owned(), |l| l.to_string());
    let op = frame::read_i32(bytes, 12).map_or_else(|| "-".to_owned(), |o| o.to_string());
    let mut out = format!("declared length {declared}, opCode {op}");
    match body_document(bytes) {
        Some(doc) => {
            let text = Bson::Document(abbreviate_doc(&doc, 0))
                .into_relaxed_extjson()
                .to_string();
            let shown: String = text.chars().take(3000).collect();
            let _ = write!(out, ", body {shown}");
            if shown.len() < text.len() {
                out.push_str(" …");
            }
        }
        None => out.push_str(", no decodable body"),
    }
    out
}

fn abbreviate_text(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_owned();
    }
    let head: String = s.chars().take(24).collect();
    format!(
        "{head}… ({} bytes, {} dots)",
        s.len(),
        s.matches('.').count()
    )
}

fn abbreviate_doc(doc: &bson::Document, depth: usize) -> bson::Document {
    doc.iter()
        .map(|(k, v)| (abbreviate_text(k), abbreviate(v, depth + 1)))
        .collect()
}

fn abbreviate(v: &Bson, depth: usize) -> Bson {
    if depth > 12 {
        return Bson::String("…(deeper levels omitted)".to_owned());
    }
    match v {
        Bson::String(s) => Bson::String(abbreviate_text(s)),
        Bson::Document(d) => Bson::Document(abbreviate_doc(d, depth)),
        Bson::Array(items) if items.len() > 20 => {
            let mut shown: Vec<Bson> = items
                .iter()
                .take(5)
                .map(|i| abbreviate(i, depth + 1))
                .collect();
            shown.push(Bson::String(format!("…({} elements)", items.len())));
            Bson::Array(shown)
        }
        Bson::Array(items) => Bson::Array(items.iter().map(|i| abbreviate(i, depth + 1)).collect()),
        other => other.clone(),
    }
}
