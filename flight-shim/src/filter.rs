//! Attribute filters from tickets: Longbow's list `[{"field": F, "op": OP, "value": V}, ...]`,
//! ANDed, whose elements may also be Quiver's nested forms: `{"and": [...]}`, `{"or": [...]}`,
//! `{"not": FILTER}`, `{"field": F, "op": "in", "value": [V, ...]}` (and `not_in`), and
//! `{"field": F, "op": "is_null"}` (and `is_not_null`).
//!
//! Longbow's clients send every value as a string (`"value": "100"` on an integer column): a
//! string compared with a numeric or boolean column is parsed as that column's type, and a
//! number compared with a string column is compared as its JSON text; only a value that does
//! not parse is refused, naming the column, the value and the type.
//!
//! The JSON is translated into the engine's [`Predicate`] (an AND of comparisons), which the
//! engine compiles against the collection's schema (unknown column, unsupported type or operator,
//! a value that does not convert: an error before any data is read) and applies inside a search
//! as candidates enter its top-k. Scans apply the same compiled filter to each batch. A null
//! compares as false.

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, DataType, Schema};
use quiver_engine::{CompareOp, Filter, FilterError, Literal, MAX_PREDICATE_DEPTH, Predicate};
use serde::Deserialize;
use serde_json::Value;

/// Most filters one request may carry.
pub const MAX_FILTERS: usize = 64;

/// A filter as it arrives in JSON: a comparison `{"field", "op", "value"}` (`column` and
/// `operator` are accepted too), or a nested form (see the module documentation). Checked when
/// translated ([`to_predicate`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(transparent)]
pub struct FilterSpec(pub Value);

impl FilterSpec {
    /// The comparison `field op value`.
    pub fn compare(field: &str, op: &str, value: Value) -> FilterSpec {
        let mut o = serde_json::Map::new();
        o.insert("field".into(), field.into());
        o.insert("op".into(), op.into());
        o.insert("value".into(), value);
        FilterSpec(Value::Object(o))
    }
}

/// A comparison's parts, as written.
#[derive(Debug, Deserialize)]
struct Comparison {
    #[serde(alias = "column")]
    field: String,
    #[serde(alias = "operator")]
    op: String,
    #[serde(default)]
    value: Value,
}

fn parse_op(s: &str) -> Option<CompareOp> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "=" | "==" | "eq" => CompareOp::Eq,
        "!=" | "<>" | "ne" | "neq" => CompareOp::Ne,
        "<" | "lt" => CompareOp::Lt,
        "<=" | "le" | "lte" => CompareOp::Le,
        ">" | "gt" => CompareOp::Gt,
        ">=" | "ge" | "gte" => CompareOp::Ge,
        _ => return None,
    })
}

/// Why a ticket's filters cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketFilterError {
    /// More filters than [`MAX_FILTERS`].
    #[error("{count} filters exceed the limit of {MAX_FILTERS}")]
    TooMany {
        /// Filters asked for.
        count: usize,
    },
    /// The operator is not one this protocol knows.
    #[error(
        "filter on {field:?}: unknown operator {op:?}; expected one of =, !=, <, <=, >, >=, in, not_in, is_null, is_not_null"
    )]
    UnknownOperator {
        /// The column.
        field: String,
        /// The operator, as written.
        op: String,
    },
    /// A JSON number no literal type holds.
    #[error("filter on {field:?}: the number {number} is out of range")]
    OutOfRange {
        /// The column.
        field: String,
        /// The number, as written.
        number: String,
    },
    /// A value that is not a number, string or boolean.
    #[error(
        "filter on {field:?}: cannot compare with {value}; numeric columns take numbers, string columns strings, boolean columns booleans, temporal columns strings"
    )]
    Value {
        /// The column.
        field: String,
        /// The value, as written.
        value: String,
    },
    /// A filter that is none of the accepted forms.
    #[error(
        "malformed filter {filter}: expected {{\"field\", \"op\", \"value\"}}, {{\"and\": [...]}}, {{\"or\": [...]}} or {{\"not\": FILTER}}{}",
        if reason.is_empty() { String::new() } else { format!(" ({reason})") }
    )]
    Shape {
        /// The filter, as written (cut to 200 bytes).
        filter: String,
        /// What is wrong, if more is known.
        reason: String,
    },
    /// `in` / `not_in` without a list of values.
    #[error("filter on {field:?}: {op:?} takes a non-empty list of values")]
    NeedsList {
        /// The column.
        field: String,
        /// The operator.
        op: String,
    },
    /// Nested deeper than the engine allows.
    #[error("filters nested deeper than {MAX_PREDICATE_DEPTH}")]
    TooDeep,
    /// A string value that does not parse as its numeric or boolean column's type.
    #[error("filter on {field:?} (type {data_type}): cannot parse {value:?} as {data_type}")]
    Unparsable {
        /// The column.
        field: String,
        /// The value, as written.
        value: String,
        /// The column's type.
        data_type: DataType,
    },
    /// The engine cannot use the predicate on this collection.
    #[error(transparent)]
    Engine(#[from] FilterError),
    /// A batch handed to [`Filters::apply`] lacks a filter column.
    #[error("filter column {0:?} was not read")]
    ColumnNotRead(String),
    /// An Arrow kernel failed while filtering.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// The literal for `value` compared with `spec`'s column, converted as Longbow converts values
/// when the column is of type `column` (`None`: a column the schema lacks, left for the engine
/// to refuse by name).
fn literal(
    spec: &Comparison,
    value: &Value,
    column: Option<&DataType>,
) -> Result<Literal, TicketFilterError> {
    match (value, column) {
        (Value::String(s), Some(dt)) if dt.is_numeric() || dt == &DataType::Boolean => {
            return parse_literal(&spec.field, s, dt);
        }
        (Value::Number(n), Some(dt)) if is_string_type(dt) => {
            return Ok(Literal::Str(n.to_string()));
        }
        (Value::Bool(b), Some(dt)) if is_string_type(dt) => {
            return Ok(Literal::Str(b.to_string()));
        }
        _ => {}
    }
    Ok(match value {
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Literal::UInt(u),
            (None, Some(i), _) => Literal::Int(i),
            (None, None, Some(f)) => Literal::Float(f),
            _ => {
                return Err(TicketFilterError::OutOfRange {
                    field: spec.field.clone(),
                    number: n.to_string(),
                });
            }
        },
        Value::String(s) => Literal::Str(s.clone()),
        Value::Bool(b) => Literal::Bool(*b),
        other => {
            return Err(TicketFilterError::Value {
                field: spec.field.clone(),
                value: other.to_string(),
            });
        }
    })
}

