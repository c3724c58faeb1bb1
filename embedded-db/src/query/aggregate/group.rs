//! `$group`: groups by an `_id` expression, with the accumulators `$sum`, `$avg`, `$min`,
//! `$max`, `$first`, `$last`, `$push`, `$addToSet` and `$count`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bson::{Bson, Document};

use crate::error::{CommandError, CommandResult, ErrorCode};
use crate::limits::{approx_value_size, Deadline, MemoryBudget};
use crate::query::compare::{compare, values_equal};
use crate::query::expr::Expr;
use crate::query::num::Num;

/// `$group`: the `_id` expression and each output field's accumulator over its expression.
#[derive(Debug, Clone)]
pub(super) struct Group {
    id: Expr,
    fields: Vec<(String, Acc, Expr)>,
}

#[derive(Debug, Clone, Copy)]
enum Acc {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
    Count,
}

/// Running state of one accumulator in one group.
#[derive(Debug)]
enum State {
    Sum(Num),
    Avg(Num, u64),
    /// The best value so far; `Ordering::Less` keeps the minimum.
    Best(Ordering, Option<Bson>),
    First(Option<Bson>),
    Last(Bson),
    Push(Vec<Bson>),
    Set(Vec<Bson>),
    Count(i64),
}

/// A group key ordered (and so merged) by BSON comparison: `1` and `1.0` are one group.
#[derive(Debug)]
struct GroupKey(Bson);

impl PartialEq for GroupKey {
    fn eq(&self, other: &Self) -> bool {
        values_equal(&self.0, &other.0)
    }
}

impl Eq for GroupKey {}

impl PartialOrd for GroupKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GroupKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

impl Group {
    /// Parses the `$group` specification (`GroupSpecification` or `UnknownGroupOperator` for a
    /// malformed one, as mongod).
    pub(super) fn parse(arg: &Bson) -> CommandResult<Group> {
        let spec_error = |msg: String| CommandError::new(ErrorCode::GroupSpecification, msg);
        let Bson::Document(spec) = arg else {
            return Err(spec_error(
                "a group's fields must be specified in an object".to_owned(),
            ));
        };
        let id =
            Expr::parse(spec.get("_id").ok_or_else(|| {
                spec_error("a group specification must include an _id".to_owned())
            })?)?;
        let mut fields = Vec::new();
        for (k, v) in spec.iter().filter(|(k, _)| *k != "_id") {
            if k.contains('.') || k.starts_with('$') {
                return Err(spec_error(format!("the group aggregate field name '{k}' cannot be an operator name or contain '.'")));
            }
            let (name, arg) = match v {
                Bson::Document(d) if d.len() == 1 => {
                    d.iter().next().ok_or_else(|| spec_error(String::new()))?
                }
                _ => {
                    return Err(spec_error(format!(
                        "The field '{k}' must be an accumulator object"
                    )))
                }
            };
            let acc = match name.as_str() {
                "$sum" => Acc::Sum,
                "$avg" => Acc::Avg,
                "$min" => Acc::Min,
                "$max" => Acc::Max,
                "$first" => Acc::First,
                "$last" => Acc::Last,
                "$push" => Acc::Push,
                "$addToSet" => Acc::AddToSet,
                "$count" => Acc::Count,
                _ => {
                    return Err(CommandError::new(
                        ErrorCode::UnknownGroupOperator,
                        format!("unknown group operator '{name}'"),
                    ))
                }
            };
            if matches!(acc, Acc::Count) && !matches!(arg, Bson::Document(d) if d.is_empty()) {
                return Err(spec_error(
                    "$count takes no arguments, i.e. $count:{}".to_owned(),
                ));
            }
            if matches!(arg, Bson::Array(_)) {
                return Err(spec_error(format!(
                    "The {name} accumulator is a unary operator"
                )));
            }
            fields.push((k.clone(), acc, Expr::parse(arg)?));
        }
        Ok(Group { id, fields })
    }

    /// One document per distinct `_id` value, in first-seen order.
    pub(super) fn run(
        &self,
        docs: &[Document],
        deadline: &Deadline,
    ) -> CommandResult<Vec<Document>> {
        let mut groups = Groups::new(self);
        for d in docs {
            deadline.check()?;
            groups.add(d)?;
        }
        Ok(groups.finish())
    }
}

/// The groups of a `$group` stage being built, one input document at a time.
pub(super) struct Groups<'g> {
    group: &'g Group,
    index: BTreeMap<GroupKey, usize>,
    groups: Vec<(Bson, Vec<State>)>,
    /// Groups and the values `$push`/`$addToSet` collect are what the stage holds.
    budget: MemoryBudget,
}

impl<'g> Groups<'g> {
    /// No groups yet.
    pub(super) fn new(group: &'g Group) -> Self {
        Self {
            group,
            index: BTreeMap::new(),
            groups: Vec::new(),
            budget: MemoryBudget::new("$group"),
        }
    }

