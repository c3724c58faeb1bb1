//! Aggregation expressions: field paths, `$$ROOT`, literals, nested
//! documents/arrays and a set of common operators.

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::compare::{compare, is_true, type_name, values_equal};
use super::num::Num;
use super::path::split_first;
use crate::error::{CommandError, CommandResult, ErrorCode};

/// A parsed aggregation expression; evaluating it never panics.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// A constant.
    Literal(Bson),
    /// `"$a.b"` / `"$$ROOT.a.b"` (`None` = the whole document, `$$ROOT`).
    Field(Option<String>),
    /// `$$REMOVE`: evaluates to a missing value.
    Remove,
    /// A document of expressions; fields evaluating to missing are left out.
    Object(Vec<(String, Expr)>),
    /// An array of expressions; missing elements become null.
    Array(Vec<Expr>),
    /// `$cond` with `if`, `then`, `else`.
    Cond(Box<[Expr; 3]>),
    /// `$getField`: the field of that exact name (dots and `$` included) of `input`.
    GetField(String, Box<Expr>),
    /// `$setField` / `$unsetField`: `input` with the field of that exact name set to the value
    /// (missing, e.g. `$$REMOVE`: removed).
    SetField(String, Box<[Expr; 2]>),
    /// An operator applied to its arguments.
    Op(Operator, Vec<Expr>),
}

/// The supported expression operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operator {
    /// `$add`
    Add,
    /// `$subtract`
    Subtract,
    /// `$multiply`
    Multiply,
    /// `$divide`
    Divide,
    /// `$concat`
    Concat,
    /// `$toLower`
    ToLower,
    /// `$toUpper`
    ToUpper,
    /// `$ifNull`
    IfNull,
    /// `$eq`
    Eq,
    /// `$ne`
    Ne,
    /// `$gt`
    Gt,
    /// `$gte`
    Gte,
    /// `$lt`
    Lt,
    /// `$lte`
    Lte,
    /// `$cmp`
    Cmp,
    /// `$and`
    And,
    /// `$or`
    Or,
    /// `$not`
    Not,
    /// `$size`
    Size,
    /// `$in`
    In,
    /// `$mergeObjects`
    MergeObjects,
}

impl Operator {
    fn from_name(name: &str) -> Option<Operator> {
        use Operator as O;
        Some(match name {
            "$add" => O::Add,
            "$subtract" => O::Subtract,
            "$multiply" => O::Multiply,
            "$divide" => O::Divide,
            "$concat" => O::Concat,
            "$toLower" => O::ToLower,
            "$toUpper" => O::ToUpper,
            "$ifNull" => O::IfNull,
            "$eq" => O::Eq,
            "$ne" => O::Ne,
            "$gt" => O::Gt,
            "$gte" => O::Gte,
            "$lt" => O::Lt,
            "$lte" => O::Lte,
            "$cmp" => O::Cmp,
            "$and" => O::And,
            "$or" => O::Or,
            "$not" => O::Not,
            "$size" => O::Size,
            "$in" => O::In,
            "$mergeObjects" => O::MergeObjects,
            _ => return None,
        })
    }

    /// Allowed argument counts (min, max).
    fn arity(self) -> (usize, usize) {
        use Operator as O;
        match self {
            O::ToLower | O::ToUpper | O::Not | O::Size => (1, 1),
            O::Subtract
            | O::Divide
            | O::Eq
            | O::Ne
            | O::Gt
            | O::Gte
            | O::Lt
            | O::Lte
            | O::Cmp
            | O::In => (2, 2),
            O::IfNull => (2, usize::MAX),
            O::Add | O::Multiply | O::Concat | O::And | O::Or | O::MergeObjects => (0, usize::MAX),
        }
    }
}

fn arity_error(name: &str, expected: &str, got: usize) -> CommandError {
    CommandError::new(
        ErrorCode::ExpressionArity,
        format!("Expression {name} takes {expected} arguments. {got} were passed in."),
    )
}

