//! `$unionWith`: after the input, the documents of another collection (through an optional
//! sub-pipeline).

use bson::{Bson, Document};

use super::{refuse_write_stages, Output, Pipeline};
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::Deadline;

/// `$unionWith`: the documents of another collection (through a pipeline) after the input.
#[derive(Debug, Clone)]
pub(super) struct UnionWith {
    /// The collection whose documents are appended.
    pub(super) coll: String,
    pipeline: Option<Pipeline>,
    /// The documents of `coll`, loaded by [`Pipeline::resolve`] before the run.
    pub(super) foreign: Vec<Document>,
}

impl UnionWith {
    /// Parses `$unionWith: <coll>` or `{ coll, pipeline }`; the pipeline is parsed now.
    pub(super) fn parse(arg: &Bson) -> CommandResult<UnionWith> {
        let (coll, pipeline) = match arg {
            Bson::String(coll) => (coll.clone(), None),
            Bson::Document(spec) => {
                let coll = spec.get_str("coll").map_err(|_| {
                    CommandError::failed_to_parse("$unionWith requires a 'coll' string")
                })?;
                let pipeline = match spec.get("pipeline") {
                    None => None,
                    Some(Bson::Array(stages)) => {
                        refuse_write_stages(
                            stages,
                            ErrorCode::WriteStageInUnionWith,
                            "$unionWith",
                        )?;
                        Some(Pipeline::parse(stages)?)
                    }
                    Some(_) => {
                        return Err(CommandError::failed_to_parse(
                            "$unionWith 'pipeline' must be an array",
                        ))
                    }
                };
                (coll.to_owned(), pipeline)
            }
            _ => {
                return Err(CommandError::failed_to_parse(
                    "the $unionWith stage specification must be an object or string",
                ))
            }
        };
        if pipeline
            .as_ref()
            .is_some_and(Pipeline::reads_other_collections)
        {
            return Err(CommandError::new(
                ErrorCode::NotImplemented,
                "a $lookup or $unionWith inside a $unionWith pipeline is not supported by embedded-db",
            ));
        }
        Ok(UnionWith {
            coll,
            pipeline,
            foreign: Vec::new(),
        })
    }

    /// The input, then the documents of `coll` run through its pipeline, within the stage's
    /// memory budget.
    pub(super) fn run(
        &self,
        docs: Vec<Document>,
        deadline: &Deadline,
    ) -> CommandResult<Vec<Document>> {
        let mut out = Output::new("$unionWith", docs.len());
        for d in docs {
            out.push(d)?;
        }
        let theirs = match &self.pipeline {
            Some(pipeline) => pipeline.run(self.foreign.clone(), deadline)?,
            None => self.foreign.clone(),
        };
        for d in theirs {
            deadline.check()?;
            out.push(d)?;
        }
        Ok(out.docs)
    }
}