fn is_string_type(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// A string value parsed as the numeric or boolean type `dt`.
fn parse_literal(field: &str, text: &str, dt: &DataType) -> Result<Literal, TicketFilterError> {
    let t = text.trim();
    let parsed = if dt == &DataType::Boolean {
        match t.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(Literal::Bool(true)),
            "false" | "0" => Some(Literal::Bool(false)),
            _ => None,
        }
    } else if let Ok(u) = t.parse::<u64>() {
        Some(Literal::UInt(u))
    } else if let Ok(i) = t.parse::<i64>() {
        Some(Literal::Int(i))
    } else {
        // A fraction on an integer column compares in f64, as a JSON number would.
        t.parse::<f64>().ok().filter(|f| !f.is_nan()).map(Literal::Float)
    };
    parsed.ok_or_else(|| TicketFilterError::Unparsable {
        field: field.to_string(),
        value: text.to_string(),
        data_type: dt.clone(),
    })
}

/// The engine predicate for `specs` (all must hold) on a collection whose Arrow schema is
/// `schema`, or `None` for no filter.
///
/// # Errors
/// Too many filters, an unknown operator, a value that is not a number, string or boolean, or
/// a string that does not parse as its column's type.
pub fn to_predicate(
    specs: &[FilterSpec],
    schema: &Schema,
) -> Result<Option<Predicate>, TicketFilterError> {
    if specs.len() > MAX_FILTERS {
        return Err(TicketFilterError::TooMany { count: specs.len() });
    }
    let parts = specs
        .iter()
        .map(|s| node(&s.0, schema, 0))
        .collect::<Result<Vec<_>, TicketFilterError>>()?;
    Ok(match parts.len() {
        0 => None,
        1 => parts.into_iter().next(),
        _ => Some(Predicate::And(parts)),
    })
}

