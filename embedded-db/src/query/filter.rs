//! Query filters (`find`, `update`, `delete`, `$match`): parsed once, matched
//! against many documents with MongoDB's semantics.

use std::cmp::Ordering;

use bson::{Bson, Document};
use regex::{Regex, RegexBuilder};

use super::compare::{bracket, compare, is_true, truthy, type_code, values_equal};
use super::num::{as_integral, Num};
use super::path;
use crate::error::{CommandError, CommandResult, ErrorCode};

/// A parsed query filter: the clause tree of a `find`/`update`/`delete`/`$match` filter.
/// Matching never clones the document and fails only through `$expr` (see [`Filter::matches`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    clauses: Vec<Clause>,
}

/// One clause of the filter's tree (a field's tests, `$and`/`$or`/`$nor`, `$expr`); a document
/// matches a list of them when all match.
#[derive(Debug, Clone)]
enum Clause {
    And(Vec<Clause>),
    Or(Vec<Clause>),
    Nor(Vec<Clause>),
    /// All tests hold for the values at the path.
    Field(String, Vec<Test>),
    /// `$expr`: an aggregation expression over the whole document is true. An expression
    /// that fails on a document (e.g. `$divide` by zero) fails the query, as in mongod.
    Aggregate(Box<super::expr::Expr>),
}

/// One operator test on the values a path reaches (`{$gt: 1}`, `$not: {…}`).
#[derive(Debug, Clone)]
enum Test {
    /// Some reached value satisfies the operator.
    Op(Op),
    /// Not all of these tests hold (`$not`, `$ne`, `$nin`, `$exists: false`).
    Not(Vec<Test>),
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Bson),
    Cmp(CmpOp, Bson),
    In(Box<InSet>),
    Exists,
    /// Type codes; 0 stands for the `"number"` alias.
    Type(Vec<i32>),
    ElemMatch(Box<ElemMatch>),
    Size(i64),
    Regex(Box<Pattern>),
    Mod(i64, i64),
}

#[derive(Debug, Clone, Copy)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// The operand of `$in`: values by their key encoding (equal values, `1` and `1.0` among
/// them, encode alike), so that a test is one hash lookup however long the list is.
#[derive(Debug, Clone, Default)]
struct InSet {
    values: std::collections::HashSet<Vec<u8>>,
    has_null: bool,
    regexes: Vec<Pattern>,
}

impl InSet {
    fn contains(&self, v: &Bson) -> bool {
        self.values.contains(&crate::keys::encode(v)) || self.regexes.iter().any(|p| p.matches(v))
    }
}

/// A compiled regular expression together with its BSON source.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    re: Regex,
    source: bson::Regex,
}

impl Pattern {
    /// Compiles `pattern` with MongoDB options `i`, `m`, `s`, `x` (`u` is accepted
    /// and ignored); other flags or an invalid pattern are `BadValue`.
    pub(crate) fn new(pattern: &str, options: &str) -> CommandResult<Pattern> {
        let mut builder = RegexBuilder::new(pattern);
        for flag in options.chars() {
            match flag {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'x' => builder.ignore_whitespace(true),
                'u' => &mut builder,
                other => {
                    return Err(CommandError::bad_value(format!(
                        "invalid flag in regex options: {other}"
                    )))
                }
            };
        }
        let re = builder
            .build()
            .map_err(|e| CommandError::bad_value(format!("Regular expression is invalid: {e}")))?;
        let source = bson::Regex {
            pattern: pattern.to_owned(),
            options: options.to_owned(),
        };
        Ok(Pattern { re, source })
    }

    /// True for a string or symbol the expression finds a match in, or for a
    /// stored regular expression with the same pattern and options.
    pub(crate) fn matches(&self, v: &Bson) -> bool {
        match v {
            Bson::String(s) | Bson::Symbol(s) => self.re.is_match(s),
            Bson::RegularExpression(r) => *r == self.source,
            _ => false,
        }
    }
}

/// The argument of `$elemMatch` (and of `$pull`): either operators applied to
/// each element value (`{$gt: 1}`) or a query on element documents (`{a: 1}`).
#[derive(Debug, Clone)]
pub(crate) struct ElemMatch(ElemForm);

#[derive(Debug, Clone)]
enum ElemForm {
    /// Operators on the element value itself.
    Value(Vec<Test>),
    /// A query the element, which must be a document, has to match.
    Doc(Filter),
}

