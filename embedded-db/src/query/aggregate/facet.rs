//! `$facet`: several named pipelines over the same input, into one document of arrays.

use bson::{Bson, Document};

use super::Pipeline;
use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::{Deadline, MemoryBudget};
use crate::query::compare::type_name;

/// `$facet`'s named pipelines; mongod refuses an empty spec, a non-array facet and the stages
/// that cannot run inside one (`$facet`, `$out`, `$merge`, `$changeStream`: 40600).
pub(super) fn parse(spec: &Document) -> CommandResult<Vec<(String, Pipeline)>> {
    if spec.is_empty() {
        return Err(CommandError::bad_value(
            "the $facet specification must be a non-empty object",
        ));
    }
    let mut facets = Vec::with_capacity(spec.len());
    for (name, stages) in spec {
        let Bson::Array(stages) = stages else {
            return Err(CommandError::type_mismatch(format!(
                "arguments to $facet must be arrays, {name} is type {}",
                type_name(stages)
            )));
        };
        for stage in stages {
            let inner = stage.as_document().and_then(|d| d.keys().next());
            if let Some(inner) = inner
                .filter(|n| matches!(n.as_str(), "$facet" | "$out" | "$merge" | "$changeStream"))
            {
                return Err(CommandError::new(
                    ErrorCode::FacetStageNotAllowed,
                    format!("{inner} is not allowed to be used within a $facet stage"),
                ));
            }
        }
        facets.push((name.clone(), Pipeline::parse(stages)?));
    }
    Ok(facets)
}

/// One document with each facet's results as an array, the results held to the stage's memory
/// budget.
pub(super) fn run(
    facets: &[(String, Pipeline)],
    docs: &[Document],
    deadline: &Deadline,
) -> CommandResult<Vec<Document>> {
    let mut out = Document::new();
    let mut budget = MemoryBudget::new("$facet");
    for (name, pipeline) in facets {
        let results = pipeline.run(docs.to_vec(), deadline)?;
        for d in &results {
            budget.add(d)?;
        }
        out.insert(
            name.clone(),
            Bson::Array(results.into_iter().map(Bson::Document).collect()),
        );
    }
    Ok(vec![out])
}