impl Expr {
    /// Parses an expression. Unknown `$operators` are `InvalidPipelineOperator`
    /// ("Unrecognized expression '$foo'"); wrong argument counts are `Location16020`.
    pub(crate) fn parse(v: &Bson) -> CommandResult<Expr> {
        match v {
            Bson::String(s) if s.starts_with("$$") => {
                super::path::check_length(s)?;
                parse_variable(s.get(2..).unwrap_or_default())
            }
            Bson::String(s) if s.starts_with('$') => match s.get(1..) {
                Some(p) if !p.is_empty() && !p.split('.').any(str::is_empty) => {
                    super::path::check_length(p)?;
                    Ok(Expr::Field(Some(p.to_owned())))
                }
                _ => Err(CommandError::bad_value(format!(
                    "'{s}' is not a valid field path"
                ))),
            },
            Bson::Document(d) => parse_document(d),
            Bson::Array(items) => Ok(Expr::Array(
                items
                    .iter()
                    .map(Expr::parse)
                    .collect::<CommandResult<_>>()?,
            )),
            other => Ok(Expr::Literal(other.clone())),
        }
    }

    /// Evaluates against `doc` (both `$$ROOT` and `$$CURRENT`); `None` is a missing value.
    pub(crate) fn eval(&self, doc: &Document) -> CommandResult<Option<Bson>> {
        Ok(match self {
            Expr::Literal(v) => Some(v.clone()),
            Expr::Field(None) => Some(Bson::Document(doc.clone())),
            Expr::Field(Some(p)) => field_value(doc, p),
            Expr::Remove => None,
            Expr::Object(fields) => {
                let mut out = Document::new();
                for (k, e) in fields {
                    if let Some(v) = e.eval(doc)? {
                        out.insert(k.clone(), v);
                    }
                }
                Some(Bson::Document(out))
            }
            Expr::Array(items) => Some(Bson::Array(
                items
                    .iter()
                    .map(|e| Ok(e.eval(doc)?.unwrap_or(Bson::Null)))
                    .collect::<CommandResult<_>>()?,
            )),
            Expr::Cond(parts) => {
                let [cond, then, otherwise] = parts.as_ref();
                if is_true(cond.eval(doc)?.as_ref()) {
                    then.eval(doc)?
                } else {
                    otherwise.eval(doc)?
                }
            }
            Expr::GetField(field, input) => match input.eval(doc)? {
                Some(Bson::Document(d)) => d.get(field).cloned(),
                None | Some(Bson::Null) => None,
                Some(other) => return Err(field_input_error("$getField", &other)),
            },
            Expr::SetField(field, parts) => {
                let [input, value] = parts.as_ref();
                let mut out = match input.eval(doc)? {
                    Some(Bson::Document(d)) => d,
                    None | Some(Bson::Null) => return Ok(Some(Bson::Null)),
                    Some(other) => return Err(field_input_error("$setField", &other)),
                };
                match value.eval(doc)? {
                    Some(value) => {
                        out.insert(field.clone(), value);
                    }
                    None => {
                        out.remove(field);
                    }
                }
                Some(Bson::Document(out))
            }
            Expr::Op(Operator::And, args) => Some(Bson::Boolean(all_args(args, doc, true)?)),
            Expr::Op(Operator::Or, args) => Some(Bson::Boolean(!all_args(args, doc, false)?)),
            Expr::Op(op, args) => {
                let vals = args
                    .iter()
                    .map(|a| a.eval(doc))
                    .collect::<CommandResult<Vec<_>>>()?;
                apply(*op, &vals)?
            }
        })
    }
}