impl ElemMatch {
    /// Parses the `$elemMatch` document: a first key that is a (non-logical)
    /// operator selects the value form.
    pub(crate) fn parse(spec: &Document) -> CommandResult<ElemMatch> {
        match spec.keys().next() {
            Some(k) if k.starts_with('$') && !matches!(k.as_str(), "$and" | "$or" | "$nor") => {
                Ok(ElemMatch(ElemForm::Value(parse_ops(spec)?)))
            }
            _ => {
                let filter = Filter::parse(spec)?;
                if filter.has_expr() {
                    return Err(CommandError::bad_value(
                        "$expr can only be applied to the top-level document",
                    ));
                }
                Ok(ElemMatch(ElemForm::Doc(filter)))
            }
        }
    }

    /// True when the single array element `e` satisfies the condition.
    pub(crate) fn matches_element(&self, e: &Bson) -> bool {
        match &self.0 {
            ElemForm::Value(tests) => tests.iter().all(|c| c.eval(&|t| t(Some(e)))),
            // Without `$expr` (refused in `parse`) matching cannot fail.
            ElemForm::Doc(f) => matches!(e, Bson::Document(d) if f.matches(d).unwrap_or(false)),
        }
    }
}

impl Filter {
    /// Parses a query filter. Unknown operators, malformed `$and`/`$or`/`$nor`
    /// and bad operator arguments are `BadValue`; `$where`, `$text` and
    /// geo/schema operators are `NotImplemented`.
    pub(crate) fn parse(filter: &Document) -> CommandResult<Filter> {
        Ok(Filter {
            clauses: parse_document(filter)?,
        })
    }

    /// True when `doc` satisfies the filter (an empty filter matches everything). An `$expr`
    /// that fails on `doc` (say `$divide` by zero) fails the query, as in mongod.
    pub(crate) fn matches(&self, doc: &Document) -> CommandResult<bool> {
        all(&self.clauses, doc)
    }

    /// Whether an `$expr` is part of the filter (at the top or inside `$and`/`$or`/`$nor`).
    fn has_expr(&self) -> bool {
        fn contains_expr(clauses: &[Clause]) -> bool {
            clauses.iter().any(|e| match e {
                Clause::And(subs) | Clause::Or(subs) | Clause::Nor(subs) => contains_expr(subs),
                Clause::Aggregate(_) => true,
                Clause::Field(..) => false,
            })
        }
        contains_expr(&self.clauses)
    }

    /// The value when the filter is exactly an equality on `_id` (`{_id: v}` or
    /// `{_id: {$eq: v}}`, not a regex), so the caller can do a point lookup.
    /// Note that `1`, `1.0` and `1L` are equal `_id`s for matching.
    pub(crate) fn id_equality(&self) -> Option<&Bson> {
        match self.clauses.as_slice() {
            [Clause::Field(p, tests)] if p == "_id" => match tests.as_slice() {
                [Test::Op(Op::Eq(v))] if !matches!(v, Bson::RegularExpression(_)) => Some(v),
                _ => None,
            },
            _ => None,
        }
    }

    /// The index of the first element of the array at `array_path` (exact
    /// path) satisfying every top-level (or `$and`) condition of the filter on
    /// that array or on paths below it; `None` when there is no such
    /// condition or element. This is what the positional `$` refers to.
    pub(crate) fn positional_index(&self, doc: &Document, array_path: &str) -> Option<usize> {
        let Some(Bson::Array(items)) = path::get(doc, array_path) else {
            return None;
        };
        let mut tests = Vec::new();
        collect_array_tests(&self.clauses, array_path, &mut tests);
        if tests.is_empty() {
            return None;
        }
        items.iter().position(|e| {
            tests
                .iter()
                .all(|(rest, test)| match (rest.is_empty(), test, e) {
                    (true, Test::Op(Op::ElemMatch(em)), _) => em.matches_element(e),
                    (true, _, _) => test.eval(&|t| t(Some(e))),
                    (false, _, Bson::Document(d)) => {
                        test.eval(&|t| path::any_value(d, rest, &mut |v| t(v)))
                    }
                    (false, _, _) => false,
                })
        })
    }
}

fn collect_array_tests<'a>(
    clauses: &'a [Clause],
    array_path: &str,
    out: &mut Vec<(&'a str, &'a Test)>,
) {
    for e in clauses {
        match e {
            Clause::And(subs) => collect_array_tests(subs, array_path, out),
            Clause::Field(p, tests) => {
                let rest = if p == array_path {
                    Some("")
                } else {
                    p.strip_prefix(array_path).and_then(|r| r.strip_prefix('.'))
                };
                if let Some(rest) = rest {
                    let element_tests = tests
                        .iter()
                        .filter(|c| !matches!(c, Test::Op(Op::Exists | Op::Size(_))));
                    out.extend(element_tests.map(|c| (rest, c)));
                }
            }
            Clause::Or(_) | Clause::Nor(_) | Clause::Aggregate(_) => {}
        }
    }
}

