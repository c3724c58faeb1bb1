//! Findings: what failed (a `5xx`, a hang, a dead process, a panic message), the exact bytes
//! that did it, and how they are saved: one directory per distinct signature under the findings
//! directory, `NNN-<kind>-<route>/`, with `case-N.bin` (the bytes of one connection),
//! `case-N.plan` (how they were delivered; [`Case::plan`]) and `note.txt` (signature, seed,
//! what came back, the server's last output). [`load`] reads a directory back for `--replay`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::generate::Case;

/// How the server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An answer with a `5xx` status.
    ServerError(u16),
    /// A connection open and silent past its deadline.
    Hang,
    /// The process exited.
    Crash,
    /// The process printed a panic message.
    Panic,
}

impl Kind {
    /// The short name in signatures and directory names.
    pub fn name(self) -> String {
        match self {
            Self::ServerError(status) => status.to_string(),
            Self::Hang => "hang".to_owned(),
            Self::Crash => "crash".to_owned(),
            Self::Panic => "panic".to_owned(),
        }
    }
}

/// One failure and the cases behind it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What failed.
    pub kind: Kind,
    /// In words: what the connection waited for, the exit status, …
    pub detail: String,
    /// The request that failed (method and path) when one did; empty for a crash or a panic.
    pub route: String,
    /// The cases: the one that failed, or (crash, panic) every case in flight.
    pub cases: Vec<Case>,
    /// The seed, the connection, the case number, the time.
    pub context: String,
    /// The answer received (for a `5xx`), as bytes.
    pub evidence: Vec<u8>,
    /// The server's last output lines.
    pub output: Vec<String>,
}

impl Finding {
    /// The failed request's route without its query.
    fn route(&self) -> &str {
        self.route.split('?').next().unwrap_or_default()
    }

    /// What deduplicates findings: for a `5xx` the status and the route, for a hang what it
    /// waited for, for a crash or a panic its cause.
    pub fn signature(&self) -> String {
        match self.kind {
            // One cause (a deadline the server does not keep) shows on every route.
            Kind::Hang => format!("hang: {}", self.detail),
            Kind::ServerError(status) => format!("{status} for {}", self.route()),
            Kind::Crash | Kind::Panic => format!("{}: {}", self.kind.name(), self.detail),
        }
    }
}

/// Every finding of a run, by signature; the first of each is saved.
#[derive(Debug, Default)]
pub struct Findings {
    /// Signature → (occurrences, where the first was saved).
    pub by_signature: BTreeMap<String, (u64, Option<PathBuf>)>,
    /// All occurrences.
    pub total: u64,
}

impl Findings {
    /// Counts `finding` and saves it under `dir` when its signature is new; returns the
    /// signature and, when new, where it went.
    pub fn record(&mut self, dir: &Path, finding: &Finding) -> (String, Option<PathBuf>) {
        self.total += 1;
        let signature = finding.signature();
        if let Some((count, _)) = self.by_signature.get_mut(&signature) {
            *count += 1;
            return (signature, None);
        }
        let saved = save(dir, finding, &signature)
            .map_err(|e| eprintln!("fuzz-http: cannot save a finding: {e}"))
            .ok();
        self.by_signature
            .insert(signature.clone(), (1, saved.clone()));
        (signature, saved)
    }
}

/// A directory-name-safe form of `text`.
fn slug(text: &str) -> String {
    // The end says most (a panic's file and line).
    let skip = text.chars().count().saturating_sub(40);
    let slug: String = text
        .chars()
        .skip(skip)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    slug.trim_matches('_').to_owned()
}

fn save(dir: &Path, finding: &Finding, signature: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let next = std::fs::read_dir(dir)?.filter_map(Result::ok).count() + 1;
    let what = match finding.kind {
        Kind::Crash | Kind::Panic => finding.detail.replace("panic at ", ""),
        _ => finding.route().to_owned(),
    };
    let path = dir.join(format!("{next:03}-{}-{}", finding.kind.name(), slug(&what)));
    std::fs::create_dir_all(&path)?;
    let mut note = String::new();
    let _ = writeln!(note, "server HTTP fuzz finding\n");
    let _ = writeln!(note, "signature: {signature}");
    let _ = writeln!(note, "detail:    {}", finding.detail);
    let _ = writeln!(note, "context:   {}", finding.context);
    let _ = writeln!(
        note,
        "replay:    cargo run --release -p server-fuzz -- --replay {}",
        path.display()
    );
    for (i, case) in finding.cases.iter().enumerate() {
        let n = i + 1;
        std::fs::write(path.join(format!("case-{n}.bin")), &case.bytes)?;
        std::fs::write(path.join(format!("case-{n}.plan")), case.plan())?;
        let _ = writeln!(
            note,
            "\ncase-{n}.bin: {} bytes on one connection: {}",
            case.bytes.len(),
            case.label()
        );
        let _ = writeln!(note, "{}", escape(&case.bytes, 4000));
    }
    if !finding.evidence.is_empty() {
        let _ = writeln!(
            note,
            "\nanswer received:\n{}",
            escape(&finding.evidence, 4000)
        );
    }
    let _ = writeln!(note, "\nserver output (last lines):");
    for line in &finding.output {
        let _ = writeln!(note, "  {line}");
    }
    std::fs::write(path.join("note.txt"), note)?;
    Ok(path)
}

/// `bytes` as text: printable ASCII as is, line ends kept, everything else as `\xNN`, runs of
/// one byte longer than 16 abbreviated; cut after `max` bytes.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let shown = &bytes[..bytes.len().min(max)];
    let mut i = 0;
    while i < shown.len() {
        let b = shown[i];
        let run = shown[i..].iter().take_while(|&&c| c == b).count();
        i += 1;
        if run > 16 {
            let _ = write!(out, "{}", escape(&[b], 1));
            let _ = write!(out, "<{run} times>");
            i += run - 1;
            continue;
        }
        match b {
            b'\n' => out.push_str("\\n\n"),
            b'\r' => out.push_str("\\r"),
            0x20..=0x7E => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if bytes.len() > max {
        let _ = write!(out, "… ({} bytes in all)", bytes.len());
    }
    out
}

/// The cases saved in a finding directory (`case-N.bin` with its `.plan`, in order), or one
/// file of raw bytes (sent whole, its answers not required).
pub fn load(path: &Path) -> Result<Vec<Case>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    if !path.is_dir() {
        return Ok(vec![Case::from_plan(read(path)?, "")?]);
    }
    let mut numbers: Vec<u64> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("case-")?
                .strip_suffix(".bin")?
                .parse()
                .ok()
        })
        .collect();
    numbers.sort_unstable();
    if numbers.is_empty() {
        return Err(format!("{}: no case-N.bin in it", path.display()));
    }
    numbers
        .into_iter()
        .map(|n| {
            let bytes = read(&path.join(format!("case-{n}.bin")))?;
            let plan =
                std::fs::read_to_string(path.join(format!("case-{n}.plan"))).unwrap_or_default();
            Case::from_plan(bytes, &plan)
        })
        .collect()
}
