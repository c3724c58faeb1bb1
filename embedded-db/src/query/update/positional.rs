//! Positional paths: `$`, `$[]` and `$[id]` with `arrayFilters`, expanded into the
//! concrete paths of one document.

use super::*;

pub(super) struct ArrayFilters<'a> {
    filters: Vec<(&'a str, Filter)>,
}

impl<'a> ArrayFilters<'a> {
    pub(super) fn parse(raw: &'a [Document], ups: &[FieldUpdate]) -> CommandResult<Self> {
        let prefix = "Error parsing array filter :: caused by :: ";
        let mut filters: Vec<(&'a str, Filter)> = Vec::with_capacity(raw.len());
        for d in raw {
            let mut ident: Option<&'a str> = None;
            for k in d.keys().filter(|k| !k.starts_with('$')) {
                let head = split_first(k).0;
                match ident {
                    Some(i) if i != head => {
                        return Err(CommandError::failed_to_parse(format!(
                        "{prefix}Expected a single top-level field name, found '{i}' and '{head}'"
                    )))
                    }
                    _ => ident = Some(head),
                }
            }
            let Some(ident) = ident else {
                return Err(CommandError::failed_to_parse(format!(
                    "{prefix}Cannot use an expression without a top-level field name in arrayFilters"
                )));
            };
            let mut chars = ident.chars();
            if !chars.next().is_some_and(|c| c.is_ascii_lowercase())
                || !chars.all(|c| c.is_ascii_alphanumeric())
            {
                return Err(CommandError::bad_value(format!(
                    "{prefix}The top-level field name must be an alphanumeric string beginning with a lowercase letter, found '{ident}'"
                )));
            }
            if filters.iter().any(|(i, _)| *i == ident) {
                return Err(CommandError::failed_to_parse(format!(
                    "Found multiple array filters with the same top-level field name {ident}"
                )));
            }
            filters.push((ident, Filter::parse(d)?));
        }
        for (ident, _) in &filters {
            let token = format!("$[{ident}]");
            if !ups.iter().any(|u| u.path.split('.').any(|c| c == token)) {
                return Err(CommandError::failed_to_parse(format!(
                    "The array filter for identifier '{ident}' was not used in the update"
                )));
            }
        }
        Ok(ArrayFilters { filters })
    }

    pub(super) fn get(&self, ident: &str, p: &str) -> CommandResult<&Filter> {
        self.filters
            .iter()
            .find(|(i, _)| *i == ident)
            .map(|(_, f)| f)
            .ok_or_else(|| {
                CommandError::bad_value(format!(
                    "No array filter found for identifier '{ident}' in path '{p}'"
                ))
            })
    }
}

/// Turns a path with `$`, `$[]` and `$[id]` components into concrete paths.
pub(super) fn expand(
    p: &str,
    original: &Document,
    work: &Document,
    ctx: &UpdateContext<'_>,
    filters: &ArrayFilters<'_>,
) -> CommandResult<Vec<String>> {
    if !p.contains('$') {
        return Ok(vec![p.to_owned()]);
    }
    let mut prefixes = vec![String::new()];
    for part in p.split('.') {
        let mut next = Vec::with_capacity(prefixes.len());
        for pre in &prefixes {
            let join = |c: &str| {
                if pre.is_empty() {
                    c.to_owned()
                } else {
                    format!("{pre}.{c}")
                }
            };
            if part == "$" {
                let i = ctx
                    .query
                    .and_then(|q| q.positional_index(original, pre))
                    .ok_or_else(|| {
                        CommandError::bad_value(
                            "The positional operator did not find the match needed from the query.",
                        )
                    })?;
                next.push(join(&i.to_string()));
                continue;
            }
            let ident = part.strip_prefix("$[").and_then(|s| s.strip_suffix(']'));
            let Some(ident) = ident else {
                next.push(join(part));
                continue;
            };
            let Some(Bson::Array(items)) = path::get(work, pre) else {
                return Err(CommandError::bad_value(format!(
                    "The path '{pre}' must exist in the document in order to apply array updates."
                )));
            };
            let filter = if ident.is_empty() {
                None
            } else {
                Some(filters.get(ident, p)?)
            };
            for (i, e) in items.iter().enumerate() {
                let selected = match filter {
                    Some(f) => f.matches(&doc! { ident: e.clone() })?,
                    None => true,
                };
                if selected {
                    next.push(join(&i.to_string()));
                }
            }
        }
        prefixes = next;
    }
    Ok(prefixes)
}
