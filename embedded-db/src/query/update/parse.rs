//! Parsing update documents: operator names, paths, arguments and conflicts.

use super::*;

pub(super) fn parse_operators(d: &Document) -> CommandResult<Vec<FieldUpdate>> {
    let mut ups = Vec::new();
    for (name, arg) in d {
        if !UPDATE_OPERATORS.contains(&name.as_str()) {
            let hint = if name.starts_with('$') {
                String::new()
            } else {
                ". Expected a valid update modifier or pipeline-style update specified as an array"
                    .to_owned()
            };
            return Err(CommandError::failed_to_parse(format!(
                "Unknown modifier: {name}{hint}"
            )));
        }
        let Bson::Document(fields) = arg else {
            return Err(CommandError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{name}: {arg}}}",
                type_name(arg)
            )));
        };
        for (p, v) in fields {
            validate_update_path(p)?;
            ups.push(FieldUpdate {
                path: p.clone(),
                op: parse_op(name, p, v)?,
            });
        }
    }
    check_conflicts(&ups)?;
    ups.sort_by(|a, b| path_order(&a.path, &b.path));
    Ok(ups)
}

pub(super) fn validate_update_path(p: &str) -> CommandResult<()> {
    path::check_length(p)?;
    if p.is_empty() {
        return Err(CommandError::failed_to_parse(
            "An empty update path is not valid.",
        ));
    }
    let mut positional = 0;
    for c in p.split('.') {
        if c.is_empty() {
            return Err(CommandError::failed_to_parse(format!(
                "The update path '{p}' contains an empty field name, which is not allowed."
            )));
        }
        positional += usize::from(c == "$");
        let array_op = c == "$" || (c.starts_with("$[") && c.ends_with(']'));
        if c.starts_with('$') && !array_op {
            return Err(CommandError::new(
                ErrorCode::DollarPrefixedFieldName,
                format!("The dollar ($) prefixed field '{c}' in '{p}' is not valid for storage."),
            ));
        }
    }
    if positional > 1 {
        return Err(CommandError::bad_value(format!(
            "Too many positional (i.e. '$') elements found in path '{p}'"
        )));
    }
    Ok(())
}

pub(super) fn parse_op(name: &str, p: &str, v: &Bson) -> CommandResult<UpdateOp> {
    let dynamic = |s: &str| s.split('.').any(|c| c.starts_with('$'));
    Ok(match name {
        "$set" => UpdateOp::Set(v.clone()),
        "$setOnInsert" => UpdateOp::SetOnInsert(v.clone()),
        "$unset" => UpdateOp::Unset,
        "$inc" | "$mul" => {
            let verb = if name == "$inc" { "increment" } else { "multiply" };
            let n = Num::from_bson(v).ok_or_else(|| {
                CommandError::type_mismatch(format!("Cannot {verb} with non-numeric argument: {{{p}: {v}}}"))
            })?;
            if name == "$inc" {
                UpdateOp::Inc(n)
            } else {
                UpdateOp::Mul(n)
            }
        }
        "$min" => UpdateOp::Min(v.clone()),
        "$max" => UpdateOp::Max(v.clone()),
        "$rename" => {
            let Bson::String(to) = v else {
                return Err(CommandError::bad_value(format!(
                    "The 'to' field for $rename must be a string: {p}: {v}"
                )));
            };
            validate_update_path(to)?;
            if dynamic(p) || dynamic(to) {
                return Err(CommandError::bad_value(format!(
                    "The source and target field for $rename may not be dynamic: {p}: {to}"
                )));
            }
            if path::overlaps(p, to) {
                return Err(CommandError::bad_value(format!(
                    "The source and target field for $rename must differ and not be on the same path: {p}: {to}"
                )));
            }
            path::check_length(to)?;
            UpdateOp::Rename(to.clone())
        }
        "$push" => UpdateOp::Push(Box::new(parse_push(v)?)),
        "$addToSet" => UpdateOp::AddToSet(match v {
            Bson::Document(d) if d.contains_key("$each") => {
                if d.len() != 1 {
                    return Err(CommandError::bad_value(format!(
                        "Found unexpected fields after $each in $addToSet: {v}"
                    )));
                }
                each_array(d.get("$each"), "$addToSet")?
            }
            other => vec![other.clone()],
        }),
        "$pull" => UpdateOp::Pull(Box::new(match v {
            Bson::Document(d) => PullCond::Match(ElemMatch::parse(d)?),
            Bson::RegularExpression(r) => {
                PullCond::Match(ElemMatch::parse(&doc! { "$regex": &r.pattern, "$options": &r.options })?)
            }
            other => PullCond::Value(other.clone()),
        })),
        "$pullAll" => match v {
            Bson::Array(items) => UpdateOp::PullAll(items.clone()),
            other => {
                return Err(CommandError::bad_value(format!(
                    "$pullAll requires an array argument but was given a {}",
                    type_name(other)
                )))
            }
        },
        "$pop" => match as_integral(v) {
            Some(1) => UpdateOp::Pop(false),
            Some(-1) => UpdateOp::Pop(true),
            _ => return Err(CommandError::failed_to_parse(format!("$pop expects 1 or -1, found: {v}"))),
        },
        "$currentDate" => UpdateOp::CurrentDate(match v {
            Bson::Boolean(_) => false,
            Bson::Document(d) if d.len() == 1 && d.get_str("$type") == Ok("date") => false,
            Bson::Document(d) if d.len() == 1 && d.get_str("$type") == Ok("timestamp") => true,
            Bson::Document(_) => {
                return Err(CommandError::bad_value(
                    "The '$type' string field is required to be 'date' or 'timestamp': {$currentDate: {field : {$type: 'date'}}}",
                ))
            }
            other => {
                return Err(CommandError::bad_value(format!(
                    "{other} is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({{$type: 'timestamp/date'}})."
                )))
            }
        }),
        other => return Err(CommandError::failed_to_parse(format!("Unknown modifier: {other}"))),
    })
}