/// True when every argument's truthiness equals `want` (short-circuits).
fn all_args(args: &[Expr], doc: &Document, want: bool) -> CommandResult<bool> {
    for a in args {
        if is_true(a.eval(doc)?.as_ref()) != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Aggregation order: a missing value sorts below every BSON value.
pub(crate) fn compare_values(a: Option<&Bson>, b: Option<&Bson>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => compare(x, y),
    }
}

/// The value of a field path in aggregation semantics: through an array of
/// documents it yields the array of the elements' values.
pub(crate) fn field_value(doc: &Document, path: &str) -> Option<Bson> {
    let (head, rest) = split_first(path);
    let v = doc.get(head)?;
    match rest {
        None => Some(v.clone()),
        Some(rest) => value_in(v, rest),
    }
}

fn value_in(v: &Bson, path: &str) -> Option<Bson> {
    match v {
        Bson::Document(d) => field_value(d, path),
        Bson::Array(items) => Some(Bson::Array(
            items.iter().filter_map(|e| value_in(e, path)).collect(),
        )),
        _ => None,
    }
}

fn parse_variable(name: &str) -> CommandResult<Expr> {
    match split_first(name) {
        ("ROOT" | "CURRENT", rest) => Ok(Expr::Field(rest.map(str::to_owned))),
        ("REMOVE", None) => Ok(Expr::Remove),
        _ => Err(CommandError::bad_value(format!(
            "Use of undefined variable: {name}"
        ))),
    }
}

fn parse_document(d: &Document) -> CommandResult<Expr> {
    let Some((name, arg)) = d.iter().next() else {
        return Ok(Expr::Object(Vec::new()));
    };
    if !name.starts_with('$') {
        let fields = d
            .iter()
            .map(|(k, v)| {
                if k.starts_with('$') || k.contains('.') || k.is_empty() {
                    return Err(CommandError::bad_value(format!(
                        "Invalid field name in expression object: '{k}'"
                    )));
                }
                Ok((k.clone(), Expr::parse(v)?))
            })
            .collect::<CommandResult<_>>()?;
        return Ok(Expr::Object(fields));
    }
    if d.len() != 1 {
        return Err(CommandError::failed_to_parse(format!(
            "an expression specification must contain exactly one field, the name of the expression. Found {} fields in {d}",
            d.len()
        )));
    }
    match name.as_str() {
        "$literal" => return Ok(Expr::Literal(arg.clone())),
        "$cond" => return parse_cond(arg),
        "$getField" | "$setField" | "$unsetField" => return parse_field_op(name, arg),
        _ => {}
    }
    let op = Operator::from_name(name).ok_or_else(|| {
        CommandError::new(
            ErrorCode::InvalidPipelineOperator,
            format!("Unrecognized expression '{name}'"),
        )
    })?;
    let args = match arg {
        Bson::Array(items) => items
            .iter()
            .map(Expr::parse)
            .collect::<CommandResult<Vec<_>>>()?,
        other => vec![Expr::parse(other)?],
    };
    let (min, max) = op.arity();
    if args.len() < min || args.len() > max {
        let expected = if min == max {
            format!("exactly {min}")
        } else {
            format!("at least {min}")
        };
        return Err(arity_error(name, &expected, args.len()));
    }
    Ok(Expr::Op(op, args))
}

/// `$getField` (`"name"` or `{field, input}`), `$setField` (`{field, input, value}`) and
/// `$unsetField` (`{field, input}`); `field` must be a constant string (or a `$literal` one),
/// `input` defaults to `$$CURRENT` for `$getField`.
fn parse_field_op(name: &str, arg: &Bson) -> CommandResult<Expr> {
    let constant = |v: &Bson| -> CommandResult<String> {
        match v {
            Bson::String(s) if !s.starts_with('$') => Ok(s.clone()),
            Bson::Document(d) if d.len() == 1 => match d.get("$literal") {
                Some(Bson::String(s)) => Ok(s.clone()),
                _ => Err(CommandError::bad_value(format!(
                    "{name} requires 'field' to evaluate to a constant string"
                ))),
            },
            _ => Err(CommandError::bad_value(format!(
                "{name} requires 'field' to evaluate to a constant string"
            ))),
        }
    };
    let spec = match arg {
        Bson::Document(d) if !d.keys().any(|k| k.starts_with('$')) => d,
        // `$getField: <name>` reads the current document.
        other if name == "$getField" => {
            return Ok(Expr::GetField(
                constant(other)?,
                Box::new(Expr::Field(None)),
            ))
        }
        _ => {
            return Err(CommandError::bad_value(format!(
                "{name} only supports an object as its argument"
            )))
        }
    };
    let allowed: &[&str] = match name {
        "$setField" => &["field", "input", "value"],
        _ => &["field", "input"],
    };
    if let Some(unknown) = spec.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(CommandError::bad_value(format!(
            "{name} found an unknown argument: {unknown}"
        )));
    }
    let field = constant(spec.get("field").ok_or_else(|| {
        CommandError::bad_value(format!("{name} requires 'field' to be specified"))
    })?)?;
    let input = match spec.get("input") {
        Some(input) => Expr::parse(input)?,
        None if name == "$getField" => Expr::Field(None),
        None => {
            return Err(CommandError::bad_value(format!(
                "{name} requires 'input' to be specified"
            )))
        }
    };
    Ok(match name {
        "$getField" => Expr::GetField(field, Box::new(input)),
        "$setField" => {
            let value = spec.get("value").ok_or_else(|| {
                CommandError::bad_value("$setField requires 'value' to be specified")
            })?;
            Expr::SetField(field, Box::new([input, Expr::parse(value)?]))
        }
        _ => Expr::SetField(field, Box::new([input, Expr::Remove])),
    })
}

