//! `$lookup`: joins each input document with the documents of another collection, by equal
//! fields and/or a sub-pipeline with `let` variables.

use bson::{Bson, Document};

use super::{add_field, refuse_write_stages, Output, Pipeline};
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::Deadline;
use crate::query::variables;

/// `$lookup`: joins each document with the documents of another collection of the same
/// database, by equal fields and/or a pipeline (with `let` variables from the document).
#[derive(Debug, Clone)]
pub(super) struct Lookup {
    /// The collection joined with.
    pub(super) from: String,
    /// `localField` and `foreignField`, when joined by equality.
    fields: Option<(String, String)>,
    /// `let`: variables evaluated against each input document.
    vars: Document,
    /// `pipeline`, if given.
    pipeline: Option<JoinPipeline>,
    /// `as`: where the matches go.
    into: String,
    /// The documents of `from`, loaded by [`Pipeline::resolve`] before the run.
    pub(super) foreign: Vec<Document>,
}

/// A `$lookup`'s pipeline: parsed once when it has no `let` variables; otherwise kept raw,
/// then bound to each input document's values and parsed.
#[derive(Debug, Clone)]
enum JoinPipeline {
    Fixed(Pipeline),
    PerDocument(Vec<Bson>),
}

impl Lookup {
    /// Parses the `$lookup` specification; its pipeline is parsed now (with every `let`
    /// variable bound to null), so a bad stage fails the command, not the first document.
    pub(super) fn parse(spec: &Document) -> CommandResult<Lookup> {
        let text = |key: &str| -> CommandResult<Option<String>> {
            match spec.get(key) {
                None => Ok(None),
                Some(Bson::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(CommandError::failed_to_parse(format!(
                    "$lookup argument '{key}' must be a string"
                ))),
            }
        };
        for key in spec.keys() {
            if !matches!(
                key.as_str(),
                "from" | "localField" | "foreignField" | "let" | "pipeline" | "as"
            ) {
                return Err(CommandError::failed_to_parse(format!(
                    "unknown argument to $lookup: {key}"
                )));
            }
        }
        let from = text("from")?.ok_or_else(|| {
            CommandError::failed_to_parse("missing 'from' option to $lookup stage specification")
        })?;
        let into = text("as")?.ok_or_else(|| {
            CommandError::failed_to_parse("must specify 'as' field for a $lookup")
        })?;
        let fields = match (text("localField")?, text("foreignField")?) {
            (Some(local), Some(foreign)) => Some((local, foreign)),
            (None, None) => None,
            _ => {
                return Err(CommandError::failed_to_parse(
                    "$lookup requires both or neither of 'localField' and 'foreignField' to be specified",
                ))
            }
        };
        let vars = match spec.get("let") {
            None => Document::new(),
            Some(Bson::Document(vars)) => vars.clone(),
            Some(_) => {
                return Err(CommandError::failed_to_parse(
                    "$lookup argument 'let' must be an object",
                ))
            }
        };
        let pipeline = match spec.get("pipeline") {
            None => None,
            Some(Bson::Array(stages)) => {
                // Checked now, with every variable bound to null: a stage that cannot parse
                // fails the command, not the first document it meets.
                refuse_write_stages(stages, ErrorCode::WriteStageInLookup, "$lookup")?;
                let mut probe = stages.clone();
                let nulls: Document = vars.keys().map(|k| (k.clone(), Bson::Null)).collect();
                variables::in_pipeline(&mut probe, &nulls);
                let parsed = Pipeline::parse(&probe)?;
                if parsed.reads_other_collections() {
                    return Err(CommandError::new(
                        ErrorCode::NotImplemented,
                        "a $lookup or $unionWith inside a $lookup pipeline is not supported by embedded-db",
                    ));
                }
                Some(if vars.is_empty() {
                    JoinPipeline::Fixed(parsed)
                } else {
                    JoinPipeline::PerDocument(stages.clone())
                })
            }
            Some(_) => {
                return Err(CommandError::failed_to_parse(
                    "$lookup argument 'pipeline' must be an array",
                ))
            }
        };
        if fields.is_none() && pipeline.is_none() {
            return Err(CommandError::failed_to_parse(
                "$lookup requires either 'pipeline' or both 'localField' and 'foreignField' to be specified",
            ));
        }
        Ok(Lookup {
            from,
            fields,
            vars,
            pipeline,
            into,
            foreign: Vec::new(),
        })
    }

    /// Puts each document's matches (in the foreign collection's order) into `as`.
    pub(super) fn run(
        &self,
        docs: Vec<Document>,
        deadline: &Deadline,
    ) -> CommandResult<Vec<Document>> {
        // Foreign documents by the encoded values of `foreignField` (missing or null: null).
        let mut by_value: std::collections::HashMap<Vec<u8>, Vec<usize>> =
            std::collections::HashMap::new();
        if let Some((_, foreign_field)) = &self.fields {
            for (i, f) in self.foreign.iter().enumerate() {
                deadline.check()?;
                let mut keys: Vec<Vec<u8>> = crate::keys::index_values(f, foreign_field)
                    .iter()
                    .map(crate::keys::encode)
                    .collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    by_value.entry(key).or_default().push(i);
                }
            }
        }
        let mut out = Output::new("$lookup", docs.len());
        for mut d in docs {
            deadline.check()?;
            let candidates: Vec<Document> = match &self.fields {
                Some((local_field, _)) => {
                    let mut hits: Vec<usize> = crate::keys::index_values(&d, local_field)
                        .iter()
                        .filter_map(|v| by_value.get(&crate::keys::encode(v)))
                        .flatten()
                        .copied()
                        .collect();
                    hits.sort_unstable();
                    hits.dedup();
                    hits.into_iter().map(|i| self.foreign[i].clone()).collect()
                }
                None => self.foreign.clone(),
            };
            let matched = match &self.pipeline {
                Some(JoinPipeline::Fixed(pipeline)) => pipeline.run(candidates, deadline)?,
                Some(JoinPipeline::PerDocument(stages)) => {
                    let vars = variables::values(&self.vars, &d)?;
                    let mut stages = stages.clone();
                    variables::in_pipeline(&mut stages, &vars);
                    Pipeline::parse(&stages)?.run(candidates, deadline)?
                }
                None => candidates,
            };
            add_field(
                &mut d,
                &self.into,
                Some(&Bson::Array(
                    matched.into_iter().map(Bson::Document).collect(),
                )),
            );
            out.push(d)?;
        }
        Ok(out.docs)
    }
}