pub(super) fn each_array(v: Option<&Bson>, op: &str) -> CommandResult<Vec<Bson>> {
    match v {
        Some(Bson::Array(items)) => Ok(items.clone()),
        other => Err(CommandError::bad_value(format!(
            "The argument to $each in {op} must be an array but it was of type: {}",
            other.map_or("missing", type_name)
        ))),
    }
}

pub(super) fn parse_push(v: &Bson) -> CommandResult<Push> {
    let mut push = Push {
        each: vec![v.clone()],
        slice: None,
        position: None,
        sort: None,
    };
    let Bson::Document(d) = v else {
        return Ok(push);
    };
    if !d.contains_key("$each") {
        return Ok(push);
    }
    let int = |x: &Bson, clause: &str| {
        as_integral(x).ok_or_else(|| {
            CommandError::bad_value(format!(
                "The value for {clause} must be an integer value but was given type: {}",
                type_name(x)
            ))
        })
    };
    for (k, x) in d {
        match k.as_str() {
            "$each" => push.each = each_array(Some(x), "$push")?,
            "$slice" => push.slice = Some(int(x, k)?),
            "$position" => push.position = Some(int(x, k)?),
            "$sort" => {
                push.sort = Some(match (as_integral(x), x) {
                    (Some(1), _) => PushSort::Value(true),
                    (Some(-1), _) => PushSort::Value(false),
                    (_, Bson::Document(spec)) if !spec.is_empty() => PushSort::Fields(SortSpec::parse(spec)?),
                    _ => {
                        return Err(CommandError::bad_value(
                            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
                        ))
                    }
                });
            }
            other => {
                return Err(CommandError::bad_value(format!(
                    "Unrecognized clause in $push: {other}"
                )))
            }
        }
    }
    Ok(push)
}

pub(super) fn check_conflicts(ups: &[FieldUpdate]) -> CommandResult<()> {
    let mut seen: Vec<&str> = Vec::new();
    for u in ups {
        let extra = match &u.op {
            UpdateOp::Rename(to) => Some(to.as_str()),
            _ => None,
        };
        for p in std::iter::once(u.path.as_str()).chain(extra) {
            if let Some(prev) = seen.iter().find(|q| path::overlaps(q, p)) {
                let at = if prev.len() <= p.len() { *prev } else { p };
                return Err(CommandError::new(
                    ErrorCode::ConflictingUpdateOperators,
                    format!("Updating the path '{p}' would create a conflict at '{at}'"),
                ));
            }
            seen.push(p);
        }
    }
    Ok(())
}

/// MongoDB applies updates in field-name order, numeric components numerically.
pub(super) fn path_order(a: &str, b: &str) -> Ordering {
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (Some(x), Some(y)) => {
                let o = match (array_index(x), array_index(y)) {
                    (Some(i), Some(j)) => i.cmp(&j),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            (x, y) => return x.is_some().cmp(&y.is_some()),
        }
    }
}