    /// Adds `d` to its group, within the stage's memory budget.
    pub(super) fn add(&mut self, d: &Document) -> CommandResult<()> {
        let key = self.group.id.eval(d)?.unwrap_or(Bson::Null);
        let slot = match self.index.get(&GroupKey(key.clone())) {
            Some(&i) => i,
            None => {
                self.budget.add_bytes(approx_value_size(&key) + 64)?;
                let states = self
                    .group
                    .fields
                    .iter()
                    .map(|(_, acc, _)| State::new(*acc))
                    .collect();
                self.groups.push((key.clone(), states));
                self.index.insert(GroupKey(key), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let Some((_, states)) = self.groups.get_mut(slot) else {
            return Ok(());
        };
        for ((_, _, e), state) in self.group.fields.iter().zip(states.iter_mut()) {
            let value = if matches!(state, State::Count(_)) {
                None
            } else {
                e.eval(d)?
            };
            if let (State::Push(_) | State::Set(_), Some(v)) = (&state, &value) {
                self.budget.add_bytes(approx_value_size(v))?;
            }
            state.add(value);
        }
        Ok(())
    }

    /// One document per group, in first-seen order.
    pub(super) fn finish(self) -> Vec<Document> {
        let fields = &self.group.fields;
        self.groups
            .into_iter()
            .map(|(key, states)| {
                let mut out = Document::new();
                out.insert("_id", key);
                for ((name, _, _), state) in fields.iter().zip(states) {
                    out.insert(name.clone(), state.finish());
                }
                out
            })
            .collect()
    }
}

impl State {
    fn new(acc: Acc) -> State {
        match acc {
            Acc::Sum => State::Sum(Num::Int(0)),
            Acc::Avg => State::Avg(Num::Int(0), 0),
            Acc::Min => State::Best(Ordering::Less, None),
            Acc::Max => State::Best(Ordering::Greater, None),
            Acc::First => State::First(None),
            Acc::Last => State::Last(Bson::Null),
            Acc::Push => State::Push(Vec::new()),
            Acc::AddToSet => State::Set(Vec::new()),
            Acc::Count => State::Count(0),
        }
    }

    fn add(&mut self, v: Option<Bson>) {
        let num = v.as_ref().and_then(Num::from_bson);
        match self {
            State::Sum(s) => *s = num.map_or(*s, |n| s.add(n)),
            State::Avg(s, c) => {
                if let Some(n) = num {
                    *s = s.add(n);
                    *c += 1;
                }
            }
            State::Best(want, best) => {
                let Some(v) = v.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) else {
                    return;
                };
                if best.as_ref().is_none_or(|b| compare(&v, b) == *want) {
                    *best = Some(v);
                }
            }
            State::Push(items) => items.extend(v),
            State::Set(items) => {
                if let Some(v) = v.filter(|v| !items.iter().any(|i| values_equal(i, v))) {
                    items.push(v);
                }
            }
            State::First(f) => {
                if f.is_none() {
                    *f = Some(v.unwrap_or(Bson::Null));
                }
            }
            State::Last(l) => *l = v.unwrap_or(Bson::Null),
            State::Count(c) => *c += 1,
        }
    }

    fn finish(self) -> Bson {
        match self {
            State::Sum(s) => s.to_bson(),
            State::Avg(_, 0) => Bson::Null,
            #[allow(clippy::cast_precision_loss)]
            State::Avg(s, c) => match s {
                Num::Decimal(d) => Num::Decimal(d / c as f64).to_bson(),
                other => Bson::Double(other.to_f64() / c as f64),
            },
            State::Best(_, b) => b.unwrap_or(Bson::Null),
            State::First(f) => f.unwrap_or(Bson::Null),
            State::Last(l) => l,
            State::Push(items) | State::Set(items) => Bson::Array(items),
            State::Count(c) => i32::try_from(c).map_or(Bson::Int64(c), Bson::Int32),
        }
    }
}

#[cfg(test)]
mod tests {
    use bson::{bson, doc, Bson};

    use crate::error::ErrorCode;
    use crate::query::aggregate::tests::{run, sales};

    #[test]
    fn group_accumulators() {
        let p = bson!([
            { "$group": {
                "_id": "$item",
                "total": { "$sum": { "$multiply": ["$qty", "$price"] } },
                "avg": { "$avg": "$qty" },
                "min": { "$min": "$price" },
                "max": { "$max": "$price" },
                "first": { "$first": "$qty" },
                "last": { "$last": "$qty" },
                "qtys": { "$push": "$qty" },
                "prices": { "$addToSet": "$price" },
                "n": { "$count": {} },
            } },
            { "$sort": { "_id": 1 } }
        ]);
        let out = run(p, sales()).unwrap();
        assert_eq!(
            out[0],
            doc! { "_id": "a", "total": 72.5, "avg": 3.5, "min": 10, "max": 10.5, "first": 2, "last": 5,
            "qtys": [2, 5], "prices": [10, 10.5], "n": 2 }
        );
        assert_eq!(out.len(), 3);
        let p = bson!([{ "$group": { "_id": null, "s": { "$sum": "$qty" }, "a": { "$avg": "$none" } } }]);
        assert_eq!(
            run(p, sales()).unwrap(),
            vec![doc! { "_id": null, "s": 9, "a": null }]
        );
        let p = bson!([{ "$group": { "_id": { "i": "$item" }, "c": { "$sum": 1 } } }, { "$match": { "_id.i": "a" } }]);
        assert_eq!(
            run(p, sales()).unwrap(),
            vec![doc! { "_id": { "i": "a" }, "c": 2 }]
        );
    }

    #[test]
    fn group_errors() {
        let e = |g: Bson| run(bson!([{ "$group": g }]), vec![]).unwrap_err().code;
        assert_eq!(
            e(bson!({ "n": { "$sum": 1 } })),
            ErrorCode::GroupSpecification
        );
        assert_eq!(
            e(bson!({ "_id": 1, "n": { "$foo": 1 } })),
            ErrorCode::UnknownGroupOperator
        );
        assert_eq!(
            e(bson!({ "_id": 1, "n": 5 })),
            ErrorCode::GroupSpecification
        );
    }
}