/// One filter (at nesting `depth`) as a predicate.
fn node(v: &Value, schema: &Schema, depth: usize) -> Result<Predicate, TicketFilterError> {
    if depth > MAX_PREDICATE_DEPTH {
        return Err(TicketFilterError::TooDeep);
    }
    let shape = |reason: &str| {
        let mut filter = v.to_string();
        if filter.len() > 200 {
            let cut = (0..=200).rev().find(|&i| filter.is_char_boundary(i)).unwrap_or(0);
            filter.truncate(cut);
            filter.push_str("...");
        }
        TicketFilterError::Shape { filter, reason: reason.to_string() }
    };
    let Value::Object(o) = v else { return Err(shape("not an object")) };
    let list = |key: &str| -> Result<Vec<Predicate>, TicketFilterError> {
        let Some(Value::Array(parts)) = o.get(key) else {
            return Err(shape(&format!("{key:?} takes a list of filters")));
        };
        parts.iter().map(|p| node(p, schema, depth + 1)).collect()
    };
    match (o.get("and"), o.get("or"), o.get("not")) {
        (Some(_), None, None) if o.len() == 1 => return Ok(Predicate::And(list("and")?)),
        (None, Some(_), None) if o.len() == 1 => return Ok(Predicate::Or(list("or")?)),
        (None, None, Some(inner)) if o.len() == 1 => {
            return Ok(node(inner, schema, depth + 1)?.negate());
        }
        (None, None, None) => {}
        _ => return Err(shape("exactly one of and, or, not, alone")),
    }
    let c: Comparison = serde_json::from_value(v.clone()).map_err(|e| shape(&e.to_string()))?;
    let column = schema.field_with_name(&c.field).ok().map(|f| f.data_type());
    let op = c.op.trim().to_ascii_lowercase();
    let values = || -> Result<Vec<Literal>, TicketFilterError> {
        let needs_list =
            || TicketFilterError::NeedsList { field: c.field.clone(), op: c.op.clone() };
        match &c.value {
            Value::Array(vs) if !vs.is_empty() => {
                vs.iter().map(|x| literal(&c, x, column)).collect()
            }
            _ => Err(needs_list()),
        }
    };
    Ok(match op.as_str() {
        "in" => Predicate::is_in(c.field.clone(), values()?),
        "not_in" | "nin" | "not in" => Predicate::is_in(c.field.clone(), values()?).negate(),
        "is_null" | "isnull" | "is null" => Predicate::IsNull(c.field.clone()),
        "is_not_null" | "not_null" | "is not null" => Predicate::IsNotNull(c.field.clone()),
        _ => {
            let compare = parse_op(&c.op).ok_or_else(|| TicketFilterError::UnknownOperator {
                field: c.field.clone(),
                op: c.op.clone(),
            })?;
            Predicate::compare(c.field.clone(), compare, literal(&c, &c.value, column)?)
        }
    })
}

/// Filters compiled for one collection, for scans (searches hand the predicate to the engine).
#[derive(Debug, Default)]
pub struct Filters {
    compiled: Option<(Filter, Vec<String>)>,
}

impl Filters {
    /// Translates and compiles `specs` for the collection whose Arrow schema is `schema`.
    ///
    /// # Errors
    /// As [`to_predicate`], or the engine's [`FilterError`].
    pub fn compile(specs: &[FilterSpec], schema: &Schema) -> Result<Filters, TicketFilterError> {
        let Some(p) = to_predicate(specs, schema)? else { return Ok(Filters::default()) };
        let f = Filter::compile(&p, schema)?;
        let names = f.columns().iter().map(|&i| schema.field(i).name().clone()).collect();
        Ok(Filters { compiled: Some((f, names)) })
    }

    /// Whether there is no filter.
    pub fn is_empty(&self) -> bool {
        self.compiled.is_none()
    }