/// The error for a `$getField` / `$setField` whose `input` is not an object.
fn field_input_error(name: &str, input: &Bson) -> CommandError {
    CommandError::bad_value(format!(
        "{name} requires 'input' to evaluate to type Object, but got {}",
        type_name(input)
    ))
}

fn parse_cond(arg: &Bson) -> CommandResult<Expr> {
    let parts = match arg {
        Bson::Array(items) => match items.as_slice() {
            [c, t, e] => [Expr::parse(c)?, Expr::parse(t)?, Expr::parse(e)?],
            _ => return Err(arity_error("$cond", "exactly 3", items.len())),
        },
        Bson::Document(d) => {
            if let Some(k) = d
                .keys()
                .find(|k| !matches!(k.as_str(), "if" | "then" | "else"))
            {
                return Err(CommandError::bad_value(format!(
                    "Unrecognized parameter to $cond: {k}"
                )));
            }
            let part = |k: &str| match d.get(k) {
                Some(v) => Expr::parse(v),
                None => Err(CommandError::bad_value(format!(
                    "Missing '{k}' parameter to $cond"
                ))),
            };
            [part("if")?, part("then")?, part("else")?]
        }
        _ => return Err(arity_error("$cond", "exactly 3", 1)),
    };
    Ok(Expr::Cond(Box::new(parts)))
}

fn is_nullish(v: Option<&Bson>) -> bool {
    matches!(v, None | Some(Bson::Null | Bson::Undefined))
}

fn type_of(v: Option<&Bson>) -> &'static str {
    v.map_or("missing", type_name)
}

fn number(op: &str, v: &Bson) -> CommandResult<Num> {
    Num::from_bson(v).ok_or_else(|| {
        CommandError::type_mismatch(format!(
            "{op} only supports numeric types, not {}",
            type_name(v)
        ))
    })
}

#[allow(clippy::cast_possible_truncation)]
fn millis(n: Num) -> i64 {
    match n {
        Num::Int(_) | Num::Long(_) => n.trunc_i64(),
        Num::Double(d) | Num::Decimal(d) => d.round() as i64,
    }
}

