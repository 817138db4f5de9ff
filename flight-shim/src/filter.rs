//! Attribute filters from tickets: `[{"field": F, "op": OP, "value": V}, ...]`, ANDed.
//!
//! Each filter is compiled once against the collection's schema (unknown column, unsupported
//! type or operator, a value that does not convert: an error before any data is read), then
//! evaluated on record batches with Arrow's comparison kernels. A null compares as false.

use arrow_arith::boolean::and;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, Scalar, StringArray,
    UInt64Array,
};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_ord::cmp;
use arrow_schema::{DataType, Schema};
use serde::Deserialize;
use serde_json::Value;

/// Most filters one request may carry.
pub const MAX_FILTERS: usize = 64;

/// A filter as it arrives in JSON.
#[derive(Clone, Debug, Deserialize)]
pub struct FilterSpec {
    /// The column (`field`, or `column`).
    #[serde(alias = "column")]
    pub field: String,
    /// The operator: `=`/`==`/`eq`, `!=`/`ne`/`neq`, `<`/`lt`, `<=`/`le`/`lte`, `>`/`gt`,
    /// `>=`/`ge`/`gte`.
    #[serde(alias = "operator")]
    pub op: String,
    /// The value: a number, string or boolean.
    pub value: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

fn parse_op(s: &str) -> Option<Op> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "=" | "==" | "eq" => Op::Eq,
        "!=" | "<>" | "ne" | "neq" => Op::Ne,
        "<" | "lt" => Op::Lt,
        "<=" | "le" | "lte" => Op::Le,
        ">" | "gt" => Op::Gt,
        ">=" | "ge" | "gte" => Op::Ge,
        _ => return None,
    })
}

/// One compiled filter: the column is cast to `as_type` (when it is not already) and compared
/// with `value`, a one-element array of that type.
#[derive(Debug)]
struct Compiled {
    column: String,
    op: Op,
    as_type: DataType,
    value: ArrayRef,
}

/// Filters compiled against a schema, ready to apply to batches that carry their columns.
#[derive(Debug, Default)]
pub struct Filters {
    parts: Vec<Compiled>,
}

fn is_int(dt: &DataType) -> bool {
    dt.is_integer()
}

fn is_string(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn compile(spec: &FilterSpec, schema: &Schema) -> Result<Compiled, String> {
    let op = parse_op(&spec.op).ok_or_else(|| {
        format!(
            "filter on {:?}: unknown operator {:?}; expected one of =, !=, <, <=, >, >=",
            spec.field, spec.op
        )
    })?;
    let field = schema.field_with_name(&spec.field).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        format!("filter on unknown column {:?}; the columns are {names:?}", spec.field)
    })?;
    let dt = field.data_type();
    let bad = || {
        format!(
            "filter on {:?} (type {dt}): cannot compare with {}; numeric columns take numbers, \
             string columns strings, boolean columns booleans, temporal columns strings",
            spec.field, spec.value
        )
    };
    let (as_type, value): (DataType, ArrayRef) = match &spec.value {
        Value::Number(n) if is_int(dt) && n.is_u64() && dt.is_unsigned_integer() => (
            DataType::UInt64,
            std::sync::Arc::new(UInt64Array::from(vec![n.as_u64().expect("u64")])),
        ),
        Value::Number(n) if is_int(dt) && n.is_i64() && dt.is_signed_integer() => {
            (DataType::Int64, std::sync::Arc::new(Int64Array::from(vec![n.as_i64().expect("i64")])))
        }
        Value::Number(n) if matches!(dt, DataType::Float16 | DataType::Float32) => {
            // Compare in the column's own type: a float32 column holds 0.1 as the f32 nearest
            // to it, which as f64 is 0.100000001…, so `= 0.1` would never match in f64. No
            // value of the column lies strictly between the literal and its rounding.
            let v = n.as_f64().ok_or_else(bad)?;
            let one: ArrayRef = std::sync::Arc::new(Float64Array::from(vec![v]));
            let v = arrow_cast::cast(&one, dt).map_err(|e| format!("{}: {e}", bad()))?;
            (dt.clone(), v)
        }
        Value::Number(n) if dt.is_numeric() => {
            let v = n.as_f64().ok_or_else(bad)?;
            (DataType::Float64, std::sync::Arc::new(Float64Array::from(vec![v])))
        }
        Value::String(s) if is_string(dt) || dt.is_temporal() => {
            let one: ArrayRef = std::sync::Arc::new(StringArray::from(vec![s.as_str()]));
            let opts = CastOptions { safe: false, ..CastOptions::default() };
            let v = cast_with_options(&one, dt, &opts).map_err(|e| format!("{}: {e}", bad()))?;
            (dt.clone(), v)
        }
        Value::Bool(b) if dt == &DataType::Boolean => {
            (DataType::Boolean, std::sync::Arc::new(BooleanArray::from(vec![*b])))
        }
        _ => return Err(bad()),
    };
    Ok(Compiled { column: spec.field.clone(), op, as_type, value })
}

impl Filters {
    /// Compiles `specs` against `schema`.
    ///
    /// # Errors
    /// A message naming the filter that cannot apply and why.
    pub fn compile(specs: &[FilterSpec], schema: &Schema) -> Result<Filters, String> {
        if specs.len() > MAX_FILTERS {
            return Err(format!("{} filters exceed the limit of {MAX_FILTERS}", specs.len()));
        }
        let parts = specs.iter().map(|s| compile(s, schema)).collect::<Result<_, _>>()?;
        Ok(Filters { parts })
    }