/// Whether every clause matches (stopping at the first that does not).
fn all(clauses: &[Clause], doc: &Document) -> CommandResult<bool> {
    for e in clauses {
        if !e.matches(doc)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether any clause matches (stopping at the first that does).
fn any(clauses: &[Clause], doc: &Document) -> CommandResult<bool> {
    for e in clauses {
        if e.matches(doc)? {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Clause {
    fn matches(&self, doc: &Document) -> CommandResult<bool> {
        Ok(match self {
            Clause::And(subs) => all(subs, doc)?,
            Clause::Or(subs) => any(subs, doc)?,
            Clause::Nor(subs) => !any(subs, doc)?,
            Clause::Field(p, tests) => tests
                .iter()
                .all(|c| c.eval(&|t| path::any_value(doc, p, &mut |v| t(v)))),
            Clause::Aggregate(expr) => is_true(expr.eval(doc)?.as_ref()),
        })
    }
}

/// Feeds candidate values to a test and says whether any passed.
type Candidates<'c> = &'c dyn Fn(&dyn Fn(Option<&Bson>) -> bool) -> bool;

impl Test {
    fn eval(&self, any: Candidates<'_>) -> bool {
        match self {
            Test::Op(op) => any(&|v| op.test(v)),
            Test::Not(tests) => !tests.iter().all(|c| c.eval(any)),
        }
    }
}

impl Op {
    /// Tests one reached value (`None` = missing); a leaf array matches when
    /// it matches as a whole or any of its elements does.
    fn test(&self, v: Option<&Bson>) -> bool {
        match (self, v) {
            (Op::Exists, _) => v.is_some(),
            (Op::ElemMatch(em), Some(Bson::Array(items))) => {
                items.iter().any(|e| em.matches_element(e))
            }
            (Op::Size(n), Some(Bson::Array(items))) => {
                i64::try_from(items.len()).is_ok_and(|l| l == *n)
            }
            (Op::ElemMatch(_) | Op::Size(_), _) => false,
            (_, None) => self.matches_missing(),
            (_, Some(v)) => {
                self.test_single(v)
                    || matches!(v, Bson::Array(items) if items.iter().any(|e| self.test_single(e)))
            }
        }
    }

    /// Missing fields compare as null for equality, `$gte`/`$lte` null and `$in` with null.
    fn matches_missing(&self) -> bool {
        match self {
            Op::Eq(x) | Op::Cmp(CmpOp::Gte | CmpOp::Lte, x) => bracket(x) == bracket(&Bson::Null),
            Op::In(set) => set.has_null,
            _ => false,
        }
    }

    fn test_single(&self, v: &Bson) -> bool {
        match self {
            Op::Eq(x) => values_equal(v, x),
            Op::Cmp(op, x) => {
                (bracket(v) == bracket(x) || matches!(x, Bson::MinKey | Bson::MaxKey)) && {
                    let o = compare(v, x);
                    match op {
                        CmpOp::Gt => o == Ordering::Greater,
                        CmpOp::Gte => o != Ordering::Less,
                        CmpOp::Lt => o == Ordering::Less,
                        CmpOp::Lte => o != Ordering::Greater,
                    }
                }
            }
            Op::In(set) => set.contains(v),
            Op::Type(codes) => codes.iter().any(|&c| {
                if c == 0 {
                    Num::from_bson(v).is_some()
                } else {
                    type_code(v) == c
                }
            }),
            Op::Regex(p) => p.matches(v),
            Op::Mod(d, r) => {
                Num::from_bson(v).is_some_and(|n| n.trunc_i64().checked_rem(*d) == Some(*r))
            }
            Op::Exists | Op::ElemMatch(_) | Op::Size(_) => false,
        }
    }
}

fn parse_document(filter: &Document) -> CommandResult<Vec<Clause>> {
    let mut out = Vec::with_capacity(filter.len());
    for (key, value) in filter {
        match key.as_str() {
            "$and" => out.push(Clause::And(parse_clauses(key, value)?)),
            "$or" => out.push(Clause::Or(parse_clauses(key, value)?)),
            "$nor" => out.push(Clause::Nor(parse_clauses(key, value)?)),
            "$comment" => {}
            "$expr" => out.push(Clause::Aggregate(Box::new(super::expr::Expr::parse(
                value,
            )?))),
            "$where" | "$text" | "$jsonSchema" | "$sampleRate" => {
                return Err(CommandError::new(
                    ErrorCode::NotImplemented,
                    format!("{key} is not supported by this server"),
                ))
            }
            k if k.starts_with('$') => {
                return Err(CommandError::bad_value(format!(
                    "unknown top level operator: {k}"
                )))
            }
            _ => {
                path::check_length(key)?;
                out.push(Clause::Field(key.clone(), parse_tests(value)?));
            }
        }
    }
    Ok(out)
}

fn parse_clauses(op: &str, value: &Bson) -> CommandResult<Vec<Clause>> {
    let Bson::Array(items) = value else {
        return Err(CommandError::bad_value(format!("{op} must be an array")));
    };
    if items.is_empty() {
        return Err(CommandError::bad_value(
            "$and/$or/$nor must be a nonempty array",
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Bson::Document(d) => Ok(Clause::And(parse_document(d)?)),
            _ => Err(CommandError::bad_value(
                "$or/$and/$nor entries need to be full objects",
            )),
        })
        .collect()
}

/// True for a document whose first key is an operator (`{$gt: 1}`), which
/// makes it an operator document rather than a literal value.
pub(crate) fn is_operator_doc(v: &Bson) -> bool {
    matches!(v, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')))
}

fn parse_tests(value: &Bson) -> CommandResult<Vec<Test>> {
    match value {
        Bson::Document(d) if is_operator_doc(value) => parse_ops(d),
        Bson::RegularExpression(r) => Ok(vec![regex_test(r)?]),
        other => Ok(vec![Test::Op(Op::Eq(other.clone()))]),
    }
}

fn regex_test(r: &bson::Regex) -> CommandResult<Test> {
    Ok(Test::Op(Op::Regex(Box::new(Pattern::new(
        &r.pattern, &r.options,
    )?))))
}

fn parse_ops(spec: &Document) -> CommandResult<Vec<Test>> {
    let mut tests = Vec::with_capacity(spec.len());
    let (mut regex, mut options) = (None, None);
    for (key, v) in spec {
        let cmp = |op| Test::Op(Op::Cmp(op, v.clone()));
        tests.push(match key.as_str() {
            "$eq" => Test::Op(Op::Eq(v.clone())),
            "$ne" => Test::Not(vec![Test::Op(Op::Eq(v.clone()))]),
            "$gt" => cmp(CmpOp::Gt),
            "$gte" => cmp(CmpOp::Gte),
            "$lt" => cmp(CmpOp::Lt),
            "$lte" => cmp(CmpOp::Lte),
            "$in" => Test::Op(Op::In(parse_in(key, v)?)),
            "$nin" => Test::Not(vec![Test::Op(Op::In(parse_in(key, v)?))]),
            "$exists" if truthy(v) => Test::Op(Op::Exists),
            "$exists" => Test::Not(vec![Test::Op(Op::Exists)]),
            "$type" => Test::Op(Op::Type(parse_types(v)?)),
            "$all" => {
                tests.extend(parse_all(v)?);
                continue;
            }
            "$elemMatch" => match v {
                Bson::Document(d) => Test::Op(Op::ElemMatch(Box::new(ElemMatch::parse(d)?))),
                _ => return Err(CommandError::bad_value("$elemMatch needs an Object")),
            },
            "$size" => Test::Op(Op::Size(parse_size(v)?)),
            "$mod" => Test::Op(parse_mod(v)?),
            "$regex" => {
                regex = Some(v);
                continue;
            }
            "$options" => {
                let Bson::String(o) = v else {
                    return Err(CommandError::bad_value("$options has to be a string"));
                };
                options = Some(o.as_str());
                continue;
            }
            "$not" => Test::Not(match v {
                Bson::RegularExpression(r) => vec![regex_test(r)?],
                Bson::Document(d) if d.is_empty() => {
                    return Err(CommandError::bad_value("$not cannot be empty"))
                }
                Bson::Document(d) => parse_ops(d)?,
                _ => return Err(CommandError::bad_value("$not needs a regex or a document")),
            }),
            other => {
                return Err(CommandError::bad_value(format!(
                    "unknown operator: {other}"
                )))
            }
        });
    }
    let pattern = match (regex, options) {
        (None, None) => None,
        (None, Some(_)) => return Err(CommandError::bad_value("$options needs a $regex")),
        (Some(Bson::String(p)), o) => Some(Pattern::new(p, o.unwrap_or(""))?),
        (Some(Bson::RegularExpression(r)), None) => Some(Pattern::new(&r.pattern, &r.options)?),
        (Some(Bson::RegularExpression(r)), Some(o)) if r.options.is_empty() => {
            Some(Pattern::new(&r.pattern, o)?)
        }
        (Some(Bson::RegularExpression(_)), Some(_)) => {
            return Err(CommandError::bad_value(
                "options set in both $regex and $options",
            ))
        }
        (Some(_), _) => return Err(CommandError::bad_value("$regex has to be a string")),
    };
    tests.extend(pattern.map(|p| Test::Op(Op::Regex(Box::new(p)))));
    Ok(tests)
}

fn parse_in(op: &str, v: &Bson) -> CommandResult<Box<InSet>> {
    let Bson::Array(items) = v else {
        return Err(CommandError::bad_value(format!("{op} needs an array")));
    };
    let mut set = InSet::default();
    for item in items {
        match item {
            Bson::RegularExpression(r) => set.regexes.push(Pattern::new(&r.pattern, &r.options)?),
            Bson::Document(_) if is_operator_doc(item) => {
                return Err(CommandError::bad_value("cannot nest $ under $in"))
            }
            other => {
                set.has_null |= matches!(other, Bson::Null);
                set.values.insert(crate::keys::encode(other));
            }
        }
    }
    Ok(Box::new(set))
}

fn parse_all(v: &Bson) -> CommandResult<Vec<Test>> {
    let Bson::Array(items) = v else {
        return Err(CommandError::bad_value("$all needs an array"));
    };
    if items.is_empty() {
        // `$all: []` matches nothing.
        return Ok(vec![Test::Op(Op::In(Box::default()))]);
    }
    items
        .iter()
        .map(|item| match item {
            Bson::Document(d) if d.keys().next().is_some_and(|k| k == "$elemMatch") => {
                match parse_ops(d)?.pop() {
                    Some(c) if d.len() == 1 => Ok(c),
                    _ => Err(CommandError::bad_value(
                        "$all/$elemMatch has to be consistent",
                    )),
                }
            }
            Bson::Document(_) if is_operator_doc(item) => {
                Err(CommandError::bad_value("no $ expressions in $all"))
            }
            Bson::RegularExpression(r) => regex_test(r),
            other => Ok(Test::Op(Op::Eq(other.clone()))),
        })
        .collect()
}

fn parse_size(v: &Bson) -> CommandResult<i64> {
    if Num::from_bson(v).is_none() {
        return Err(CommandError::bad_value(format!(
            "$size needs a number, not {}",
            super::compare::type_name(v)
        )));
    }
    match as_integral(v) {
        Some(n) if n < 0 => Err(CommandError::bad_value(format!(
            "$size may not be negative: {v}"
        ))),
        Some(n) => Ok(n),
        None => Err(CommandError::bad_value(format!(
            "$size must be a whole number: {v}"
        ))),
    }
}

fn parse_mod(v: &Bson) -> CommandResult<Op> {
    let Bson::Array(items) = v else {
        return Err(CommandError::bad_value(
            "malformed mod, needs to be an array",
        ));
    };
    let nums: Option<Vec<i64>> = items
        .iter()
        .map(|i| Num::from_bson(i).map(Num::trunc_i64))
        .collect();
    match nums.as_deref() {
        Some([0, _]) => Err(CommandError::bad_value("divisor cannot be 0")),
        Some(&[d, r]) => Ok(Op::Mod(d, r)),
        Some(_) if items.len() < 2 => Err(CommandError::bad_value(
            "malformed mod, not enough elements",
        )),
        Some(_) => Err(CommandError::bad_value("malformed mod, too many elements")),
        None => Err(CommandError::bad_value(
            "malformed mod, divisor and remainder must be numbers",
        )),
    }
}

/// Types accepted by `$type`: numeric codes or MongoDB's aliases (incl. `"number"`).
fn parse_types(v: &Bson) -> CommandResult<Vec<i32>> {
    let one = |t: &Bson| -> CommandResult<i32> {
        if let Bson::String(name) = t {
            return type_alias(name).ok_or_else(|| {
                CommandError::bad_value(format!("Unknown type name alias: {name}"))
            });
        }
        match as_integral(t).and_then(|c| i32::try_from(c).ok()) {
            Some(c) if (1..=19).contains(&c) || c == -1 || c == 127 => Ok(c),
            Some(c) => Err(CommandError::bad_value(format!(
                "Invalid numerical type code: {c}"
            ))),
            None => Err(CommandError::type_mismatch(
                "type must be represented as a number or a string",
            )),
        }
    };
    match v {
        Bson::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

fn type_alias(name: &str) -> Option<i32> {
    Some(match name {
        "number" => 0,
        "double" => 1,
        "string" => 2,
        "object" => 3,
        "array" => 4,
        "binData" => 5,
        "undefined" => 6,
        "objectId" => 7,
        "bool" => 8,
        "date" => 9,
        "null" => 10,
        "regex" => 11,
        "dbPointer" => 12,
        "javascript" => 13,
        "symbol" => 14,
        "javascriptWithScope" => 15,
        "int" => 16,
        "timestamp" => 17,
        "long" => 18,
        "decimal" => 19,
        "minKey" => -1,
        "maxKey" => 127,
        _ => return None,
    })
}

/// The document an upsert starts from: the equality conditions of the filter
/// (top level and inside `$and`; `{$eq: v}` counts, other operators and
/// regexes do not), dotted paths expanded into nested documents. Two
/// equalities on the same or overlapping paths are `NotSingleValueField`.
pub(crate) fn equality_fields(filter: &Document) -> CommandResult<Document> {
    let mut out = Document::new();
    collect_equalities(filter, &mut out, &mut Vec::new())?;
    Ok(out)
}

fn collect_equalities<'a>(
    filter: &'a Document,
    out: &mut Document,
    seen: &mut Vec<&'a str>,
) -> CommandResult<()> {
    for (key, v) in filter {
        if key == "$and" {
            if let Bson::Array(items) = v {
                for item in items {
                    if let Bson::Document(d) = item {
                        collect_equalities(d, out, seen)?;
                    }
                }
            }
            continue;
        }
        let value = match v {
            _ if key.starts_with('$') => continue,
            Bson::RegularExpression(_) => continue,
            Bson::Document(d) if is_operator_doc(v) => match d.get("$eq") {
                Some(x) => x,
                None => continue,
            },
            other => other,
        };
        if let Some(prev) = seen.iter().find(|p| path::overlaps(p, key)) {
            let msg = if *prev == key {
                format!("cannot infer query fields to set, path '{key}' is matched twice")
            } else {
                format!(
                    "cannot infer query fields to set, both paths '{key}' and '{prev}' are matched"
                )
            };
            return Err(CommandError::new(ErrorCode::NotSingleValueField, msg));
        }
        path::set(out, key, value.clone())?;
        seen.push(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn m(filter: &Document, d: &Document) -> bool {
        Filter::parse(filter).unwrap().matches(d).unwrap()
    }

    #[test]
    fn a_failing_expr_fails_the_match() {
        let f = Filter::parse(&doc! { "$or": [{ "a": 1 }, { "$expr": { "$divide": [1, 0] } }] })
            .unwrap();
        assert!(
            f.matches(&doc! { "a": 1 }).unwrap(),
            "a clause before it decides"
        );
        assert_eq!(
            f.matches(&doc! { "a": 2 }).unwrap_err().code,
            ErrorCode::BadValue
        );
    }

    fn err(filter: &Document) -> CommandError {
        Filter::parse(filter).unwrap_err()
    }

    #[test]
    fn implicit_equality_and_arrays() {
        assert!(m(&doc! { "a": 1 }, &doc! { "a": 1.0 }));
        assert!(m(&doc! { "a": 2 }, &doc! { "a": [1, 2, 3] }));
        assert!(m(&doc! { "a": [1, 2] }, &doc! { "a": [1, 2] }));
        assert!(!m(&doc! { "a": [2, 1] }, &doc! { "a": [1, 2] }));
        assert!(m(&doc! { "a": [1] }, &doc! { "a": [[1], 2] }));
        assert!(m(
            &doc! { "a.b": 2 },
            &doc! { "a": [{ "b": 1 }, { "b": 2 }] }
        ));
        assert!(m(&doc! { "a.1": 5 }, &doc! { "a": [4, 5] }));
        assert!(m(
            &doc! { "a": { "b": 1, "c": 2 } },
            &doc! { "a": { "b": 1, "c": 2 } }
        ));
        assert!(!m(
            &doc! { "a": { "c": 2, "b": 1 } },
            &doc! { "a": { "b": 1, "c": 2 } }
        ));
        assert!(m(&doc! {}, &doc! { "x": 1 }));
    }

    #[test]
    fn null_matches_missing() {
        assert!(m(&doc! { "a": null }, &doc! { "b": 1 }));
        assert!(m(&doc! { "a": null }, &doc! { "a": null }));
        assert!(!m(&doc! { "a": null }, &doc! { "a": 0 }));
        assert!(m(
            &doc! { "a.b": null },
            &doc! { "a": [{ "b": 1 }, { "c": 1 }] }
        ));
        assert!(!m(&doc! { "a": { "$ne": null } }, &doc! {}));
        assert!(m(&doc! { "a": { "$gte": null } }, &doc! {}));
        assert!(!m(&doc! { "a": { "$gt": null } }, &doc! {}));
        assert!(m(&doc! { "a": { "$in": [null, 5] } }, &doc! {}));
    }

    #[test]
    fn comparisons_are_type_bracketed() {
        assert!(m(&doc! { "a": { "$gt": 5 } }, &doc! { "a": 6.5 }));
        assert!(!m(&doc! { "a": { "$gt": 5 } }, &doc! { "a": "z" }));
        assert!(m(&doc! { "a": { "$lt": "b" } }, &doc! { "a": "a" }));
        assert!(m(
            &doc! { "a": { "$gt": 5, "$lt": 10 } },
            &doc! { "a": [1, 20] }
        ));
        assert!(!m(
            &doc! { "a": { "$elemMatch": { "$gt": 5, "$lt": 10 } } },
            &doc! { "a": [1, 20] }
        ));
        assert!(m(
            &doc! { "a": { "$elemMatch": { "$gt": 5, "$lt": 10 } } },
            &doc! { "a": [1, 7] }
        ));
        assert!(m(
            &doc! { "a": { "$gt": bson::Bson::MinKey } },
            &doc! { "a": "x" }
        ));
    }

    #[test]
    fn negations_cover_missing_and_arrays() {
        assert!(m(&doc! { "a": { "$ne": 1 } }, &doc! {}));
        assert!(!m(&doc! { "a": { "$ne": 1 } }, &doc! { "a": [1, 2] }));
        assert!(m(&doc! { "a": { "$nin": [1, 2] } }, &doc! { "a": 3 }));
        assert!(!m(&doc! { "a": { "$nin": [1, 2] } }, &doc! { "a": [3, 2] }));
        assert!(m(
            &doc! { "a": { "$not": { "$gt": 5 } } },
            &doc! { "a": "x" }
        ));
        assert!(m(
            &doc! { "a": { "$not": bson::Regex { pattern: "^x".into(), options: String::new() } } },
            &doc! { "a": "y" }
        ));
        assert!(m(&doc! { "a": { "$exists": false } }, &doc! { "b": 1 }));
        assert!(m(
            &doc! { "a.b": { "$exists": true } },
            &doc! { "a": [{ "c": 1 }, { "b": null }] }
        ));
        assert!(m(
            &doc! { "a.b": { "$exists": false } },
            &doc! { "a": [1, 2] }
        ));
    }

    #[test]
    fn logical_operators() {
        let d = doc! { "a": 1, "b": 2 };
        assert!(m(&doc! { "$or": [{ "a": 2 }, { "b": 2 }] }, &d));
        assert!(!m(&doc! { "$and": [{ "a": 1 }, { "b": 3 }] }, &d));
        assert!(m(&doc! { "$nor": [{ "a": 2 }, { "b": 3 }] }, &d));
        assert!(m(&doc! { "a": 1, "$comment": "hi" }, &d));
        assert_eq!(err(&doc! { "$or": [] }).code, ErrorCode::BadValue);
        assert_eq!(err(&doc! { "$and": 1 }).code, ErrorCode::BadValue);
        assert_eq!(err(&doc! { "$foo": 1 }).code, ErrorCode::BadValue);
        assert_eq!(err(&doc! { "$where": "1" }).code, ErrorCode::NotImplemented);
    }

    #[test]
    fn unknown_operator_is_bad_value() {
        let e = err(&doc! { "a": { "$foo": 1 } });
        assert_eq!(
            (e.code, e.msg.as_str()),
            (ErrorCode::BadValue, "unknown operator: $foo")
        );
        assert_eq!(
            err(&doc! { "a": { "$gt": 1, "b": 1 } }).msg,
            "unknown operator: b"
        );
    }

    #[test]
    fn type_all_size_mod() {
        assert!(m(&doc! { "a": { "$type": "number" } }, &doc! { "a": 1i64 }));
        assert!(m(&doc! { "a": { "$type": 2 } }, &doc! { "a": ["x"] }));
        assert!(m(&doc! { "a": { "$type": "array" } }, &doc! { "a": [] }));
        assert!(m(
            &doc! { "a": { "$type": ["string", "int"] } },
            &doc! { "a": 3 }
        ));
        assert!(!m(&doc! { "a": { "$type": "null" } }, &doc! {}));
        assert_eq!(
            err(&doc! { "a": { "$type": "nope" } }).code,
            ErrorCode::BadValue
        );
        assert!(m(
            &doc! { "a": { "$all": [1, 3] } },
            &doc! { "a": [3, 2, 1] }
        ));
        assert!(!m(
            &doc! { "a": { "$all": [1, 4] } },
            &doc! { "a": [3, 2, 1] }
        ));
        assert!(!m(&doc! { "a": { "$all": [] } }, &doc! { "a": [1] }));
        assert!(m(
            &doc! { "a": { "$all": [{ "$elemMatch": { "b": 1 } }, { "$elemMatch": { "b": 2 } }] } },
            &doc! { "a": [{ "b": 1 }, { "b": 2 }] }
        ));
        assert!(m(&doc! { "a": { "$size": 2 } }, &doc! { "a": [1, [2, 3]] }));
        assert!(!m(&doc! { "a": { "$size": 1 } }, &doc! { "a": 1 }));
        assert_eq!(
            err(&doc! { "a": { "$size": -1 } }).code,
            ErrorCode::BadValue
        );
        assert_eq!(
            err(&doc! { "a": { "$size": 1.5 } }).code,
            ErrorCode::BadValue
        );
        assert!(m(&doc! { "a": { "$mod": [4, 1] } }, &doc! { "a": 9 }));
        assert_eq!(
            err(&doc! { "a": { "$mod": [0, 1] } }).code,
            ErrorCode::BadValue
        );
    }

    #[test]
    fn elem_match_document_form() {
        let d = doc! { "r": [{ "p": "x", "s": 5 }, { "p": "y", "s": 9 }] };
        assert!(m(
            &doc! { "r": { "$elemMatch": { "p": "y", "s": { "$gt": 8 } } } },
            &d
        ));
        assert!(!m(
            &doc! { "r": { "$elemMatch": { "p": "x", "s": { "$gt": 8 } } } },
            &d
        ));
        assert!(m(&doc! { "r.p": "x", "r.s": { "$gt": 8 } }, &d));
    }

    #[test]
    fn regexes() {
        let re = |p: &str, o: &str| bson::Regex {
            pattern: p.into(),
            options: o.into(),
        };
        assert!(m(&doc! { "a": re("^ab", "") }, &doc! { "a": "abc" }));
        assert!(m(
            &doc! { "a": { "$regex": "^AB", "$options": "i" } },
            &doc! { "a": ["x", "abc"] }
        ));
        assert!(m(
            &doc! { "a": { "$regex": re("b$", "") } },
            &doc! { "a": "ab" }
        ));
        assert!(m(
            &doc! { "a": { "$regex": "^b", "$options": "m" } },
            &doc! { "a": "a\nb" }
        ));
        assert!(m(
            &doc! { "a": { "$in": [re("^z", ""), 1] } },
            &doc! { "a": "zed" }
        ));
        assert!(!m(
            &doc! { "a": { "$eq": re("^z", "") } },
            &doc! { "a": "zed" }
        ));
        assert!(m(
            &doc! { "a": { "$eq": re("^z", "") } },
            &doc! { "a": re("^z", "") }
        ));
        assert_eq!(
            err(&doc! { "a": { "$options": "i" } }).code,
            ErrorCode::BadValue
        );
        assert_eq!(
            err(&doc! { "a": { "$regex": "(" } }).code,
            ErrorCode::BadValue
        );
        assert_eq!(
            err(&doc! { "a": { "$regex": "a", "$options": "q" } }).code,
            ErrorCode::BadValue
        );
    }

    #[test]
    fn id_equality_detects_point_lookups() {
        let f = |d: Document| Filter::parse(&d).unwrap();
        assert_eq!(f(doc! { "_id": 5 }).id_equality(), Some(&Bson::Int32(5)));
        assert_eq!(
            f(doc! { "_id": { "$eq": "x" } }).id_equality(),
            Some(&Bson::String("x".into()))
        );
        assert_eq!(
            f(doc! { "_id": { "a": 1 } }).id_equality(),
            Some(&Bson::Document(doc! { "a": 1 }))
        );
        assert!(f(doc! { "_id": { "$gt": 5 } }).id_equality().is_none());
        assert!(f(doc! { "_id": 5, "b": 1 }).id_equality().is_none());
        assert!(
            f(doc! { "_id": bson::Regex { pattern: "x".into(), options: String::new() } })
                .id_equality()
                .is_none()
        );
    }

    #[test]
    fn positional_index_finds_first_matching_element() {
        let f = Filter::parse(&doc! { "grades": { "$gte": 85 } }).unwrap();
        assert_eq!(
            f.positional_index(&doc! { "grades": [80, 85, 90] }, "grades"),
            Some(1)
        );
        let f = Filter::parse(&doc! { "g.grade": { "$gt": 5 }, "g.mean": 1 }).unwrap();
        let d = doc! { "g": [{ "grade": 9, "mean": 0 }, { "grade": 6, "mean": 1 }] };
        assert_eq!(f.positional_index(&d, "g"), Some(1));
        assert_eq!(f.positional_index(&d, "h"), None);
    }

    #[test]
    fn upsert_equality_fields() {
        let f = doc! { "a": 1, "b.c": "x", "d": { "$gt": 1 }, "e": { "$eq": 2 }, "$and": [{ "f": 3 }], "$or": [{ "g": 1 }] };
        assert_eq!(
            equality_fields(&f).unwrap(),
            doc! { "a": 1, "b": { "c": "x" }, "e": 2, "f": 3 }
        );
        let e = equality_fields(&doc! { "a": 1, "$and": [{ "a": 2 }] }).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotSingleValueField);
        let e = equality_fields(&doc! { "a": { "b": 1 }, "a.b": 1 }).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotSingleValueField);
    }
}