fn apply(op: Operator, vals: &[Option<Bson>]) -> CommandResult<Option<Bson>> {
    use Operator as O;
    let arg = |i: usize| vals.get(i).and_then(Option::as_ref);
    let null = Ok(Some(Bson::Null));
    let boolean = |b: bool| Ok(Some(Bson::Boolean(b)));
    let ord = || compare_values(arg(0), arg(1));
    match op {
        O::Add => {
            if vals.iter().any(|v| is_nullish(v.as_ref())) {
                return null;
            }
            let (mut sum, mut date) = (Num::Int(0), None);
            for v in vals.iter().flatten() {
                match v {
                    Bson::DateTime(d) if date.is_none() => date = Some(d.timestamp_millis()),
                    Bson::DateTime(_) => {
                        return Err(CommandError::bad_value(
                            "only one date allowed in an $add expression",
                        ))
                    }
                    other => sum = sum.add(number("$add", other)?),
                }
            }
            Ok(Some(match date {
                Some(ms) => {
                    Bson::DateTime(bson::DateTime::from_millis(ms.saturating_add(millis(sum))))
                }
                None => sum.to_bson(),
            }))
        }
        O::Multiply => {
            if vals.iter().any(|v| is_nullish(v.as_ref())) {
                return null;
            }
            let mut product = Num::Int(1);
            for v in vals.iter().flatten() {
                product = product.mul(number("$multiply", v)?);
            }
            Ok(Some(product.to_bson()))
        }
        O::Subtract | O::Divide if is_nullish(arg(0)) || is_nullish(arg(1)) => null,
        O::Subtract => match (arg(0), arg(1)) {
            (Some(Bson::DateTime(a)), Some(Bson::DateTime(b))) => Ok(Some(Bson::Int64(
                a.timestamp_millis().saturating_sub(b.timestamp_millis()),
            ))),
            (Some(Bson::DateTime(a)), Some(b)) if Num::from_bson(b).is_some() => {
                Ok(Some(Bson::DateTime(bson::DateTime::from_millis(
                    a.timestamp_millis()
                        .saturating_sub(millis(number("$subtract", b)?)),
                ))))
            }
            (Some(a), Some(b)) => match (Num::from_bson(a), Num::from_bson(b)) {
                (Some(x), Some(y)) => Ok(Some(x.sub(y).to_bson())),
                _ => Err(CommandError::type_mismatch(format!(
                    "can't $subtract {} from {}",
                    type_name(b),
                    type_name(a)
                ))),
            },
            _ => null,
        },
        O::Divide => {
            let (Some(a), Some(b)) = (arg(0), arg(1)) else {
                return null;
            };
            let (x, y) = (number("$divide", a)?, number("$divide", b)?);
            if y.is_zero() {
                return Err(CommandError::bad_value("can't $divide by zero"));
            }
            let q = x.to_f64() / y.to_f64();
            let decimal = matches!(x, Num::Decimal(_)) || matches!(y, Num::Decimal(_));
            Ok(Some(
                if decimal {
                    Num::Decimal(q)
                } else {
                    Num::Double(q)
                }
                .to_bson(),
            ))
        }
        O::Concat => {
            let mut out = String::new();
            for v in vals {
                match v {
                    Some(Bson::String(s)) => out.push_str(s),
                    v if is_nullish(v.as_ref()) => return null,
                    v => {
                        return Err(CommandError::type_mismatch(format!(
                            "$concat only supports strings, not {}",
                            type_of(v.as_ref())
                        )))
                    }
                }
            }
            Ok(Some(Bson::String(out)))
        }
        O::MergeObjects => {
            // Later documents win; null and missing inputs add nothing.
            let mut out = Document::new();
            for v in vals {
                match v {
                    Some(Bson::Document(d)) => {
                        for (key, value) in d {
                            out.insert(key.clone(), value.clone());
                        }
                    }
                    v if is_nullish(v.as_ref()) => {}
                    v => {
                        return Err(CommandError::new(
                            ErrorCode::MergeObjectsNotObject,
                            format!(
                                "$mergeObjects requires object inputs, but input {} is of type {}",
                                v.as_ref().map_or_else(String::new, ToString::to_string),
                                type_of(v.as_ref())
                            ),
                        ))
                    }
                }
            }
            Ok(Some(Bson::Document(out)))
        }
        O::ToLower | O::ToUpper => {
            let s = match arg(0) {
                v if is_nullish(v) => String::new(),
                Some(Bson::String(s) | Bson::Symbol(s)) => s.clone(),
                Some(v) if Num::from_bson(v).is_some() => v.to_string(),
                v => {
                    return Err(CommandError::type_mismatch(format!(
                        "can't convert a {} to a string",
                        type_of(v)
                    )))
                }
            };
            Ok(Some(Bson::String(if op == O::ToLower {
                s.to_lowercase()
            } else {
                s.to_uppercase()
            })))
        }
        O::IfNull => {
            let last = vals.len().saturating_sub(1);
            let pick = vals.iter().take(last).find(|v| !is_nullish(v.as_ref()));
            Ok(pick.or_else(|| vals.get(last)).cloned().flatten())
        }
        O::Eq => boolean(ord() == Ordering::Equal),
        O::Ne => boolean(ord() != Ordering::Equal),
        O::Gt => boolean(ord() == Ordering::Greater),
        O::Gte => boolean(ord() != Ordering::Less),
        O::Lt => boolean(ord() == Ordering::Less),
        O::Lte => boolean(ord() != Ordering::Greater),
        O::Cmp => Ok(Some(Bson::Int32(match ord() {
            Ordering::Less => -1,
            Ordering::Equal => 0,
            Ordering::Greater => 1,
        }))),
        O::Not => boolean(!is_true(arg(0))),
        O::And | O::Or => boolean(vals.iter().all(|v| is_true(v.as_ref())) == (op == O::And)),
        O::Size => match arg(0) {
            Some(Bson::Array(items)) => Ok(Some(Bson::Int32(
                i32::try_from(items.len()).unwrap_or(i32::MAX),
            ))),
            v => Err(CommandError::new(
                ErrorCode::SizeArgumentNotArray,
                format!(
                    "The argument to $size must be an array. Type of argument: {}",
                    type_of(v)
                ),
            )),
        },
        O::In => match arg(1) {
            Some(Bson::Array(items)) => {
                boolean(arg(0).is_some_and(|x| items.iter().any(|e| values_equal(x, e))))
            }
            v => Err(CommandError::bad_value(format!(
                "$in requires an array as a second argument, found: {}",
                type_of(v)
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn ev(e: &Bson, d: &Document) -> CommandResult<Option<Bson>> {
        Expr::parse(e)?.eval(d)
    }

    fn val(e: &Bson) -> Bson {
        let d = doc! { "a": 5, "b": 2.5, "s": "Hi", "arr": [{ "x": 1 }, { "y": 2 }, { "x": 3 }], "n": null };
        ev(e, &d)
            .unwrap()
            .unwrap_or(Bson::String("<missing>".into()))
    }

    #[test]
    fn paths_variables_and_literals() {
        assert_eq!(val(&"$a".into()), Bson::Int32(5));
        assert_eq!(val(&"$arr.x".into()), Bson::Array(vec![1.into(), 3.into()]));
        assert_eq!(val(&"$$ROOT.s".into()), Bson::String("Hi".into()));
        assert_eq!(val(&"$nope".into()), Bson::String("<missing>".into()));
        assert_eq!(
            val(&bson::bson!({ "$literal": "$a" })),
            Bson::String("$a".into())
        );
        assert_eq!(
            val(&bson::bson!({ "k": "$a", "m": "$nope", "l": ["$a", "$nope"] })),
            bson::bson!({ "k": 5, "l": [5, null] })
        );
        assert!(matches!(val(&"$$ROOT".into()), Bson::Document(d) if d.len() == 5));
    }

    #[test]
    fn arithmetic() {
        assert_eq!(
            val(&bson::bson!({ "$add": ["$a", "$b", 1] })),
            Bson::Double(8.5)
        );
        assert_eq!(val(&bson::bson!({ "$add": ["$a", "$n"] })), Bson::Null);
        assert_eq!(
            val(&bson::bson!({ "$subtract": ["$a", 7] })),
            Bson::Int32(-2)
        );
        assert_eq!(
            val(&bson::bson!({ "$multiply": ["$a", 2] })),
            Bson::Int32(10)
        );
        assert_eq!(
            val(&bson::bson!({ "$divide": ["$a", 2] })),
            Bson::Double(2.5)
        );
        let d = bson::DateTime::from_millis(1000);
        assert_eq!(
            val(&bson::bson!({ "$add": [d, 500] })),
            Bson::DateTime(bson::DateTime::from_millis(1500))
        );
        let e = ev(&bson::bson!({ "$add": ["$s", 1] }), &doc! { "s": "x" }).unwrap_err();
        assert_eq!(e.code, ErrorCode::TypeMismatch);
        assert_eq!(
            ev(&bson::bson!({ "$divide": [1, 0] }), &doc! {})
                .unwrap_err()
                .code,
            ErrorCode::BadValue
        );
    }

    #[test]
    fn strings_conditions_comparisons() {
        assert_eq!(
            val(&bson::bson!({ "$concat": ["$s", "-", "x"] })),
            Bson::String("Hi-x".into())
        );
        assert_eq!(
            val(&bson::bson!({ "$toUpper": "$s" })),
            Bson::String("HI".into())
        );
        assert_eq!(
            val(&bson::bson!({ "$toLower": "$nope" })),
            Bson::String(String::new())
        );
        assert_eq!(
            val(&bson::bson!({ "$cond": [{ "$gt": ["$a", 4] }, "big", "small"] })),
            Bson::String("big".into())
        );
        assert_eq!(
            val(&bson::bson!({ "$cond": { "if": "$n", "then": 1, "else": 2 } })),
            Bson::Int32(2)
        );
        assert_eq!(
            val(
                &bson::bson!({ "$mergeObjects": [{ "x": 1, "y": 1 }, "$n", { "y": 2, "z": "$a" }] })
            ),
            Bson::Document(doc! { "x": 1, "y": 2, "z": 5 }),
            "later inputs win, null adds nothing"
        );
        assert_eq!(
            ev(&bson::bson!({ "$mergeObjects": ["$a"] }), &doc! { "a": 1 })
                .unwrap_err()
                .code,
            ErrorCode::MergeObjectsNotObject
        );
        assert_eq!(
            val(&bson::bson!({ "$ifNull": ["$n", "$nope", "dflt"] })),
            Bson::String("dflt".into())
        );
        assert_eq!(
            val(&bson::bson!({ "$eq": ["$a", 5.0] })),
            Bson::Boolean(true)
        );
        assert_eq!(
            val(&bson::bson!({ "$lt": ["$nope", null] })),
            Bson::Boolean(true)
        );
        assert_eq!(
            val(&bson::bson!({ "$and": [1, "$a", { "$not": [false] }] })),
            Bson::Boolean(true)
        );
        assert_eq!(
            val(&bson::bson!({ "$or": [0, "$n"] })),
            Bson::Boolean(false)
        );
        assert_eq!(val(&bson::bson!({ "$size": "$arr" })), Bson::Int32(3));
        assert_eq!(
            val(&bson::bson!({ "$in": ["$a", [1, 5]] })),
            Bson::Boolean(true)
        );
        assert_eq!(val(&bson::bson!({ "$cmp": ["$s", "Ha"] })), Bson::Int32(1));
    }

    #[test]
    fn parse_errors() {
        let e = Expr::parse(&bson::bson!({ "$foo": 1 })).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (
                ErrorCode::InvalidPipelineOperator,
                "Unrecognized expression '$foo'"
            )
        );
        assert_eq!(
            Expr::parse(&bson::bson!({ "$eq": [1] })).unwrap_err().code,
            ErrorCode::ExpressionArity
        );
        assert_eq!(
            Expr::parse(&bson::bson!({ "$cond": { "if": 1 } }))
                .unwrap_err()
                .code,
            ErrorCode::BadValue
        );
        assert_eq!(
            Expr::parse(&Bson::String("$".into())).unwrap_err().code,
            ErrorCode::BadValue
        );
        let e = ev(&bson::bson!({ "$size": "$a" }), &doc! { "a": 1 }).unwrap_err();
        assert_eq!(e.code, ErrorCode::SizeArgumentNotArray);
    }
}