    /// Whether there are no filters.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The columns the filters read.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|c| c.column.as_str())
    }

    /// The rows of `batch` that pass every filter (`batch` must hold the filter columns).
    ///
    /// # Errors
    /// An Arrow kernel failure, as text.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        if self.parts.is_empty() {
            return Ok(batch.clone());
        }
        let mut mask: Option<BooleanArray> = None;
        for c in &self.parts {
            let col = batch
                .column_by_name(&c.column)
                .ok_or_else(|| format!("filter column {:?} was not read", c.column))?;
            let col = if col.data_type() == &c.as_type {
                col.clone()
            } else {
                arrow_cast::cast(col, &c.as_type).map_err(|e| e.to_string())?
            };
            let rhs = Scalar::new(c.value.clone());
            let m = match c.op {
                Op::Eq => cmp::eq(&col, &rhs),
                Op::Ne => cmp::neq(&col, &rhs),
                Op::Lt => cmp::lt(&col, &rhs),
                Op::Le => cmp::lt_eq(&col, &rhs),
                Op::Gt => cmp::gt(&col, &rhs),
                Op::Ge => cmp::gt_eq(&col, &rhs),
            }
            .map_err(|e| e.to_string())?;
            mask = Some(match mask {
                None => m,
                Some(prev) => and(&prev, &m).map_err(|e| e.to_string())?,
            });
        }
        let mask = mask.expect("at least one filter");
        arrow_select::filter::filter_record_batch(batch, &mask).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, UInt8Array};
    use arrow_schema::Field;
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("u", DataType::UInt8, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), Some(5), None, Some(-3)])),
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), Some("b"), None])),
                Arc::new(UInt8Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap()
    }

    fn spec(field: &str, op: &str, value: Value) -> FilterSpec {
        FilterSpec { field: field.into(), op: op.into(), value }
    }

    fn rows(f: &[FilterSpec]) -> Vec<u8> {
        let b = batch();
        let out = Filters::compile(f, &b.schema()).unwrap().apply(&b).unwrap();
        let u = out.column_by_name("u").unwrap();
        let u = u.as_any().downcast_ref::<UInt8Array>().unwrap();
        u.values().to_vec()
    }

    #[test]
    fn each_operator_selects_the_right_rows_and_nulls_never_match() {
        assert_eq!(rows(&[spec("n", ">", 0.into())]), vec![1, 2]);
        assert_eq!(rows(&[spec("n", ">=", 5.into())]), vec![2]);
        assert_eq!(rows(&[spec("n", "<", 1.into())]), vec![4]);
        assert_eq!(rows(&[spec("n", "<=", 1.into())]), vec![1, 4]);
        assert_eq!(rows(&[spec("n", "!=", 1.into())]), vec![2, 4]);
        assert_eq!(rows(&[spec("n", "=", Value::from(5.0))]), vec![2]);
        assert_eq!(rows(&[spec("n", "<", Value::from(1.5))]), vec![1, 4]);
        assert_eq!(rows(&[spec("s", "eq", "b".into())]), vec![2, 3]);
        assert_eq!(rows(&[spec("s", "eq", "b".into()), spec("u", "gt", 2.into())]), vec![3]);
        assert_eq!(rows(&[spec("u", "<", Value::from(-1))]), Vec::<u8>::new());
    }

    #[test]
    fn float32_columns_compare_in_float32_so_a_stored_literal_matches_itself() {
        let schema = Schema::new(vec![Field::new("price", DataType::Float32, true)]);
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(arrow_array::Float32Array::from(vec![0.1f32, 0.2, 0.05, 1.0]))],
        )
        .unwrap();
        let count = |op: &str, v: Value| {
            let f = Filters::compile(&[spec("price", op, v)], &b.schema()).unwrap();
            f.apply(&b).unwrap().num_rows()
        };
        assert_eq!(count("=", Value::from(0.1)), 1);
        assert_eq!(count("<=", Value::from(0.1)), 2);
        assert_eq!(count("<", Value::from(0.1)), 1);
        assert_eq!(count(">=", Value::from(0.2)), 2);
        assert_eq!(count("!=", Value::from(0.2)), 3);
        assert_eq!(count("=", Value::from(1)), 1, "integer literals too");
        assert_eq!(count("<", Value::from(1e300)), 4, "a literal beyond f32 is infinity");
    }

    #[test]
    fn unknown_columns_operators_and_mismatched_values_are_refused() {
        let s = batch().schema();
        let e = Filters::compile(&[spec("zz", "=", 1.into())], &s).unwrap_err();
        assert!(e.contains("unknown column \"zz\""), "{e}");
        let e = Filters::compile(&[spec("n", "~", 1.into())], &s).unwrap_err();
        assert!(e.contains("unknown operator"), "{e}");
        let e = Filters::compile(&[spec("n", "=", "x".into())], &s).unwrap_err();
        assert!(e.contains("cannot compare"), "{e}");
        let e = Filters::compile(&[spec("s", "=", 3.into())], &s).unwrap_err();
        assert!(e.contains("cannot compare"), "{e}");
    }
}
