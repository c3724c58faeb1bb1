//! Numeric BSON values (`int`, `long`, `double`, `decimal`): exact cross-type
//! comparison and arithmetic with MongoDB's type promotion.

use std::cmp::Ordering;

use bson::{Bson, Decimal128};

/// A BSON number. Decimal128 values are carried as `f64` (arithmetic on them is
/// approximate) but keep their decimal type in results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    /// BSON `int`.
    Int(i32),
    /// BSON `long`.
    Long(i64),
    /// BSON `double`.
    Double(f64),
    /// BSON `decimal` (approximated).
    Decimal(f64),
}

/// 2^63 as `f64`: the first double above every `i64`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

impl Num {
    /// The number held by `b`, or `None` when `b` is not numeric.
    pub(crate) fn from_bson(b: &Bson) -> Option<Num> {
        match b {
            Bson::Int32(i) => Some(Num::Int(*i)),
            Bson::Int64(i) => Some(Num::Long(*i)),
            Bson::Double(d) => Some(Num::Double(*d)),
            Bson::Decimal128(d) => Some(Num::Decimal(d.to_string().parse().unwrap_or(f64::NAN))),
            _ => None,
        }
    }

    /// Back to BSON, keeping the numeric type.
    pub(crate) fn to_bson(self) -> Bson {
        match self {
            Num::Int(i) => Bson::Int32(i),
            Num::Long(i) => Bson::Int64(i),
            Num::Double(d) => Bson::Double(d),
            Num::Decimal(d) => Bson::Decimal128(
                format!("{d:e}")
                    .parse()
                    .unwrap_or_else(|_| Decimal128::from_bytes([0; 16])),
            ),
        }
    }

    /// The value as a double (large longs round).
    pub(crate) fn to_f64(self) -> f64 {
        match self {
            Num::Int(i) => f64::from(i),
            #[allow(clippy::cast_precision_loss)]
            Num::Long(i) => i as f64,
            Num::Double(d) | Num::Decimal(d) => d,
        }
    }

    /// The zero of the same numeric type.
    pub(crate) fn zero_like(self) -> Num {
        match self {
            Num::Int(_) => Num::Int(0),
            Num::Long(_) => Num::Long(0),
            Num::Double(_) => Num::Double(0.0),
            Num::Decimal(_) => Num::Decimal(0.0),
        }
    }

    /// True for a zero of any type.
    pub(crate) fn is_zero(self) -> bool {
        self.to_f64() == 0.0
    }

    /// The value truncated toward zero (saturating at the `i64` range; NaN is 0).
    #[allow(clippy::cast_possible_truncation)]
    pub(crate) fn trunc_i64(self) -> i64 {
        match self {
            Num::Int(i) => i64::from(i),
            Num::Long(i) => i,
            Num::Double(d) | Num::Decimal(d) => d as i64,
        }
    }

    fn as_int(self) -> Option<i64> {
        match self {
            Num::Int(i) => Some(i64::from(i)),
            Num::Long(i) => Some(i),
            Num::Double(_) | Num::Decimal(_) => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Num::Int(_) => 0,
            Num::Long(_) => 1,
            Num::Double(_) => 2,
            Num::Decimal(_) => 3,
        }
    }

    fn arith(self, o: Num, int: fn(i64, i64) -> Option<i64>, float: fn(f64, f64) -> f64) -> Num {
        let rank = self.rank().max(o.rank());
        if let (Some(a), Some(b)) = (self.as_int(), o.as_int()) {
            match int(a, b) {
                Some(r) if rank == 0 => i32::try_from(r).map_or(Num::Long(r), Num::Int),
                Some(r) => Num::Long(r),
                None => Num::Double(float(self.to_f64(), o.to_f64())),
            }
        } else if rank == 3 {
            Num::Decimal(float(self.to_f64(), o.to_f64()))
        } else {
            Num::Double(float(self.to_f64(), o.to_f64()))
        }
    }

    /// Sum; `int` overflows into `long`, `long` into `double`; the widest type wins.
    pub(crate) fn add(self, o: Num) -> Num {
        self.arith(o, i64::checked_add, |a, b| a + b)
    }

    /// Difference, promoted like [`Num::add`].
    pub(crate) fn sub(self, o: Num) -> Num {
        self.arith(o, i64::checked_sub, |a, b| a - b)
    }

    /// Product, promoted like [`Num::add`].
    pub(crate) fn mul(self, o: Num) -> Num {
        self.arith(o, i64::checked_mul, |a, b| a * b)
    }

    /// Exact numeric order across types; NaN is below every other number and equal to itself.
    pub(crate) fn compare(self, o: Num) -> Ordering {
        match (self.as_int(), o.as_int()) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(a), None) => cmp_int_float(a, o.to_f64()),
            (None, Some(b)) => cmp_int_float(b, self.to_f64()).reverse(),
            (None, None) => cmp_f64(self.to_f64(), o.to_f64()),
        }
    }
}

fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

#[allow(clippy::cast_possible_truncation)]
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() || f < -TWO_POW_63 {
        return Ordering::Greater;
    }
    if f >= TWO_POW_63 {
        return Ordering::Less;
    }
    let t = f.trunc();
    // In range, so the cast is exact.
    i.cmp(&(t as i64)).then_with(|| cmp_f64(t, f))
}

/// The value of `b` when it is a whole number of any numeric type that fits an `i64`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn as_integral(b: &Bson) -> Option<i64> {
    match Num::from_bson(b)? {
        Num::Int(i) => Some(i64::from(i)),
        Num::Long(i) => Some(i),
        Num::Double(d) | Num::Decimal(d) => {
            (d.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&d)).then_some(d as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_type_comparison_is_exact() {
        assert_eq!(Num::Int(1).compare(Num::Double(1.0)), Ordering::Equal);
        assert_eq!(
            Num::Long(i64::MAX).compare(Num::Double(TWO_POW_63)),
            Ordering::Less
        );
        assert_eq!(Num::Long(3).compare(Num::Double(2.5)), Ordering::Greater);
        assert_eq!(Num::Long(-3).compare(Num::Double(-2.5)), Ordering::Less);
        assert_eq!(
            Num::Double(f64::NAN).compare(Num::Long(i64::MIN)),
            Ordering::Less
        );
        assert_eq!(
            Num::Double(f64::NAN).compare(Num::Double(f64::NAN)),
            Ordering::Equal
        );
    }

    #[test]
    fn arithmetic_promotes_like_mongodb() {
        assert_eq!(Num::Int(2).add(Num::Int(3)), Num::Int(5));
        assert_eq!(
            Num::Int(i32::MAX).add(Num::Int(1)),
            Num::Long(i64::from(i32::MAX) + 1)
        );
        assert_eq!(
            Num::Long(i64::MAX).add(Num::Int(1)).to_bson(),
            Bson::Double(TWO_POW_63)
        );
        assert_eq!(Num::Int(2).mul(Num::Double(1.5)), Num::Double(3.0));
        let dec = Num::Decimal(1.5).add(Num::Int(1)).to_bson();
        assert!(matches!(dec, Bson::Decimal128(_)));
        assert_eq!(Num::from_bson(&dec), Some(Num::Decimal(2.5)));
    }

    #[test]
    fn integral_values() {
        assert_eq!(as_integral(&Bson::Double(3.0)), Some(3));
        assert_eq!(as_integral(&Bson::Double(3.5)), None);
        assert_eq!(as_integral(&Bson::String("3".into())), None);
    }
}