    /// The columns the filters read.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.compiled.iter().flat_map(|(_, names)| names.iter().map(String::as_str))
    }

    /// The rows of `batch` that pass (it must hold every column in [`Filters::columns`]).
    ///
    /// # Errors
    /// A filter column is missing, or an Arrow kernel failed.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, TicketFilterError> {
        let Some((f, names)) = &self.compiled else { return Ok(batch.clone()) };
        let at = names
            .iter()
            .map(|n| {
                batch.schema().index_of(n).map_err(|_| TicketFilterError::ColumnNotRead(n.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mask = f.evaluate(&batch.project(&at)?)?;
        Ok(arrow_select::filter::filter_record_batch(batch, &mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int32Array, StringArray, UInt8Array};
    use arrow_schema::{DataType, Field};
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
        FilterSpec::compare(field, op, value)
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

    fn nested(v: Value) -> Vec<u8> {
        rows(&[FilterSpec(v)])
    }

    #[test]
    fn nested_or_not_in_and_null_tests_select_the_right_rows() {
        use serde_json::json;
        // n: [1, 5, null, -3], s: [a, b, b, null], u: [1, 2, 3, 4]
        let or = json!({"or": [{"field": "n", "op": "=", "value": 1}, {"field": "u", "op": ">", "value": 3}]});
        assert_eq!(nested(or), vec![1, 4]);
        let not = json!({"not": {"field": "s", "op": "=", "value": "b"}});
        assert_eq!(nested(not), vec![1], "NOT of unknown (a null s) is unknown: row 4 fails");
        assert_eq!(nested(json!({"field": "u", "op": "in", "value": [2, "4", 9]})), vec![2, 4]);
        assert_eq!(nested(json!({"field": "s", "op": "not_in", "value": ["a"]})), vec![2, 3]);
        assert_eq!(nested(json!({"field": "n", "op": "is_null"})), vec![3]);
        assert_eq!(nested(json!({"column": "s", "operator": "is_not_null"})), vec![1, 2, 3]);
        let deep = json!({"and": [
            {"or": [{"field": "s", "op": "is_null"}, {"field": "s", "op": "=", "value": "a"}]},
            {"not": {"field": "u", "op": "in", "value": [1]}}
        ]});
        assert_eq!(nested(deep), vec![4]);
        // The list form ANDs nested elements with plain ones.
        let mixed = [
            FilterSpec(
                json!({"or": [{"field": "u", "op": "=", "value": 1}, {"field": "u", "op": "=", "value": 3}]}),
            ),
            spec("s", "=", "b".into()),
        ];
        assert_eq!(rows(&mixed), vec![3]);
    }

    #[test]
    fn malformed_nested_filters_say_what_is_accepted() {
        use serde_json::json;
        let s = batch().schema();
        let err = |v: Value| Filters::compile(&[FilterSpec(v)], &s).unwrap_err().to_string();
        let e = err(json!({"or": {"field": "n"}}));
        assert!(e.contains("malformed filter") && e.contains("takes a list"), "{e}");
        let e = err(json!({"and": [], "or": []}));
        assert!(e.contains("exactly one"), "{e}");
        let e = err(json!(["n", "=", 1]));
        assert!(e.contains("not an object"), "{e}");
        let e = err(json!({"field": "u", "op": "in", "value": 3}));
        assert!(e.contains("non-empty list"), "{e}");
        let e = err(json!({"field": "u", "op": "in", "value": ["x"]}));
        assert!(e.contains("cannot parse \"x\" as UInt8"), "{e}");
        let mut deep = json!({"field": "u", "op": "=", "value": 1});
        for _ in 0..40 {
            deep = json!({"not": deep});
        }
        assert!(err(deep).contains("nested deeper"));
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
        let e = Filters::compile(&[spec("zz", "=", 1.into())], &s).unwrap_err().to_string();
        assert!(e.contains("unknown column \"zz\""), "{e}");
        let e = Filters::compile(&[spec("n", "~", 1.into())], &s).unwrap_err().to_string();
        assert!(e.contains("unknown operator"), "{e}");
        let e = Filters::compile(&[spec("n", "=", "x".into())], &s).unwrap_err().to_string();
        assert!(e.contains("\"n\"") && e.contains("\"x\"") && e.contains("Int32"), "{e}");
        let e = Filters::compile(&[spec("u", "<", "1e".into())], &s).unwrap_err().to_string();
        assert!(e.contains("cannot parse \"1e\" as UInt8"), "{e}");
        let e = Filters::compile(&[spec("s", "=", Value::Null)], &s).unwrap_err().to_string();
        assert!(e.contains("cannot compare"), "{e}");
    }

    #[test]
    fn values_sent_as_strings_are_converted_to_the_column_type_as_longbow_does() {
        let text = |v: &str| Value::from(v);
        assert_eq!(rows(&[spec("n", "gt", text("0"))]), vec![1, 2]);
        assert_eq!(rows(&[spec("n", "<", text(" -1 "))]), vec![4]);
        assert_eq!(rows(&[spec("n", "<", text("1.5"))]), vec![1, 4]);
        assert_eq!(rows(&[spec("u", ">=", text("3"))]), vec![3, 4]);
        assert_eq!(rows(&[spec("u", "<", text("-1"))]), Vec::<u8>::new());
        assert_eq!(rows(&[spec("s", "eq", text("b"))]), vec![2, 3]);
        let schema = Schema::new(vec![
            Field::new("flag", DataType::Boolean, false),
            Field::new("code", DataType::Utf8, false),
        ]);
        let b = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(arrow_array::BooleanArray::from(vec![true, false, true])),
                Arc::new(StringArray::from(vec!["7", "7.0", "true"])),
            ],
        )
        .unwrap();
        let count = |f: FilterSpec| {
            Filters::compile(&[f], &b.schema()).unwrap().apply(&b).unwrap().num_rows()
        };
        assert_eq!(count(spec("flag", "=", text("TRUE"))), 2);
        assert_eq!(count(spec("flag", "=", text("0"))), 1);
        assert_eq!(count(spec("code", "=", 7.into())), 1, "a number on a string column");
        assert_eq!(count(spec("code", "=", Value::from(7.0))), 1, "compared as its JSON text");
        assert_eq!(count(spec("code", "=", true.into())), 1);
        let e = Filters::compile(&[spec("flag", "=", text("yes"))], &b.schema()).unwrap_err();
        assert!(e.to_string().contains("cannot parse \"yes\" as Boolean"), "{e}");
    }
}
